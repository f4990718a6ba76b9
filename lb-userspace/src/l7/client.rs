//! Pooled keep-alive clients towards backends (hyper-util's legacy client), one per
//! upstream kind. Pools are keyed by backend authority inside each client, so all services
//! share them, and they survive reloads.

use super::{body::UpstreamBody, table::Upstream, tls};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use std::time::Duration;

/// Backend keep-alive idle timeout (SEMANTICS: 600 s).
pub const BACKEND_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Connect timeout towards a backend; a failure here is a `connect-failure`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Plain = Client<HttpConnector, UpstreamBody>;
type Tls = Client<HttpsConnector<HttpConnector>, UpstreamBody>;

/// The four clients.
#[derive(Clone, Debug)]
pub struct Clients {
    http1: Plain,
    h2c: Plain,
    https: Tls,
    http2: Tls,
}

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(CONNECT_TIMEOUT));
    c.enforce_http(false);
    c
}

/// A TLS connector offering ALPN `h2` (HTTP2 services) or `http/1.1` (HTTPS services).
fn tls_connector(h2: bool) -> HttpsConnector<HttpConnector> {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls::backend_client_config())
        .https_only();
    if h2 {
        b.enable_http2().wrap_connector(connector())
    } else {
        b.enable_http1().wrap_connector(connector())
    }
}

impl Clients {
    pub fn new() -> Clients {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(BACKEND_IDLE_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new());
        let mut h2 = builder.clone();
        h2.http2_only(true);
        Clients {
            http1: builder.build(connector()),
            h2c: h2.build(connector()),
            https: builder.build(tls_connector(false)),
            http2: h2.build(tls_connector(true)),
        }
    }

    /// Sends one request to a backend over the right client.
    pub fn request(
        &self,
        kind: Upstream,
        req: http::Request<UpstreamBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        match kind {
            Upstream::Http1 => self.http1.request(req),
            Upstream::H2c => self.h2c.request(req),
            Upstream::Https => self.https.request(req),
            Upstream::Http2 => self.http2.request(req),
        }
    }
}

impl Default for Clients {
    fn default() -> Self {
        Clients::new()
    }
}
