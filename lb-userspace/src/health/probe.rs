//! One health probe: TCP connect, HTTP/1.1, HTTPS or HTTP/2, bounded by the check's timeout.
//!
//! Semantics follow Google Cloud's health checks (SEMANTICS.md, "Health checks"):
//! - TCP: success when the connection is established;
//! - HTTP/HTTPS/HTTP2: `GET request_path`, success when the status is 200 and, if `response`
//!   is set, that text appears within the first 1024 bytes of the body;
//! - the Host header (`:authority` for HTTP/2) is the configured `host`, else the backend's
//!   address;
//! - one fresh connection per probe (`Connection: close` on HTTP/1.1), so a probe measures
//!   whether a new client could be served, not whether an old connection is still alive.
//!
//! Deviation: Google Cloud sends passthrough (L4) health probes to the forwarding rule's IP
//! on the backend. Here every probe goes to the backend's own address: a probe from the
//! balancer host to a VIP would be routed locally and never reach the backend the way
//! client traffic does.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::Incoming,
    header::{CONNECTION, HOST, USER_AGENT},
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    task::JoinHandle,
    time::Instant,
};

use crate::config::{BackendConfig, HealthCheck, HealthCheckProtocol, PortSpecification};

/// Google Cloud compares the expected response with the first 1024 bytes of the body.
pub const RESPONSE_WINDOW: usize = 1024;
/// Port of fixed-port checks that name none (SEMANTICS.md).
pub const DEFAULT_PORT: u16 = 80;
const USER_AGENT_VALUE: &str = "lb-health-check";

/// Everything one probe needs, resolved from a health check and a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    pub protocol: HealthCheckProtocol,
    /// Where the probe connects.
    pub addr: SocketAddr,
    /// Host header / `:authority`; also the TLS server name when it is a DNS name.
    pub host: String,
    pub path: String,
    /// Text expected within the first [`RESPONSE_WINDOW`] bytes of a 200 response.
    pub response: Option<String>,
    /// Bound on the whole probe (connect, TLS, request, body).
    pub timeout: Duration,
}

impl ProbeSpec {
    /// Resolves the probe of `check` against `backend`. The port is the check's `port` (80
    /// when absent) or, with `USE_SERVING_PORT`, the backend's own port; an L4 backend may
    /// have no port of its own, and then the check's port is used instead.
    pub fn new(check: &HealthCheck, backend: &BackendConfig) -> Self {
        let fixed = check.port.unwrap_or(DEFAULT_PORT);
        let port = match check.port_specification {
            PortSpecification::UseFixedPort => fixed,
            PortSpecification::UseServingPort => backend.port.unwrap_or(fixed),
        };
        let host = check
            .host
            .clone()
            .unwrap_or_else(|| host_of_ip(backend.address));
        ProbeSpec {
            protocol: check.protocol,
            addr: SocketAddr::new(backend.address, port),
            host,
            path: check.request_path.clone(),
            response: check.response.clone(),
            // Validation keeps it positive; the floor keeps a hand-built config from
            // panicking in `from_secs_f64`.
            timeout: crate::config::limits::duration(check.timeout_sec.max(0.001)),
        }
    }
}

/// An IP as it appears in a Host header (IPv6 in brackets, RFC 9110 §7.2 / RFC 3986 §3.2.2).
fn host_of_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// The step of a probe that ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connect,
    TlsHandshake,
    HttpHandshake,
    Response,
    Body,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Connect => "connect",
            Phase::TlsHandshake => "TLS handshake",
            Phase::HttpHandshake => "HTTP handshake",
            Phase::Response => "response",
            Phase::Body => "body",
        })
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The probe did not finish within `timeout_sec`; the phase says where it hung.
    #[error("{0} timeout")]
    Timeout(Phase),
    /// The TCP connection could not be established.
    #[error("connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed (certificates are not verified, see [`tls_config`]).
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// An HTTP/2 check whose backend did not select `h2` by ALPN.
    #[error("backend did not negotiate HTTP/2 (ALPN h2)")]
    NoHttp2,
    /// The request could not be built (e.g. a host that is not a valid authority).
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The HTTP exchange failed (connection reset, malformed response, ...).
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    /// A status other than 200.
    #[error("status {0}, expected 200")]
    Status(StatusCode),
    /// A 200 whose first 1024 body bytes lack the expected text.
    #[error("expected text {0:?} not in the first 1024 bytes of the body")]
    ResponseMismatch(String),
}

impl ProbeError {
    /// A short, stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Timeout(_) => "timeout",
            ProbeError::Connect(_) => "connect_error",
            ProbeError::Tls(_) => "tls_error",
            ProbeError::NoHttp2 => "no_http2",
            ProbeError::Request(_) => "invalid_request",
            ProbeError::Http(_) => "http_error",
            ProbeError::Status(_) => "bad_status",
            ProbeError::ResponseMismatch(_) => "response_mismatch",
        }
    }
}

