//! The agent's state: validated configuration + health snapshot + admin overrides, and the
//! one function that turns them into a dataplane ([`Agent::reconcile`]).
//!
//! Every change (admin verb, reload) goes through [`Agent::change`]: the candidate
//! configuration is checked by the same validation as the file, the plan it yields is
//! applied, and only when both succeed does the candidate become the running state. When
//! either refuses, the configuration, the overrides and the maps stay as they were (the
//! programmer checks room before writing; after an unexpected map error mid-way the
//! previous plan is applied again). This is the single all-or-nothing property, tested once
//! with a dataplane that refuses.

use std::{
    cell::RefCell,
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};
use tracing::{info, warn};

use super::overrides::{self, Overrides};
use crate::{
    config::{self, Config, ConfigErrors},
    dataplane::{linger::Lingering, plan::L4Plan, programmer::Assignment},
    health::{Health, HealthSnapshot},
    model::{self, Model},
};
use lb_common::{BackendStats, VipStats};

/// What the agent needs from the L4 dataplane; a fake implements it in unit tests.
pub trait L4Port: Send {
    /// Makes the maps say what `plan` says, or refuses and leaves them as they were.
    fn apply(&mut self, plan: &L4Plan) -> Result<Assignment, String>;
    /// How a backend is reached now: its MAC (configured, else resolved) on the L2
    /// segment, or the outer source toward it once its next hop is resolved (routed);
    /// `None` while unknown.
    fn reach(&mut self, addr: IpAddr, how: model::Reach) -> Option<model::Reachable>;
    /// Counters of a VIP id, summed over CPUs.
    fn vip_counters(&self, id: u32) -> Option<VipStats>;
    /// Counters of a backend slot, summed over CPUs.
    fn backend_counters(&self, slot: u32) -> Option<BackendStats>;
    /// Packets per verdict reason.
    fn reasons(&self) -> Vec<(String, u64)>;
}

/// What the agent needs from the L7 tier; a fake implements it in unit tests. A change is
/// prepared (everything that can fail: certificates, URL maps, listeners bound) before the
/// L4 plan is applied, and committed only when both tiers took it.
pub trait L7Port: Send {
    /// Gets `cfg` ready without changing what runs; a second prepare replaces the first.
    fn prepare(&mut self, model: &Model) -> Result<(), String>;
    /// Swaps the prepared change in with the admission of its configuration; cannot fail.
    fn commit(&mut self, adm: model::L7Admission);
    /// Forgets the prepared change (closing the listeners it bound).
    fn abort(&mut self);
    /// Which backends take new requests and which must close what they still serve.
    fn set_admission(&mut self, adm: model::L7Admission);
    /// Counters, for the admin views (None when the tier is off).
    fn stats(&self) -> Option<crate::l7::L7Stats>;
    /// The listeners the tier runs, for `status`.
    fn listeners(&self) -> Vec<crate::l7::stats::L7ListenerInfo> {
        Vec::new()
    }
}

/// No L7 tier (unit tests of the L4 logic).
pub struct NoL7;

impl L7Port for NoL7 {
    fn prepare(&mut self, _model: &Model) -> Result<(), String> {
        Ok(())
    }
    fn commit(&mut self, _adm: model::L7Admission) {}
    fn abort(&mut self) {}
    fn set_admission(&mut self, _adm: model::L7Admission) {}
    fn stats(&self) -> Option<crate::l7::L7Stats> {
        None
    }
}

