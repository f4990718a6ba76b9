//! Runs the probes: one tokio task per (backend service, backend), each with its own timer.
//!
//! Why one task per target: probes of different backends must never wait on each other.
//! A black-holed backend costs its own task up to `timeout_sec` per probe and nothing else;
//! every other backend keeps its own rhythm. Tasks start at a random offset within the
//! interval so a large configuration does not probe everything at the same instant.
//!
//! Results are folded into [`HealthState`] under one short-lived lock; on every transition
//! a new [`HealthSnapshot`] is published on a `watch` channel (the contract of `health`).

use serde::Serialize;
use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tracing::{info, warn};

use super::{
    probe::{self, ProbeError, ProbeSpec},
    state::{HealthState, Transition},
    BackendKey, Health, HealthSnapshot,
};
use crate::config::{Config, HealthCheck};

/// Upper bounds (seconds) of the probe-latency histogram buckets; the last bucket is +Inf.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Probe latencies of one backend, non-cumulative per bucket (+Inf last).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    fn new() -> Self {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS.iter().map(|b| (*b, 0)).collect();
        buckets.push((f64::MAX, 0));
        LatencyHistogram {
            buckets,
            sum_seconds: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(b) = self.buckets.iter_mut().find(|(le, _)| s <= *le) {
            b.1 += 1;
        }
        self.sum_seconds += s;
        self.count += 1;
    }
}

/// What the admin API and metrics show about one probed backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendStatus {
    pub service: String,
    pub backend: String,
    /// Name of the health check probing it.
    pub health_check: String,
    /// Where the probes go.
    pub probe_address: std::net::SocketAddr,
    /// `None` until the first verdict (counted as healthy, see `health::state`).
    pub health: Option<Health>,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// Serialized as `last_latency_ms` (float milliseconds) for the admin API.
    #[serde(rename = "last_latency_ms", serialize_with = "ser::millis")]
    pub last_latency: Option<Duration>,
    /// The last failure's reason, kept after later successes for diagnosis.
    pub last_error: Option<String>,
    /// Whether the last probe succeeded (`None` before the first probe).
    pub last_ok: Option<bool>,
    /// Serialized as `last_probe_unix_ms`.
    #[serde(rename = "last_probe_unix_ms", serialize_with = "ser::unix_millis")]
    pub last_probe: Option<SystemTime>,
    /// Probes by result: "success" or a [`ProbeError::kind`].
    pub probes: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    pub latency: LatencyHistogram,
}

mod ser {
    //! Admin-friendly JSON for times: plain numbers instead of serde's {secs, nanos}.
    use serde::Serializer;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub(super) fn millis<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64() * 1e3),
            None => s.serialize_none(),
        }
    }

    pub(super) fn unix_millis<S: Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
            Some(d) => s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
}

impl BackendStatus {
    /// Probes run so far, whatever their result.
    pub fn probe_count(&self) -> u64 {
        self.probes.values().sum()
    }
}

/// Identity of a probing task: a reload keeps the task (and its state) only when all of
/// this is unchanged.
#[derive(Debug, Clone, PartialEq)]
struct TargetSpec {
    check_name: String,
    check: HealthCheck,
    probe: ProbeSpec,
}

struct Entry {
    /// Guards against a task that was aborted but had not yet reached an await point.
    generation: u64,
    state: HealthState,
    status: BackendStatus,
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<BackendKey, Entry>,
    /// Bumped for every snapshot taken, so publishing can drop an older one that lost a
    /// race with a newer one.
    version: u64,
}

impl Table {
    /// The verdicts of the table now, stamped with a fresh version.
    fn stamp(&mut self) -> Stamped {
        self.version += 1;
        let snap = HealthSnapshot {
            backends: self
                .entries
                .iter()
                .filter_map(|(k, e)| e.state.health().map(|h| (k.clone(), h)))
                .collect(),
        };
        Stamped(self.version, snap)
    }
}

struct Stamped(u64, HealthSnapshot);

struct Shared {
    table: Mutex<Table>,
    /// Version of the last snapshot sent.
    published: Mutex<u64>,
    tx: watch::Sender<Arc<HealthSnapshot>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `stamped` unless a newer snapshot went out already or nothing changed.
    ///
    /// Called WITHOUT the table lock: a reader may hold a `watch` borrow while calling
    /// [`HealthReader::status`], and sending waits for that borrow to end; holding the
    /// table lock here could deadlock the two.
    fn publish(&self, stamped: Stamped) {
        let Stamped(version, snap) = stamped;
        let mut last = self.published.lock().unwrap_or_else(|p| p.into_inner());
        if version <= *last {
            return;
        }
        *last = version;
        self.tx.send_if_modified(|cur| {
            if **cur == snap {
                return false;
            }
            *cur = Arc::new(snap);
            true
        });
    }

