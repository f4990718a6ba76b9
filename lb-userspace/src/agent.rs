//! The long-running agent: loads (or adopts) the dataplane, programs it from the
//! configuration, and keeps it in step. One task owns the [`state::Agent`]; every trigger
//! (start, timer, health event, admin request, reload) reaches it through `select!`, so
//! changes are serialized and each goes through the same reconcile.
//!
//! Restarts keep flows: the maps and the XDP link are pinned (see `dataplane::loader`), the
//! programmer adopts them, and the first reconcile only writes what differs.

pub mod adopt;
pub mod announce;
pub mod lock;
pub mod notify;
pub mod overrides;
pub mod persist;
pub mod state;
#[cfg(test)]
mod tests;

use anyhow::{Context, Result};
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::{
    admin,
    config::Config,
    dataplane::{
        loader::{self, Sizes},
        neighbor,
        plan::L4Plan,
        programmer::{Assignment, Programmer},
        stats::Counters,
    },
    health::HealthChecker,
    metrics::{self, BackendCounters, DataplaneCounters, Metrics, SourceError, VipCounters},
};
use lb_common::{BackendStats, VipStats};
use state::{Agent, L4Port, L7Port};

/// How often the agent reconciles without a trigger: resolves pending MACs and notices
/// drain timeouts (a drain's own deadline also wakes it).
const TICK: Duration = Duration::from_millis(250);

/// How long one read of the IPv6 neighbour table serves: reading it runs `ip`, so every
/// IPv6 backend of a reconcile (4 a second) shares one read a second.
const NDP_TABLE_TTL: Duration = Duration::from_secs(1);

/// Resolves backend MACs: configured, else the neighbour table, provoking ARP or NDP when
/// unknown.
#[derive(Default)]
pub struct MacCache {
    known: BTreeMap<IpAddr, [u8; 6]>,
    /// The last read of the IPv6 neighbour table, and when it was made.
    ndp: Option<(Instant, String)>,
}

impl MacCache {
    pub fn get(&mut self, addr: IpAddr, configured: Option<crate::ids::Mac>) -> Option<[u8; 6]> {
        if let Some(m) = configured {
            return Some(m);
        }
        let found = match addr {
            IpAddr::V4(a) => neighbor::lookup_v4(a),
            IpAddr::V6(a) => {
                let fresh = self
                    .ndp
                    .as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < NDP_TABLE_TTL);
                if !fresh {
                    self.ndp = Some((Instant::now(), neighbor::ndp_table().unwrap_or_default()));
                }
                let table = self.ndp.as_ref().map_or("", |(_, t)| t.as_str());
                neighbor::parse_ip_neigh_json(table, a)
            }
        };
        if let Some(m) = found {
            self.known.insert(addr, m);
            return Some(m);
        }
        neighbor::provoke(addr);
        self.known.get(&addr).copied()
    }
}

/// How long one `ip route get` answer serves (reconciles run 4 times a second).
const ROUTE_TTL: Duration = Duration::from_secs(1);

/// Resolves routed backends: the kernel's route toward each (outer source, next hop), then
/// the next hop's MAC through [`MacCache`], so the program's FIB lookups find a neighbour.
#[derive(Default)]
pub struct RouteCache {
    routes: BTreeMap<IpAddr, (Instant, Option<neighbor::Route>)>,
}

impl RouteCache {
    /// The outer source toward `addr` once its next hop's MAC is known (provoking
    /// resolution when it is not).
    pub fn get(&mut self, addr: IpAddr, macs: &mut MacCache) -> Option<crate::model::Reachable> {
        let fresh = self
            .routes
            .get(&addr)
            .is_some_and(|(at, _)| at.elapsed() < ROUTE_TTL);
        if !fresh {
            self.routes
                .insert(addr, (Instant::now(), neighbor::route_to(addr)));
        }
        let route = self.routes.get(&addr)?.1.clone()?;
        macs.get(route.next_hop, None)?;
        Some(crate::model::Reachable {
            mac: [0; 6],
            src: Some(route.src),
        })
    }
}

/// The XDP dataplane as the agent drives it.
pub struct L4Dataplane {
    pub pin_dir: PathBuf,
    interfaces: Vec<String>,
    pub programmer: Programmer,
    counters: Option<Counters>,
    macs: MacCache,
    routes: RouteCache,
    _ebpf: aya::Ebpf,
}

