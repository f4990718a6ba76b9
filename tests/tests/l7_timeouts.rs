//! Connection timers of the L7 tier, in-process on loopback: the first-request deadline
//! (silent, half an HTTP/2 preface), the client keep-alive for HTTP/1.1 (close) and HTTP/2
//! (GOAWAY) from the target proxy's `http_keep_alive_timeout_sec`, and the backend
//! keep-alive from the service's `keepalive_timeout_sec`.

#[path = "l7_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Reads until the peer closes; how long that took from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the proxy never closed the connection"),
        }
    }
}

fn with_limits(text: String, l7: &str, proxy: &str) -> String {
    text.replace(
        "[target_http_proxies.web-proxy]\nurl_map = \"web\"",
        &format!("[target_http_proxies.web-proxy]\nurl_map = \"web\"\n{proxy}"),
    ) + &format!("\n[l7]\n{l7}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_connections_meet_the_first_request_deadline() {
    let b = backend("b", Behaviour::Status(200)).await;
    let text = with_limits(
        http_config(free_port(), "", &[&b], ""),
        "first_request_timeout_sec = 1",
        "",
    );
    let p = start(&text);
    for (what, send) in [
        ("silent", &b""[..]),
        ("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n"),
    ] {
        let t = Instant::now();
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(send).await.unwrap();
        let took = closed_after(&mut s, t).await;
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }
    assert_eq!(b.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_after_the_proxy_keep_alive() {
    let b = backend("b", Behaviour::Status(200)).await;
    let text = with_limits(
        http_config(free_port(), "", &[&b], ""),
        "",
        "http_keep_alive_timeout_sec = 5",
    );
    let p = start(&text);
    // HTTP/1.1: one request, then silence; closed about 5 s after the answer.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let took = closed_after(&mut s, Instant::now()).await;
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
        "HTTP/1.1 idle close after {took:?}"
    );
    // HTTP/2: the connection ends (GOAWAY, then close) about 5 s after its last stream.
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get("http://a/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(tx.send_request(req).await.unwrap().status(), 200);
    let t = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("the HTTP/2 connection ended");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(8),
        "HTTP/2 idle GOAWAY after {took:?}"
    );
}

/// A backend that answers every head with a small 200 and reports how long each
/// connection stayed open after its last answer before the proxy closed it.
async fn timing_backend() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Duration>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut last = Instant::now();
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(last.elapsed());
                            return;
                        }
                        Ok(_) => {
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                                .await;
                            last = Instant::now();
                        }
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_follow_the_service_keepalive_timeout() {
    let (port, mut closed) = timing_backend().await;
    let text = format!(
        r#"
[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{listen}]
target = "p"
[target_http_proxies.p]
url_map = "m"
[url_maps.m]
default_service = "svc"
[backend_services.svc]
protocol = "HTTP"
keepalive_timeout_sec = 2
backends = [{{ name = "t", address = "127.0.0.1", port = {port} }}]
"#,
        listen = free_port()
    );
    let p = start(&text);
    let resp = raw(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let idle = tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the proxy closed its idle backend connection")
        .unwrap();
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_millis(4000),
        "backend connection idle for {idle:?} before the proxy closed it (keepalive 2 s)"
    );
}
