//! The L7 Application Load Balancer tier (SEMANTICS.md, "L7 Application Load Balancer tier").
//!
//! Forwarding rules with a `target` bind listeners; a target HTTP(S) proxy hands requests to
//! a URL map; the URL map picks a backend service; the service picks a backend. The pipeline
//! per request is in [`proxy`]; the pure decisions live in [`router`], [`select`],
//! [`retry`], [`outlier`] and [`edge`], unit-tested without sockets.
//!
//! [`L7::start`] returns an [`L7Handle`]; [`L7Handle::reload`] builds a new [`table::Table`]
//! and swaps it atomically (arc-swap): requests already running keep the table they loaded,
//! open WebSockets are independent tasks, new requests see the new table.

pub mod access_log;
pub mod actions;
pub mod body;
pub mod capacity;
pub mod client;
pub mod edge;
pub mod framing;
pub mod listener;
pub mod outlier;
pub mod proxy;
pub mod retry;
pub mod route_match;
pub mod router;
pub mod schedule;
pub mod select;
pub mod stats;
pub mod table;
pub mod tls;
pub mod websocket;

use crate::{config::Config, health::HealthSnapshot};
use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, atomic::Ordering, Arc, Mutex},
    time::Duration,
};
use tokio::{sync::watch, task::JoinHandle};

pub use stats::{BackendStats, L7Stats, ServiceStats};

/// Why the L7 tier could not start or reload. A failed reload leaves the running
/// configuration as it was.
#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    /// A listener address could not be bound (in use, or not local).
    #[error("cannot listen on {addr}: {source} (is another process using the port, or is the address not on this host?)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A URL map does not compile or names a missing service.
    #[error("{0}")]
    Router(#[from] router::RouterError),
    /// A certificate or key could not be loaded.
    #[error("ssl_certificates.{certificate}: {message}")]
    Tls {
        certificate: String,
        message: String,
    },
    /// Another configuration problem, with its place.
    #[error("{place}: {message}")]
    Config { place: String, message: String },
}

/// Limits and timeouts of the client side (not part of the configuration file).
#[derive(Debug, Clone)]
pub struct L7Options {
    /// hyper's `header_read_timeout`: a client must send its whole request head within this.
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers) accepted; above it, 431.
    pub max_header_bytes: usize,
    /// Longest request target (path + query); above it, 414.
    pub max_url_bytes: usize,
}

impl Default for L7Options {
    fn default() -> Self {
        L7Options {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_url_bytes: 16 * 1024,
        }
    }
}

/// State shared by listeners and requests.
pub struct Shared {
    pub table: ArcSwap<table::Table>,
    pub registry: table::Registry,
    pub clients: client::Clients,
    pub opts: L7Options,
    pub server: auto::Builder<TokioExecutor>,
    pub in_flight: AtomicU64,
    /// Tier-wide counters: refusals by reason, connections, access-log drops.
    pub tier: stats::TierCounters,
    /// The request log, when `logging.access_log` is not "off".
    pub access_log: arc_swap::ArcSwapOption<access_log::AccessLog>,
    health: watch::Receiver<Arc<HealthSnapshot>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Mirrors the health snapshot into the backends' flags (done on every snapshot and
    /// reload, so the request path reads one atomic instead of a map keyed by strings).
    fn apply_health(&self) {
        let snap = self.health.borrow().clone();
        let table = self.table.load();
        for s in table.services.values() {
            for b in &s.selector.backends {
                b.healthy
                    .store(snap.is_healthy(&s.name, &b.name), Ordering::Relaxed);
            }
        }
    }
}

/// Entry point of the L7 tier.
pub struct L7;

/// A running L7 tier.
pub struct L7Handle {
    shared: Arc<Shared>,
    listeners: Mutex<BTreeMap<SocketAddr, (JoinHandle<()>, SocketAddr)>>,
    health_task: JoinHandle<()>,
}

impl L7 {
    /// Starts listeners for every L7 forwarding rule of `cfg`. Must run inside a tokio
    /// runtime.
    pub fn start(
        cfg: &Config,
        health: watch::Receiver<Arc<HealthSnapshot>>,
    ) -> Result<L7Handle, L7Error> {
        L7::start_with(cfg, health, L7Options::default())
    }

