//! Illegal requests over a raw TCP socket: each is answered 400, 431 or 414 and nothing
//! reaches the backend (SEMANTICS.md, L7 edge behaviour). Also the header-read timeout
//! against slow clients.

#[path = "l7_support/mod.rs"]
mod support;

use lb_userspace::l7::L7Options;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn illegal_requests_are_refused_before_any_backend() {
    let b = backend("b", Behaviour::Status(200)).await;
    let opts = L7Options {
        max_header_bytes: 16 * 1024,
        max_url_bytes: 4 * 1024,
    };
    let p = start_with(&http_config(free_port(), "", &[&b], ""), opts);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let long_url = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(6 * 1024));
    let many_headers: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET / HTTP/1.1\r\nHost: a\r\n{many_headers}\r\n");
    #[rustfmt::skip]
    let cases: Vec<(&str, String, &[u16])> = vec![
        ("unparseable request line", "GARBAGE\r\n\r\n".into(), &[400]),
        ("request line without version", "GET /\r\nHost: a\r\n\r\n".into(), &[400]),
        ("space in header name", "GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n".into(), &[400]),
        ("invalid char in header name", "GET / HTTP/1.1\r\nHost: a\r\nBa(d: x\r\n\r\n".into(), &[400]),
        ("two different Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), &[400]),
        ("two equal Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(), &[400]),
        ("Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc".into(), &[400]),
        ("Content-Length with chunked", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), &[400]),
        ("unknown transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: foo\r\n\r\n".into(), &[400]),
        ("gzip before chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(), &[400]),
        ("chunked not last", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".into(), &[400]),
        ("invalid Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n".into(), &[400]),
        ("oversized header", big_header, &[431]),
        ("too many headers", many_headers, &[431]),
        ("oversized URL", long_url, &[414]),
    ];
    let mut failures = Vec::new();
    for (what, req, want) in &cases {
        let resp = raw(p.addr, req.as_bytes()).await;
        let got = status_of(&resp);
        if !want.contains(&got) {
            failures.push(format!(
                "{what}: got {got} ({:?}), want {want:?}",
                resp.lines().next()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(b.count(), 0, "no illegal request reached the backend");
    // The same proxy still serves a legal request.
    let ok = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&ok), 200, "{ok}");
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_headers_time_out() {
    let b = backend("b", Behaviour::Status(200)).await;
    let text = http_config(free_port(), "", &[&b], "") + "\n[l7]\nheader_read_timeout_sec = 0.5\n";
    let p = start(&text);
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    // The proxy closes (possibly after a 408) instead of waiting for the rest forever.
    let r = tokio::time::timeout(STEP, s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the connection was closed by the proxy");
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "not closed before the timeout"
    );
    assert_eq!(b.count(), 0);
}