/// Loads or adopts the dataplane and attaches it to the configured interfaces.
pub fn start_l4(cfg: &Config, xdp_log: bool) -> Result<L4Dataplane> {
    let d = &cfg.dataplane;
    let sizes = Sizes {
        ring_size: d.ring_size,
        max_services: d.max_services,
        conn_table_size: d.conn_table_size,
        conn_promotions_per_sec: d.conn_promotions_per_sec,
    };
    let mut ebpf =
        loader::load_logged(&d.pin_path, sizes, xdp_log).context("loading the dataplane")?;
    if xdp_log {
        crate::dataplane::xdp_log::forward(&mut ebpf)?;
    }
    for iface in &d.interfaces {
        let how = loader::attach(&mut ebpf, &d.pin_path, iface, d.xdp_mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        info!(iface, mode = ?how, "XDP program attached");
        crate::dataplane::iface::warn_if_veth(iface);
    }
    let programmer = Programmer::open(&d.pin_path, d.ring_size, d.max_services)?;
    let counters = Counters::open(&d.pin_path)
        .inspect_err(|e| warn!(error = %e, "dataplane counters unavailable"))
        .ok();
    Ok(L4Dataplane {
        pin_dir: d.pin_path.clone(),
        interfaces: d.interfaces.clone(),
        programmer,
        counters,
        macs: MacCache::default(),
        routes: RouteCache::default(),
        _ebpf: ebpf,
    })
}

impl L4Port for L4Dataplane {
    fn apply(&mut self, plan: &L4Plan) -> Result<Assignment, String> {
        crate::dataplane::iface::check_forwarding(&self.interfaces, plan)?;
        self.programmer.apply(plan).map_err(|e| e.to_string())
    }
    fn reach(&mut self, addr: IpAddr, how: crate::model::Reach) -> Option<crate::model::Reachable> {
        match how {
            crate::model::Reach::L2(configured) => self
                .macs
                .get(addr, configured)
                .map(|mac| crate::model::Reachable { mac, src: None }),
            crate::model::Reach::Routed => self.routes.get(addr, &mut self.macs),
        }
    }
    fn vip_counters(&self, id: u32) -> Option<VipStats> {
        self.counters.as_ref()?.vip(id).ok()
    }
    fn backend_counters(&self, slot: u32) -> Option<BackendStats> {
        self.counters.as_ref()?.backend(slot).ok()
    }
    fn reasons(&self) -> Vec<(String, u64)> {
        self.counters
            .as_ref()
            .and_then(|c| c.reasons().ok())
            .map(|v| v.into_iter().map(|(n, c)| (n.to_string(), c)).collect())
            .unwrap_or_default()
    }
}

/// No interfaces configured: the L4 tier is off and plans go nowhere.
pub struct NoL4;

impl L4Port for NoL4 {
    fn apply(&mut self, _plan: &L4Plan) -> Result<Assignment, String> {
        Ok(Assignment::default())
    }
    fn reach(
        &mut self,
        _addr: IpAddr,
        how: crate::model::Reach,
    ) -> Option<crate::model::Reachable> {
        let mac = match how {
            crate::model::Reach::L2(configured) => configured.unwrap_or([0; 6]),
            crate::model::Reach::Routed => [0; 6],
        };
        Some(crate::model::Reachable { mac, src: None })
    }
    fn vip_counters(&self, _id: u32) -> Option<VipStats> {
        None
    }
    fn backend_counters(&self, _slot: u32) -> Option<BackendStats> {
        None
    }
    fn reasons(&self) -> Vec<(String, u64)> {
        Vec::new()
    }
}

/// The L7 tier as the agent drives it: a change prepared by [`L7Port::prepare`] waits
/// here until the L4 side took it too.
pub struct AgentL7 {
    handle: Arc<crate::l7::L7Handle>,
    pending: Option<crate::l7::Prepared>,
}

impl L7Port for AgentL7 {
    fn prepare(&mut self, cfg: &crate::model::Model) -> Result<(), String> {
        self.pending = None;
        self.pending = Some(self.handle.prepare(cfg).map_err(|e| e.to_string())?);
        Ok(())
    }
    fn commit(&mut self, adm: crate::model::L7Admission) {
        self.handle.set_admission(Arc::new(adm));
        if let Some(p) = self.pending.take() {
            self.handle.commit(p);
            for (configured, bound) in self.handle.local_addrs() {
                tracing::debug!(%configured, %bound, "L7 listener");
            }
        }
    }
    fn abort(&mut self) {
        self.pending = None;
    }
    fn set_admission(&mut self, adm: crate::model::L7Admission) {
        self.handle.set_admission(Arc::new(adm));
    }
    fn stats(&self) -> Option<crate::l7::L7Stats> {
        Some(self.handle.stats())
    }
    fn listeners(&self) -> Vec<crate::l7::stats::L7ListenerInfo> {
        self.handle.listener_info()
    }
}

/// Choices of `lb run` beyond the configuration file.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Start without the saved overrides when the state file is unreadable (corrupt, another
    /// version, too big) instead of refusing to start.
    pub discard_state: bool,
    /// The XDP program's rare-path logs (drops, aborts, failed inserts) into the agent's log.
    pub xdp_log: bool,
}

