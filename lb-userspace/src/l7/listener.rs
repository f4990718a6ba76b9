//! Listeners: one accept loop per bound address, one task per connection, served by
//! hyper-util's auto builder (HTTP/1.1, and HTTP/2 by ALPN over TLS or by prior knowledge
//! in clear text). What a listener serves (its target proxy and TLS settings) and its limits
//! are read from the current table and settings for each new connection, so reloads apply
//! to new connections.
//!
//! Each connection holds a permit of the listener's and the tier's connection caps
//! ([`super::limits`]); over a cap it is closed at once. Its handshake, first request, heads
//! and idle time are timed by [`super::idle`].

use super::{
    framing::{Observed, Verdicts},
    idle::{self, Activity, Timeouts},
    limits::Permit,
    proxy, L7Error, Shared,
};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle};

/// Binds `addr` (done before a change commits, so a port in use refuses the change).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, L7Error> {
    let fail = |e: std::io::Error| L7Error::Bind { addr, source: e };
    let l = std::net::TcpListener::bind(addr).map_err(fail)?;
    l.set_nonblocking(true).map_err(fail)?;
    Ok(l)
}

/// Starts the accept loop of a listener bound by [`bind`] for configured address `addr`;
/// returns the task and the bound address.
pub fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    std_listener: std::net::TcpListener,
) -> Result<(JoinHandle<()>, SocketAddr), L7Error> {
    let bind = |e: std::io::Error| L7Error::Bind { addr, source: e };
    let listener = TcpListener::from_std(std_listener).map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    let open = Arc::new(AtomicUsize::new(0));
    let task = tokio::spawn(async move {
        let mut refused = 0u64;
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
            let max = shared.limits.load().max_connections_per_listener;
            let Some(permit) = shared.budget.admit(&open, max) else {
                // Over a cap: close at once (the client sees the connection end) rather
                // than leave it waiting in the backlog.
                refused += 1;
                if refused.is_power_of_two() {
                    tracing::warn!(%addr, refused, max, tier_max = shared.budget.max_total(), "connection refused: connection cap reached");
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            tokio::spawn(async move {
                let local = stream.local_addr().unwrap_or(addr);
                serve(shared, stream, peer, local, addr, permit).await;
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
    permit: Permit,
) {
    let _open = super::stats::OpenConnection::new(&shared.tier);
    let route = {
        let table = shared.table.load();
        match table.routes.get(&bound) {
            Some(r) => r.clone(),
            None => return, // the listener was removed by a reload
        }
    };
    let settings = shared.limits.load_full();
    let timeouts = Timeouts {
        first_request: settings.first_request_timeout,
        header_read: settings.header_read_timeout,
        keep_alive: settings.keep_alive(&route.proxy),
    };
    // The activity is shared with the connection's I/O wrapper, so the permit it holds
    // lasts as long as the socket, also after a WebSocket upgrade hands the socket on.
    let activity = Arc::new(Activity::holding(Some(permit)));
    let verdicts = Arc::new(Verdicts::default());
    let limit = shared.opts.max_header_bytes + 1024;
    let conn = Arc::new(proxy::ConnInfo {
        client: peer,
        local,
        xff_pair: super::edge::forwarded_pair(peer.ip(), local.ip()),
        scheme: if route.tls.is_some() { "https" } else { "http" },
        proxy: route.proxy,
        verdicts: verdicts.clone(),
        activity: activity.clone(),
    });
    let builder = &settings.server;
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req))
    };
    let result = match route.tls {
        Some(cfg) => {
            // The handshake counts against the first-request deadline.
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let tls =
                match tokio::time::timeout(timeouts.first_request, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let io = TokioIo::new(Observed::new(tls, limit, verdicts, activity.clone()));
            let conn = builder.serve_connection_with_upgrades(io, svc);
            idle::drive(conn, &activity, timeouts, |c| c.graceful_shutdown()).await
        }
        None => {
            let io = TokioIo::new(Observed::new(stream, limit, verdicts, activity.clone()));
            let conn = builder.serve_connection_with_upgrades(io, svc);
            idle::drive(conn, &activity, timeouts, |c| c.graceful_shutdown()).await
        }
    };
    match result {
        Ok(Err(e)) => {
            // hyper answers unparseable or oversized heads itself; count them as refusals.
            if let Some(r) = super::stats::Refused::of_connection_error(&*e) {
                shared.tier.refused(r);
            }
            tracing::debug!(%peer, error = %e, "connection ended with an error")
        }
        Err(why) => tracing::debug!(%peer, ?why, "connection closed by its timer"),
        Ok(Ok(())) => {}
    }
}