    /// Folds one probe result in; returns the transition to log, if any.
    fn record(
        &self,
        key: &BackendKey,
        generation: u64,
        at: SystemTime,
        latency: Duration,
        result: &Result<(), ProbeError>,
    ) -> Option<Transition> {
        let mut table = self.lock();
        let e = table
            .entries
            .get_mut(key)
            .filter(|e| e.generation == generation)?;
        let s = &mut e.status;
        s.last_probe = Some(at);
        s.last_latency = Some(latency);
        s.last_ok = Some(result.is_ok());
        s.latency.observe(latency);
        let kind = match result {
            Ok(()) => "success",
            Err(err) => {
                s.last_error = Some(err.to_string());
                err.kind()
            }
        };
        *s.probes.entry(kind).or_default() += 1;
        let t = e.state.record(result.is_ok());
        s.health = e.state.health();
        s.consecutive_successes = e.state.consecutive_successes();
        s.consecutive_failures = e.state.consecutive_failures();
        let stamped = t.is_some().then(|| table.stamp());
        drop(table);
        if let Some(st) = stamped {
            self.publish(st);
        }
        t
    }
}

/// A cloneable read handle on the checker, for the agent, the L7 router, the admin API and
/// the metrics endpoint.
#[derive(Clone)]
pub struct HealthReader {
    shared: Arc<Shared>,
}

impl HealthReader {
    /// A receiver of snapshots; it sees a new value on every transition.
    pub fn subscribe(&self) -> watch::Receiver<Arc<HealthSnapshot>> {
        self.shared.tx.subscribe()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<HealthSnapshot> {
        self.shared.tx.borrow().clone()
    }

    /// Every probed backend, ordered by (service, backend). Backends of services without a
    /// health check are not probed and not listed (they count as healthy).
    pub fn status(&self) -> Vec<BackendStatus> {
        self.shared
            .lock()
            .entries
            .values()
            .map(|e| e.status.clone())
            .collect()
    }
}

impl HealthReader {
    /// The status of one probed backend (`None` when it is not probed).
    pub fn get(&self, service: &str, backend: &str) -> Option<BackendStatus> {
        let key = BackendKey::new(service, backend);
        self.shared
            .lock()
            .entries
            .get(&key)
            .map(|e| e.status.clone())
    }
}

impl std::fmt::Debug for HealthReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthReader").finish_non_exhaustive()
    }
}

struct Target {
    spec: TargetSpec,
    task: JoinHandle<()>,
}

/// Owns the probing tasks. Must be created and updated inside a tokio runtime. Dropping it
/// stops every probe.
pub struct HealthChecker {
    shared: Arc<Shared>,
    targets: HashMap<BackendKey, Target>,
    next_generation: u64,
}

impl HealthChecker {
    /// A checker with no targets and an empty snapshot.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(HealthSnapshot::default()));
        Self::with_sender(tx)
    }

    /// A checker with no targets that publishes into an existing channel (for an agent
    /// that created its channel before the checker). The channel's current value is kept
    /// until the first change.
    pub fn with_sender(tx: watch::Sender<Arc<HealthSnapshot>>) -> Self {
        HealthChecker {
            shared: Arc::new(Shared {
                table: Mutex::new(Table::default()),
                published: Mutex::new(0),
                tx,
            }),
            targets: HashMap::new(),
            next_generation: 0,
        }
    }

    /// A checker probing every backend of `cfg` that has a health check.
    pub fn start(cfg: &Config) -> Self {
        let mut c = Self::new();
        c.update(cfg);
        c
    }

    /// A read handle (cheap to clone, `Send + Sync`).
    pub fn reader(&self) -> HealthReader {
        HealthReader {
            shared: self.shared.clone(),
        }
    }

    /// See [`HealthReader::subscribe`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<HealthSnapshot>> {
        self.shared.tx.subscribe()
    }

    /// See [`HealthReader::status`].
    pub fn status(&self) -> Vec<BackendStatus> {
        self.reader().status()
    }

    /// Applies a new configuration: targets whose (service, backend, health check, probe
    /// address and settings) are unchanged keep their task and state; new ones start
    /// unknown; removed or changed ones stop (a changed check is a new check, so its
    /// backend starts over from unknown). Publishes a snapshot if entries disappeared.
    pub fn update(&mut self, cfg: &Config) {
        let desired = desired_targets(cfg);
        let stale: Vec<BackendKey> = self
            .targets
            .iter()
            .filter(|(k, t)| desired.get(*k) != Some(&t.spec))
            .map(|(k, _)| k.clone())
            .collect();
        let stamped = {
            let mut table = self.shared.lock();
            for k in &stale {
                if let Some(t) = self.targets.remove(k) {
                    t.task.abort();
                }
                table.entries.remove(k);
            }
            table.stamp()
        };
        self.shared.publish(stamped);
        for (key, spec) in desired {
            if self.targets.contains_key(&key) {
                continue;
            }
            self.next_generation += 1;
            let generation = self.next_generation;
            let state =
                HealthState::new(spec.check.healthy_threshold, spec.check.unhealthy_threshold);
            let status = BackendStatus {
                service: key.service.clone(),
                backend: key.backend.clone(),
                health_check: spec.check_name.clone(),
                probe_address: spec.probe.addr,
                health: None,
                consecutive_successes: 0,
                consecutive_failures: 0,
                last_latency: None,
                last_error: None,
                last_ok: None,
                last_probe: None,
                probes: BTreeMap::new(),
                latency: LatencyHistogram::new(),
            };
            self.shared.lock().entries.insert(
                key.clone(),
                Entry {
                    generation,
                    state,
                    status,
                },
            );
            let task = tokio::spawn(run_target(
                self.shared.clone(),
                key.clone(),
                generation,
                spec.clone(),
            ));
            self.targets.insert(key, Target { spec, task });
        }
    }

    /// Stops every probe. The last snapshot stays readable through existing receivers.
    pub fn shutdown(&mut self) {
        for (_, t) in self.targets.drain() {
            t.task.abort();
        }
    }
}

