//! Test backends for the health-check tests, all on 127.0.0.1: a small HTTP/1.1, HTTPS or
//! HTTP/2-over-TLS server with a path → (status, body) handler, and black holes.
#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    task::JoinSet,
};

/// Answers a request path with a status and a body.
pub type Handler = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

/// The test backends' routes: `/healthz` → 200 "status: ok", `/fail` → 500, else 404.
pub fn routes() -> Handler {
    Arc::new(|path: &str| match path {
        "/healthz" => (StatusCode::OK, "status: ok\n".into()),
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom\n".into()),
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Http,
    /// HTTP/1.1 over TLS (ALPN http/1.1).
    Https,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

/// What a test backend saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    /// Host header, or the URI authority for HTTP/2.
    pub host: Option<String>,
    pub connection: Option<String>,
    pub version: hyper::Version,
}

/// A running test backend; dropping it closes the listener and every connection.
pub struct Backend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// While set, requests are read but never answered (a hung backend).
    pub hung: Arc<AtomicBool>,
    _tasks: JoinSet<()>,
}

impl Backend {
    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// Starts a backend on `addr` (port 0 for any).
pub async fn start(addr: SocketAddr, mode: Mode, handler: Handler) -> Backend {
    let listener = TcpListener::bind(addr).await.expect("bind test backend");
    let addr = listener.local_addr().unwrap();
    let tls = match mode {
        Mode::Http => None,
        Mode::Https => Some(tls_acceptor(&[b"http/1.1"])),
        Mode::H2 => Some(tls_acceptor(&[b"h2"])),
    };
    let requests = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    let counter = requests.clone();
    let log = seen.clone();
    let hung = Arc::new(AtomicBool::new(false));
    let hang = hung.clone();
    tasks.spawn(async move {
        // Connections live in this task's own set, so dropping the backend ends them too.
        let mut conns = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (handler, tls, counter) = (handler.clone(), tls.clone(), counter.clone());
            let (log, hang) = (log.clone(), hang.clone());
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let header = |n: hyper::header::HeaderName| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let host = header(hyper::header::HOST)
                        .or_else(|| req.uri().authority().map(|a| a.to_string()));
                    log.lock().unwrap().push(Seen {
                        path: req.uri().path().to_string(),
                        host,
                        connection: header(hyper::header::CONNECTION),
                        version: req.version(),
                    });
                    let (status, body) = handler(req.uri().path());
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    let hang = hang.load(Ordering::Relaxed);
                    async move {
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                match tls {
                    None => {
                        let _ = conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                        if h2 {
                            let _ = conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        } else {
                            let _ = conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        }
                    }
                }
            });
        }
    });
    Backend {
        addr,
        requests,
        seen,
        hung,
        _tasks: tasks,
    }
}

/// A TLS acceptor with a fresh rcgen self-signed certificate for "localhost".
fn tls_acceptor(alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A backend that accepts TCP connections and never says a word.
pub async fn silent() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    Backend {
        addr,
        requests: Arc::new(AtomicU64::new(0)),
        seen: Arc::default(),
        hung: Arc::default(),
        _tasks: tasks,
    }
}

/// An address whose SYNs go unanswered: a listener that never accepts, with its accept
/// queue filled first (Linux then drops further SYNs instead of answering them).
pub struct SynBlackHole {
    pub addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

pub async fn syn_black_hole() -> SynBlackHole {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Backlog 0 still queues a connection or two; fill until a connect hangs.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let hangs = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr))
        .await
        .is_err();
    assert!(hangs, "the accept queue should be full and SYNs unanswered");
    SynBlackHole {
        addr,
        _listener: listener,
        _fillers: fillers,
    }
}