/// Why a change was refused. In every case nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The named backend service does not exist.
    #[error("no backend service named {name:?} (known: {known})")]
    NoService { name: String, known: String },
    /// The named backend does not exist in that service.
    #[error("backend service {service:?} has no backend named {backend:?} (known: {known})")]
    NoBackend {
        service: String,
        backend: String,
        known: String,
    },
    /// The candidate configuration breaks a validation rule.
    #[error("the change would make the configuration invalid; nothing was changed:\n{0}")]
    Invalid(ConfigErrors),
    /// The reloaded file differs in a setting that only a restart can apply.
    #[error("{0}; nothing was changed (restart the agent to apply it)")]
    NeedsRestart(String),
    /// The dataplane refused the plan.
    #[error("the dataplane refused the change; nothing was changed: {0}")]
    Dataplane(String),
    /// The L7 tier could not take the change (certificate, listener, URL map).
    #[error("the L7 tier refused the change; nothing was changed in either tier: {0}")]
    L7(String),
    /// A map write failed mid-change and restoring the previous state failed too: the
    /// configuration did not change, but the maps are partly written until a reconcile
    /// rewrites them.
    #[error("the dataplane failed in the middle of the change and could not be restored; the configuration did not change: {0}. Run `lb reload` to program the maps from the file again, or restart the agent")]
    DataplaneUnknown(String),
    /// Nothing to reload from.
    #[error("the agent was not started from a file; nothing to reload")]
    NoFile,
    /// A node drain without an announcing daemon would change nothing.
    #[error("this agent announces nothing ([announce] daemon = \"none\"), so a node drain would change nothing; configure [announce] daemon = \"bird\" first")]
    NothingAnnounced,
}

pub struct Agent {
    /// The running configuration, compiled.
    model: Model,
    config_path: Option<PathBuf>,
    health: Arc<HealthSnapshot>,
    overrides: Overrides,
    port: Box<dyn L4Port>,
    l7: Box<dyn L7Port>,
    /// The admission the L7 tier holds (None before the first push).
    l7_admission: Option<model::L7Admission>,
    /// The plan the maps hold (None before the first successful apply).
    applied: Option<L4Plan>,
    assignment: Assignment,
    /// Backends removed from the configuration, draining until their service's timeout.
    lingering: Lingering,
    started: Instant,
    /// Plans applied (each rebuilds at least one table or backend entry).
    pub table_rebuilds: u64,
    /// Successful configuration changes (admin or reload).
    pub config_changes: u64,
    last_error: Option<String>,
    /// Set when a failed change could not be rolled back: the maps hold neither the old plan
    /// nor the new one. `applied` is then None, so the next reconcile applies its plan
    /// whole (the programmer rewrites every entry after a failed write); cleared by the
    /// first plan that is applied.
    dataplane_unknown: Option<String>,
    /// Where overrides are saved so a restarted agent keeps them (see `persist`).
    state_file: Option<PathBuf>,
    /// Backends the previous agent held unhealthy, until the checker has a verdict (see
    /// `adopt`).
    seeded_down: BTreeSet<crate::ids::BackendKey>,
    /// Tells the routing daemon what to announce (None without an `[announce]` daemon).
    announcer: Option<super::announce::Announcer>,
}

impl Agent {
    pub fn new(model: Model, config_path: Option<PathBuf>, port: Box<dyn L4Port>) -> Self {
        Agent {
            model,
            config_path,
            health: Arc::new(HealthSnapshot::default()),
            overrides: Overrides::default(),
            port,
            l7: Box::new(NoL7),
            l7_admission: None,
            applied: None,
            assignment: Assignment::default(),
            lingering: Lingering::default(),
            started: Instant::now(),
            table_rebuilds: 0,
            config_changes: 0,
            last_error: None,
            dataplane_unknown: None,
            state_file: None,
            seeded_down: BTreeSet::new(),
            announcer: None,
        }
    }

    /// Announces through this announcer from now on (see `announce`).
    pub fn with_announcer(mut self, a: Option<super::announce::Announcer>) -> Self {
        self.announcer = a;
        self
    }

    /// Every L4 rule's announcement as the maps stand: from the plan they hold (nothing is
    /// usable before a plan is applied, or while their state is unknown) and the node drain.
    pub fn announcements(&self) -> Vec<model::announce::RuleAnnouncement> {
        let empty = L4Plan {
            services: Vec::new(),
            vips: Vec::new(),
        };
        let plan = self.applied.as_ref().unwrap_or(&empty);
        model::announce::decide(&self.model, plan, self.overrides.node_drained)
    }

