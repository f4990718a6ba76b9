//! The seeds' front-end rules (seed 003, "Illegal request and response handling") over raw
//! TCP, each against a recording backend: refused requests reach no backend; an unparseable
//! chunk lets the head through and then closes both connections without an answer; a
//! declined upgrade closes the client connection; backend answers with oversized heads or
//! an unknown HTTP version become 502. Loopback only.

#[path = "l7_support/mod.rs"]
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::mpsc,
};

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A raw backend: records every byte each connection sent, answers `answer` once it has a
/// whole head, and reports when a connection was closed by the proxy (EOF).
struct RawBackend {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
    closed: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_backend(answer: Vec<u8>) -> RawBackend {
    raw_backend_after(answer, b"\r\n\r\n").await
}

/// [`raw_backend`] answering once the connection's bytes contain `trigger`.
async fn raw_backend_after(answer: Vec<u8>, trigger: &'static [u8]) -> RawBackend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let (tx, closed) = mpsc::unbounded_channel();
    let g = got.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (g, tx, answer) = (g.clone(), tx.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut answered = false;
                loop {
                    match tokio::time::timeout(STEP, s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            let _ = tx.send(());
                            return;
                        }
                        Ok(Ok(n)) => {
                            let ready = {
                                let mut all = g.lock().unwrap();
                                all.extend_from_slice(&buf[..n]);
                                all.windows(trigger.len()).any(|w| w == trigger)
                            };
                            if ready && !answered {
                                answered = true;
                                let _ = s.write_all(&answer).await;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    RawBackend {
        addr,
        got,
        closed,
        task,
    }
}

fn config_for(port: u16, backend: SocketAddr) -> String {
    format!(
        r#"
[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{port}]
target = "p"
[target_http_proxies.p]
url_map = "m"
[url_maps.m]
default_service = "svc"
[backend_services.svc]
protocol = "HTTP"
backends = [{{ name = "raw", address = "127.0.0.1", port = {} }}]
"#,
        backend.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_seeds_block_reach_no_backend() {
    let b = backend("b", Behaviour::Status(200)).await;
    let p = start(&http_config(free_port(), "", &[&b], ""));
    #[rustfmt::skip]
    let cases: Vec<(&str, &[u8], u16)> = vec![
        ("missing Host", b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", 400),
        ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("bare LF head", b"GET / HTTP/1.1\nHost: a\n\n", 400),
        ("one bare LF line", b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", 400),
        ("h2c upgrade", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n", 400),
        ("Upgrade listing another protocol", b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, foo\r\n\r\n", 400),
        ("body on GET", b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc", 400),
        ("chunked body on HEAD", b"HEAD / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("HTTP/1.0", b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", 505),
    ];
    let mut failures = Vec::new();
    for (what, req, want) in &cases {
        let resp = raw(p.addr, req).await;
        if status_of(&resp) != *want {
            failures.push(format!(
                "{what}: got {:?}, want {want}",
                resp.lines().next()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.count(), 0, "no blocked request reached the backend");
    // Legal requests still pass: a body on POST, a WebSocket-less keep-alive GET.
    let ok = raw(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_header_names_hop_by_hop_headers() {
    let b = backend("b", Behaviour::Status(200)).await;
    let p = start(&http_config(free_port(), "", &[&b], ""));
    let resp = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-first\r\nConnection: x-second, close\r\nX-First: 1\r\nX-Second: 2\r\nX-Kept: 3\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = b.last();
    assert!(!seen.headers.contains_key("x-first"), "{:?}", seen.headers);
    assert!(!seen.headers.contains_key("x-second"), "{:?}", seen.headers);
    assert_eq!(seen.headers["x-kept"], "3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_chunk_closes_both_connections_without_an_answer() {
    // The backend answers only after the whole body, as an upload endpoint would.
    let mut rb = raw_backend_after(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        b"\r\n0\r\n\r\n",
    )
    .await;
    let p = start(&config_for(free_port(), rb.addr));
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    // The head reaches the backend (the seeds: the only case where data gets through).
    let deadline = tokio::time::Instant::now() + STEP;
    while !String::from_utf8_lossy(&rb.got.lock().unwrap()).contains("POST /up HTTP/1.1") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the head never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.write_all(b"zz-not-hex\r\nmore\r\n").await.unwrap();
    let mut out = Vec::new();
    let r = tokio::time::timeout(STEP, s.read_to_end(&mut out)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "the client connection was closed"
    );
    assert!(
        !String::from_utf8_lossy(&out).contains("HTTP/1.1"),
        "no answer on a broken chunk: {:?}",
        String::from_utf8_lossy(&out)
    );
    tokio::time::timeout(STEP, rb.closed.recv())
        .await
        .expect("the backend connection was closed too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_upgrade_closes_the_client_connection() {
    let rb = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_vec()).await;
    let p = start(&config_for(free_port(), rb.addr));
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // read_to_end ends only when the proxy closes the connection.
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .expect("the proxy closed the connection after the refusal")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_answers_with_oversized_heads_or_unknown_versions_are_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(200 * 1024)
    );
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("HTTP/1.1 200 OK\r\n{many}Content-Length: 2\r\n\r\nok");
    for (what, answer) in [
        ("oversized response head", big.into_bytes()),
        ("too many response headers", many.into_bytes()),
        (
            "unknown HTTP version",
            b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
        (
            "HTTP/2 status line over HTTP/1",
            b"HTTP/2 200\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        ),
    ] {
        let rb = raw_backend(answer).await;
        let p = start(&config_for(free_port(), rb.addr));
        let resp = raw(
            p.addr,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&resp), 502, "{what}: {:?}", resp.lines().next());
    }
}
