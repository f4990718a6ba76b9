//! The agent's change path without root: a fake dataplane that records every plan and can
//! be told to refuse. The all-or-nothing property is checked here on the state and on what
//! the "maps" (the fake) last received.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use super::state::{Agent, L4Port};
use crate::admin::{
    handle::handle,
    protocol::{parse_request, ErrorKind, Response, Verb},
};
use crate::config::Config;
use crate::dataplane::{plan::L4Plan, programmer::Assignment};
use lb_common::{BackendStats, VipStats};

#[derive(Clone, Default)]
struct Fake {
    plans: Arc<Mutex<Vec<L4Plan>>>,
    /// Refuses every plan but the one the "maps" hold, like a plan that does not fit.
    refuse: Arc<AtomicBool>,
    /// Fails every plan, the one the maps hold included (a map that stays broken).
    broken: Arc<AtomicBool>,
}

impl Fake {
    fn last(&self) -> L4Plan {
        self.plans
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a plan was applied")
    }
    fn count(&self) -> usize {
        self.plans.lock().unwrap().len()
    }
}

impl L4Port for Fake {
    fn apply(&mut self, plan: &L4Plan) -> Result<Assignment, String> {
        if self.broken.load(Ordering::SeqCst) {
            return Err("map update: injected failure (test)".into());
        }
        let holds = self.plans.lock().unwrap().last() == Some(plan);
        if self.refuse.load(Ordering::SeqCst) {
            return if holds {
                Ok(Assignment::default())
            } else {
                Err("no room (test)".into())
            };
        }
        self.plans.lock().unwrap().push(plan.clone());
        Ok(Assignment::default())
    }
    fn reach(&mut self, addr: IpAddr, how: crate::model::Reach) -> Option<crate::model::Reachable> {
        Some(crate::model::Reachable {
            mac: [2, 0, 0, 0, 0, 1],
            src: (how == crate::model::Reach::Routed).then_some(addr),
        })
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

const CFG: &str = r#"
[backend_services.web]
protocol = "TCP"
connection_draining_timeout_sec = 10
[[backend_services.web.backends]]
name = "b1"
address = "10.0.0.1"
[[backend_services.web.backends]]
name = "b2"
address = "10.0.0.2"
[[backend_services.web.backends]]
name = "b3"
address = "10.0.0.3"
failover = true

[forwarding_rules.vip]
ip_address = "10.0.0.100"
ports = [80]
backend_service = "web"
"#;

fn agent(path: Option<std::path::PathBuf>) -> (Agent, Fake, Instant) {
    let fake = Fake::default();
    let cfg = crate::model::parse(CFG).unwrap();
    let mut a = Agent::new(cfg, path, Box::new(fake.clone()));
    let t0 = Instant::now();
    a.reconcile(t0);
    (a, fake, t0)
}

fn req(a: &mut Agent, line: &str, now: Instant) -> Response {
    let verb = parse_request(line).unwrap_or_else(|e| panic!("{line}: {e}"));
    handle(a, verb, now)
}

fn backend<'a>(p: &'a L4Plan, name: &str) -> &'a crate::dataplane::plan::L4Backend {
    p.services[0]
        .backends
        .iter()
        .find(|b| b.name == name)
        .unwrap()
}

#[test]
fn drain_leaves_the_table_at_once_and_evicts_after_the_timeout() {
    let (mut a, fake, t0) = agent(None);
    assert!(backend(&fake.last(), "b1").in_table);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"drain","service":"web","backend":"b1"}"#,
        t0,
    );
    assert!(r.ok, "{r:?}");
    let p = fake.last();
    assert!(!backend(&p, "b1").in_table && backend(&p, "b1").draining && !backend(&p, "b1").evict);
    assert!(backend(&p, "b2").in_table);
    assert_eq!(a.next_deadline(t0), Some(t0 + Duration::from_secs(10)));
    a.reconcile(t0 + Duration::from_secs(9));
    assert!(
        !backend(&fake.last(), "b1").evict,
        "flows kept before the timeout"
    );
    a.reconcile(t0 + Duration::from_secs(10));
    assert!(
        backend(&fake.last(), "b1").evict,
        "flows evicted at the timeout"
    );
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"undrain","service":"web","backend":"b1"}"#,
        t0 + Duration::from_secs(11),
    );
    assert!(r.ok);
    let b = backend(&fake.last(), "b1").clone();
    assert!(b.in_table && !b.draining && !b.evict);
}

