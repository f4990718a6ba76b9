//! Several balancers behind ECMP, through `lb run` and BIRD as a user would run them: a
//! router namespace running BIRD with ECMP (`merge paths on`, `fib_multipath_hash_policy =
//! 1`), two balancer namespaces each running `lb run` (XDP on its veth) and BIRD peering
//! with the router over eBGP with BFD (the shipped packaging/bird/bird.conf), three backends
//! on the balancers' L2 segment, and a client behind the router. The wiring is drawn in
//! `lb_tests::ha`: the router hashes each flow onto one announcing balancer, the balancer
//! rewrites MACs to the backend Maglev picks (L2 DSR), and backends answer the client
//! through the router.
//!
//! One topology, checked in order (each phase prints what it measured):
//! 1. both balancers were fed the same backends in different orders (file order, and on
//!    balancer 1 admin-socket adds with a removal and re-add in between, other names): every
//!    Maglev slot maps to the same backend address in both pinned maps;
//! 2. flows from 600 client ports spread over both balancers (each 30–70%) and the three
//!    backends (each 25–42%);
//!    CLIENT_IP affinity sends every flow of the client to one backend through either
//!    balancer; a rule with `announce = false` is never announced;
//! 3. `lb node drain` on balancer 0 withdraws its announcements (the router keeps only
//!    balancer 1), open flows keep working, and the same 5-tuples reach the same backends
//!    through balancer 1; `lb node undrain` announces again;
//! 4. a VIP whose service loses its only backend (its health check fails) is withdrawn by
//!    both balancers within interval × (unhealthy threshold + 1) + 1 s = 2.5 s;
//! 5. an agent restart withdraws nothing (the router keeps both next hops throughout), and
//!    an include file emptied behind the agent's back is written again;
//! 6. SIGKILL of balancer 0's agent, then its link cut: long-lived TCP connections exchanging
//!    every 100 ms continue through balancer 1 on the same backends, none is reset, and the
//!    longest gap is bounded by the BFD detection time (3 × 100 ms) + 1 s;
//! 7. `lb down` withdraws the balancer's announcements (empty include file, `birdc
//!    configure`) before removing its dataplane.