    /// What the announcer reports, when there is one.
    pub fn announce_status(&self) -> Option<model::announce::AnnounceStatus> {
        self.announcer.as_ref().map(|a| a.status())
    }

    /// Hands the current decision to the announcer (it acts only when the set changed).
    fn announce(&self) {
        if let Some(a) = &self.announcer {
            a.update(self.announcements(), self.overrides.node_drained);
        }
    }

    /// `lb node drain` / `undrain`: withdraws (or restores) every announcement; saved with
    /// the other overrides, so a restarted agent stays drained.
    pub fn set_node_drained(&mut self, drained: bool, now: Instant) -> Result<(), ChangeError> {
        if self.announcer.is_none() {
            return Err(ChangeError::NothingAnnounced);
        }
        let mut ov = self.overrides.clone();
        ov.node_drained = drained;
        self.change(self.model.config().clone(), ov, now)
    }

    /// Drives this L7 tier (its table must already be built from the agent's config).
    pub fn with_l7(mut self, l7: Box<dyn L7Port>) -> Self {
        self.l7 = l7;
        self
    }

    /// The L7 tier's counters, when it runs.
    pub fn l7_stats(&self) -> Option<crate::l7::L7Stats> {
        self.l7.stats()
    }

    /// Starts these backends unhealthy until the health checker gives them a verdict.
    pub fn seed_unhealthy(&mut self, keys: Vec<crate::ids::BackendKey>) {
        for k in &keys {
            info!("backend {}/{} was unhealthy before the restart; it stays out until its health check decides", k.service, k.backend);
        }
        self.seeded_down.extend(keys);
    }

    /// Takes overrides saved by a previous run (forgetting those of backends no longer
    /// configured) and saves future changes to `path`. Call before the first reconcile.
    pub fn restore(&mut self, mut saved: Overrides, path: PathBuf) {
        let cfg = &self.model;
        saved.retain(|s, b| {
            cfg.backend_services
                .get(s)
                .is_some_and(|bs| bs.backends.iter().any(|x| x.display_name() == b))
        });
        if !saved.by_backend.is_empty() {
            info!(
                overrides = saved.by_backend.len(),
                "restored admin overrides (drain, maintenance, forced health) from {}",
                path.display()
            );
        }
        self.overrides = saved;
        self.state_file = Some(path);
    }