#[test]
fn maintenance_and_forced_health_reach_the_plan() {
    let (mut a, fake, t0) = agent(None);
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"maintenance","service":"web","backend":"b2","on":true}"#,
            t0
        )
        .ok
    );
    let b = backend(&fake.last(), "b2").clone();
    assert!(!b.in_table && b.evict);
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"force-health","service":"web","backend":"b1","health":"down"}"#,
            t0
        )
        .ok
    );
    // Both primaries out: the failover backend takes over (ratio 0, no healthy primary).
    let p = fake.last();
    assert!(!backend(&p, "b1").healthy && backend(&p, "b3").in_table);
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"force-health","service":"web","backend":"b1","health":"auto"}"#,
            t0
        )
        .ok
    );
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"maintenance","service":"web","backend":"b2","on":false}"#,
            t0
        )
        .ok
    );
    let p = fake.last();
    assert!(
        backend(&p, "b1").in_table && backend(&p, "b2").in_table && !backend(&p, "b3").in_table
    );
}

fn unchanged(a: &Agent, fake: &Fake, cfg: &Config, plans: usize) {
    assert_eq!(a.config(), cfg, "the running configuration must not change");
    assert_eq!(fake.count(), plans, "the dataplane must not be written");
}

#[test]
fn invalid_changes_leave_config_and_maps_unchanged() {
    let (mut a, fake, t0) = agent(None);
    let cfg = a.config().clone();
    let n = fake.count();
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"set-weight","service":"web","backend":"b1","weight":0}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message
            .contains("backend_services.web.backends[0].weight: 0 is outside 1..=1000"),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9","name":"b1"}}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert!(
        e.message.contains("duplicate backend \"b1\""),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9","weight":1001}}"#,
        t0,
    );
    assert!(r
        .error
        .unwrap()
        .message
        .contains("1001 is outside 1..=1000"));
    unchanged(&a, &fake, &cfg, n);
}

#[test]
fn unknown_names_are_not_found_with_the_known_ones() {
    let (mut a, fake, t0) = agent(None);
    let cfg = a.config().clone();
    let n = fake.count();
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"drain","service":"nope","backend":"b1"}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message
            .contains("no backend service named \"nope\" (known: web)"),
        "{}",
        e.message
    );
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"remove-backend","service":"web","backend":"b9"}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("known: b1, b2, b3"), "{}", e.message);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"describe-service","service":"nope"}"#,
        t0,
    );
    assert_eq!(r.error.unwrap().kind, ErrorKind::NotFound);
    unchanged(&a, &fake, &cfg, n);
}

#[test]
fn a_refused_dataplane_leaves_everything_as_it_was() {
    let (mut a, fake, t0) = agent(None);
    let cfg = a.config().clone();
    let ov = a.overrides().clone();
    let before = fake.last();
    let n = fake.count();
    fake.refuse.store(true, Ordering::SeqCst);
    for line in [
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9"}}"#,
        r#"{"version":1,"verb":"drain","service":"web","backend":"b1"}"#,
        r#"{"version":1,"verb":"remove-backend","service":"web","backend":"b2"}"#,
    ] {
        let r = req(&mut a, line, t0);
        let e = r.error.unwrap();
        assert_eq!(e.kind, ErrorKind::Dataplane, "{line}");
        assert!(
            e.message.contains("nothing was changed: no room (test)"),
            "{}",
            e.message
        );
        unchanged(&a, &fake, &cfg, n);
        assert_eq!(a.overrides(), &ov, "overrides unchanged");
        assert_eq!(a.applied(), Some(&before));
    }
    fake.refuse.store(false, Ordering::SeqCst);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9"}}"#,
        t0,
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(fake.last().services[0].backends.len(), 4);
}

