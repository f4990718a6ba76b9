//! The `/metrics` HTTP endpoint: a small hyper HTTP/1.1 server.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header::CONTENT_TYPE, server::conn::http1, service::service_fn, Method,
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, warn};

use super::{Metrics, MetricsError};

/// The OpenMetrics content type prometheus-client's text encoder produces.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper that has not sent its request head by then is cut off (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The running `/metrics` server; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; in-flight scrapes are cut.
    pub fn shutdown(self) {}
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the endpoint on `admin.metrics_listen` if set.
pub async fn serve_from_config(
    cfg: &crate::config::Config,
    metrics: Arc<Metrics>,
) -> Result<Option<MetricsServer>, MetricsError> {
    match &cfg.admin.metrics_listen {
        None => Ok(None),
        Some(a) => {
            let addr: SocketAddr = a.parse().map_err(|_| MetricsError::BadAddress(a.clone()))?;
            serve(addr, metrics).await.map(Some)
        }
    }
}

/// Binds `addr` and serves `GET /metrics` (HTTP/1.1) until the returned server is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(accept_loop(listener, metrics));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    // Connection tasks are owned by this set, so aborting the server also ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off briefly rather than spin.
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&metrics, req)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "metrics connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn handle(metrics: &Metrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, CONTENT_TYPE_OPENMETRICS, metrics.render())
        }
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    }
}