/// Runs until SIGINT/SIGTERM. The dataplane stays attached after exit (pinned), so a
/// restart keeps flows; `lb down` removes it.
pub async fn run(config_path: &Path, opts: RunOptions) -> Result<()> {
    // Handlers first: a SIGHUP (reload) or SIGTERM that arrives while the agent starts is
    // kept for the main loop instead of killing the process (their default action).
    let mut signals = Signals::install()?;
    let cfg = crate::model::load(config_path).map_err(|e| {
        anyhow::anyhow!(
            "{}:\n{e}\nnothing was started: fix the file and run again \
                 (`lb validate <file>` checks a file without starting anything)",
            config_path.display()
        )
    })?;
    // Before anything is created: a missing interface must leave no pin folder behind.
    crate::dataplane::iface::check_present(&cfg.dataplane.interfaces)
        .map_err(anyhow::Error::msg)?;
    // One agent per pin folder and socket (see `lock`); held until this function returns.
    let _lock = lock::acquire(&cfg)?;
    // The socket first: a live socket means another agent runs, and it must be found out
    // before this one swaps its program into that agent's pinned link.
    let socket = cfg.admin.socket.clone();
    let listener = admin::server::bind(&socket)?;
    let limits = admin::server::Limits::from_config(&cfg.admin);
    let port: Box<dyn L4Port> = if cfg.dataplane.interfaces.is_empty() {
        info!("no dataplane.interfaces: the L4 tier is off");
        Box::new(NoL4)
    } else {
        Box::new(start_l4(&cfg, opts.xdp_log)?)
    };
    let l4_pins = (!cfg.dataplane.interfaces.is_empty()).then(|| cfg.dataplane.pin_path.clone());

    // Health checks are probes whose verdicts arrive as snapshots; they never touch maps.
    let mut checker = HealthChecker::start(&cfg);
    // Subscribed now: verdicts that arrive before the loop starts are not missed.
    let health_rx = checker.subscribe();
    let metrics = Arc::new(Metrics::new());
    metrics.register_health(checker.reader());
    let published = Arc::new(Mutex::new(Published::default()));
    if let Some(pins) = l4_pins.clone() {
        metrics.register_dataplane(dataplane_source(pins, published.clone()));
    }
    let _metrics_server = metrics::serve_from_config(&cfg, metrics.clone()).await?;

    let l7 = start_l7(&cfg, &metrics)?;

    let mut agent = Agent::new(cfg, Some(config_path.to_path_buf()), port).with_l7(Box::new(l7));
    let state_file = persist::state_file(&socket);
    let saved = persist::load_or_stop(&state_file, opts.discard_state)?;
    agent.restore(saved, state_file);
    if l4_pins.is_some() {
        match adopt::pinned_unhealthy(agent.model()) {
            Ok(down) => agent.seed_unhealthy(down),
            Err(e) => warn!(
                error = %e,
                "could not read health from the pinned maps; every backend starts healthy"
            ),
        }
    }
    agent.reconcile(Instant::now());
    let mut agent = start_announcing(agent, &metrics);
    publish(&agent, &published);

    let (call_tx, mut calls) = mpsc::channel::<admin::server::Call>(64);
    let server = tokio::spawn(admin::server::serve(listener, call_tx, limits));
    info!(socket = %socket.display(), "admin socket ready");
    // Dataplane programmed, L7 listening, admin socket answering: systemd may go on.
    let mut notifier = notify::Notifier::from_env();
    notifier.ready();

    serve(
        &mut agent,
        &mut checker,
        health_rx,
        &mut calls,
        &published,
        &mut notifier,
        &mut signals,
    )
    .await?;
    notifier.stopping();
    checker.shutdown();
    server.abort();
    let _ignored = std::fs::remove_file(&socket);
    info!("agent stopping; the dataplane stays attached (lb down removes it)");
    Ok(())
}

/// Starts the announcer of `[announce]` (if any) from the decision of the plan just applied,
/// so a restarted agent hands BIRD the set it already has (no withdrawal while the agent was
/// away, none now).
fn start_announcing(agent: Agent, metrics: &Metrics) -> Agent {
    let announcer = announce::Announcer::start(
        &agent.config().announce,
        crate::model::announce::prefixes(&agent.announcements()),
        agent.overrides().node_drained,
    );
    if let Some(a) = &announcer {
        metrics.register_announce(a.shared());
    }
    let mut agent = agent.with_announcer(announcer);
    agent.reconcile(Instant::now());
    agent
}