impl Default for HealthChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Every (service, backend) to probe. Services without a health check (or naming one that
/// does not exist, which validation refuses) are skipped.
fn desired_targets(cfg: &Config) -> BTreeMap<BackendKey, TargetSpec> {
    let mut out = BTreeMap::new();
    for (svc_name, svc) in &cfg.backend_services {
        let Some(check_name) = &svc.health_check else {
            continue;
        };
        let Some(check) = cfg.health_checks.get(check_name) else {
            warn!(service = %svc_name, health_check = %check_name, "unknown health check; backends not probed");
            continue;
        };
        for b in &svc.backends {
            out.insert(
                BackendKey::new(svc_name.clone(), b.display_name()),
                TargetSpec {
                    check_name: check_name.clone(),
                    check: check.clone(),
                    probe: ProbeSpec::new(check, b),
                },
            );
        }
    }
    out
}

/// A random offset in `[0, interval)`, different per target and per run.
fn start_jitter(key: &BackendKey, interval: Duration) -> Duration {
    let r = RandomState::new().hash_one(key);
    interval.mul_f64((r % 10_000) as f64 / 10_000.0)
}

async fn run_target(shared: Arc<Shared>, key: BackendKey, generation: u64, spec: TargetSpec) {
    // Validation keeps the interval at 0.1 s or more; the floor keeps a hand-built config
    // from spinning.
    let interval = crate::config::limits::duration(spec.check.check_interval_sec.max(0.01));
    let mut ticker =
        tokio::time::interval_at(Instant::now() + start_jitter(&key, interval), interval);
    // A probe may take up to timeout_sec (≤ interval); if one overruns, probe again at once
    // and keep the interval from there rather than bursting to catch up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let at = SystemTime::now();
        let started = Instant::now();
        let result = probe::probe(&spec.probe).await;
        let latency = started.elapsed();
        if let Some(t) = shared.record(&key, generation, at, latency, &result) {
            log_transition(&key, &spec, &t, &result);
        }
    }
}

fn log_transition(
    key: &BackendKey,
    spec: &TargetSpec,
    t: &Transition,
    result: &Result<(), ProbeError>,
) {
    let from = match t.from {
        None => "unknown",
        Some(Health::Healthy) => "healthy",
        Some(Health::Unhealthy) => "unhealthy",
    };
    let to = match t.to {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    };
    let reason = match result {
        Ok(()) => format!(
            "{} consecutive {}",
            t.streak,
            plural(t.streak, "success", "successes")
        ),
        Err(e) => format!(
            "{} consecutive {}: {e}",
            t.streak,
            plural(t.streak, "failure", "failures")
        ),
    };
    info!(
        service = %key.service,
        backend = %key.backend,
        health_check = %spec.check_name,
        address = %spec.probe.addr,
        "backend {from} → {to}: {reason}"
    );
}