/// Runs one probe. Every step shares one deadline, `spec.timeout` from now; dropping the
/// returned future (checker shutdown) closes the connection.
pub async fn probe(spec: &ProbeSpec) -> Result<(), ProbeError> {
    let deadline = Instant::now() + spec.timeout;
    let tcp = step(deadline, Phase::Connect, TcpStream::connect(spec.addr))
        .await?
        .map_err(ProbeError::Connect)?;
    // Probes are tiny request/response exchanges: do not let Nagle delay them. Failing to
    // set it only costs latency, never the verdict, so the error is deliberately ignored.
    let _ = tcp.set_nodelay(true);
    match spec.protocol {
        // Google Cloud's TCP check without request/response: the handshake is the test.
        HealthCheckProtocol::Tcp => Ok(()),
        HealthCheckProtocol::Http => http1(spec, deadline, tcp).await,
        HealthCheckProtocol::Https => {
            let tls = tls_connect(spec, deadline, tcp, Alpn::Http1).await?;
            http1(spec, deadline, tls).await
        }
        HealthCheckProtocol::Http2 => {
            let tls = tls_connect(spec, deadline, tcp, Alpn::H2).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(ProbeError::NoHttp2);
            }
            http2(spec, deadline, tls).await
        }
    }
}

/// Awaits `f` until `deadline`, naming the phase that timed out.
async fn step<F: Future>(deadline: Instant, phase: Phase, f: F) -> Result<F::Output, ProbeError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| ProbeError::Timeout(phase))
}

/// Aborts the spawned hyper connection task when the probe ends or is cancelled, so no
/// probe leaves a task (and a socket) behind.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Drives a hyper client connection. Its error is not lost: the same failure is what
/// `send_request` or the body read report to the probe.
fn drive<C>(conn: C) -> AbortOnDrop
where
    C: Future + Send + 'static,
{
    AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }))
}

async fn http1<T>(spec: &ProbeSpec, deadline: Instant, io: T) -> Result<(), ProbeError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = step(
        deadline,
        Phase::HttpHandshake,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await?
    .map_err(ProbeError::Http)?;
    let _conn = drive(conn);
    let req = Request::get(spec.path.as_str())
        .header(HOST, spec.host.as_str())
        .header(CONNECTION, "close")
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())?;
    let resp = step(deadline, Phase::Response, sender.send_request(req))
        .await?
        .map_err(ProbeError::Http)?;
    check_response(spec, deadline, resp).await
}

async fn http2<T>(spec: &ProbeSpec, deadline: Instant, io: T) -> Result<(), ProbeError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = step(
        deadline,
        Phase::HttpHandshake,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)),
    )
    .await?
    .map_err(ProbeError::Http)?;
    let _conn = drive(conn);
    // HTTP/2 carries the host in `:authority`, which hyper takes from an absolute URI
    // (RFC 9113 §8.3.1); connection-specific headers such as `Connection` are forbidden there.
    let uri = format!("https://{}{}", spec.host, spec.path);
    let req = Request::get(uri)
        .header(USER_AGENT, USER_AGENT_VALUE)
        .body(Empty::<Bytes>::new())?;
    let resp = step(deadline, Phase::Response, sender.send_request(req))
        .await?
        .map_err(ProbeError::Http)?;
    check_response(spec, deadline, resp).await
}

/// Status 200 and, when configured, the expected text in the first 1024 body bytes.
async fn check_response(
    spec: &ProbeSpec,
    deadline: Instant,
    resp: Response<Incoming>,
) -> Result<(), ProbeError> {
    if resp.status() != StatusCode::OK {
        return Err(ProbeError::Status(resp.status()));
    }
    let Some(expected) = &spec.response else {
        // No text to look for: the body is not read, the connection is simply closed.
        return Ok(());
    };
    let mut body = resp.into_body();
    let mut head = Vec::with_capacity(RESPONSE_WINDOW);
    while head.len() < RESPONSE_WINDOW {
        match step(deadline, Phase::Body, body.frame()).await? {
            None => break,
            Some(Err(e)) => return Err(ProbeError::Http(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
        }
    }
    head.truncate(RESPONSE_WINDOW);
    if contains(&head, expected.as_bytes()) {
        Ok(())
    } else {
        Err(ProbeError::ResponseMismatch(expected.clone()))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Clone, Copy)]
enum Alpn {
    Http1,
    H2,
}

async fn tls_connect(
    spec: &ProbeSpec,
    deadline: Instant,
    tcp: TcpStream,
    alpn: Alpn,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(alpn));
    step(
        deadline,
        Phase::TlsHandshake,
        connector.connect(server_name(spec), tcp),
    )
    .await?
    .map_err(|e| {
        // A server that cannot speak any offered protocol answers with this alert
        // (RFC 7301 §3.2); for an HTTP/2 check that means "no HTTP/2", the clearer reason.
        let no_alpn = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .is_some_and(|r| {
                matches!(
                    r,
                    rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol)
                )
            });
        match alpn {
            Alpn::H2 if no_alpn => ProbeError::NoHttp2,
            _ => ProbeError::Tls(e),
        }
    })
}

