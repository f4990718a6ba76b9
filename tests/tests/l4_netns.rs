//! Whole-system tests of the L4 tier through real sockets, over IPv4 and over IPv6: a
//! client, the balancer (running `lb run`) and three backends in network namespaces on one
//! bridge (tests/src/netns.rs, dual-stack). Backends answer with their name and the client
//! address they saw; the agent resolves their MACs by ARP or NDP and health-checks them.

use anyhow::Result;
use lb_tests::{
    lbrun::{agent_sections, banners, field, wait_answering, wait_for, Agent, Conversation},
    netns::{Family, ProcGuard, Topology},
    root_or_skip,
};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lb-backend");

fn config(t: &Topology, fam: Family, backends: &[usize]) -> String {
    let mut c = agent_sections(t);
    c += &format!(
        r#"
[forwarding_rules.web]
ip_address = "{vip}"
ip_protocol = "TCP"
ports = [80]
backend_service = "tcp-svc"

[forwarding_rules.dns]
ip_address = "{vip}"
ip_protocol = "UDP"
ports = [53]
backend_service = "udp-svc"

[health_checks.tcp80]
protocol = "TCP"
port = 80
check_interval_sec = 1
timeout_sec = 1

[backend_services.tcp-svc]
protocol = "TCP"
health_check = "tcp80"
connection_draining_timeout_sec = 300

[backend_services.udp-svc]
protocol = "UDP"
"#,
        vip = t.vip_of(fam)
    );
    for svc in ["tcp-svc", "udp-svc"] {
        for i in backends {
            c += &format!(
                "[[backend_services.{svc}.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\n",
                t.backend_of(fam, *i)
            );
        }
    }
    c
}

/// Each backend answers TCP 80 and UDP 53, its UDP socket bound to the VIP (DSR replies).
fn start_backends(t: &Topology, fam: Family) -> Result<Vec<ProcGuard>> {
    let vip = t.vip_of(fam).to_string();
    (0..t.backends.len())
        .map(|i| t.backends[i].spawn(&[BACKEND_BIN, &format!("backend-{i}"), "80", "53", &vip]))
        .collect()
}

fn vip(t: &Topology, fam: Family, port: u16) -> SocketAddr {
    SocketAddr::new(t.vip_of(fam), port)
}

/// `n` TCP or UDP exchanges from the client namespace: banners.
fn flows(t: &Topology, fam: Family, n: usize, udp: bool) -> Result<Vec<String>> {
    banners(&t.client, vip(t, fam, if udp { 53 } else { 80 }), n, udp)
}

/// Three backends serving and `lb run` balancing them, answering on the VIP.
fn running(fam: Family) -> (Topology, Vec<ProcGuard>, Agent) {
    let t = Topology::new(3).expect("topology");
    let backends = start_backends(&t, fam).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, fam, &[0, 1, 2])).unwrap();
    if let Err(e) = wait_answering(&t.client, vip(&t, fam, 80), &agent) {
        panic!("the {fam:?} VIP: {e}");
    }
    (t, backends, agent)
}

/// Counts, in the client namespace, packets from the VIP (nftables): all of them, those
/// whose source MAC is a backend's, and those whose source MAC is the balancer's. Direct
/// server return means the second is the first and the third stays 0.
struct ReplyCounter<'a>(&'a Topology, Family);

impl<'a> ReplyCounter<'a> {
    fn install(t: &'a Topology, fam: Family) -> Result<Self> {
        let lb_mac = t.mac_of(&t.balancer)?;
        let backend_macs = t
            .backends
            .iter()
            .map(|b| t.mac_of(b))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let (nft, vip) = (fam.nft(), t.vip_of(fam));
        let rules = format!(
            "table {nft} lbtest {{\n chain input {{\n  type filter hook input priority 0;\n  {nft} saddr {vip} counter\n  {nft} saddr {vip} ether saddr {{ {backend_macs} }} counter\n  {nft} saddr {vip} ether saddr {lb_mac} counter\n }}\n}}\n"
        );
        t.client.nft_load(&rules)?;
        Ok(ReplyCounter(t, fam))
    }

    /// Packets from the VIP: (all, from a backend's MAC, from the balancer's MAC).
    fn read(&self) -> Result<(u64, u64, u64)> {
        let counts = self
            .0
            .client
            .nft_counters(self.1.nft(), "lbtest", "input")?;
        anyhow::ensure!(counts.len() == 3, "unexpected nft counters: {counts:?}");
        Ok((counts[0], counts[1], counts[2]))
    }
}

/// `lb <args>` (client verbs name the agent's socket or pins in `args`).
fn lb(args: &[&str]) -> Result<String> {
    let bin = lb_tests::lb_binary();
    let mut v = vec![bin.to_str().unwrap()];
    v.extend_from_slice(args);
    lb_tests::netns::sh(&v)
}

#[test]
fn tcp_and_udp_reach_all_three_backends_with_the_client_address_over_ipv4() {
    if root_or_skip("l4 netns") {
        spread(Family::V4);
    }
}

#[test]
fn tcp_and_udp_reach_all_three_backends_with_the_client_address_over_ipv6() {
    if root_or_skip("l4 netns IPv6") {
        spread(Family::V6);
    }
}

#[test]
fn an_open_connection_survives_removal_of_its_backend_over_ipv4() {
    if root_or_skip("l4 netns") {
        survives_removal(Family::V4);
    }
}

#[test]
fn an_open_connection_survives_removal_of_its_backend_over_ipv6() {
    if root_or_skip("l4 netns IPv6") {
        survives_removal(Family::V6);
    }
}