#[test]
fn removing_a_backend_forgets_its_overrides() {
    let (mut a, _fake, t0) = agent(None);
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"maintenance","service":"web","backend":"b2","on":true}"#,
            t0
        )
        .ok
    );
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"remove-backend","service":"web","backend":"b2"}"#,
            t0
        )
        .ok
    );
    assert!(a.overrides().by_backend.is_empty());
    assert!(req(&mut a, r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.2","name":"b2"}}"#, t0).ok);
    assert!(
        !a.overrides().get("web", "b2").maintenance,
        "a re-added backend starts clean"
    );
}

#[test]
fn reload_refuses_broken_files_and_restart_only_changes() {
    let dir = std::env::temp_dir().join(format!("lb-agent-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lb.toml");
    std::fs::write(&path, CFG).unwrap();
    let (mut a, fake, t0) = agent(Some(path.clone()));
    let cfg = a.config().clone();
    let n = fake.count();
    let reload = r#"{"version":1,"verb":"reload"}"#;
    assert!(req(&mut a, reload, t0).ok, "same file: ok");
    // A syntax error: the place is the file and the line.
    let broken = format!("{CFG}\n[broken\n");
    std::fs::write(&path, &broken).unwrap();
    let line = broken.lines().position(|l| l == "[broken").unwrap() + 1;
    let e = req(&mut a, reload, t0).error.unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(
        e.message
            .contains(&format!("line {line}: file: invalid table header")),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    // A rule broken: the place and its line.
    std::fs::write(
        &path,
        CFG.replace(
            "connection_draining_timeout_sec = 10",
            "connection_draining_timeout_sec = 4000",
        ),
    )
    .unwrap();
    let e = req(&mut a, reload, t0).error.unwrap();
    assert!(
        e.message.contains(
            "line 4: backend_services.web.connection_draining_timeout_sec: must be 0..=3600"
        ),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    // A setting that only applies at start.
    std::fs::write(&path, format!("[dataplane]\nring_size = 13\n{CFG}")).unwrap();
    let e = req(&mut a, reload, t0).error.unwrap();
    assert!(
        e.message.contains("dataplane.ring_size") && e.message.contains("restart"),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    // A good change goes through.
    std::fs::write(&path, CFG.replace("10.0.0.3", "10.0.0.4")).unwrap();
    assert!(req(&mut a, reload, t0).ok);
    assert_eq!(backend(&fake.last(), "b3").addr.to_string(), "10.0.0.4");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reads_answer() {
    let (mut a, _fake, t0) = agent(None);
    let r = req(&mut a, r#"{"version":1,"verb":"status"}"#, t0);
    assert_eq!(r.result.unwrap()["backends"], 3);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"list","what":"backends"}"#,
        t0,
    );
    let v = r.result.unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);
    assert_eq!(v[0]["state"], "ready");
    assert_eq!(v[0]["health"], "unchecked", "no health check configured");
    assert_eq!(v[2]["in_table"], false, "failover backend idle");
    let r = req(&mut a, r#"{"version":1,"verb":"list","what":"rules"}"#, t0);
    assert_eq!(r.result.unwrap()[0]["ports"], "80");
    let _ = req(
        &mut a,
        r#"{"version":1,"verb":"drain","service":"web","backend":"b1"}"#,
        t0,
    );
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"describe-service","service":"web"}"#,
        t0 + Duration::from_secs(4),
    );
    let v = r.result.unwrap();
    assert_eq!(v["backends"][0]["state"], "draining");
    assert_eq!(v["backends"][0]["drain_remaining_sec"], 6.0);
}

#[test]
fn verbs_on_the_wire_match_the_cli() {
    // `lb drain web b1` and the JSON a script would send are the same request.
    let v = crate::cli::ClientCmd::Drain {
        service: "web".into(),
        backend: "b1".into(),
    }
    .verb();
    assert_eq!(
        v,
        Verb::Drain {
            service: "web".into(),
            backend: "b1".into()
        }
    );
}

#[test]
fn a_removed_backend_drains_for_the_timeout_then_leaves() {
    let (mut a, fake, t0) = agent(None);
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"remove-backend","service":"web","backend":"b2"}"#,
            t0
        )
        .ok
    );
    let b = backend(&fake.last(), "b2").clone();
    assert!(
        !b.in_table && b.draining && !b.evict,
        "kept for its flows: {b:?}"
    );
    assert_eq!(a.next_deadline(t0), Some(t0 + Duration::from_secs(10)));
    a.reconcile(t0 + Duration::from_secs(10));
    assert!(fake.last().services[0]
        .backends
        .iter()
        .all(|b| b.name != "b2"));
}

