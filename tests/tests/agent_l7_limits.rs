//! `lb run` with an exposed L7 listener: silent connections are closed by the
//! first-request deadline and the per-listener cap, while health probes and the admin
//! socket keep working; an idle keep-alive connection (HTTP/1.1 and HTTP/2) is still open
//! after 60 s. Loopback only; root because `lb run` is the root agent.

use lb_tests::{lb_binary, netns::ProcGuard, root_or_skip, unique};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Lets this test process hold thousands of sockets.
fn raise_nofile() {
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

/// A backend on a thread: answers every request 200 "ok" and counts health probes
/// (`GET /healthz`). Connections are served one after another (enough for probes and a
/// few test requests), each with keep-alive until the peer closes.
struct Backend {
    port: u16,
    probes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let probes = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (p, st) = (probes.clone(), stop.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            if st.load(Ordering::Relaxed) {
                return;
            }
            let Ok(mut s) = s else { continue };
            let p = p.clone();
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        if head.starts_with("GET /healthz") {
                            p.fetch_add(1, Ordering::Relaxed);
                        }
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    Backend { port, probes, stop }
}

fn config(dir: &Path, listen: u16, backend: u16, l7: &str) -> String {
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

struct Run {
    dir: PathBuf,
    _agent: ProcGuard,
}

impl Run {
    fn start(text: impl Fn(&Path) -> String) -> Run {
        let dir = std::env::temp_dir().join(unique("lbl7lim-"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("lb.toml");
        std::fs::write(&cfg, text(&dir)).unwrap();
        let log = std::fs::File::create(dir.join("lb.log")).unwrap();
        let agent = ProcGuard(Some(
            Command::new(lb_binary())
                .args(["run", "--config", cfg.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        Run { dir, _agent: agent }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    fn status_ok(&self) -> bool {
        Command::new(lb_binary())
            .args(["status", "--socket"])
            .arg(self.dir.join("admin.sock"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One GET on `s` (keep-alive); the status code.
fn get_on(s: &mut TcpStream) -> std::io::Result<u16> {
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

fn wait_serving(listen: u16, run: &Run) {
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

const SILENT: usize = 2000;
const CAP: usize = 1500;

#[test]
fn silent_connections_are_closed_while_probes_and_the_admin_socket_keep_working() {
    if !root_or_skip("agent L7 limits") {
        return;
    }
    raise_nofile();
    let b = backend();
    let listen = free_port();
    let deadline_sec = 8.0;
    let run = Run::start(|dir| {
        config(
            dir,
            listen,
            b.port,
            &format!(
                "first_request_timeout_sec = {deadline_sec}\nmax_connections_per_listener = {CAP}"
            ),
        )
    });
    wait_serving(listen, &run);

    // Admin socket and probes, watched from another thread for the whole flood.
    let watching = Arc::new(AtomicBool::new(true));
    let status_failures = Arc::new(AtomicUsize::new(0));
    let status_runs = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (w, f, n) = (
            watching.clone(),
            status_failures.clone(),
            status_runs.clone(),
        );
        let sock_dir = run.dir.clone();
        std::thread::spawn(move || {
            while w.load(Ordering::Relaxed) {
                let ok = Command::new(lb_binary())
                    .args(["status", "--socket"])
                    .arg(sock_dir.join("admin.sock"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                n.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let probes_before = b.probes.load(Ordering::Relaxed);

    let to = SocketAddr::from(([127, 0, 0, 1], listen));
    let t0 = Instant::now();
    let mut socks: Vec<Option<TcpStream>> = (0..SILENT)
        .map(|_| {
            let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
            s.set_nonblocking(true).unwrap();
            Some(s)
        })
        .collect();
    let connected = t0.elapsed();
    let mut closed_at: Vec<Duration> = Vec::new();
    let give_up = t0 + Duration::from_secs_f64(deadline_sec + 10.0);
    let mut buf = [0u8; 16];
    while closed_at.len() < SILENT && Instant::now() < give_up {
        for slot in socks.iter_mut() {
            let Some(s) = slot else { continue };
            match s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) => {
                    closed_at.push(t0.elapsed());
                    *slot = None;
                }
                Ok(_) => panic!("the proxy answered a connection that sent nothing"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    let probes = b.probes.load(Ordering::Relaxed) - probes_before;
    let elapsed = t0.elapsed();

    assert_eq!(
        closed_at.len(),
        SILENT,
        "every silent connection was closed; log:\n{}",
        run.log()
    );
    let early = closed_at
        .iter()
        .filter(|t| t.as_secs_f64() < deadline_sec - 0.5)
        .count();
    let late = closed_at
        .iter()
        .filter(|t| t.as_secs_f64() > deadline_sec + connected.as_secs_f64() + 3.0)
        .count();
    println!(
        "{SILENT} silent connections (opened in {connected:?}): {early} closed at once (over the cap of {CAP}), all closed within {:?}; {} lb status runs, {probes} probes meanwhile",
        closed_at.iter().max().unwrap(),
        status_runs.load(Ordering::Relaxed)
    );
    assert_eq!(
        early,
        SILENT - CAP,
        "connections over the cap are closed at once"
    );
    assert_eq!(
        late, 0,
        "the others are closed by the first-request deadline"
    );
    assert_eq!(
        status_failures.load(Ordering::Relaxed),
        0,
        "lb status failed during the flood"
    );
    assert!(
        status_runs.load(Ordering::Relaxed) >= 5,
        "lb status ran throughout"
    );
    // Probes every 0.2 s: at least half of them in the time the flood lasted.
    let expected = (elapsed.as_secs_f64() / 0.2 / 2.0) as usize;
    assert!(
        probes >= expected,
        "{probes} probes in {elapsed:?}, expected ≥ {expected}"
    );
    // The listener serves normally afterwards.
    wait_serving(listen, &run);
    assert!(run.status_ok());
}

#[test]
fn idle_keep_alive_connections_stay_open_past_60_seconds() {
    if !root_or_skip("agent L7 keep-alive") {
        return;
    }
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| config(dir, listen, b.port, ""));
    wait_serving(listen, &run);
    let mut h1 = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    h1.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(get_on(&mut h1).unwrap(), 200);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut h2 = rt.block_on(h2_connect(listen));
    assert_eq!(rt.block_on(h2_get(&mut h2.0)), 200);
    // Idle for 65 s (the default keep-alive is 600 s; hyper alone closed HTTP/1.1 at 30 s).
    rt.block_on(tokio::time::sleep(Duration::from_secs(65)));
    assert_eq!(
        get_on(&mut h1).expect("HTTP/1.1 connection still open"),
        200
    );
    assert!(!h2.0.is_closed(), "HTTP/2 connection still open");
    assert_eq!(rt.block_on(h2_get(&mut h2.0)), 200);
    drop(h2);
}

type H2 = (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
);

async fn h2_connect(port: u16) -> H2 {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, task)
}

async fn h2_get(
    tx: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) -> u16 {
    let req = http::Request::get("http://a/")
        .body(http_body_util::Empty::new())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), tx.send_request(req))
        .await
        .expect("answer in time")
        .expect("HTTP/2 request")
        .status()
        .as_u16()
}
