//! Listeners: one accept loop per bound address, one task per connection, served by
//! hyper-util's auto builder (HTTP/1.1, and HTTP/2 by ALPN over TLS or by prior knowledge
//! in clear text); a plain-text HTTP/1.1 connection is served in rounds and, idle between
//! requests, leaves its task for its worker's lot of parked connections ([`Lots`],
//! [`super::park`]). What a listener serves (its target proxy and TLS settings) and its
//! limits are read from the current table and settings for each new connection, so reloads
//! apply to new connections.
//!
//! Each connection holds a permit of the listener's and the tier's connection caps
//! ([`super::limits`]); over a cap it is closed at once. Its handshake, first request, heads
//! and idle time are timed by [`super::idle`].

use super::{
    framing::{Observed, Verdicts},
    idle::{self, Activity, Timeouts},
    limits::{ClientSettings, Permit},
    park::{self, Wake},
    parked::Lot,
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

/// Binds `addr` (done before a change commits, so a port in use refuses the change). The
/// socket has SO_REUSEPORT, so that each L7 worker can listen on a socket of its own bound
/// to the same address ([`spawn`]); a port held by a socket without it still refuses.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, L7Error> {
    reuseport_listener(addr).map_err(|e| L7Error::Bind { addr, source: e })
}

/// A listening, non-blocking socket on `addr` with SO_REUSEADDR (as std's `bind` sets it)
/// and SO_REUSEPORT.
fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listening socket on Linux (tested
    // below), which spares a setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    // SAFETY: the descriptor is the bound socket just made; the listener takes ownership.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(socket.into_raw_fd()) };
    // SAFETY: listen(2) on a descriptor the listener owns.
    if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Pending connections per listening socket (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: libc::c_int = 1024;

/// Starts the accept loop of a listener bound by [`bind`] for configured address `addr`;
/// returns the task and the bound address. With L7 workers ([`super::workers`]) every
/// worker accepts on a socket of its own bound to the same address (SO_REUSEPORT: the
/// kernel spreads new connections over them) and serves what it accepts, so a connection
/// never changes threads; the returned task owns those loops (aborting it stops them all).
pub fn spawn(
    shared: Arc<Shared>,
    addr: SocketAddr,
    std_listener: std::net::TcpListener,
) -> Result<(JoinHandle<()>, SocketAddr), L7Error> {
    let bind = |e: std::io::Error| L7Error::Bind { addr, source: e };
    let bound = std_listener.local_addr().map_err(bind)?;
    let open = Arc::new(AtomicUsize::new(0));
    let Some(workers) = super::workers::handles() else {
        let listener = TcpListener::from_std(std_listener).map_err(bind)?;
        let task = tokio::spawn(accept_loop(shared, addr, bound, listener, open));
        return Ok((task, bound));
    };
    // The first worker takes the socket bound at prepare time, the others bind their own
    // to the address it got (the same port also when the configuration asked for port 0).
    let mut sockets = vec![std_listener];
    for _ in 1..workers.len() {
        sockets.push(reuseport_listener(bound).map_err(bind)?);
    }
    let mut loops = Vec::with_capacity(workers.len());
    for (worker, socket) in workers.iter().zip(sockets) {
        let (shared, open) = (shared.clone(), open.clone());
        loops.push(super::workers::AbortOnDrop(worker.spawn(async move {
            // Registered with this worker's I/O driver, so accepting happens here.
            match TcpListener::from_std(socket) {
                Ok(listener) => accept_loop(shared, addr, bound, listener, open).await,
                Err(e) => tracing::error!(%addr, error = %e, "L7 worker cannot listen"),
            }
        })));
    }
    let task = tokio::spawn(async move {
        let _loops = loops;
        std::future::pending::<()>().await
    });
    Ok((task, bound))
}

/// Accepts connections until aborted and serves each on its own task of this runtime.
/// `addr` is the configured address (the routing key), `bound` the socket's.
async fn accept_loop(
    shared: Arc<Shared>,
    addr: SocketAddr,
    bound: SocketAddr,
    listener: TcpListener,
    open: Arc<AtomicUsize>,
) {
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
        let shared = shared.clone();
        tokio::spawn(async move {
            // A listener on one address is the connection's local address: no
            // getsockname per connection; a wildcard one asks the socket.
            let local = if bound.ip().is_unspecified() {
                stream.local_addr().unwrap_or(bound)
            } else {
                bound
            };
            serve(shared, stream, peer, local, addr, permit).await;
        });
    }
}

/// What a client connection keeps for its whole life, across HTTP/1.1 rounds: all a parked
/// connection holds besides its socket ([`super::parked`]). Counted open while it lives.
pub struct Conn {
    shared: Arc<Shared>,
    settings: Arc<ClientSettings>,
    info: Arc<proxy::ConnInfo>,
    timeouts: Timeouts,
}

impl Conn {
    fn new(
        shared: Arc<Shared>,
        route: &super::table::ListenerRoute,
        peer: SocketAddr,
        local: SocketAddr,
        permit: Permit,
    ) -> Conn {
        shared.tier.connection_opened();
        let settings = shared.limits.load_full();
        let timeouts = Timeouts {
            first_request: settings.first_request_timeout,
            header_read: settings.header_read_timeout,
            keep_alive: settings.keep_alive(&route.proxy),
        };
        // The activity is shared with the connection's I/O wrapper, so the permit it holds
        // lasts as long as the socket, also after a WebSocket upgrade hands the socket on.
        let info = Arc::new(proxy::ConnInfo {
            client: peer,
            local,
            xff_pair: super::edge::forwarded_pair(peer.ip(), local.ip()),
            scheme: if route.tls.is_some() { "https" } else { "http" },
            proxy: route.proxy.clone(),
            verdicts: Arc::new(Verdicts::default()),
            activity: Arc::new(Activity::holding(Some(permit))),
        });
        Conn {
            shared,
            settings,
            info,
            timeouts,
        }
    }

    fn activity(&self) -> &Arc<Activity> {
        &self.info.activity
    }

    /// The I/O wrapper that observes the client's bytes ([`Observed`]).
    fn observe<T>(&self, io: T) -> Observed<T> {
        let limit = self.shared.opts.max_header_bytes + 1024;
        Observed::new(
            io,
            limit,
            self.info.verdicts.clone(),
            self.info.activity.clone(),
        )
    }

    /// The proxy's request service for this connection.
    fn service(&self) -> impl Serve {
        let (shared, conn) = (self.shared.clone(), self.info.clone());
        // `handle`'s future itself, not wrapped in another: hyper moves it into its slot
        // (HTTP/1.1) or a task (HTTP/2), and a wrapper would hold and move it again.
        service_fn(move |req| proxy::handle(shared.clone(), conn.clone(), req))
    }

    /// Notes how the connection's serving ended.
    fn ended(&self, result: Served) {
        let peer = self.info.client;
        match result {
            Ok(Err(e)) => {
                // hyper answers unparseable or oversized heads itself; count them as
                // refusals.
                if let Some(r) = super::stats::Refused::of_connection_error(&*e) {
                    self.shared.tier.refused(r);
                }
                tracing::debug!(%peer, error = %e, "connection ended with an error")
            }
            Err(why) => tracing::debug!(%peer, ?why, "connection closed by its timer"),
            Ok(Ok(())) => {}
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.tier.connection_closed();
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    bound: SocketAddr,
    permit: Permit,
) {
    let route = {
        let table = shared.table.load();
        match table.routes.get(&bound) {
            Some(r) => r.clone(),
            None => return, // the listener was removed by a reload
        }
    };
    let conn = Conn::new(shared, &route, peer, local, permit);
    // The task's future stays small: the TLS path (handshake and all) and HTTP/2 are boxed;
    // an idle HTTP/1.1 connection leaves its task altogether (see `parked`).
    let result = match route.tls {
        Some(cfg) => match Box::pin(serve_tls(&conn, cfg, stream)).await {
            Some(r) => r,
            None => return,
        },
        None => {
            let io = conn.observe(stream);
            match serve_plain(&conn, io).await {
                Plain::Ended(r) => r,
                Plain::Http1(io) => return serve_h1(conn, io).await,
            }
        }
    };
    conn.ended(result);
}
/// What a connection's serving ended with: hyper's result, or the watchdog's reason.
type Served = Result<Result<(), Box<dyn std::error::Error + Send + Sync>>, idle::Expired>;

/// The HTTP/2 connection preface; a plain-text connection starting with it is HTTP/2
/// with prior knowledge.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The request service a connection is served with (plain text or TLS alike): the proxy's
/// service, whose futures may move between polls.
trait Serve:
    hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
        Response = hyper::Response<park::Tracked>,
        Error = proxy::BrokenChunk,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<S> Serve for S where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<park::Tracked>,
            Error = proxy::BrokenChunk,
            Future: Send + 'static,
        > + Clone
        + Send
        + Unpin
        + 'static
{
}

/// How the start of a plain-text connection went.
enum Plain {
    /// It ended (closed before a request, or HTTP/2 served to its end).
    Ended(Served),
    /// It speaks HTTP/1.1: to be served in rounds ([`serve_h1`]).
    Http1(Observed<tokio::net::TcpStream>),
}

/// A plain-text connection's first bytes: HTTP/2 (prior knowledge, or bytes that may still
/// become its preface) goes to hyper-util's auto builder for good; HTTP/1.1 is handed back.
async fn serve_plain(conn: &Conn, mut io: Observed<tokio::net::TcpStream>) -> Plain {
    let (activity, timeouts) = (conn.activity(), conn.timeouts);
    let first = idle::drive(park::FirstBytes::new(&mut io), activity, timeouts, |p| {
        p.close()
    })
    .await;
    let first = match first {
        Ok(first) => first,
        Err(why) => return Plain::Ended(Err(why)),
    };
    let Some(first) = first.filter(|b| !b.is_empty()) else {
        return Plain::Ended(Ok(Ok(()))); // closed by the client or the watchdog
    };
    // Only the first bytes up to the preface's length decide (the read may hold more).
    let h2 = H2_PREFACE.starts_with(&first[..first.len().min(H2_PREFACE.len())]);
    io.rewind(first); // served to hyper first
    if !h2 {
        return Plain::Http1(io);
    }
    let h2 = conn
        .settings
        .server
        .serve_connection_with_upgrades(TokioIo::new(io), conn.service());
    Plain::Ended(
        Box::pin(idle::drive(h2, activity, timeouts, |c| {
            c.graceful_shutdown()
        }))
        .await,
    )
}

/// Serves an HTTP/1.1 connection in rounds until it ends, or parks it when it is idle
/// between requests ([`park`]): its task ends and the worker's lot holds it
/// ([`Lots::park`]) until bytes arrive, which start a new task here.
async fn serve_h1(conn: Conn, mut io: Observed<tokio::net::TcpStream>) {
    loop {
        let hyper_conn = conn
            .settings
            .http1
            .serve_connection(TokioIo::new(io), conn.service())
            .with_upgrades();
        let round = park::UntilIdle::new(hyper_conn, conn.activity().clone());
        let round = Box::pin(idle::drive(round, conn.activity(), conn.timeouts, |r| {
            if let Some(c) = r.conn() {
                c.graceful_shutdown()
            }
        }))
        .await;
        let hyper_conn = match round {
            Err(why) => return conn.ended(Err(why)),
            Ok(park::Round::Done(r)) => return conn.ended(Ok(r.map_err(Into::into))),
            Ok(park::Round::Idle(c)) => c,
        };
        let Some(hyper::server::conn::http1::Parts {
            io: parts,
            read_buf,
            ..
        }) = hyper_conn.into_parts()
        else {
            return; // upgraded: the upgrade owns the socket now
        };
        io = parts.into_inner();
        if !read_buf.is_empty() {
            io.rewind(read_buf); // hyper read ahead: serve it at once
            continue;
        }
        // Even empty, the buffer still owns hyper's 8 KiB allocation: not kept while parked.
        drop(read_buf);
        return park_h1(conn, io.into_inner());
    }
}

/// Parks an idle HTTP/1.1 connection in its worker's lot, until bytes arrive or its
/// deadline (keep-alive, or first request) passes.
fn park_h1(conn: Conn, stream: tokio::net::TcpStream) {
    conn.info.verdicts.shed();
    let deadline = conn.activity().parked_deadline(&conn.timeouts);
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer = %conn.info.client, error = %e, "cannot park a connection");
            return;
        }
    };
    let shared = conn.shared.clone();
    if let Err((stream, conn)) = shared.parked.park(stream, deadline, conn) {
        // No lot (no descriptor for its epoll set): wait in a task of its own.
        tokio::spawn(serve_when_readable(conn, stream));
    }
}