#[test]
fn overrides_survive_a_restart_through_the_state_file() {
    let path = std::env::temp_dir().join(format!("lb-agent-state-{}.json", std::process::id()));
    let _ignored = std::fs::remove_file(&path);
    let (mut a, _fake, t0) = agent(None);
    a.restore(Default::default(), path.clone());
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"drain","service":"web","backend":"b1"}"#,
            t0
        )
        .ok
    );
    assert!(
        req(
            &mut a,
            r#"{"version":1,"verb":"maintenance","service":"web","backend":"b2","on":true}"#,
            t0
        )
        .ok
    );
    // A new agent (as after a restart) starts from the saved overrides.
    let fake = Fake::default();
    let mut b = Agent::new(
        crate::model::parse(CFG).unwrap(),
        None,
        Box::new(fake.clone()),
    );
    b.restore(super::persist::load(&path).unwrap(), path.clone());
    b.reconcile(Instant::now());
    let p = fake.last();
    assert!(backend(&p, "b1").draining && !backend(&p, "b1").in_table);
    assert!(backend(&p, "b2").evict && !backend(&p, "b2").in_table);
    // Undoing them is saved too.
    assert!(
        req(
            &mut b,
            r#"{"version":1,"verb":"undrain","service":"web","backend":"b1"}"#,
            t0
        )
        .ok
    );
    assert!(super::persist::load(&path)
        .unwrap()
        .get("web", "b1")
        .drain_started
        .is_none());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn only_start_time_settings_need_a_restart() {
    use super::state::restart_only_changes;
    let a = crate::model::parse(CFG).unwrap().config().clone();
    let mut b = a.clone();
    b.backend_services
        .get_mut("web")
        .unwrap()
        .connection_draining_timeout_sec = 20;
    assert!(
        restart_only_changes(&a, &b).is_ok(),
        "service settings reload"
    );
    let mut c = a.clone();
    c.forwarding_rules.get_mut("vip").unwrap().announce = Some(false);
    assert!(
        restart_only_changes(&a, &c).is_ok(),
        "a rule's announce flag reloads"
    );
    for (f, name) in [
        (
            (|c: &mut Config| c.dataplane.conn_table_size = 2048) as fn(&mut Config),
            "dataplane.conn_table_size",
        ),
        (
            |c: &mut Config| c.dataplane.max_services = 8,
            "dataplane.max_services",
        ),
        (
            |c: &mut Config| c.dataplane.pin_path = "/sys/fs/bpf/other".into(),
            "dataplane.pin_path",
        ),
        (
            |c: &mut Config| c.dataplane.interfaces = vec!["eth9".into()],
            "dataplane.interfaces",
        ),
        (
            |c: &mut Config| c.admin.socket = "/tmp/x.sock".into(),
            "admin.socket",
        ),
        (
            |c: &mut Config| c.admin.metrics_listen = Some("127.0.0.1:9".into()),
            "admin.metrics_listen",
        ),
        (
            |c: &mut Config| c.admin.max_connections = std::num::NonZeroU32::MIN,
            "admin.idle_timeout_sec/max_connections",
        ),
        (
            |c: &mut Config| c.admin.idle_timeout_sec = std::num::NonZeroU32::MIN,
            "admin.idle_timeout_sec/max_connections",
        ),
        (
            |c: &mut Config| c.announce.daemon = crate::config::AnnounceDaemon::Bird,
            "announce",
        ),
    ] {
        let mut b = a.clone();
        f(&mut b);
        let e = restart_only_changes(&a, &b).unwrap_err().to_string();
        assert!(e.contains(name) && e.contains("restart"), "{e}");
    }
}

