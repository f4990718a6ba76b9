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