    /// [`L7::start`] with explicit client-side limits.
    pub fn start_with(
        cfg: &Config,
        health: watch::Receiver<Arc<HealthSnapshot>>,
        opts: L7Options,
    ) -> Result<L7Handle, L7Error> {
        let registry = table::Registry::default();
        let table = table::build(cfg, 1, &registry)?;
        let mut server = auto::Builder::new(TokioExecutor::new());
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(opts.header_read_timeout)
            .max_buf_size(opts.max_header_bytes.max(8192))
            .keep_alive(true);
        server
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(opts.max_header_bytes as u32);
        let tier = stats::TierCounters::default();
        let log = access_log::AccessLog::open(&cfg.logging, tier.log_dropped.clone())?;
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            registry,
            clients: client::Clients::new(),
            opts,
            server,
            in_flight: AtomicU64::new(0),
            tier,
            access_log: arc_swap::ArcSwapOption::from(log.map(Arc::new)),
            health: health.clone(),
        });
        shared.apply_health();
        let handle = L7Handle {
            health_task: tokio::spawn(watch_health(Arc::downgrade(&shared), health)),
            shared,
            listeners: Mutex::new(BTreeMap::new()),
        };
        handle.sync_listeners()?;
        Ok(handle)
    }
}

async fn watch_health(
    shared: std::sync::Weak<Shared>,
    mut rx: watch::Receiver<Arc<HealthSnapshot>>,
) {
    while rx.changed().await.is_ok() {
        let Some(s) = shared.upgrade() else { return };
        s.apply_health();
    }
}

impl L7Handle {
    /// Binds listeners the table has and the handle lacks; stops those it no longer has.
    /// New ones are bound first, so a failure changes nothing.
    fn sync_listeners(&self) -> Result<(), L7Error> {
        let wanted: Vec<SocketAddr> = self
            .shared
            .table
            .load()
            .listeners
            .iter()
            .map(|l| l.addr)
            .collect();
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut started = Vec::new();
        for addr in &wanted {
            if running.contains_key(addr) {
                continue;
            }
            match listener::spawn(self.shared.clone(), *addr) {
                Ok(l) => started.push((*addr, l)),
                Err(e) => {
                    for (_, (task, _)) in started {
                        task.abort();
                    }
                    return Err(e);
                }
            }
        }
        running.extend(started);
        running.retain(|addr, (task, _)| {
            let keep = wanted.contains(addr);
            if !keep {
                task.abort();
            }
            keep
        });
        Ok(())
    }

    /// Swaps in a new configuration atomically; on error the running one stays.
    pub fn reload(&self, cfg: &Config) -> Result<(), L7Error> {
        let old = self.shared.table.load_full();
        let new = Arc::new(table::build(
            cfg,
            old.generation + 1,
            &self.shared.registry,
        )?);
        // Bind new listeners before swapping so a bind failure leaves everything as it was.
        let wanted: Vec<SocketAddr> = new.listeners.iter().map(|l| l.addr).collect();
        {
            let running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            for addr in &wanted {
                if !running.contains_key(addr) {
                    if let Err(e) = std::net::TcpListener::bind(addr) {
                        return Err(L7Error::Bind {
                            addr: *addr,
                            source: e,
                        });
                    }
                }
            }
        }
        let log = self.prepare_access_log(&cfg.logging)?;
        self.shared.table.store(new);
        if let Some(log) = log {
            self.shared.access_log.store(log);
        }
        self.shared.apply_health();
        self.sync_listeners()
    }

    /// A new request log when `settings` differ from the running one's (`Some(None)`:
    /// turn it off); `None` when nothing changes.
    #[allow(clippy::option_option)]
    fn prepare_access_log(
        &self,
        settings: &crate::config::Logging,
    ) -> Result<Option<Option<Arc<access_log::AccessLog>>>, L7Error> {
        let current = self.shared.access_log.load();
        let running = current
            .as_ref()
            .map_or_else(crate::config::Logging::default, |l| l.settings.clone());
        if running == *settings {
            return Ok(None);
        }
        let log = access_log::AccessLog::open(settings, self.shared.tier.log_dropped.clone())?;
        Ok(Some(log.map(Arc::new)))
    }

    /// The addresses actually bound, per configured address (they differ for port 0).
    pub fn local_addrs(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        running.iter().map(|(a, (_, b))| (*a, *b)).collect()
    }

    /// The configured listeners with what is bound for each (for `lb status`).
    pub fn listener_info(&self) -> Vec<crate::admin::protocol::L7ListenerInfo> {
        let bound: BTreeMap<SocketAddr, SocketAddr> = self.local_addrs().into_iter().collect();
        let table = self.shared.table.load();
        table
            .listeners
            .iter()
            .map(|l| crate::admin::protocol::L7ListenerInfo {
                address: l.addr.to_string(),
                target_proxy: l.proxy.clone(),
                tls: l.tls,
                bound: bound.get(&l.addr).map(|b| b.to_string()),
            })
            .collect()
    }

