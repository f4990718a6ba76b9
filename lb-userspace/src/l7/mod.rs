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
pub mod backend_count;
pub mod body;
pub mod capacity;
pub mod client;
pub mod edge;
pub mod framing;
pub mod idle;
pub mod limits;
pub mod listener;
pub mod outlier;
pub mod park;
pub mod parked;
pub mod proxy;
// The URL-map modules live in `routing`; these names keep `l7::router` and friends
// readable where the proxy uses them.
pub use crate::routing::{actions, retry, route_match, router};
pub mod schedule;
pub mod select;
pub mod stats;
pub mod table;
pub mod tls;
pub mod websocket;
pub mod workers;

use crate::{
    config::Config,
    health::HealthSnapshot,
    model::{L7Admission, L7Admit, Model},
};
use arc_swap::ArcSwap;
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, atomic::Ordering, Arc, Mutex},
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

/// Limits of the client side that are not part of the configuration file (the timeouts
/// and connection caps are, in `[l7]` and the target proxies: see [`limits`]).
#[derive(Debug, Clone)]
pub struct L7Options {
    /// Largest request head (request line + headers) accepted; above it, 431.
    pub max_header_bytes: usize,
    /// Longest request target (path + query); above it, 414.
    pub max_url_bytes: usize,
}

impl Default for L7Options {
    fn default() -> Self {
        L7Options {
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
    /// Client-side timeouts and hyper settings of the current configuration.
    pub limits: ArcSwap<limits::ClientSettings>,
    /// Client connections open, against the descriptor budget.
    pub budget: limits::Budget,
    pub in_flight: AtomicU64,
    /// The agent's last decision per backend (health, drain, failover); applied to every
    /// table it swaps in, so a new table never starts from stale flags.
    admission: Mutex<Arc<L7Admission>>,
    /// Tier-wide counters: refusals by reason, connections, access-log drops.
    pub tier: stats::TierCounters,
    /// The request log, when `logging.access_log` is not "off".
    pub access_log: arc_swap::ArcSwapOption<access_log::AccessLog>,
    /// Idle HTTP/1.1 connections held without a task, one lot per L7 worker
    /// ([`parked`], [`listener::Lots`]).
    pub parked: listener::Lots,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Mirrors the admission into the backends' atomics, so the request path reads one
    /// atomic instead of a map keyed by strings. A backend the admission does not name
    /// serves (no verdict yet).
    fn apply_admission(&self, table: &table::Table) {
        let adm = self
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for s in table.services.values() {
            for b in &s.selector.backends {
                let a = adm
                    .get(&crate::ids::BackendKey::new(s.name.clone(), b.name.clone()))
                    .copied()
                    .unwrap_or(L7Admit {
                        serving: true,
                        healthy: true,
                        evicted: false,
                    });
                b.healthy.store(a.healthy, Ordering::Relaxed);
                b.serving.store(a.serving, Ordering::Relaxed);
                b.evicted
                    .send_if_modified(|e| std::mem::replace(e, a.evicted) != a.evicted);
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
    health_task: Option<JoinHandle<()>>,
}

/// A configuration change made ready for the L7 tier: the routing table is built (URL maps
/// compiled, certificates read) and new listeners are bound, so [`L7Handle::commit`]
/// cannot fail. Dropping it closes those listeners and changes nothing.
pub struct Prepared {
    table: Arc<table::Table>,
    settings: Arc<limits::ClientSettings>,
    /// A new request log when `[logging]` changed (opened here: an unwritable path refuses).
    log: Option<Option<Arc<access_log::AccessLog>>>,
    bound: Vec<(SocketAddr, std::net::TcpListener)>,
}

impl L7 {
    /// Starts listeners for every L7 forwarding rule of `cfg`, with backends admitted by the
    /// health checker's verdicts alone (no drain, failover or overrides: the agent uses
    /// [`L7::start_driven`]). Must run inside a tokio runtime.
    pub fn start(
        cfg: &Model,
        health: watch::Receiver<Arc<HealthSnapshot>>,
    ) -> Result<L7Handle, L7Error> {
        L7::start_with(cfg, health, L7Options::default())
    }

    /// [`L7::start`] with explicit client-side limits.
    pub fn start_with(
        cfg: &Model,
        health: watch::Receiver<Arc<HealthSnapshot>>,
        opts: L7Options,
    ) -> Result<L7Handle, L7Error> {
        let mut handle = L7::start_driven(cfg, opts)?;
        handle.set_admission(Arc::new(admission_from_health(cfg, &health.borrow())));
        let cfg = cfg.config().clone();
        handle.health_task = Some(tokio::spawn(watch_health(
            Arc::downgrade(&handle.shared),
            cfg,
            health,
        )));
        Ok(handle)
    }

    /// Starts the tier with every backend serving until [`L7Handle::set_admission`] says
    /// otherwise: the agent's way, which decides admission from health, overrides and the
    /// failover policy for both tiers at once.
    pub fn start_driven(cfg: &Model, opts: L7Options) -> Result<L7Handle, L7Error> {
        let registry = table::Registry::default();
        let table = table::build(cfg, 1, &registry)?;
        registry.retain(&table);
        // Descriptors: raise the soft limit, then split what is left after a reserve for
        // health checks, the admin socket and metrics between clients and backends.
        let nofile = limits::raise_nofile();
        let budget = limits::connection_budget(nofile);
        tracing::info!(
            nofile,
            budget,
            "L7 connection budget (clients, and as many backend connections)"
        );
        let clients = client::Clients::new();
        clients.set_max_backend_connections(budget);
        let tier = stats::TierCounters::default();
        let log = access_log::AccessLog::open(&cfg.logging, tier.log_dropped.clone())?;
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(table),
            registry,
            clients,
            limits: ArcSwap::from_pointee(limits::ClientSettings::new(cfg, opts.max_header_bytes)),
            budget: limits::Budget::new(budget),
            opts,
            in_flight: AtomicU64::new(0),
            admission: Mutex::new(Arc::new(L7Admission::new())),
            tier,
            access_log: arc_swap::ArcSwapOption::from(log.map(Arc::new)),
            parked: listener::Lots::default(),
        });
        let handle = L7Handle {
            shared,
            listeners: Mutex::new(BTreeMap::new()),
            health_task: None,
        };
        let first = Prepared {
            table: handle.shared.table.load_full(),
            settings: handle.shared.limits.load_full(),
            log: None,
            bound: handle.bind_new(&handle.shared.table.load())?,
        };
        handle.commit(first);
        Ok(handle)
    }
}

/// Admission from health verdicts alone (the standalone tier of [`L7::start`]).
fn admission_from_health(cfg: &Config, snap: &HealthSnapshot) -> L7Admission {
    crate::model::l7_admission(cfg, &|svc, i| crate::model::BackendState {
        health: Some(snap.is_healthy(svc, &cfg.backend_services[svc].backends[i].display_name())),
        ..Default::default()
    })
}

async fn watch_health(
    shared: std::sync::Weak<Shared>,
    cfg: Config,
    mut rx: watch::Receiver<Arc<HealthSnapshot>>,
) {
    while rx.changed().await.is_ok() {
        let Some(s) = shared.upgrade() else { return };
        let adm = admission_from_health(&cfg, &rx.borrow_and_update());
        *s.admission.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(adm);
        s.apply_admission(&s.table.load());
    }
}

impl L7Handle {
    /// Binds the listeners `table` has and the handle lacks.
    fn bind_new(
        &self,
        table: &table::Table,
    ) -> Result<Vec<(SocketAddr, std::net::TcpListener)>, L7Error> {
        let running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let mut bound = Vec::new();
        for l in &table.listeners {
            if !running.contains_key(&l.addr) && !bound.iter().any(|(a, _)| *a == l.addr) {
                bound.push((l.addr, listener::bind(l.addr)?));
            }
        }
        Ok(bound)
    }

    /// Everything of a change that can fail: the table is built and new listeners bound.
    /// Nothing running changes.
    pub fn prepare(&self, cfg: &Model) -> Result<Prepared, L7Error> {
        let generation = self.shared.table.load().generation + 1;
        let table = table::build(cfg, generation, &self.shared.registry)?;
        let log = self.prepare_access_log(&cfg.logging)?;
        let bound = self.bind_new(&table)?;
        Ok(Prepared {
            log,
            table: Arc::new(table),
            settings: Arc::new(limits::ClientSettings::new(
                cfg,
                self.shared.opts.max_header_bytes,
            )),
            bound,
        })
    }

    /// Swaps a prepared change in: admission applied to its backends first, then the
    /// table, then listeners started and removed ones stopped. Requests already running
    /// keep the table they loaded; backends the new table dropped are evicted after their
    /// service's draining timeout.
    pub fn commit(&self, p: Prepared) {
        let old = self.shared.table.load_full();
        self.shared.apply_admission(&p.table);
        self.shared.limits.store(p.settings);
        if let Some(log) = p.log {
            self.shared.access_log.store(log);
        }
        self.shared.table.store(p.table.clone());
        self.shared.registry.retain(&p.table);
        for (backend, timeout) in table::removed_backends(&old, &p.table) {
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                backend.evicted.send_replace(true);
            });
        }
        let mut running = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        for (addr, l) in p.bound {
            match listener::spawn(self.shared.clone(), addr, l) {
                Ok(task) => {
                    running.insert(addr, task);
                }
                // Registering an already bound socket with the runtime fails only when the
                // process is out of resources; the rest of the change stands.
                Err(e) => tracing::error!(error = %e, "L7 listener could not start"),
            }
        }
        running.retain(|addr, (task, _)| {
            let keep = p.table.listeners.iter().any(|l| l.addr == *addr);
            if !keep {
                task.abort();
            }
            keep
        });
    }

    /// Swaps in a new configuration atomically; on error the running one stays.
    pub fn reload(&self, cfg: &Model) -> Result<(), L7Error> {
        let p = self.prepare(cfg)?;
        self.commit(p);
        Ok(())
    }

    /// Takes the agent's decision per backend and applies it to the running table.
    pub fn set_admission(&self, adm: Arc<L7Admission>) {
        *self
            .shared
            .admission
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = adm;
        self.shared.apply_admission(&self.shared.table.load());
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
    pub fn listener_info(&self) -> Vec<stats::L7ListenerInfo> {
        let bound: BTreeMap<SocketAddr, SocketAddr> = self.local_addrs().into_iter().collect();
        let table = self.shared.table.load();
        table
            .listeners
            .iter()
            .map(|l| stats::L7ListenerInfo {
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
                        errors: b.errors.load(Ordering::Relaxed),
                        serving: b.serving.load(Ordering::Relaxed),
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
        if let Some(t) = &self.health_task {
            t.abort();
        }
    }
}

impl Drop for L7Handle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The runtime of `lb run`, a current-thread runtime for the agent (admin socket, health
/// checks, reloads, accept loops). With more than one CPU this process may use (e.g.
/// `taskset -c 0-1`), client connections are served by one L7 worker thread per CPU
/// ([`workers`]); on one CPU they run on this runtime too.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    workers::start(cpus)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
