//! Shared by the `lb run` L7 tests: a counting backend on a thread, a generated
//! configuration (one HTTP listener, one backend with an HTTP health check every 0.2 s),
//! the agent process with its private admin socket, and raw HTTP/1.1 helpers.

#![allow(dead_code)]

use lb_tests::lbrun::LocalRun;
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lets this test process hold thousands of sockets.
pub fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// A backend on a thread: answers every request 200 "ok", counts health probes
/// (`GET /healthz`) and other requests, and records, for connections that carried other
/// requests, how long they sat idle after their last answer before the peer closed them.
/// Connections are served each on its own thread, with keep-alive until the peer closes.
pub struct Backend {
    pub port: u16,
    pub probes: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    pub idle_closes: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

pub fn backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let b = Backend {
        port,
        probes: Arc::default(),
        requests: Arc::default(),
        idle_closes: Arc::default(),
        stop: Arc::default(),
    };
    let (p, r, c, st) = (
        b.probes.clone(),
        b.requests.clone(),
        b.idle_closes.clone(),
        b.stop.clone(),
    );
    std::thread::spawn(move || {
        for s in l.incoming() {
            if st.load(Ordering::Relaxed) {
                return;
            }
            let Ok(s) = s else { continue };
            let (p, r, c) = (p.clone(), r.clone(), c.clone());
            std::thread::spawn(move || serve_backend_connection(s, &p, &r, &c));
        }
    });
    b
}

fn serve_backend_connection(
    mut s: TcpStream,
    probes: &AtomicUsize,
    requests: &AtomicUsize,
    idle_closes: &Mutex<Vec<Duration>>,
) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut last_answer: Option<Instant> = None;
    loop {
        let n = match s.read(&mut chunk) {
            Ok(n) if n > 0 => n,
            _ => {
                if let Some(t) = last_answer {
                    idle_closes.lock().unwrap().push(t.elapsed());
                }
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let probe = head.starts_with("GET /healthz");
            if probe {
                probes.fetch_add(1, Ordering::Relaxed);
            } else {
                requests.fetch_add(1, Ordering::Relaxed);
            }
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            if !probe {
                last_answer = Some(Instant::now());
            }
        }
    }
}

pub fn config(dir: &Path, listen: u16, backend: u16, l7: &str) -> String {
    format!(
        r#"
[admin]
socket = "{sock}"

[l7]
{l7}

[health_checks.hc]
protocol = "HTTP"
port = {backend}
request_path = "/healthz"
check_interval_sec = 0.2
timeout_sec = 0.2
healthy_threshold = 1
unhealthy_threshold = 2

[backend_services.web]
protocol = "HTTP"
health_check = "hc"
backends = [{{ name = "b1", address = "127.0.0.1", port = {backend} }}]

[url_maps.m]
default_service = "web"

[target_http_proxies.p]
url_map = "m"

[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{listen}]
target = "p"
"#,
        sock = dir.join("admin.sock").display()
    )
}

pub struct Run {
    pub dir: PathBuf,
    run: LocalRun,
}

impl Run {
    pub fn start(text: impl Fn(&Path) -> String) -> Run {
        Run::start_with_nofile(text, None)
    }

    /// [`Run::start`] with the agent's RLIMIT_NOFILE (soft and hard) set to `nofile`.
    pub fn start_with_nofile(text: impl Fn(&Path) -> String, nofile: Option<u64>) -> Run {
        let run = LocalRun::start("lbl7run-", text, nofile);
        Run {
            dir: run.dir.clone(),
            run,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.run.pid()
    }

    pub fn log(&self) -> String {
        self.run.log()
    }

    pub fn status_ok(&self) -> bool {
        self.run.cli(&["status"]).status.success()
    }
}

/// One GET on `s` (keep-alive); the status code.
pub fn get_on(s: &mut TcpStream) -> std::io::Result<u16> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nok") {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0))
}

pub fn wait_serving(listen: u16, run: &Run) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ok = TcpStream::connect(("127.0.0.1", listen))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                get_on(&mut s)
            })
            .is_ok_and(|c| c == 200);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent never served; log:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the `lb` CLI against the agent's socket; (success, stdout + stderr).
pub fn cli(run: &Run, args: &[&str]) -> (bool, String) {
    let out = run.run.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}