use anyhow::{Context, Result};
use lb_tests::{
    ha::{self, longest_gap, probe, Ha, Talker},
    lbrun::{wait_for, Agent},
    netns::ProcGuard,
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

mod agent_support;
use agent_support as support;
use support::{lb, lb_ok, Maps, BACKEND_BIN, RING};

/// First client port of the spread and same-backend rounds; PORTS ports from it. Above the
/// ephemeral range (32768–60999), so no other connection of the test takes one of them.
const FIRST_PORT: u16 = 61000;
/// 600 flows: a backend's expected third is then 4 standard deviations inside 25–42%.
const PORTS: u16 = 600;
/// Client ports of the CLIENT_IP affinity rounds (60 of them).
const STICKY_PORT: u16 = 62000;
/// BFD: 3 × 100 ms (packaging/bird/bird.conf and the router).
const BFD_DETECTION: Duration = Duration::from_millis(300);

/// Balancer `i`'s configuration: `web` (VIP 0, port 80) over `backends` in that order with
/// those names, and `solo` (VIP 1, port 80) over backend 0 alone, health-checked on port
/// 9000 so the test can take its only backend away.
fn config(ha: &Ha, i: usize, backends: &[(usize, &str)]) -> String {
    let mut c = format!(
        r#"[dataplane]
interfaces = ["eth0"]
pin_path = "{{PIN}}"
max_services = 4
ring_size = {RING}

[admin]
socket = "{{SOCK}}"
metrics_listen = "127.0.0.1:9100"

{announce}
[health_checks.web]
protocol = "TCP"
port = 80
check_interval_sec = 0.5
timeout_sec = 0.5
healthy_threshold = 1
unhealthy_threshold = 2

[health_checks.solo]
protocol = "TCP"
port = 9000
check_interval_sec = 0.5
timeout_sec = 0.5
healthy_threshold = 1
unhealthy_threshold = 2

[forwarding_rules.web]
ip_address = "{vip0}"
ports = [80]
backend_service = "web"

[forwarding_rules.solo]
ip_address = "{vip1}"
ports = [80]
backend_service = "solo"

[backend_services.solo]
protocol = "TCP"
health_check = "solo"
backends = [{{ name = "solo-0", address = "{b0}" }}]

[forwarding_rules.sticky]
ip_address = "{vip2}"
ports = [80]
backend_service = "sticky"

[forwarding_rules.hidden]
ip_address = "{vip3}"
ports = [80]
backend_service = "web"
announce = false

[backend_services.sticky]
protocol = "TCP"
session_affinity = "CLIENT_IP"
backends = [{{ address = "{b0}" }}, {{ address = "{b1}" }}, {{ address = "{b2}" }}]

[backend_services.web]
protocol = "TCP"
health_check = "web"
"#,
        announce = ha.announce_section(i),
        vip0 = ha.vip(0),
        vip1 = ha.vip(1),
        vip2 = ha.vip(2),
        vip3 = ha.vip(3),
        b0 = ha.backend_ip(0),
        b1 = ha.backend_ip(1),
        b2 = ha.backend_ip(2),
    );
    for (b, name) in backends {
        c += &format!(
            "\n[[backend_services.web.backends]]\nname = \"{name}\"\naddress = \"{}\"\n",
            ha.backend_ip(*b)
        );
    }
    c
}

/// Starts `lb-backend NAME PORT UDP` in backend `i`.
fn backend(ha: &Ha, i: usize, name: &str, port: u16, udp: u16) -> Result<ProcGuard> {
    ha.backends[i].spawn(&[BACKEND_BIN, name, &port.to_string(), &udp.to_string()])
}

/// Web's Maglev table as backend addresses, from balancer `agent`'s pinned maps.
fn web_table(agent: &Agent, web: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
    let m = Maps::read(&agent.pin_dir)?;
    let sid = m
        .vips
        .iter()
        .find(|(k, _)| k.addr[..4] == web.octets())
        .map(|(_, v)| v.service)
        .context("web VIP not in the maps")?;
    m.tables[&sid]
        .iter()
        .map(|slot| {
            let b = m.backends.get(slot).context("table names an empty slot")?;
            Ok(Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]))
        })
        .collect()
}

/// Probes every port of the round from the client: port → backend name.
fn round(ha: &Ha) -> Result<BTreeMap<u16, String>> {
    round_to(ha, ha.vip(0), FIRST_PORT..FIRST_PORT + PORTS)
}

/// Probes `vip` from each of `ports`: port → backend name.
fn round_to(ha: &Ha, vip: Ipv4Addr, ports: std::ops::Range<u16>) -> Result<BTreeMap<u16, String>> {
    let to = SocketAddr::new(vip.into(), 80);
    ha.client.run_in(move || -> Result<BTreeMap<u16, String>> {
        let mut out = BTreeMap::new();
        for p in ports {
            let name = wait_for(Duration::from_secs(5), || probe(to, p))
                .with_context(|| format!("client port {p}"))?;
            out.insert(p, name);
        }
        Ok(out)
    })?
}

/// Client ports among `ports` of the flows to `vip` in balancer `agent`'s connection tables.
fn carried(agent: &Agent, vip: Ipv4Addr, ports: &std::ops::Range<u16>) -> Result<Vec<u16>> {
    Ok(ha::carried(agent, vip)?
        .into_iter()
        .filter(|p| ports.contains(p))
        .collect())
}

fn share(n: usize, total: usize) -> f64 {
    n as f64 / total as f64
}

#[test]
fn two_balancers_behind_ecmp_announce_through_bird_and_keep_flows() -> Result<()> {
    if !lb_tests::root_or_skip("two_balancers_behind_ecmp") {
        return Ok(());
    }
    let mut rig = Rig::start()?;
    let table = rig.same_tables()?;
    let (first, via0) = rig.spread()?;
    let sticky = rig.client_ip_affinity()?;
    rig.node_drain(&first, &via0, &sticky)?;
    rig.withdrawn_without_backend()?;
    rig.restart_keeps_announcements(&table)?;
    rig.kill_and_cut()?;
    rig.down()
}

/// The topology and its processes. Fields drop in order: agents, backends, then `ha`
/// (namespaces, BIRD processes).
struct Rig {
    a0: Agent,
    a1: Agent,
    solo_check: Option<ProcGuard>,
    _servers: Vec<ProcGuard>,
    bal: Vec<Ipv4Addr>,
    ha: Ha,
}

