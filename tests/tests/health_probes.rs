//! One probe at a time against test backends on 127.0.0.1: HTTP verdicts, HTTPS with a
//! self-signed certificate, HTTP/2 by ALPN, TCP up/down, and the timeout bound.

mod health_support;

use health_support::{routes, start, Mode};
use lb_userspace::{
    config::{BackendConfig, HealthCheck, HealthCheckProtocol},
    health::probe::{probe, ProbeError, ProbeSpec},
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

fn spec(
    protocol: HealthCheckProtocol,
    addr: SocketAddr,
    path: &str,
    response: Option<&str>,
) -> ProbeSpec {
    ProbeSpec {
        protocol,
        addr,
        host: "localhost".into(),
        path: path.into(),
        response: response.map(str::to_string),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn http_200_with_expected_text_is_healthy() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    probe(&spec(
        HealthCheckProtocol::Http,
        b.addr,
        "/healthz",
        Some("status: ok"),
    ))
    .await
    .unwrap();
    // No expected text: status 200 alone suffices.
    probe(&spec(HealthCheckProtocol::Http, b.addr, "/healthz", None))
        .await
        .unwrap();
    assert_eq!(b.request_count(), 2, "one request per probe");
}

#[tokio::test]
async fn http_500_is_unhealthy() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let e = probe(&spec(HealthCheckProtocol::Http, b.addr, "/fail", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Status(s) if s == 500), "{e}");
}

#[tokio::test]
async fn http_missing_text_is_unhealthy() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let e = probe(&spec(
        HealthCheckProtocol::Http,
        b.addr,
        "/healthz",
        Some("READY"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "response_mismatch", "{e}");
}

#[tokio::test]
async fn http_text_beyond_first_1024_bytes_is_unhealthy() {
    let handler: health_support::Handler = std::sync::Arc::new(|_: &str| {
        (hyper::StatusCode::OK, format!("{}MARKER", "x".repeat(1024)))
    });
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, handler).await;
    let e = probe(&spec(
        HealthCheckProtocol::Http,
        b.addr,
        "/",
        Some("MARKER"),
    ))
    .await
    .unwrap_err();
    assert_eq!(e.kind(), "response_mismatch", "{e}");
    probe(&spec(HealthCheckProtocol::Http, b.addr, "/", Some("xxxx")))
        .await
        .unwrap();
}

#[tokio::test]
async fn http_wrong_path_is_unhealthy() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let e = probe(&spec(HealthCheckProtocol::Http, b.addr, "/nope", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Status(s) if s == 404), "{e}");
}

#[tokio::test]
async fn https_probe_accepts_self_signed_certificate() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Https, routes()).await;
    probe(&spec(
        HealthCheckProtocol::Https,
        b.addr,
        "/healthz",
        Some("ok"),
    ))
    .await
    .unwrap();
    let e = probe(&spec(HealthCheckProtocol::Https, b.addr, "/fail", None))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "bad_status", "{e}");
    // An IP as host: no SNI, still works.
    let mut s = spec(HealthCheckProtocol::Https, b.addr, "/healthz", None);
    s.host = "127.0.0.1".into();
    probe(&s).await.unwrap();
}

#[tokio::test]
async fn https_probe_against_plain_http_fails_in_tls() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let e = probe(&spec(HealthCheckProtocol::Https, b.addr, "/healthz", None))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "tls_error", "{e}");
}

#[tokio::test]
async fn http2_probe_over_tls_alpn() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::H2, routes()).await;
    probe(&spec(
        HealthCheckProtocol::Http2,
        b.addr,
        "/healthz",
        Some("status: ok"),
    ))
    .await
    .unwrap();
    let e = probe(&spec(HealthCheckProtocol::Http2, b.addr, "/fail", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::Status(s) if s == 500), "{e}");
    // A backend that only speaks HTTP/1.1 over TLS fails an HTTP/2 check.
    let h1 = start("127.0.0.1:0".parse().unwrap(), Mode::Https, routes()).await;
    let e = probe(&spec(HealthCheckProtocol::Http2, h1.addr, "/healthz", None))
        .await
        .unwrap_err();
    assert!(matches!(e, ProbeError::NoHttp2), "{e}");
}

#[tokio::test]
async fn tcp_probe_up_and_down() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let addr = b.addr;
    probe(&spec(HealthCheckProtocol::Tcp, addr, "/", None))
        .await
        .unwrap();
    drop(b);
    let e = probe(&spec(HealthCheckProtocol::Tcp, addr, "/", None))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "connect_error", "{e}");
    let _b = start(addr, Mode::Http, routes()).await;
    probe(&spec(HealthCheckProtocol::Tcp, addr, "/", None))
        .await
        .unwrap();
}

#[tokio::test]
async fn silent_backend_times_out_within_bound() {
    let b = health_support::silent().await;
    let mut s = spec(HealthCheckProtocol::Http, b.addr, "/healthz", None);
    s.timeout = Duration::from_millis(300);
    let t = Instant::now();
    let e = probe(&s).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
    assert_eq!(e.to_string(), "response timeout");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn syn_black_hole_times_out_in_connect() {
    let h = health_support::syn_black_hole().await;
    let mut s = spec(HealthCheckProtocol::Tcp, h.addr, "/", None);
    s.timeout = Duration::from_millis(300);
    let e = probe(&s).await.unwrap_err();
    assert_eq!(e.to_string(), "connect timeout");
}

/// Host header: the configured `host`, else the backend's address; one connection per
/// probe (`Connection: close`) on HTTP/1.1; `:authority` on HTTP/2.
#[tokio::test]
async fn host_header_and_connection_close() {
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let backend: BackendConfig = toml::from_str(&format!(
        "address = \"127.0.0.1\"\nport = {}",
        b.addr.port()
    ))
    .unwrap();
    let mut check: HealthCheck = toml::from_str(
        "protocol = \"HTTP\"\nrequest_path = \"/healthz\"\nport_specification = \"USE_SERVING_PORT\"",
    )
    .unwrap();
    probe(&ProbeSpec::new(&check, &backend)).await.unwrap();
    let seen = b.last_seen();
    assert_eq!(seen.path, "/healthz");
    assert_eq!(seen.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.connection.as_deref(), Some("close"));
    assert_eq!(seen.version, hyper::Version::HTTP_11);

    check.host = Some("app.example".into());
    probe(&ProbeSpec::new(&check, &backend)).await.unwrap();
    assert_eq!(b.last_seen().host.as_deref(), Some("app.example"));

    let h2 = start("127.0.0.1:0".parse().unwrap(), Mode::H2, routes()).await;
    let backend: BackendConfig = toml::from_str(&format!(
        "address = \"127.0.0.1\"\nport = {}",
        h2.addr.port()
    ))
    .unwrap();
    check.protocol = HealthCheckProtocol::Http2;
    probe(&ProbeSpec::new(&check, &backend)).await.unwrap();
    let seen = h2.last_seen();
    assert_eq!(seen.version, hyper::Version::HTTP_2);
    assert_eq!(seen.host.as_deref(), Some("app.example"));
}
