//! Listeners: one accept loop per bound address, one task per connection, served by
//! hyper-util's auto builder (HTTP/1.1, and HTTP/2 by ALPN over TLS or by prior knowledge
//! in clear text). What a listener serves (its target proxy and TLS settings) is read from
//! the current table for each new connection, so reloads apply to new connections.

use super::{
    framing::{Observed, Verdicts},
    proxy, L7Error, Shared,
};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{net::TcpListener, task::JoinHandle};

/// A TLS handshake that takes longer than this is dropped (slow-client protection).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` and starts its accept loop; returns the task and the bound address.
pub fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
) -> Result<(JoinHandle<()>, SocketAddr), L7Error> {
    let bind = |e: std::io::Error| L7Error::Bind { addr, source: e };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
    std_listener.set_nonblocking(true).map_err(bind)?;
    let listener = TcpListener::from_std(std_listener).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let local = stream.local_addr().unwrap_or(addr);
                serve(shared, stream, peer, local, addr).await;
            });
        }
    });
    Ok((task, bound))
}

async fn serve(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    bound: SocketAddr,
) {
    let _open = super::stats::OpenConnection::new(&shared.tier);
    let route = {
        let table = shared.table.load();
        match table.routes.get(&bound) {
            Some(r) => r.clone(),
            None => return, // the listener was removed by a reload
        }
    };
    let verdicts = Arc::new(Verdicts::default());
    let limit = shared.opts.max_header_bytes + 1024;
    let conn = Arc::new(proxy::ConnInfo {
        client: peer,
        local,
        xff_pair: super::edge::forwarded_pair(peer.ip(), local.ip()),
        scheme: if route.tls.is_some() { "https" } else { "http" },
        proxy: route.proxy,
        verdicts: verdicts.clone(),
    });
    let builder = shared.server.clone();
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req))
    };
    let result = match route.tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let tls =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            builder
                .serve_connection_with_upgrades(
                    TokioIo::new(Observed::new(tls, limit, verdicts)),
                    svc,
                )
                .await
        }
        None => {
            builder
                .serve_connection_with_upgrades(
                    TokioIo::new(Observed::new(stream, limit, verdicts)),
                    svc,
                )
                .await
        }
    };
    if let Err(e) = result {
        // hyper answers unparseable or oversized heads itself; count them as refusals.
        if let Some(r) = super::stats::Refused::of_connection_error(&*e) {
            shared.tier.refused(r);
        }
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