/// SNI: the configured host when it is a DNS name (without a port), else the backend's IP
/// (rustls then sends no SNI, as RFC 6066 §3 forbids literal addresses there).
fn server_name(spec: &ProbeSpec) -> rustls::pki_types::ServerName<'static> {
    let host = spec.host.trim_start_matches('[');
    let host = match host.rsplit_once([']', ':']) {
        // "name:port" or "[v6]:port"/"[v6]": drop the port part.
        Some((h, p)) if p.is_empty() || p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    rustls::pki_types::ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| spec.addr.ip().into())
}

/// TLS client configuration of probes, one per ALPN choice, built once.
///
/// Certificates are NOT verified, by design: backends usually serve self-signed or
/// internally issued certificates, and Google Cloud's load balancers do not verify backend
/// certificates in their health checks either. A probe asks "does the backend answer?",
/// not "is it who it claims to be"; no user data crosses this connection.
fn tls_config(alpn: Alpn) -> Arc<rustls::ClientConfig> {
    static HTTP1: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    static H2: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let (cell, protos): (_, &[&[u8]]) = match alpn {
        Alpn::Http1 => (&HTTP1, &[b"http/1.1"]),
        Alpn::H2 => (&H2, &[b"h2"]),
    };
    cell.get_or_init(|| {
        // The provider is named explicitly rather than taken from the process default, so
        // probes work whether or not another part of the agent installed one.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the aws-lc-rs provider supports the default TLS versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::backend_tls::NoBackendVerification(
                provider,
            )))
            .with_no_client_auth();
        cfg.alpn_protocols = protos.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HealthCheck;

    fn check(toml_text: &str) -> HealthCheck {
        toml::from_str(toml_text).expect("valid health check")
    }

    fn backend(port: Option<u16>) -> BackendConfig {
        BackendConfig {
            name: None,
            address: "10.0.0.7".parse().unwrap(),
            port,
            weight: 1,
            capacity_scaler: 1.0,
            failover: false,
            mac: None,
        }
    }

    #[test]
    fn fixed_port_defaults_to_80() {
        let s = ProbeSpec::new(&check("protocol = \"HTTP\""), &backend(Some(8080)));
        assert_eq!(s.addr, "10.0.0.7:80".parse().unwrap());
        assert_eq!(s.host, "10.0.0.7");
        assert_eq!(s.path, "/");
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn serving_port_uses_backend_port_then_check_port() {
        let c = check("protocol = \"TCP\"\nport = 9000\nport_specification = \"USE_SERVING_PORT\"");
        assert_eq!(ProbeSpec::new(&c, &backend(Some(8080))).addr.port(), 8080);
        assert_eq!(ProbeSpec::new(&c, &backend(None)).addr.port(), 9000);
    }

    #[test]
    fn host_and_ipv6() {
        let c = check("protocol = \"HTTP\"\nhost = \"example.com\"");
        assert_eq!(ProbeSpec::new(&c, &backend(None)).host, "example.com");
        assert_eq!(host_of_ip("::1".parse().unwrap()), "[::1]");
    }

    #[test]
    fn sni_strips_port_and_falls_back_to_ip() {
        let mut s = ProbeSpec::new(&check("protocol = \"HTTPS\""), &backend(None));
        s.host = "example.com:8443".into();
        assert_eq!(
            format!("{:?}", server_name(&s)),
            format!(
                "{:?}",
                rustls::pki_types::ServerName::try_from("example.com").unwrap()
            )
        );
        s.host = "[::1]:8443".into();
        assert!(matches!(
            server_name(&s),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        s.host = "bad host!".into();
        assert!(matches!(
            server_name(&s),
            rustls::pki_types::ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn window_search() {
        assert!(contains(b"hello world", b"lo w"));
        assert!(contains(b"x", b""));
        assert!(!contains(b"hel", b"hello"));
    }

    #[tokio::test]
    async fn tcp_probe_refused_then_accepted() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut s = ProbeSpec::new(
            &check("protocol = \"TCP\"\ntimeout_sec = 1.0"),
            &backend(None),
        );
        s.addr = addr;
        probe(&s).await.expect("listener accepts");
        drop(l);
        let e = probe(&s).await.expect_err("nothing listens any more");
        assert_eq!(e.kind(), "connect_error", "{e}");
    }
}