#[test]
fn carried_over_unhealthy_backends_wait_for_the_checker() {
    use crate::health::{Health, HealthSnapshot};
    let (mut a, fake, t0) = agent(None);
    a.seed_unhealthy(vec![crate::ids::BackendKey::new("web", "b1")]);
    a.reconcile(t0);
    assert!(!backend(&fake.last(), "b1").in_table && !backend(&fake.last(), "b1").healthy);
    // A snapshot without a verdict for b1 keeps the carried-over one.
    let mut snap = HealthSnapshot::default();
    snap.backends
        .insert(crate::ids::BackendKey::new("web", "b2"), Health::Healthy);
    a.set_health(Arc::new(snap.clone()), t0);
    assert!(!backend(&fake.last(), "b1").in_table);
    // The checker's own verdict replaces it.
    snap.backends
        .insert(crate::ids::BackendKey::new("web", "b1"), Health::Healthy);
    a.set_health(Arc::new(snap.clone()), t0);
    assert!(backend(&fake.last(), "b1").in_table);
    snap.backends
        .remove(&crate::ids::BackendKey::new("web", "b1"));
    a.set_health(Arc::new(snap), t0);
    assert!(
        backend(&fake.last(), "b1").in_table,
        "the seed is gone once the checker spoke"
    );
}

/// An L7 tier that records prepares, commits, aborts and admissions, and can refuse.
#[derive(Clone, Default)]
struct FakeL7 {
    log: Arc<Mutex<Vec<String>>>,
    refuse: Arc<AtomicBool>,
    admission: Arc<Mutex<crate::model::L7Admission>>,
}

impl super::state::L7Port for FakeL7 {
    fn prepare(&mut self, _model: &crate::model::Model) -> Result<(), String> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err("ssl_certificates.c: cannot read (test)".into());
        }
        self.log.lock().unwrap().push("prepare".into());
        Ok(())
    }
    fn commit(&mut self, adm: crate::model::L7Admission) {
        self.log.lock().unwrap().push("commit".into());
        *self.admission.lock().unwrap() = adm;
    }
    fn abort(&mut self) {
        self.log.lock().unwrap().push("abort".into());
    }
    fn set_admission(&mut self, adm: crate::model::L7Admission) {
        *self.admission.lock().unwrap() = adm;
    }
    fn stats(&self) -> Option<crate::l7::L7Stats> {
        None
    }
}

const L7_PART: &str = r#"
[backend_services.app]
protocol = "HTTP"
failover_policy = { failover_ratio = 0.6 }
[[backend_services.app.backends]]
name = "p1"
address = "10.0.1.1"
port = 80
[[backend_services.app.backends]]
name = "p2"
address = "10.0.1.2"
port = 80
[[backend_services.app.backends]]
name = "f"
address = "10.0.1.3"
port = 80
failover = true
"#;

fn agent_with_l7() -> (Agent, Fake, FakeL7, Instant) {
    let fake = Fake::default();
    let l7 = FakeL7::default();
    let cfg = crate::model::parse(&format!("{CFG}{L7_PART}")).unwrap();
    let mut a = Agent::new(cfg, None, Box::new(fake.clone())).with_l7(Box::new(l7.clone()));
    let t0 = Instant::now();
    a.reconcile(t0);
    (a, fake, l7, t0)
}

fn admit(l7: &FakeL7, b: &str) -> crate::model::L7Admit {
    l7.admission.lock().unwrap()[&crate::ids::BackendKey::new("app", b)]
}