    /// Counters and state of every service and backend.
    pub fn stats(&self) -> L7Stats {
        let table = self.shared.table.load();
        let now = outlier::now_ms();
        let mut services: Vec<ServiceStats> = table
            .services
            .values()
            .map(|s| {
                let (requests, classes, latency, retries) = s.counters.snapshot();
                let backends = s
                    .selector
                    .backends
                    .iter()
                    .zip(&s.config.backends)
                    .map(|(b, c)| BackendStats {
                        name: b.name.clone(),
                        address: b.addr.to_string(),
                        weight: c.weight,
                        capacity_scaler: c.capacity_scaler,
                        healthy: b.healthy.load(Ordering::Relaxed),
                        ejected: b.outlier.is_ejected(now),
                        ejections: b.outlier.ejections(),
                        in_flight: b.in_flight.load(Ordering::Relaxed),
                        requests: b.requests.load(Ordering::Relaxed),
                        responses_by_class: std::array::from_fn(|i| {
                            b.responses[i].load(Ordering::Relaxed)
                        }),
                    })
                    .collect();
                ServiceStats {
                    name: s.name.clone(),
                    protocol: format!("{:?}", s.config.protocol).to_uppercase(),
                    locality_lb_policy: format!("{:?}", s.selector.policy),
                    session_affinity: format!("{:?}", s.config.session_affinity),
                    requests,
                    retries,
                    responses_by_class: classes,
                    latency,
                    backends,
                }
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        L7Stats {
            listeners: table
                .listeners
                .iter()
                .map(|l| (l.addr.to_string(), l.proxy.clone()))
                .collect(),
            services,
            in_flight: self.shared.in_flight.load(Ordering::Relaxed),
            generation: table.generation,
            refused: self.shared.tier.refused_snapshot(),
            connections: self.shared.tier.connections.load(Ordering::Relaxed),
            connections_total: self.shared.tier.connections_total.load(Ordering::Relaxed),
            access_log_dropped: self.shared.tier.log_dropped.load(Ordering::Relaxed),
        }
    }

    /// What `/metrics` reads at every scrape (see [`crate::metrics::Metrics::register_l7`]);
    /// it holds the handle weakly, so a stopped tier reports an error instead of staying up.
    pub fn metrics_source(
        self: &Arc<Self>,
    ) -> impl Fn() -> Result<crate::metrics::L7Counters, crate::metrics::SourceError>
           + Send
           + Sync
           + 'static {
        let handle = Arc::downgrade(self);
        move || match handle.upgrade() {
            Some(h) => Ok(stats::counters(&h.stats())),
            None => Err("the L7 tier has stopped".into()),
        }
    }

    /// Stops accepting connections (open connections finish on their own).
    pub fn shutdown(&self) {
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (_, (task, _)) in std::mem::take(&mut *running) {
            task.abort();
        }
        self.health_task.abort();
    }
}

impl Drop for L7Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Whether a configuration has L7 forwarding rules (the agent starts the tier only then).
pub fn has_l7(cfg: &Config) -> bool {
    table::has_l7(cfg)
}

/// The agent's entry point: starts the tier when `cfg` has L7 forwarding rules. Without a
/// health receiver every backend counts as healthy (the shared contract's "no verdict yet").
pub fn start_if_configured(
    cfg: &Config,
    health: Option<watch::Receiver<Arc<HealthSnapshot>>>,
) -> Result<Option<L7Handle>, L7Error> {
    if !has_l7(cfg) {
        return Ok(None);
    }
    let health = health.unwrap_or_else(|| watch::channel(Arc::new(HealthSnapshot::default())).1);
    let handle = L7::start(cfg, health)?;
    for (configured, bound) in handle.local_addrs() {
        tracing::info!(%configured, %bound, "L7 listener started");
    }
    Ok(Some(handle))
}

/// The runtime of `lb serve-l7`: one worker per CPU this process may use; on a single CPU
/// (e.g. pinned with taskset) a current-thread runtime, which skips work-stealing
/// bookkeeping that one worker cannot use.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

/// `lb serve-l7`: runs the L7 tier from a configuration file until SIGINT or SIGTERM.
pub async fn serve_forever(path: &std::path::Path) -> anyhow::Result<()> {
    let cfg = crate::config::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
    let Some(handle) = start_if_configured(&cfg, None)? else {
        anyhow::bail!(
            "{}: no forwarding rule has a target HTTP(S) proxy; nothing to serve",
            path.display()
        );
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    handle.shutdown();
    Ok(())
}