/// 300 TCP and 300 UDP flows: each backend 25–42 %, the client's address and the VIP seen
/// by the backend, replies straight from the backends; health, stats and `lb flows` agree.
fn spread(fam: Family) {
    let (t, _backends, agent) = running(fam);
    let replies = ReplyCounter::install(&t, fam).unwrap();
    let client = Family::host_prefix(t.client_of(fam));
    for udp in [false, true] {
        let banners =
            flows(&t, fam, 300, udp).unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &banners {
            *per.entry(field(b, "name").unwrap().to_string())
                .or_default() += 1;
            let seen = field(b, "client").unwrap();
            assert!(
                seen.starts_with(&client),
                "backend saw {seen}, not the client's address"
            );
            assert_eq!(
                field(b, "local").unwrap(),
                vip(&t, fam, if udp { 53 } else { 80 }).to_string(),
                "backend did not see the VIP"
            );
        }
        println!("{fam:?} {} flows: {per:?}", if udp { "UDP" } else { "TCP" });
        assert_eq!(per.len(), 3, "not all backends reached: {per:?}");
        for (name, n) in &per {
            let share = *n as f64 / banners.len() as f64;
            assert!(
                (0.25..=0.42).contains(&share),
                "{name} got {:.1}% of flows",
                share * 100.0
            );
        }
    }
    // Replies came straight from the backends: none through the balancer.
    let (from_vip, from_backends, via_balancer) = replies.read().unwrap();
    println!(
        "{fam:?} packets from the VIP at the client: {from_vip}, from backends' MACs: \
         {from_backends}, from the balancer's MAC: {via_balancer}"
    );
    assert!(
        from_vip >= 600,
        "only {from_vip} packets from the VIP counted"
    );
    assert_eq!(
        from_backends, from_vip,
        "replies not straight from the backends"
    );
    assert_eq!(via_balancer, 0, "replies went through the balancer");
    // The health checker probes the backends (TCP port 80) and finds them healthy (two
    // probes a second apart: waited for with a deadline).
    let sock = agent.dir.join("admin.sock");
    let healthy = wait_for(Duration::from_secs(15), || {
        let listed = lb(&[
            "--socket",
            sock.to_str().unwrap(),
            "-o",
            "json",
            "list",
            "backends",
        ])?;
        let listed: serde_json::Value = serde_json::from_str(&listed)?;
        let tcp: Vec<&serde_json::Value> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["service"] == "tcp-svc")
            .collect();
        anyhow::ensure!(tcp.len() == 3, "{listed}");
        for b in tcp {
            anyhow::ensure!(b["health"] == "healthy", "{b}");
        }
        Ok(())
    });
    if let Err(e) = healthy {
        panic!(
            "{fam:?} backends not healthy: {e}; agent log:\n{}",
            agent.log()
        );
    }
    // The dataplane counts the VIP; `lb flows` lists the UDP flows and filters by VIP and
    // client.
    let pins = agent.pin_dir.to_str().unwrap();
    let stats = lb(&["stats", "--pin-path", pins]).unwrap();
    let tcp_vip = format!("{}/tcp", vip(&t, fam, 80));
    assert!(
        stats.contains(&tcp_vip),
        "lb stats lacks {tcp_vip}:\n{stats}"
    );
    let dns = vip(&t, fam, 53).to_string();
    let me = t.client_of(fam).to_string();
    let flows = lb(&[
        "flows",
        "--pin-path",
        pins,
        "--vip",
        &dns,
        "--client",
        &me,
        "--count",
    ])
    .unwrap();
    let n: usize = flows.trim().parse().unwrap();
    // 300 exchanges from ephemeral ports: a reused port is the same flow again.
    assert!(
        (250..=300).contains(&n),
        "lb flows counted {n} UDP flows of the client to the VIP"
    );
}

/// A long-lived connection keeps its backend after a reload removes it, while new
/// connections avoid it; a backend of the other family is refused by the admin socket.
fn survives_removal(fam: Family) {
    let (t, _backends, agent) = running(fam);
    let other: IpAddr = match fam {
        Family::V4 => "fd00:9::9".parse().unwrap(),
        Family::V6 => "10.9.9.9".parse().unwrap(),
    };
    let sock = agent.dir.join("admin.sock");
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["--socket", sock.to_str().unwrap()])
        .args(["backend", "add", "tcp-svc", "--address", &other.to_string()])
        .args(["--name", "other"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("different address families"),
        "a backend of the other family was accepted: {out:?}"
    );
    // A long-lived connection, held by a thread in the client namespace.
    let conv = Conversation::open_to(&t, vip(&t, fam, 80)).unwrap();
    let pinned = conv.backend.clone();
    let idx: usize = pinned.trim_start_matches("backend-").parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    agent.reload(&config(&t, fam, &rest)).unwrap();
    // New connections stop reaching the removed backend (within a bounded wait).
    let ok = wait_for(Duration::from_secs(10), || {
        let b = flows(&t, fam, 30, false)?;
        anyhow::ensure!(
            b.iter().all(|b| field(b, "name") != Some(pinned.as_str())),
            "still reaching {pinned}"
        );
        Ok(())
    });
    assert!(
        ok.is_ok(),
        "new connections still reach the removed backend; log:\n{}",
        agent.log()
    );
    let after = flows(&t, fam, 60, false).unwrap();
    assert!(after
        .iter()
        .all(|b| field(b, "name") != Some(pinned.as_str())));
    // The old connection keeps exchanging data with its backend every 100 ms.
    for i in 0..20 {
        assert_eq!(
            conv.exchange(&format!("ping{i}")),
            Ok(format!("{pinned} ping{i}")),
            "exchange {i} failed; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