/// Serves a parked connection again once its socket is readable: the lot saw it readable
/// (or, without a lot, this task waits for it). Registered anew with tokio's I/O driver,
/// the socket is not known readable until the driver's next turn says so, and hyper would
/// find nothing to read before then and the round could park again at once: so the round
/// starts once tokio sees the socket readable too, under the watchdog (its deadlines hold
/// here as well).
async fn serve_when_readable(conn: Conn, stream: std::net::TcpStream) {
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(peer = %conn.info.client, error = %e, "cannot serve a parked connection");
            return;
        }
    };
    let io = conn.observe(stream);
    match wait_readable(io.get_ref(), conn.activity(), conn.timeouts).await {
        Ok(Wake::Readable) => serve_h1(conn, io).await,
        Ok(Wake::Close) => {}
        Err(why) => conn.ended(Err(why)),
    }
}

/// Every L7 worker's lot of parked HTTP/1.1 connections (one more for connections served
/// outside workers), each made on first use on its worker's runtime.
#[derive(Default)]
pub struct Lots(std::sync::Mutex<Vec<Option<Arc<Lot<Conn>>>>>);

impl Lots {
    /// Parks `stream` in the lot of the worker running this; gives it back when no lot can
    /// be had.
    fn park(
        &self,
        stream: std::net::TcpStream,
        deadline: tokio::time::Instant,
        conn: Conn,
    ) -> Result<(), (std::net::TcpStream, Conn)> {
        let lot = {
            let mut lots = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let i = super::workers::id();
            if lots.len() <= i {
                lots.resize(i + 1, None);
            }
            match &lots[i] {
                Some(lot) if lot.alive() => lot.clone(),
                _ => {
                    let ready: super::parked::Ready<Conn> = Box::new(|stream, conn| {
                        tokio::spawn(serve_when_readable(conn, stream));
                    });
                    match Lot::start(ready) {
                        Ok(lot) => {
                            lots[i] = Some(lot.clone());
                            lot
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hold parked connections");
                            return Err((stream, conn));
                        }
                    }
                }
            }
        };
        lot.park(stream, deadline, conn)
    }
}

