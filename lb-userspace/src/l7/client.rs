//! Pooled keep-alive clients towards backends, one per upstream kind. Plain HTTP/1.1 goes
//! over a pool of our own built on hyper's low-level `client::conn::http1` (see [`H1Pool`]);
//! the other kinds over hyper-util's legacy client. Pools are keyed by backend address, so
//! all services share them, and they survive reloads.

use super::{
    backend_count::{BackendBudget, Counted},
    body::UpstreamBody,
    table::Upstream,
    tls,
};
use hyper::{body::Incoming, client::conn::http1};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

/// Backend keep-alive idle timeout by default (SEMANTICS: 600 s); each backend service
/// sets its own with `keepalive_timeout_sec`.
pub const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connect timeout towards a backend; a failure here is a `connect-failure`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest backend response head accepted (Google Cloud's response-header limit, 128 KiB);
/// a bigger one, or one with an unknown HTTP version, is refused with 502 (seed 003).
pub const MAX_RESPONSE_HEAD_BYTES: usize = 128 * 1024;
/// Idle connections kept per backend.
const MAX_IDLE_PER_BACKEND: usize = 1024;

type Tls = Client<HttpsConnector<Counted>, UpstreamBody>;
type Plain = Client<Counted, UpstreamBody>;

/// The clients: our HTTP/1.1 pool and, per keep-alive timeout in use, three legacy
/// clients (hyper-util's pool has one idle timeout per client).
#[derive(Clone, Debug)]
pub struct Clients {
    http1: Arc<H1Pool>,
    legacy: Arc<Mutex<HashMap<Duration, Legacy>>>,
    budget: Arc<BackendBudget>,
}

/// hyper-util clients sharing one keep-alive timeout.
#[derive(Clone, Debug)]
struct Legacy {
    h2c: Plain,
    https: Tls,
    http2: Tls,
}

impl Legacy {
    fn new(keepalive: Duration, budget: &Arc<BackendBudget>) -> Legacy {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(keepalive)
            .pool_max_idle_per_host(MAX_IDLE_PER_BACKEND)
            .http1_max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .http2_max_header_list_size(MAX_RESPONSE_HEAD_BYTES as u32)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let mut h2 = builder.clone();
        h2.http2_only(true);
        Legacy {
            h2c: h2.build(Counted::new(connector(), budget.clone())),
            https: builder.build(tls_connector(false, budget)),
            http2: h2.build(tls_connector(true, budget)),
        }
    }
}

/// Why a request to a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to the backend: {0}")]
    Connect(#[source] std::io::Error),
    #[error("connecting to the backend timed out")]
    ConnectTimeout,
    #[error("backend connection handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    Legacy(hyper_util::client::legacy::Error),
}

impl ClientError {
    /// The connection could not be established (nothing was sent).
    pub fn is_connect(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::ConnectTimeout | ClientError::Handshake(_) => {
                true
            }
            ClientError::Hyper(_) => false,
            ClientError::Legacy(e) => e.is_connect(),
        }
    }
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.enforce_http(false);
    c
}

/// A TLS connector offering ALPN `h2` (HTTP2 services) or `http/1.1` (HTTPS services).
fn tls_connector(h2: bool, budget: &Arc<BackendBudget>) -> HttpsConnector<Counted> {
    let tcp = Counted::new(connector(), budget.clone());
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::backend_client_config())
        .https_only();
    if h2 {
        b.enable_http2().wrap_connector(tcp)
    } else {
        b.enable_http1().wrap_connector(tcp)
    }
}

impl Clients {
    pub fn new() -> Clients {
        let budget = Arc::new(BackendBudget::default());
        let http1 = Arc::new(H1Pool::new(budget.clone()));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(reap(Arc::downgrade(&http1)));
        }
        Clients {
            http1,
            legacy: Arc::default(),
            budget,
        }
    }

    /// Caps the backend connections open at once, of every kind (descriptor budget); a
    /// request that would need one more fails as a connect failure (502).
    pub fn set_max_backend_connections(&self, max: usize) {
        self.budget.set_max(max);
    }

    /// Backend connections open now.
    pub fn open_backend_connections(&self) -> usize {
        self.budget.open()
    }

    fn legacy(&self, keepalive: Duration) -> Legacy {
        let mut map = self.legacy.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(keepalive)
            .or_insert_with(|| Legacy::new(keepalive, &self.budget))
            .clone()
    }

    /// Sends one request to the backend at `addr` over the right client. `req`'s URI is in
    /// origin form (path and query); `scheme` and `authority` complete it where needed. For
    /// plain HTTP/1.1 the answer carries the pooled connection, to be given back with
    /// [`Pooled::release`] once the response body has been read to its end. `keepalive` is
    /// the service's backend keep-alive: an idle connection is closed after it.
    pub async fn request(
        &self,
        kind: Upstream,
        addr: SocketAddr,
        authority: &http::uri::Authority,
        keepalive: Duration,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Option<Pooled>), ClientError> {
        if kind == Upstream::Http1 {
            if !req.headers().contains_key(http::header::HOST) {
                // As hyper-util's client does: the port only when it is not the default.
                let host = match authority.port_u16() {
                    Some(80) => authority.host(),
                    _ => authority.as_str(),
                };
                if let Ok(v) = http::HeaderValue::from_str(host) {
                    req.headers_mut().insert(http::header::HOST, v);
                }
            }
            return self.http1.send(addr, keepalive, req).await;
        }
        let scheme = match kind {
            Upstream::Https | Upstream::Http2 => http::uri::Scheme::HTTPS,
            Upstream::Http1 | Upstream::H2c => http::uri::Scheme::HTTP,
        };
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(scheme);
        parts.authority = Some(authority.clone());
        *req.uri_mut() =
            http::Uri::from_parts(parts).expect("scheme, authority and path make a URI");
        let legacy = self.legacy(keepalive);
        // Boxed: hyper-util's request futures are large (inline, they made this future
        // 2.7 KB instead of 1.1, all of it copied into its box for every request, plain
        // HTTP/1.1 ones too); a separate statement, so no temporary of it is kept either.
        let sent = Box::pin(async move {
            match kind {
                Upstream::H2c => legacy.h2c.request(req).await,
                Upstream::Https => legacy.https.request(req).await,
                _ => legacy.http2.request(req).await,
            }
        });
        let r = sent.await;
        r.map(|r| (r, None)).map_err(ClientError::Legacy)
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}

