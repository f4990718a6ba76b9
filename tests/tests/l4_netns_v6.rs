//! The L4 tier over IPv6 through `lb run`: a client, the balancer and three backends in
//! network namespaces on one bridge (tests/src/netns.rs), an IPv6 VIP for TCP port 80 and
//! UDP port 53 over IPv6 backends whose MACs the agent resolves by NDP. Backends answer
//! with their name and the client address they saw.

use anyhow::Result;
use lb_tests::{
    lbrun::{agent_sections, field, tcp_banner, udp_banner, wait_for, Agent, Conversation},
    netns::{ProcGuard, Topology},
    root_or_skip,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lb-backend");

fn config(t: &Topology, backends: &[usize]) -> String {
    let mut c = agent_sections(t);
    c += &format!(
        r#"
[forwarding_rules.web6]
ip_address = "{vip}"
ip_protocol = "TCP"
ports = [80]
backend_service = "tcp6"

[forwarding_rules.dns6]
ip_address = "{vip}"
ip_protocol = "UDP"
ports = [53]
backend_service = "udp6"

[health_checks.tcp80]
protocol = "TCP"
port = 80
check_interval_sec = 1
timeout_sec = 1

[backend_services.tcp6]
protocol = "TCP"
health_check = "tcp80"
connection_draining_timeout_sec = 300

[backend_services.udp6]
protocol = "UDP"
"#,
        vip = t.vip6()
    );
    for svc in ["tcp6", "udp6"] {
        for i in backends {
            c += &format!(
                "[[backend_services.{svc}.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\n",
                t.backend_ip6(*i)
            );
        }
    }
    c
}

fn start_backends(t: &Topology) -> Result<Vec<ProcGuard>> {
    let vip = t.vip6().to_string();
    (0..t.backends.len())
        .map(|i| t.backends[i].spawn(&[BACKEND_BIN, &format!("backend-{i}"), "80", "53", &vip]))
        .collect()
}

fn vip(t: &Topology, port: u16) -> SocketAddr {
    SocketAddr::new(t.vip6().into(), port)
}

/// `n` TCP or UDP exchanges from the client namespace: banners.
fn flows(t: &Topology, n: usize, udp: bool) -> Result<Vec<String>> {
    let to = vip(t, if udp { 53 } else { 80 });
    t.client.run_in(move || -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            anyhow::ensure!(Instant::now() < deadline, "flows took over 60 s");
            let b = if udp {
                udp_banner(to, Duration::from_secs(2))?
            } else {
                tcp_banner(to, Duration::from_secs(2))?
            };
            out.push(b);
        }
        Ok(out)
    })?
}

/// Three backends serving and `lb run` balancing them, answering on the IPv6 VIP.
fn running() -> (Topology, Vec<ProcGuard>, Agent) {
    let t = Topology::new(3).expect("topology");
    let backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &[0, 1, 2])).unwrap();
    let to = vip(&t, 80);
    let ok = t
        .client
        .run_in(move || {
            wait_for(Duration::from_secs(20), || {
                tcp_banner(to, Duration::from_millis(500))
            })
        })
        .unwrap();
    assert!(
        ok.is_ok(),
        "the IPv6 VIP never answered; agent log:\n{}",
        agent.log()
    );
    (t, backends, agent)
}

/// Counts, in the client namespace, packets from the VIP (nftables): all of them, those
/// whose source MAC is a backend's, and those whose source MAC is the balancer's. Direct
/// server return means the second is the first and the third stays 0.
struct ReplyCounter<'a>(&'a Topology);

impl<'a> ReplyCounter<'a> {
    fn install(t: &'a Topology) -> Result<Self> {
        let lb_mac = t.mac_of(&t.balancer)?;
        let backend_macs = t
            .backends
            .iter()
            .map(|b| t.mac_of(b))
            .collect::<Result<Vec<_>>>()?
            .join(", ");
        let vip = t.vip6().to_string();
        let rules = format!(
            "table ip6 lbtest {{\n chain input {{\n  type filter hook input priority 0;\n  ip6 saddr {vip} counter\n  ip6 saddr {vip} ether saddr {{ {backend_macs} }} counter\n  ip6 saddr {vip} ether saddr {lb_mac} counter\n }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("{}-replies.nft", t.prefix));
        std::fs::write(&path, rules)?;
        t.client.exec(&["nft", "-f", path.to_str().unwrap()])?;
        let _ignored = std::fs::remove_file(&path);
        Ok(ReplyCounter(t))
    }

    /// Packets from the VIP: (all, from a backend's MAC, from the balancer's MAC).
    fn read(&self) -> Result<(u64, u64, u64)> {
        let out = self
            .0
            .client
            .exec(&["nft", "list", "chain", "ip6", "lbtest", "input"])?;
        let counts: Vec<u64> = out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "packets")?;
                w.get(i + 1)?.parse().ok()
            })
            .collect();
        anyhow::ensure!(counts.len() == 3, "unexpected nft output:\n{out}");
        Ok((counts[0], counts[1], counts[2]))
    }
}