#[test]
fn an_l7_refusal_changes_neither_tier() {
    let (mut a, fake, l7, t0) = agent_with_l7();
    let (cfg, n) = (a.config().clone(), fake.count());
    l7.refuse.store(true, Ordering::SeqCst);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9"}}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert!(
        e.message.contains("L7 tier refused") && e.message.contains("ssl_certificates.c"),
        "{}",
        e.message
    );
    unchanged(&a, &fake, &cfg, n);
    assert!(
        l7.log.lock().unwrap().is_empty(),
        "nothing prepared or committed"
    );
}

#[test]
fn an_l4_refusal_aborts_the_prepared_l7_change() {
    let (mut a, fake, l7, t0) = agent_with_l7();
    let (cfg, n) = (a.config().clone(), fake.count());
    fake.refuse.store(true, Ordering::SeqCst);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"web","backend":{"address":"10.0.0.9"}}"#,
        t0,
    );
    assert_eq!(r.error.unwrap().kind, ErrorKind::Dataplane);
    unchanged(&a, &fake, &cfg, n);
    assert_eq!(*l7.log.lock().unwrap(), ["prepare", "abort"]);
    fake.refuse.store(false, Ordering::SeqCst);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"add-backend","service":"app","backend":{"address":"10.0.1.9","port":80}}"#,
        t0,
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(
        *l7.log.lock().unwrap(),
        ["prepare", "abort", "prepare", "commit"]
    );
    assert!(admit(&l7, "10.0.1.9:80").serving, "the new backend serves");
}

#[test]
fn l7_admission_follows_overrides_and_failover() {
    let (mut a, _fake, l7, t0) = agent_with_l7();
    assert!(admit(&l7, "p1").serving && admit(&l7, "p2").serving);
    assert!(!admit(&l7, "f").serving, "failover idle at ratio 1.0");
    // An override-only change never rebuilds the L7 table.
    let drain = r#"{"version":1,"verb":"drain","service":"app","backend":"p1"}"#;
    assert!(req(&mut a, drain, t0).ok);
    assert!(
        l7.log.lock().unwrap().is_empty(),
        "drain rebuilt the L7 table"
    );
    let p1 = admit(&l7, "p1");
    assert!(
        !p1.serving && !p1.evicted,
        "draining: no new requests, in-flight kept"
    );
    assert!(admit(&l7, "f").serving, "0.5 < 0.6: failover takes over");
    a.reconcile(t0 + Duration::from_secs(300));
    assert!(
        admit(&l7, "p1").evicted,
        "draining over: what remains is closed"
    );
    let down =
        r#"{"version":1,"verb":"force-health","service":"app","backend":"p2","health":"down"}"#;
    let r = req(&mut a, down, t0);
    assert!(r.ok, "{r:?}");
    assert!(!admit(&l7, "p2").serving && !admit(&l7, "p2").healthy);
}

/// A change fails and so does its rollback: the agent stops naming the old plan as applied,
/// `status` says the dataplane is unknown, and the next reconcile applies the plan again
/// (it would have been skipped as "already there" had `applied` kept the old plan).
#[test]
fn a_failed_rollback_marks_the_dataplane_unknown_until_rewritten() {
    let (mut a, fake, t0) = agent(None);
    let before = fake.last();
    fake.broken.store(true, Ordering::SeqCst);
    let r = req(
        &mut a,
        r#"{"version":1,"verb":"drain","service":"web","backend":"b1"}"#,
        t0,
    );
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Dataplane);
    assert!(
        e.message.contains("could not be restored") && !e.message.contains("nothing was changed"),
        "{}",
        e.message
    );
    assert_eq!(a.applied(), None, "the old plan is no longer claimed");
    let why = a.dataplane_unknown().expect("marked unknown").to_string();
    assert!(why.contains("restoring the previous state failed"), "{why}");
    let st = crate::admin::view::status(&a);
    assert_eq!(st.dataplane_unknown.as_deref(), Some(why.as_str()));
    assert!(crate::cli::table::status(&st).contains("DATAPLANE STATE UNKNOWN"));
    // Still broken: reconciles keep trying and it stays unknown.
    a.reconcile(t0);
    assert!(a.dataplane_unknown().is_some());
    fake.broken.store(false, Ordering::SeqCst);
    let n = fake.count();
    a.reconcile(t0);
    assert_eq!(fake.count(), n + 1, "the unchanged plan is written again");
    assert_eq!(
        fake.last(),
        before,
        "the running configuration's plan, drain refused"
    );
    assert_eq!(a.applied(), Some(&before));
    assert!(a.dataplane_unknown().is_none());
    assert!(crate::admin::view::status(&a).dataplane_unknown.is_none());
}