    pub fn config(&self) -> &Config {
        self.model.config()
    }
    pub fn model(&self) -> &Model {
        &self.model
    }
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }
    /// The checker's verdicts, with carried-over ones for backends it has not judged yet.
    pub fn health(&self) -> Arc<HealthSnapshot> {
        if self.seeded_down.is_empty() {
            return self.health.clone();
        }
        let mut h = (*self.health).clone();
        for k in &self.seeded_down {
            h.backends.entry(k.clone()).or_insert(Health::Unhealthy);
        }
        Arc::new(h)
    }
    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }
    pub fn applied(&self) -> Option<&L4Plan> {
        self.applied.as_ref()
    }
    pub fn assignment(&self) -> &Assignment {
        &self.assignment
    }
    pub fn port(&self) -> &dyn L4Port {
        self.port.as_ref()
    }
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    /// The running L7 listeners (empty without the L7 tier).
    pub fn l7_listeners(&self) -> Vec<crate::l7::stats::L7ListenerInfo> {
        self.l7.listeners()
    }
    /// Why the dataplane's contents are unknown (a failed rollback), if they are.
    pub fn dataplane_unknown(&self) -> Option<&str> {
        self.dataplane_unknown.as_deref()
    }

    /// The service's connection draining timeout.
    pub fn drain_timeout(&self, service: &str) -> Duration {
        Duration::from_secs(
            self.model
                .backend_services
                .get(service)
                .map_or(0, |s| s.connection_draining_timeout_sec as u64),
        )
    }

    /// The plan for a candidate state, with removed backends still draining. Updates the
    /// lingering set; callers that may refuse keep a copy to restore.
    fn plan_for(&mut self, cfg: &Model, ov: &Overrides, now: Instant) -> L4Plan {
        let mut plan = self.base_plan(cfg, ov, now);
        let drain_of = |svc: &str| {
            Duration::from_secs(
                cfg.backend_services
                    .get(svc)
                    .map_or(0, |s| s.connection_draining_timeout_sec as u64),
            )
        };
        self.lingering
            .apply(self.applied.as_ref(), &mut plan, &drain_of, now);
        plan
    }

    fn base_plan(&mut self, cfg: &Model, ov: &Overrides, now: Instant) -> L4Plan {
        let health = self.health();
        let port = RefCell::new(&mut self.port);
        model::l4_plan(
            cfg,
            &|svc, i| {
                let name = cfg.backend_services[svc].backends[i].display_name();
                let timeout = Duration::from_secs(
                    cfg.backend_services[svc].connection_draining_timeout_sec as u64,
                );
                overrides::backend_state(ov.get(svc, &name), &health, svc, &name, timeout, now)
            },
            &|addr, how| port.borrow_mut().reach(addr, how),
        )
    }

    /// Tells the L7 tier which backends serve, from the same states as the L4 plan (health,
    /// forced health, drain, maintenance, failover); only when something changed.
    fn push_l7_admission(&mut self, now: Instant) {
        let adm = self.l7_admission_for(&self.model, &self.overrides, now);
        if self.l7_admission.as_ref() != Some(&adm) {
            self.l7.set_admission(adm.clone());
            self.l7_admission = Some(adm);
        }
    }

    fn l7_admission_for(&self, cfg: &Config, ov: &Overrides, now: Instant) -> model::L7Admission {
        let health = self.health();
        model::l7_admission(cfg, &|svc, i| {
            let name = cfg.backend_services[svc].backends[i].display_name();
            let timeout = Duration::from_secs(
                cfg.backend_services[svc].connection_draining_timeout_sec as u64,
            );
            overrides::backend_state(ov.get(svc, &name), &health, svc, &name, timeout, now)
        })
    }

    /// Applies `plan` unless the maps already hold it.
    fn apply(&mut self, plan: L4Plan) -> Result<(), String> {
        if self.applied.as_ref() == Some(&plan) {
            return Ok(());
        }
        match self.port.apply(&plan) {
            Ok(a) => {
                self.assignment = a;
                self.applied = Some(plan);
                self.table_rebuilds += 1;
                if self.dataplane_unknown.take().is_some() {
                    info!("dataplane rewritten whole; its state is known again");
                }
                Ok(())
            }
            Err(e) => {
                // The programmer writes nothing when a plan does not fit; an unexpected map
                // error can still leave part of it written, so put the last good plan back.
                if let Some(old) = self.applied.clone() {
                    if let Err(e2) = self.port.apply(&old) {
                        self.mark_unknown(&e, &e2);
                    }
                }
                Err(e)
            }
        }
    }

    /// The rollback failed too: stop naming the old plan as applied, so no later reconcile
    /// skips its writes as "already there", and say so in `status` and metrics.
    fn mark_unknown(&mut self, error: &str, rollback: &str) {
        let why = format!("a change failed ({error}) and restoring the previous state failed too ({rollback}); the maps are partly written and the next reconcile rewrites them");
        warn!("dataplane state UNKNOWN: {why}");
        self.applied = None;
        self.dataplane_unknown = Some(why);
    }

    /// Brings the dataplane to the desired state of the running configuration (timers,
    /// health, MAC resolution). Failures are logged once and kept for `status`.
    pub fn reconcile(&mut self, now: Instant) {
        let cfg = self.model.clone();
        let ov = self.overrides.clone();
        let lingering = self.lingering.clone();
        let plan = self.plan_for(&cfg, &ov, now);
        self.push_l7_admission(now);
        let missing: Vec<&str> = plan
            .services
            .iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.mac.is_none())
            .map(|b| b.name.as_str())
            .collect();
        let changed = self.applied.as_ref() != Some(&plan);
        if changed && !missing.is_empty() {
            warn!(
                ?missing,
                "no MAC known yet for some backends (ARP pending); they stay out of rotation"
            );
        }
        match self.apply(plan) {
            Ok(()) => {
                if changed {
                    info!(rebuilds = self.table_rebuilds, "dataplane programmed");
                }
                self.last_error = None;
            }
            Err(e) => {
                self.lingering = lingering;
                if self.last_error.as_deref() != Some(&e) {
                    warn!(error = %e, "programming the dataplane failed; keeping the previous state");
                }
                self.last_error = Some(e);
            }
        }
        self.announce();
    }

    /// Takes a new health snapshot, logs every transition, and reconciles.
    pub fn set_health(&mut self, snap: Arc<HealthSnapshot>, now: Instant) {
        for (key, h) in &snap.backends {
            let old = self.health.backends.get(key);
            if old != Some(h) {
                let was = old.map_or("unknown", health_word);
                match h {
                    Health::Healthy => info!(
                        "health: backend {}/{} is now healthy (was {was})",
                        key.service, key.backend
                    ),
                    Health::Unhealthy => warn!(
                        "health: backend {}/{} is now UNHEALTHY (was {was})",
                        key.service, key.backend
                    ),
                }
            }
        }
        self.seeded_down.retain(|k| !snap.backends.contains_key(k));
        self.health = snap;
        self.reconcile(now);
    }

    /// When the next drain timeout ends (admin drains and removed backends), so the caller
    /// can reconcile then.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let drains = self
            .overrides
            .by_backend
            .iter()
            .filter_map(|(k, o)| overrides::drain_deadline(*o, self.drain_timeout(&k.service)));
        let removed = self
            .lingering
            .draining()
            .map(|(k, at)| *at + self.drain_timeout(&k.service));
        drains.chain(removed).filter(|t| *t > now).min()
    }

    /// The all-or-nothing change: `cfg` and `ov` become the running state only if `cfg`
    /// compiles and both tiers take it.
    pub fn change(&mut self, cfg: Config, ov: Overrides, now: Instant) -> Result<(), ChangeError> {
        let model = model::compile(cfg).map_err(ChangeError::Invalid)?;
        self.change_to(model, ov, now)
    }

    /// [`Agent::change`] with a configuration compiled already.
    fn change_to(
        &mut self,
        model: Model,
        mut ov: Overrides,
        now: Instant,
    ) -> Result<(), ChangeError> {
        let cfg = model.config();
        ov.retain(|s, b| {
            cfg.backend_services
                .get(s)
                .is_some_and(|bs| bs.backends.iter().any(|x| x.display_name() == b))
        });
        // Everything of the L7 tier that can fail is done before the maps change; an
        // override-only change leaves its table alone (admission carries overrides).
        let l7_changes = model != self.model;
        if l7_changes {
            self.l7.prepare(&model).map_err(ChangeError::L7)?;
        }
        let lingering = self.lingering.clone();
        let plan = self.plan_for(&model, &ov, now);
        if let Err(e) = self.apply(plan) {
            self.lingering = lingering;
            self.l7.abort();
            return Err(match &self.dataplane_unknown {
                Some(why) => ChangeError::DataplaneUnknown(why.clone()),
                None => ChangeError::Dataplane(e),
            });
        }
        if l7_changes {
            let adm = self.l7_admission_for(cfg, &ov, now);
            self.l7.commit(adm.clone());
            self.l7_admission = Some(adm);
        }
        self.model = model;
        let overrides_changed = self.overrides != ov;
        self.overrides = ov;
        self.config_changes += 1;
        if overrides_changed {
            if let Some(path) = &self.state_file {
                // The change is live already; failing to save only loses it at a restart.
                if let Err(e) = super::persist::save(path, &self.overrides) {
                    warn!(error = %e, file = %path.display(), "saving admin overrides failed; a restart will forget them");
                }
            }
        }
        self.last_error = None;
        self.push_l7_admission(now);
        self.announce();
        Ok(())
    }

    /// Checks that the service and backend exist; returns the backend's index.
    pub fn find(&self, service: &str, backend: &str) -> Result<usize, ChangeError> {
        let bs = self.find_service(service)?;
        bs.backends
            .iter()
            .position(|b| b.display_name() == backend)
            .ok_or_else(|| ChangeError::NoBackend {
                service: service.into(),
                backend: backend.into(),
                known: join(bs.backends.iter().map(|b| b.display_name())),
            })
    }

    pub fn find_service(&self, service: &str) -> Result<&config::BackendService, ChangeError> {
        self.model
            .backend_services
            .get(service)
            .ok_or_else(|| ChangeError::NoService {
                name: service.into(),
                known: join(self.model.backend_services.keys().cloned()),
            })
    }

    /// Changes only overrides of an existing backend.
    pub fn change_override(
        &mut self,
        service: &str,
        backend: &str,
        now: Instant,
        f: impl FnOnce(&mut overrides::Override),
    ) -> Result<(), ChangeError> {
        self.find(service, backend)?;
        let mut ov = self.overrides.clone();
        ov.update(service, backend, f);
        self.change(self.model.config().clone(), ov, now)
    }

    /// Re-reads the configuration file; the running state stays when anything refuses.
    pub fn reload(&mut self, now: Instant) -> Result<(), ChangeError> {
        let path = self.config_path.clone().ok_or(ChangeError::NoFile)?;
        let model = model::load(&path).map_err(ChangeError::Invalid)?;
        restart_only_changes(&self.model, &model)?;
        self.change_to(model, self.overrides.clone(), now)
    }
}