struct Idle {
    tx: http1::SendRequest<UpstreamBody>,
    since: Instant,
    keepalive: Duration,
}

impl Idle {
    fn usable(&self) -> bool {
        !self.tx.is_closed() && self.since.elapsed() < self.keepalive
    }
}

/// Keep-alive HTTP/1.1 connections to plain backends, idle ones stacked per backend and
/// L7 worker (most recently used on top; a connection runs on the worker that opened it, so
/// a request only takes connections of its own worker, see `workers`). A connection is taken out for one request and given back when the
/// response body has been read to its end, so no task is spawned per request to watch for
/// it becoming reusable; each connection runs as its own task (hyper's `Connection`).
pub struct H1Pool {
    idle: Mutex<HashMap<(usize, SocketAddr), Vec<Idle>>>,
    /// Every backend connection open, against the descriptor budget.
    budget: Arc<BackendBudget>,
}

impl H1Pool {
    fn new(budget: Arc<BackendBudget>) -> H1Pool {
        H1Pool {
            idle: Mutex::default(),
            budget,
        }
    }
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool").finish_non_exhaustive()
    }
}

/// A connection taken out of the pool for one request.
pub struct Pooled {
    tx: http1::SendRequest<UpstreamBody>,
    /// The worker the connection runs on, and its backend.
    key: (usize, SocketAddr),
    keepalive: Duration,
    pool: Weak<H1Pool>,
}

impl std::fmt::Debug for Pooled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("addr", &self.key.1).finish()
    }
}

impl Pooled {
    /// Gives the connection back for reuse (the response has been read completely).
    pub fn release(self) {
        if self.tx.is_closed() {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            let stack = idle.entry(self.key).or_default();
            if stack.len() < MAX_IDLE_PER_BACKEND {
                stack.push(Idle {
                    tx: self.tx,
                    since: Instant::now(),
                    keepalive: self.keepalive,
                });
            }
        }
    }
}

impl H1Pool {
    fn take(&self, key: (usize, SocketAddr)) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let stack = idle.get_mut(&key)?;
        while let Some(i) = stack.pop() {
            if i.usable() {
                return Some(i.tx);
            }
        }
        None
    }

    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> Result<http1::SendRequest<UpstreamBody>, ClientError> {
        let open = self.budget.admit().map_err(ClientError::Connect)?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::ConnectTimeout)?
            .map_err(ClientError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD_BYTES)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Handshake)?;
        tokio::spawn(async move {
            let _open = open;
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(tx)
    }

    async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        keepalive: Duration,
        mut req: http::Request<UpstreamBody>,
    ) -> Result<(http::Response<Incoming>, Option<Pooled>), ClientError> {
        let key = (super::workers::id(), addr);
        loop {
            let (mut tx, reused) = match self.take(key) {
                Some(tx) => (tx, true),
                // Boxed: connecting is rare (pooled connections are reused) and its future
                // is large; inline it would be copied with every request's future. Its
                // own statement, so no temporary of it is kept in this future either.
                None => {
                    let connecting = Box::pin(self.connect(addr));
                    (connecting.await?, false)
                }
            };
            if tx.ready().await.is_err() {
                if reused {
                    continue; // closed while idle: nothing was sent, take another
                }
                return Err(ClientError::Connect(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "backend closed the new connection",
                )));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let pooled = Pooled {
                        tx,
                        key,
                        keepalive,
                        pool: Arc::downgrade(self),
                    };
                    return Ok((resp, Some(pooled)));
                }
                Err(mut e) => match e.take_message() {
                    // Not sent at all on a reused connection (it was closing): try again.
                    Some(r) if reused => req = r,
                    _ => return Err(ClientError::Hyper(e.into_error())),
                },
            }
        }
    }
}

/// Closes connections idle for longer than their service's keep-alive (checked every
/// second, so a connection closes within a second of its timeout), until the pool goes.
async fn reap(pool: Weak<H1Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, stack| {
            stack.retain(Idle::usable);
            !stack.is_empty()
        });
    }
}