/// The L7 tier: always running (a reload may add the first L7 rule), driven by the agent:
/// its table follows every accepted change, its backends' admission follows health,
/// overrides and the failover policy, like the L4 plan.
fn start_l7(cfg: &crate::model::Model, metrics: &Metrics) -> Result<AgentL7> {
    let l7 = Arc::new(crate::l7::L7::start_driven(
        cfg,
        crate::l7::L7Options::default(),
    )?);
    for (configured, bound) in l7.local_addrs() {
        info!(%configured, %bound, "L7 listener started");
    }
    metrics.register_l7(l7.metrics_source());
    Ok(AgentL7 {
        handle: l7,
        pending: None,
    })
}

/// SIGINT, SIGTERM and SIGHUP, caught from the start of `run`.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// The agent's one task: every trigger (admin call, health snapshot, drain deadline,
/// tick, signal) reaches the agent here, one at a time, until SIGINT or SIGTERM.
async fn serve(
    agent: &mut Agent,
    checker: &mut HealthChecker,
    mut health_rx: tokio::sync::watch::Receiver<Arc<crate::health::HealthSnapshot>>,
    calls: &mut mpsc::Receiver<admin::server::Call>,
    published: &Mutex<Published>,
    notifier: &mut notify::Notifier,
    signals: &mut Signals,
) -> Result<()> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let changes_before = agent.config_changes;
        let deadline = agent
            .next_deadline(Instant::now())
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            Some(call) = calls.recv() => {
                let resp = admin::handle::handle(agent, call.verb, Instant::now());
                let _gone = call.reply.send(resp);
            }
            Ok(()) = health_rx.changed() => {
                let snap = health_rx.borrow_and_update().clone();
                agent.set_health(snap, Instant::now());
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                agent.reconcile(Instant::now());
            }
            _ = tick.tick() => agent.reconcile(Instant::now()),
            _ = notifier.watchdog_due() => notifier.watchdog(),
            _ = signals.int.recv() => break,
            _ = signals.term.recv() => break,
            // SIGHUP reloads the file like `lb reload`; a broken file changes nothing.
            _ = signals.hup.recv() => match agent.reload(Instant::now()) {
                Ok(()) => info!("configuration reloaded (SIGHUP)"),
                Err(e) => warn!(error = %e, "reload refused; the running configuration stays"),
            },
        }
        if agent.config_changes != changes_before {
            // New, removed or changed backends and checks: probes follow the configuration.
            checker.update(agent.config());
        }
        publish(agent, published);
    }
    Ok(())
}

/// What the metrics endpoint needs from the agent's task: the names behind VIP ids and
/// backend slots, and the rebuild count. Updated after every event.
#[derive(Default)]
struct Published {
    assignment: Assignment,
    rebuilds: u64,
    unknown: bool,
}

fn publish(agent: &Agent, shared: &Mutex<Published>) {
    let mut p = shared.lock().unwrap_or_else(|e| e.into_inner());
    if p.rebuilds != agent.table_rebuilds || p.assignment != *agent.assignment() {
        p.assignment = agent.assignment().clone();
        p.rebuilds = agent.table_rebuilds;
    }
    p.unknown = agent.dataplane_unknown().is_some();
}

/// Reads the pinned counters at scrape time, named through the agent's last assignment.
fn dataplane_source(
    pins: PathBuf,
    shared: Arc<Mutex<Published>>,
) -> impl Fn() -> Result<DataplaneCounters, SourceError> + Send + Sync + 'static {
    move || {
        let c = Counters::open(&pins)?;
        let p = shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = DataplaneCounters {
            maglev_rebuilds: p.rebuilds,
            state_unknown: p.unknown,
            ..Default::default()
        };
        for (name, id) in &p.assignment.vip_ids {
            let v = c.vip(*id)?;
            out.vips.push(VipCounters {
                rule: name.rule.clone(),
                vip: name.endpoint(),
                packets: v.packets,
                bytes: v.bytes,
                new_flows: v.new_flows,
                conn_hits: v.conn_hits,
                conn_misses: v.conn_misses,
            });
        }
        for (crate::ids::BackendKey { service, backend }, slot) in &p.assignment.backend_slots {
            let b = c.backend(*slot)?;
            out.backends.push(BackendCounters {
                service: service.clone(),
                backend: backend.clone(),
                packets: b.packets,
                bytes: b.bytes,
                new_flows: b.new_flows,
            });
        }
        out.reasons = c
            .reasons()?
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect();
        Ok(out)
    }
}