/// A TLS connection: the handshake under the first-request deadline, then hyper-util's
/// auto builder for the connection's whole life (rustls' state cannot be taken apart and
/// rebuilt, so TLS connections are not parked). `None` when the handshake failed or timed
/// out.
async fn serve_tls(
    conn: &Conn,
    cfg: Arc<rustls::ServerConfig>,
    stream: tokio::net::TcpStream,
) -> Option<Served> {
    let peer = conn.info.client;
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let first = conn.timeouts.first_request;
    let tls = match tokio::time::timeout(first, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let io = TokioIo::new(conn.observe(tls));
    let h = conn
        .settings
        .server
        .serve_connection_with_upgrades(io, conn.service());
    Some(idle::drive(h, conn.activity(), conn.timeouts, |c| c.graceful_shutdown()).await)
}

/// Waits, holding only the socket, until bytes arrive or the watchdog closes the
/// connection.
async fn wait_readable(
    stream: &tokio::net::TcpStream,
    activity: &Activity,
    timeouts: Timeouts,
) -> Result<Wake, idle::Expired> {
    idle::drive(park::Parked::new(stream), activity, timeouts, |p| p.close()).await
}

#[cfg(test)]
mod tests {
    /// What the accept loop counts on instead of a system call per connection: accepted
    /// sockets have TCP_NODELAY from the listener, and the local address of a listener
    /// bound to one address.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_address() {
        let l = super::reuseport_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let bound = l.local_addr().unwrap();
        let _c = std::net::TcpStream::connect(bound).unwrap();
        l.set_nonblocking(false).unwrap();
        let (a, _) = l.accept().unwrap();
        assert!(
            a.nodelay().unwrap(),
            "TCP_NODELAY inherited from the listener"
        );
        assert_eq!(a.local_addr().unwrap(), bound);
    }

    /// What a parked connection holds, by type (see README, "Resident memory per idle
    /// connection"): printed with `--nocapture`, bounded so growth is noticed.
    #[test]
    fn a_parked_connection_stays_small() {
        use std::mem::size_of;
        let sizes = [
            ("Conn", size_of::<super::Conn>()),
            ("ConnInfo", size_of::<super::proxy::ConnInfo>()),
            ("Activity", size_of::<super::Activity>()),
            ("Verdicts", size_of::<super::Verdicts>()),
        ];
        eprintln!("{sizes:?}");
        let total: usize = sizes.iter().map(|(_, n)| n).sum();
        assert!(total < 512, "{sizes:?}");
    }
}
