//! `lb run` with an exposed L7 listener: silent connections are closed by the
//! first-request deadline and the per-listener cap, while health probes and the admin
//! socket keep working; an idle keep-alive connection (HTTP/1.1 and HTTP/2) is still open
//! after 60 s. Loopback only; root because `lb run` is the root agent.

#[path = "l7_agent_support/mod.rs"]
mod support;

use lb_tests::{lb_binary, root_or_skip};
use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use support::*;

/// What happened while `n` silent connections were open.
struct Flood {
    /// How long each connection lived (from its connect to when it was seen closed).
    closed_at: Vec<Duration>,
    /// How long opening them took.
    connected: Duration,
    status_runs: usize,
    status_failures: usize,
    probes: usize,
    elapsed: Duration,
}

/// Opens `n` connections to `listen` that never send a byte and watches them until all are
/// closed (or `give_up` passes), running `lb status` every 100 ms and counting health
/// probes meanwhile.
fn flood(run: &Run, b: &Backend, listen: u16, n: usize, give_up: Duration) -> Flood {
    let watching = Arc::new(AtomicBool::new(true));
    let status_failures = Arc::new(AtomicUsize::new(0));
    let status_runs = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (w, f, r) = (
            watching.clone(),
            status_failures.clone(),
            status_runs.clone(),
        );
        let sock = run.dir.join("admin.sock");
        std::thread::spawn(move || {
            while w.load(Ordering::Relaxed) {
                let ok = Command::new(lb_binary())
                    .args(["status", "--socket"])
                    .arg(&sock)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                r.fetch_add(1, Ordering::Relaxed);
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
    // (socket, when it was opened); polled while more are opened, so a connection closed
    // at once is seen at once even when opening them all takes long.
    let mut socks: Vec<Option<(TcpStream, Duration)>> = Vec::with_capacity(n);
    let mut closed_at = Vec::new();
    let mut buf = [0u8; 16];
    let mut poll = |socks: &mut Vec<Option<(TcpStream, Duration)>>, closed: &mut Vec<Duration>| {
        for slot in socks.iter_mut() {
            let Some((s, opened)) = slot else { continue };
            match s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) => {
                    closed.push(t0.elapsed() - *opened);
                    *slot = None;
                }
                Ok(_) => panic!("the proxy answered a connection that sent nothing"),
            }
        }
    };
    for i in 0..n {
        let s = TcpStream::connect_timeout(&to, Duration::from_secs(5)).expect("connect");
        s.set_nonblocking(true).unwrap();
        socks.push(Some((s, t0.elapsed())));
        if i % 50 == 49 {
            poll(&mut socks, &mut closed_at);
        }
    }
    let connected = t0.elapsed();
    while closed_at.len() < n && t0.elapsed() < give_up {
        poll(&mut socks, &mut closed_at);
        std::thread::sleep(Duration::from_millis(50));
    }
    watching.store(false, Ordering::Relaxed);
    watcher.join().unwrap();
    Flood {
        closed_at,
        connected,
        status_runs: status_runs.load(Ordering::Relaxed),
        status_failures: status_failures.load(Ordering::Relaxed),
        probes: b.probes.load(Ordering::Relaxed) - probes_before,
        elapsed: t0.elapsed(),
    }
}

impl Flood {
    /// Checks that `at_once` connections were closed well before the deadline, the rest by
    /// it, and that the admin socket and the probes (every 0.2 s) never stopped.
    fn check(&self, n: usize, at_once: usize, deadline_sec: f64, run: &Run) {
        println!(
            "{n} silent connections (opened in {:?}): {at_once} expected closed at once, all closed within {:?}; {} lb status runs, {} probes meanwhile",
            self.connected,
            self.closed_at.iter().max(),
            self.status_runs,
            self.probes
        );
        assert_eq!(
            self.closed_at.len(),
            n,
            "every silent connection was closed; log:\n{}",
            run.log()
        );
        let early = self
            .closed_at
            .iter()
            .filter(|t| t.as_secs_f64() < deadline_sec - 0.5)
            .count();
        let late = self
            .closed_at
            .iter()
            .filter(|t| t.as_secs_f64() > deadline_sec + 3.0)
            .count();
        assert_eq!(
            early, at_once,
            "connections over the cap are closed at once"
        );
        assert_eq!(
            late, 0,
            "the others are closed by the first-request deadline"
        );
        assert_eq!(self.status_failures, 0, "lb status failed during the flood");
        assert!(self.status_runs >= 5, "lb status ran throughout");
        let expected = (self.elapsed.as_secs_f64() / 0.2 / 2.0) as usize;
        assert!(
            self.probes >= expected,
            "{} probes in {:?}, expected ≥ {expected}",
            self.probes,
            self.elapsed
        );
    }
}

const DEADLINE_SEC: f64 = 8.0;

#[test]
fn silent_connections_are_closed_while_probes_and_the_admin_socket_keep_working() {
    if !root_or_skip("agent L7 limits") {
        return;
    }
    raise_nofile();
    let b = backend();
    let listen = free_port();
    let (n, cap) = (2000, 1500);
    let run = Run::start(|dir| {
        config(
            dir,
            listen,
            b.port,
            &format!(
                "first_request_timeout_sec = {DEADLINE_SEC}\nmax_connections_per_listener = {cap}"
            ),
        )
    });
    wait_serving(listen, &run);
    let f = flood(
        &run,
        &b,
        listen,
        n,
        Duration::from_secs_f64(DEADLINE_SEC + 15.0),
    );
    f.check(n, n - cap, DEADLINE_SEC, &run);
    // The listener serves normally afterwards.
    wait_serving(listen, &run);
    assert!(run.status_ok());
}

/// With few descriptors (2048), the tier keeps 1024 for everything else and splits the
/// rest: 512 client connections. A flood of 2500 silent connections, more than the agent's
/// descriptors, cannot starve the health checker or the admin socket.
#[test]
fn the_descriptor_budget_keeps_probes_and_the_admin_socket_alive() {
    if !root_or_skip("agent L7 descriptor budget") {
        return;
    }
    raise_nofile();
    let b = backend();
    let listen = free_port();
    let n = 2500;
    let run = Run::start_with_nofile(
        |dir| {
            config(
                dir,
                listen,
                b.port,
                &format!("first_request_timeout_sec = {DEADLINE_SEC}"),
            )
        },
        Some(2048),
    );
    wait_serving(listen, &run);
    assert!(
        run.log()
            .lines()
            .any(|l| l.contains("L7 connection budget") && l.contains("512")),
        "budget not logged:\n{}",
        run.log()
    );
    let f = flood(
        &run,
        &b,
        listen,
        n,
        Duration::from_secs_f64(DEADLINE_SEC + 15.0),
    );
    f.check(n, n - 512, DEADLINE_SEC, &run);
    wait_serving(listen, &run);
    assert!(run.status_ok());
}

/// The edge rules and the backend keep-alive as the agent runs them: blocked requests never
/// reach the backend, and an idle backend connection is closed after the service's
/// `keepalive_timeout_sec`.
#[test]
fn edge_rules_and_backend_keep_alive_through_lb_run() {
    if !root_or_skip("agent L7 edge rules") {
        return;
    }
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| {
        config(dir, listen, b.port, "").replace(
            "protocol = \"HTTP\"\nhealth_check",
            "protocol = \"HTTP\"\nkeepalive_timeout_sec = 2\nhealth_check",
        )
    });
    wait_serving(listen, &run);
    let before = b.requests.load(Ordering::Relaxed);
    for (req, want) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\nHost: a\n\n", "400"),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "400",
        ),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", "505"),
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut s, req).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.split_whitespace().nth(1) == Some(want),
            "{:?}: {out:?}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(
        b.requests.load(Ordering::Relaxed),
        before,
        "no blocked request reached the backend"
    );
    // The backend connections the proxy opened (wait_serving's requests) are closed about
    // 2 s after their last answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.idle_closes.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the proxy kept its idle backend connection"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle = b.idle_closes.lock().unwrap()[0];
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(4),
        "backend connection closed after {idle:?} idle (keepalive_timeout_sec = 2)"
    );
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
    let _in_runtime = rt.enter();
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