#[test]
fn ipv6_tcp_and_udp_reach_all_three_backends_with_the_client_address() {
    if !root_or_skip("l4 netns IPv6") {
        return;
    }
    let (t, _backends, agent) = running();
    let replies = ReplyCounter::install(&t).unwrap();
    for udp in [false, true] {
        let banners =
            flows(&t, 300, udp).unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &banners {
            *per.entry(field(b, "name").unwrap().to_string())
                .or_default() += 1;
            let client = field(b, "client").unwrap();
            assert!(
                client.starts_with(&format!("[{}]:", t.client_ip6())),
                "backend saw {client}, not the client's IPv6 address"
            );
            assert_eq!(
                field(b, "local").unwrap(),
                format!("[{}]:{}", t.vip6(), if udp { 53 } else { 80 }),
                "backend did not see the VIP"
            );
        }
        println!("IPv6 {} flows: {per:?}", if udp { "UDP" } else { "TCP" });
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
        "packets from the VIP at the client: {from_vip}, from backends' MACs: \
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
    // The health checker probes the IPv6 backends (TCP port 80) and finds them healthy
    // (two probes a second apart: waited for with a deadline).
    let sock = agent.dir.join("admin.sock");
    let healthy = wait_for(Duration::from_secs(15), || {
        let listed = lb_tests::netns::sh(&[
            lb_tests::lb_binary().to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
            "-o",
            "json",
            "list",
            "backends",
        ])?;
        let listed: serde_json::Value = serde_json::from_str(&listed)?;
        let tcp6: Vec<&serde_json::Value> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["service"] == "tcp6")
            .collect();
        anyhow::ensure!(tcp6.len() == 3, "{listed}");
        for b in tcp6 {
            anyhow::ensure!(b["health"] == "healthy", "{b}");
            anyhow::ensure!(b["address"].as_str().unwrap_or("").contains(':'), "{b}");
        }
        Ok(())
    });
    if let Err(e) = healthy {
        panic!(
            "IPv6 backends not healthy: {e}; agent log:\n{}",
            agent.log()
        );
    }
    // The agent resolved the backends by NDP and counts the flows.
    let stats = lb_tests::netns::sh(&[
        lb_tests::lb_binary().to_str().unwrap(),
        "stats",
        "--pin-path",
        agent.pin_dir.to_str().unwrap(),
    ])
    .unwrap();
    assert!(
        stats.contains(&format!("[{}]:80/tcp", t.vip6())),
        "lb stats lacks the IPv6 VIP:\n{stats}"
    );
    // `lb flows` lists the IPv6 flows and filters by IPv6 VIP and client.
    let flows = lb_tests::netns::sh(&[
        lb_tests::lb_binary().to_str().unwrap(),
        "flows",
        "--pin-path",
        agent.pin_dir.to_str().unwrap(),
        "--vip",
        &format!("[{}]:53", t.vip6()),
        "--client",
        &t.client_ip6().to_string(),
        "--count",
    ])
    .unwrap();
    let n: usize = flows.trim().parse().unwrap();
    // 300 exchanges from ephemeral ports: a reused port is the same flow again.
    assert!(
        (250..=300).contains(&n),
        "lb flows counted {n} UDP flows of the client to the IPv6 VIP"
    );
}

#[test]
fn an_open_ipv6_connection_survives_removal_of_its_backend_while_new_ones_avoid_it() {
    if !root_or_skip("l4 netns IPv6") {
        return;
    }
    let (t, _backends, agent) = running();
    // An IPv4 backend for an IPv6 rule's service is refused by the admin socket as by the
    // file, and the running configuration stays as it was.
    let sock = agent.dir.join("admin.sock");
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["--socket", sock.to_str().unwrap()])
        .args([
            "backend",
            "add",
            "tcp6",
            "--address",
            "10.9.9.9",
            "--name",
            "v4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("different address families"),
        "an IPv4 backend was accepted: {out:?}"
    );
    let conv = Conversation::open_to(&t, vip(&t, 80)).unwrap();
    let pinned = conv.backend.clone();
    let idx: usize = pinned.trim_start_matches("backend-").parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    agent.reload(&config(&t, &rest)).unwrap();
    let ok = wait_for(Duration::from_secs(10), || {
        let b = flows(&t, 30, false)?;
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
    let after = flows(&t, 60, false).unwrap();
    assert!(after
        .iter()
        .all(|b| field(b, "name") != Some(pinned.as_str())));
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