/// A rule's entry in `lb status -o json`'s announcements.
fn rule_status(st: &serde_json::Value, rule: &str) -> serde_json::Value {
    st["announce"]["rules"]
        .as_array()
        .and_then(|v| v.iter().find(|r| r["rule"] == rule))
        .cloned()
        .unwrap_or_default()
}

impl Rig {
    /// Backends, BIRDs and both agents; balancer 0 lists the web backends 0, 1, 2 in its
    /// file, balancer 1 lists 2 and 0 under other names, then gets 1 through the socket, 0
    /// removed and added back without a name. Returns once the router has both next hops.
    fn start() -> Result<Rig> {
        let mut ha = Ha::new(2, 3)?;
        let bal: Vec<Ipv4Addr> = (0..2).map(|i| ha.balancer_ip(i)).collect();
        let servers = (0..3)
            .map(|i| backend(&ha, i, &format!("backend-{i}"), 80, 53))
            .collect::<Result<Vec<_>>>()?;
        let solo_check = Some(backend(&ha, 0, "solo-check", 9000, 9053)?);
        for i in 0..2 {
            ha.empty_include(i)?;
            ha.start_balancer_bird(i)?;
        }
        let a0 = Agent::start(
            &ha.balancers[0],
            &config(
                &ha,
                0,
                &[(0, "backend-0"), (1, "backend-1"), (2, "backend-2")],
            ),
        )?;
        let a1 = Agent::start(
            &ha.balancers[1],
            &config(&ha, 1, &[(2, "two"), (0, "zero")]),
        )?;
        let (b0, b1) = (ha.backend_ip(0).to_string(), ha.backend_ip(1).to_string());
        wait_for(Duration::from_secs(20), || {
            let o = lb(
                &a1,
                &["backend", "add", "web", "--address", &b1, "--name", "one"],
            );
            (o.code == 0).then_some(()).context(o.stderr)
        })?;
        lb_ok(&a1, &["backend", "remove", "web", "zero"]);
        lb_ok(&a1, &["backend", "add", "web", "--address", &b0]);
        let t = ha
            .wait_next_hops(ha.vip(0), &bal, Duration::from_secs(30))
            .with_context(|| {
                format!(
                    "router log:\n{}\nlb0 log:\n{}",
                    ha.bird_log("router"),
                    a0.log()
                )
            })?;
        println!("ECMP route to {} via both balancers after {t:?}", ha.vip(0));
        for k in [1, 2] {
            ha.wait_next_hops(ha.vip(k), &bal, Duration::from_secs(10))?;
        }
        // The opted-out rule is never announced, and says so.
        assert_eq!(ha.next_hops(ha.vip(3))?, Vec::<Ipv4Addr>::new());
        let st = lb_ok(&a0, &["status"]);
        assert_eq!(rule_status(&st, "hidden")["withdrawn"], "opted-out", "{st}");
        // The operator's table says the same.
        let sock = support::socket(&a0);
        let out = std::process::Command::new(lb_tests::lb_binary())
            .args(["--socket", sock.to_str().unwrap(), "status"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        for line in [
            format!("  web {}/32 announced", ha.vip(0)),
            format!("  hidden {}/32 withdrawn: opted out", ha.vip(3)),
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        Ok(Rig {
            a0,
            a1,
            solo_check,
            _servers: servers,
            bal,
            ha,
        })
    }

    /// Phase 1: Every Maglev entry maps to the same backend address on both balancers, although
    /// their backend slots differ. Returns the table.
    fn same_tables(&self) -> Result<Vec<Ipv4Addr>> {
        let vip = self.ha.vip(0);
        let table = wait_for(Duration::from_secs(10), || {
            let t = web_table(&self.a0, vip)?;
            (t.iter().collect::<std::collections::BTreeSet<_>>().len() == 3)
                .then_some(t)
                .context("balancer 0 table lacks a backend")
        })?;
        wait_for(Duration::from_secs(10), || {
            (web_table(&self.a1, vip)? == table)
                .then_some(())
                .context("tables differ")
        })
        .context("balancer 1's Maglev table differs from balancer 0's")?;
        assert_eq!(table.len(), RING as usize);
        let slots = |a: &Agent| -> Result<Vec<String>> {
            let m = Maps::read(&a.pin_dir)?;
            Ok(m.backends
                .iter()
                .map(|(slot, b)| format!("{slot}={}.{}", b.addr[2], b.addr[3]))
                .collect())
        };
        println!(
            "same Maglev table on both balancers ({} entries); backend slots {:?} vs {:?}",
            table.len(),
            slots(&self.a0)?,
            slots(&self.a1)?
        );
        Ok(table)
    }

    /// Phase 2: Flows from PORTS client ports spread over both balancers (30–70% each) and the
    /// three backends (25–42% each). Returns port → backend and the ports balancer 0 carried.
    fn spread(&self) -> Result<(BTreeMap<u16, String>, Vec<u16>)> {
        let vip = self.ha.vip(0);
        let first = round(&self.ha)?;
        let via0 = carried(&self.a0, vip, &(FIRST_PORT..FIRST_PORT + PORTS))?;
        let via1 = carried(&self.a1, vip, &(FIRST_PORT..FIRST_PORT + PORTS))?;
        let total = PORTS as usize;
        assert_eq!(
            via0.len() + via1.len(),
            total,
            "each flow on exactly one balancer"
        );
        let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for n in first.values() {
            *per_backend.entry(n.as_str()).or_default() += 1;
        }
        println!(
            "{total} flows: balancer 0 {} ({:.0}%), balancer 1 {} ({:.0}%); backends {per_backend:?}",
            via0.len(),
            100.0 * share(via0.len(), total),
            via1.len(),
            100.0 * share(via1.len(), total)
        );
        for n in [via0.len(), via1.len()] {
            assert!(
                (0.30..=0.70).contains(&share(n, total)),
                "balancer share {n}/{total}"
            );
        }
        assert_eq!(per_backend.len(), 3, "{per_backend:?}");
        for (b, n) in &per_backend {
            assert!(
                (0.25..=0.42).contains(&share(*n, total)),
                "{b}: {n}/{total}"
            );
        }
        Ok((first.clone(), via0))
    }

    /// Hashed affinity agrees across balancers too: CLIENT_IP sends every port of the one
    /// client to one backend, whichever balancer the router picked.
    fn client_ip_affinity(&self) -> Result<BTreeMap<u16, String>> {
        let ports = STICKY_PORT..STICKY_PORT + 60;
        let sticky = round_to(&self.ha, self.ha.vip(2), ports.clone())?;
        let backends: std::collections::BTreeSet<&String> = sticky.values().collect();
        let (s0, s1) = (
            carried(&self.a0, self.ha.vip(2), &ports)?.len(),
            carried(&self.a1, self.ha.vip(2), &ports)?.len(),
        );
        println!("CLIENT_IP affinity: 60 flows, {s0} via balancer 0 and {s1} via balancer 1, backends {backends:?}");
        assert!(s0 > 0 && s1 > 0, "both balancers should carry some");
        assert_eq!(backends.len(), 1, "{sticky:?}");
        Ok(sticky)
    }

    /// Phase 3: `lb node drain` on balancer 0: withdrawn (status, metrics, router), open flows keep
    /// working, and the same 5-tuples reach the same backends through balancer 1.
    fn node_drain(
        &self,
        first: &BTreeMap<u16, String>,
        via0: &[u16],
        sticky: &BTreeMap<u16, String>,
    ) -> Result<()> {
        let (ha, vip) = (&self.ha, self.ha.vip(0));
        let open: Vec<Talker> = (0..6)
            .map(|_| Talker::open(&ha.client, SocketAddr::new(vip.into(), 80)))
            .collect::<Result<_>>()?;
        lb_ok(&self.a0, &["node", "drain"]);
        let t = ha.wait_next_hops(vip, &self.bal[1..], Duration::from_secs(5))?;
        ha.wait_next_hops(ha.vip(1), &self.bal[1..], Duration::from_secs(5))?;
        println!("lb node drain: the router dropped balancer 0 after {t:?}");
        let st = lb_ok(&self.a0, &["status"]);
        assert!(st["announce"]["node_drained"].as_bool().unwrap(), "{st}");
        for rule in ["web", "solo", "sticky"] {
            assert_eq!(rule_status(&st, rule)["withdrawn"], "node-drained", "{st}");
        }
        let metrics = ha.balancers[0].exec(&["curl", "-sS", "http://127.0.0.1:9100/metrics"])?;
        for line in [
            "lb_announce_node_drained 1".to_string(),
            format!("lb_announce_rule_state{{rule=\"web\",prefix=\"{vip}/32\",state=\"node_drained\"}} 1"),
            format!("lb_announce_rule_state{{rule=\"web\",prefix=\"{vip}/32\",state=\"announced\"}} 0"),
            "lb_announce_in_sync 1".to_string(),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} not in:\n{metrics}");
        }
        let second = round(ha)?;
        let sticky_ports = STICKY_PORT..STICKY_PORT + 60;
        assert_eq!(
            &round_to(ha, ha.vip(2), sticky_ports)?,
            sticky,
            "CLIENT_IP flows changed backend with their balancer"
        );
        let now_via1 = carried(&self.a1, vip, &(FIRST_PORT..FIRST_PORT + PORTS))?;
        assert_eq!(
            now_via1.len(),
            PORTS as usize,
            "every flow now through balancer 1"
        );
        let moved: Vec<u16> = via0
            .iter()
            .copied()
            .filter(|p| first[p] != second[p])
            .collect();
        assert!(
            moved.is_empty(),
            "flows that changed backend with their balancer: {moved:?}"
        );
        assert_eq!(first, &second);
        println!(
            "{} flows first carried by balancer 0 reached the same backends through balancer 1",
            via0.len()
        );
        // Each open flow keeps exchanging through balancer 1: three more exchanges each,
        // waited for (a loaded machine slows the exchanges, not their outcome).
        let counts: Vec<usize> = open.iter().map(Talker::exchanges).collect();
        let kept = wait_for(Duration::from_secs(15), || {
            let behind: Vec<u16> = open
                .iter()
                .zip(&counts)
                .filter(|(t, c)| t.exchanges() < *c + 3)
                .map(|(t, _)| t.local_port)
                .collect();
            anyhow::ensure!(behind.is_empty(), "flows from {behind:?} stalled");
            Ok(())
        });
        for t in open {
            let (backend, port) = (t.backend.clone(), t.local_port);
            let times = t.finish().map_err(anyhow::Error::msg)?;
            assert!(times.len() >= 3, "flow from {port} ({backend}) barely ran");
        }
        kept?;
        lb_ok(&self.a0, &["node", "undrain"]);
        ha.wait_next_hops(vip, &self.bal, Duration::from_secs(5))?;
        Ok(())
    }

    /// Phase 4: The solo service loses its only backend: both balancers withdraw its VIP within
    /// interval × (unhealthy threshold + 1) + 1 s.
    fn withdrawn_without_backend(&mut self) -> Result<()> {
        let (ha, vip_solo) = (&self.ha, self.ha.vip(1));
        let bound = Duration::from_secs_f64(0.5 * 3.0 + 1.0);
        if let Some(mut g) = self.solo_check.take() {
            g.kill();
        }
        let t = ha.wait_next_hops(vip_solo, &[], Duration::from_secs(10))?;
        println!("VIP {vip_solo} withdrawn {t:?} after its only backend failed (bound {bound:?})");
        assert!(t <= bound, "withdrawal took {t:?}, over {bound:?}");
        assert_eq!(
            ha.next_hops(ha.vip(0))?,
            self.bal,
            "the web VIP stays announced"
        );
        let st = lb_ok(&self.a1, &["status"]);
        assert_eq!(
            rule_status(&st, "solo")["withdrawn"],
            "no-usable-backend",
            "{st}"
        );
        Ok(())
    }

    /// Phase 5: An agent restart (an upgrade) withdraws nothing: the file stays, BIRD keeps it.
    fn restart_keeps_announcements(&mut self, table: &[Ipv4Addr]) -> Result<()> {
        let (vip, file) = (self.ha.vip(0), self.ha.include_file(1));
        let before = std::fs::read_to_string(&file)?;
        // Socket changes last until a restart: the file now names all three, in a third order.
        self.a1
            .rewrite_config(&config(&self.ha, 1, &[(1, "one"), (2, "two"), (0, "zero")]))?;
        self.a1.restart()?;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            assert_eq!(
                self.ha.next_hops(vip)?,
                self.bal,
                "a restarting agent must not withdraw"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = wait_for(Duration::from_secs(10), || {
            let o = lb(&self.a1, &["status"]);
            (o.code == 0).then(|| o.json()).context(o.stderr)
        })?;
        assert_eq!(st["announce"]["in_sync"], true, "{st}");
        assert_eq!(std::fs::read_to_string(&file)?, before);
        wait_for(Duration::from_secs(10), || {
            (web_table(&self.a1, vip)? == table)
                .then_some(())
                .context("restarted balancer 1's table differs")
        })?;
        println!("agent restart: both next hops stayed for 3 s, the include file unchanged");
        // BIRD restarted with an emptied file (the drop-in of packaging/bird/bird.conf): the
        // agent notices the file no longer says what it announced and writes it back.
        self.ha.empty_include(1)?;
        lb_tests::ha::birdc(&self.ha.control_socket(1), &["configure"])?;
        self.ha
            .wait_next_hops(vip, &self.bal[..1], Duration::from_secs(3))?;
        let t = self
            .ha
            .wait_next_hops(vip, &self.bal, Duration::from_secs(8))?;
        println!("include file emptied behind the agent: announced again after {t:?} (checked every 5 s)");
        Ok(())
    }

    /// Phase 6: SIGKILL of balancer 0's agent, then its link cut: long-lived connections carry on
    /// through balancer 1, none reset, the longest gap within BFD detection + 1 s.
    fn kill_and_cut(&mut self) -> Result<()> {
        let vip = self.ha.vip(0);
        let talkers: Vec<Talker> = (0..12)
            .map(|_| Talker::open(&self.ha.client, SocketAddr::new(vip.into(), 80)))
            .collect::<Result<_>>()?;
        std::thread::sleep(Duration::from_millis(1500)); // let them promote into CONNS
        let on0: Vec<u16> = ha::carried(&self.a0, vip)?;
        let through0 = talkers
            .iter()
            .filter(|t| on0.contains(&t.local_port))
            .count();
        self.a0.kill();
        std::thread::sleep(Duration::from_millis(500));
        self.ha.cut_link(0)?;
        let cut = Instant::now();
        let t = self
            .ha
            .wait_next_hops(vip, &self.bal[1..], Duration::from_secs(10))?;
        println!("link cut: the router dropped balancer 0 after {t:?} (BFD {BFD_DETECTION:?})");
        std::thread::sleep(Duration::from_secs(3));
        let bound = BFD_DETECTION + Duration::from_secs(1);
        let mut worst = Duration::ZERO;
        for tk in talkers {
            let (backend, port) = (tk.backend.clone(), tk.local_port);
            let times = tk
                .finish()
                .map_err(|e| anyhow::anyhow!("connection from {port} ({backend}) failed: {e}"))?;
            let after = times.iter().filter(|t| **t > cut).count();
            assert!(
                after >= 20,
                "connection from {port} made {after} exchanges after the cut"
            );
            worst = worst.max(longest_gap(&times));
        }
        println!(
            "{through0} of 12 long-lived connections went through balancer 0; none reset; longest gap {worst:?} (bound {bound:?})"
        );
        assert!(
            through0 > 0,
            "no connection crossed balancer 0; the kill proved nothing"
        );
        assert!(worst <= bound, "longest gap {worst:?} over {bound:?}");
        Ok(())
    }

    /// Phase 7: `lb down` on balancer 1 withdraws what it announced before removing the dataplane.
    fn down(&mut self) -> Result<()> {
        let vip = self.ha.vip(0);
        self.a1.kill();
        let down = std::process::Command::new(lb_tests::lb_binary())
            .args(["down", "--config", self.a1.config.to_str().unwrap()])
            .output()?;
        assert!(down.status.success(), "{down:?}");
        let t = self.ha.wait_next_hops(vip, &[], Duration::from_secs(5))?;
        println!("lb down: the router has no route to {vip} after {t:?}");
        assert!(!std::fs::read_to_string(self.ha.include_file(1))?.contains("route"));
        Ok(())
    }
}