#[test]
fn node_drain_needs_an_announcer() {
    let (mut a, _fake, t0) = agent(None);
    let r = req(&mut a, r#"{"version":1,"verb":"node-drain"}"#, t0);
    assert!(!r.ok);
    let e = r.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("announces nothing"), "{}", e.message);
    assert!(
        !a.overrides().node_drained,
        "a refused drain changes nothing"
    );
}

/// `lb node drain` withdraws every announcement (the include file empties), keeps the
/// plan as it was (the dataplane keeps serving), survives a restart through the state file,
/// and `undrain` announces again.
#[test]
fn node_drain_withdraws_is_saved_and_undrain_announces_again() {
    let dir = std::env::temp_dir().join(format!("lb-agent-announce-{}", std::process::id()));
    let _ignored = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let include = dir.join("lb-vips.conf");
    let state = dir.join("admin.state.json");
    let text = format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\n[announce]\ndaemon = \"bird\"\ninclude_file = \"{}\"\ncontrol_socket = \"{}\"\n{CFG}",
        include.display(),
        dir.join("no-bird.ctl").display()
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let start = |ov: super::overrides::Overrides| {
        let fake = Fake::default();
        let model = crate::model::parse(&text).unwrap();
        let mut a = Agent::new(model, None, Box::new(fake.clone()));
        a.restore(ov, state.clone());
        a.reconcile(Instant::now());
        let first = crate::model::announce::prefixes(&a.announcements());
        let drained = a.overrides().node_drained;
        let ann = super::announce::Announcer::start(&a.config().announce, first, drained);
        let mut a = a.with_announcer(ann);
        a.reconcile(Instant::now());
        (a, fake)
    };
    // The worker writes the file, then fails to reach the (absent) BIRD and retries.
    let file_says = |route: bool| {
        rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            loop {
                let t = std::fs::read_to_string(&include).unwrap_or_default();
                if t.contains("protocol static lb_vips") && t.contains("10.0.0.100/32") == route {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "include file: {t}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let (mut a, fake) = start(Default::default());
    file_says(true);
    let before = fake.last();
    let t0 = Instant::now();
    assert!(req(&mut a, r#"{"version":1,"verb":"node-drain"}"#, t0).ok);
    file_says(false);
    assert_eq!(fake.last(), before, "the dataplane keeps serving");
    let st = a.announce_status().unwrap();
    assert!(st.node_drained);
    assert_eq!(
        st.rules[0].withdrawn,
        Some(crate::model::announce::Withdrawn::NodeDrained)
    );
    // No BIRD listens: the failure is reported and the daemon is not in step.
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while a.announce_status().unwrap().last_error.is_none() {
            assert!(tokio::time::Instant::now() < deadline, "no error reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let st = a.announce_status().unwrap();
    assert!(!st.in_sync && st.configure_errors >= 1, "{st:?}");
    assert!(st.last_error.unwrap().contains("birdc"));
    // A restarted agent starts drained and announces nothing.
    drop(a);
    let (mut b, _fake) = start(super::persist::load(&state).unwrap());
    assert!(b.overrides().node_drained);
    assert!(crate::model::announce::prefixes(&b.announcements()).is_empty());
    assert!(req(&mut b, r#"{"version":1,"verb":"node-undrain"}"#, t0).ok);
    file_says(true);
    assert!(!super::persist::load(&state).unwrap().node_drained);
    drop(b);
    drop(_guard);
    drop(rt);
    std::fs::remove_dir_all(&dir).unwrap();
}