fn health_word(h: &Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

fn join(names: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Settings fixed at start: map sizes, pin folder, interfaces and the admin socket.
pub fn restart_only_changes(old: &Config, new: &Config) -> Result<(), ChangeError> {
    let mut diffs = BTreeSet::new();
    let (a, b) = (&old.dataplane, &new.dataplane);
    if a.ring_size != b.ring_size {
        diffs.insert("dataplane.ring_size");
    }
    if a.max_services != b.max_services {
        diffs.insert("dataplane.max_services");
    }
    if a.conn_table_size != b.conn_table_size {
        diffs.insert("dataplane.conn_table_size");
    }
    if a.conn_promotions_per_sec != b.conn_promotions_per_sec {
        diffs.insert("dataplane.conn_promotions_per_sec");
    }
    if a.pin_path != b.pin_path {
        diffs.insert("dataplane.pin_path");
    }
    if a.interfaces != b.interfaces || a.xdp_mode != b.xdp_mode {
        diffs.insert("dataplane.interfaces/xdp_mode");
    }
    if old.admin.socket != new.admin.socket {
        diffs.insert("admin.socket");
    }
    if (old.admin.idle_timeout_sec, old.admin.max_connections)
        != (new.admin.idle_timeout_sec, new.admin.max_connections)
    {
        diffs.insert("admin.idle_timeout_sec/max_connections");
    }
    if old.admin.metrics_listen != new.admin.metrics_listen {
        diffs.insert("admin.metrics_listen");
    }
    if old.announce != new.announce {
        diffs.insert("announce");
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        let v: Vec<&str> = diffs.into_iter().collect();
        Err(ChangeError::NeedsRestart(format!(
            "the new file changes {}, which only apply at start",
            v.join(", ")
        )))
    }
}