fn plural<'a>(n: u32, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 {
        one
    } else {
        many
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        toml::from_str(text).expect("valid config")
    }

    const TWO_SERVICES: &str = r#"
        [health_checks.hc]
        protocol = "TCP"
        port = 1
        [backend_services.checked]
        protocol = "TCP"
        health_check = "hc"
        backends = [{ address = "127.0.0.1" }, { address = "127.0.0.1", port = 81 }]
        [backend_services.unchecked]
        protocol = "TCP"
        backends = [{ address = "127.0.0.1" }]
    "#;

    #[test]
    fn only_checked_services_are_targets() {
        let t = desired_targets(&cfg(TWO_SERVICES));
        let keys: Vec<_> = t.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                crate::ids::BackendKey::new("checked", "127.0.0.1"),
                crate::ids::BackendKey::new("checked", "127.0.0.1:81")
            ]
        );
    }

    #[test]
    fn histogram_buckets() {
        let mut h = LatencyHistogram::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets.iter().map(|b| b.1).sum::<u64>(), 2);
        assert_eq!(h.buckets.last().unwrap().1, 1);
        assert_eq!(h.buckets[3], (0.005, 1));
    }

    #[test]
    fn jitter_is_within_interval() {
        let k = crate::ids::BackendKey::new("s", "b");
        for _ in 0..100 {
            assert!(start_jitter(&k, Duration::from_secs(1)) < Duration::from_secs(1));
        }
    }

    #[test]
    fn status_json_uses_plain_numbers() {
        let st = BackendStatus {
            service: "s".into(),
            backend: "b".into(),
            health_check: "hc".into(),
            probe_address: "127.0.0.1:80".parse().unwrap(),
            health: Some(Health::Unhealthy),
            consecutive_successes: 0,
            consecutive_failures: 3,
            last_latency: Some(Duration::from_micros(1500)),
            last_error: Some("connect timeout".into()),
            last_ok: Some(false),
            last_probe: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1234)),
            probes: BTreeMap::from([("timeout", 3)]),
            latency: LatencyHistogram::new(),
        };
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["last_latency_ms"], 1.5);
        assert_eq!(v["last_probe_unix_ms"], 1234);
        assert_eq!(v["health"], "Unhealthy");
        assert_eq!(v["probes"]["timeout"], 3);
        assert!(v.get("latency").is_none());
    }

    /// Collects formatted log output of the current thread.
    #[derive(Clone, Default)]
    struct LogBuf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for LogBuf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_transition_is_logged_with_its_reason() {
        let buf = LogBuf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .finish();
        // A current-thread runtime keeps the probe tasks on this thread, where the
        // thread-local subscriber applies.
        let _guard = tracing::subscriber::set_default(sub);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let text = format!(
                r#"
                [health_checks.hc]
                protocol = "TCP"
                port = {}
                check_interval_sec = 0.1
                timeout_sec = 0.1
                healthy_threshold = 1
                unhealthy_threshold = 1
                [backend_services.svc]
                protocol = "TCP"
                health_check = "hc"
                backends = [{{ address = "127.0.0.1", name = "b1" }}]
                "#,
                l.local_addr().unwrap().port()
            );
            let c = HealthChecker::start(&cfg(&text));
            let mut rx = c.subscribe();
            let wait = |rx: &mut watch::Receiver<Arc<HealthSnapshot>>, h| {
                let rx = rx.clone();
                async move {
                    let mut rx = rx;
                    tokio::time::timeout(
                        Duration::from_secs(2),
                        rx.wait_for(|s| s.get("svc", "b1") == Some(h)),
                    )
                    .await
                    .expect("transition within 2 s")
                    .map(|_| ())
                    .expect("checker alive");
                }
            };
            wait(&mut rx, Health::Healthy).await;
            drop(l);
            wait(&mut rx, Health::Unhealthy).await;
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            log.contains("backend unknown → healthy: 1 consecutive success"),
            "{log}"
        );
        assert!(
            log.contains("backend healthy → unhealthy: 1 consecutive failure: connect:"),
            "{log}"
        );
        assert!(log.contains("service=svc backend=b1"), "{log}");
    }

    #[tokio::test]
    async fn update_keeps_unchanged_and_replaces_changed() {
        let mut c = HealthChecker::start(&cfg(TWO_SERVICES));
        assert_eq!(c.status().len(), 2);
        let gens = |c: &HealthChecker| -> Vec<u64> {
            c.shared
                .lock()
                .entries
                .values()
                .map(|e| e.generation)
                .collect()
        };
        let before = gens(&c);
        c.update(&cfg(TWO_SERVICES));
        assert_eq!(
            gens(&c),
            before,
            "unchanged targets keep their task and state"
        );
        // Change one backend's port and drop the other.
        let changed = TWO_SERVICES.replace(
            r#"backends = [{ address = "127.0.0.1" }, { address = "127.0.0.1", port = 81 }]"#,
            r#"backends = [{ address = "127.0.0.1", name = "a", port = 9 }]"#,
        );
        c.update(&cfg(&changed));
        let st = c.status();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0].backend, "a");
        assert_eq!(
            c.reader()
                .get("checked", "a")
                .map(|s| s.probe_address.port()),
            Some(1)
        );
        assert!(c.reader().get("checked", "127.0.0.1").is_none());
        assert_eq!(c.targets.len(), 1);
        c.shutdown();
        assert!(c.targets.is_empty());
    }
}
