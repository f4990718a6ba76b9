//! Whole-system tests of the L4 tier through real sockets: a client, the balancer (running
//! `lb run`) and three backends in network namespaces on one bridge. Backends answer with
//! their name and the client address they saw.

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

[backend_services.tcp-svc]
protocol = "TCP"
connection_draining_timeout_sec = 300

[backend_services.udp-svc]
protocol = "UDP"
"#,
        vip = t.vip()
    );
    for svc in ["tcp-svc", "udp-svc"] {
        for i in backends {
            c += &format!(
                "[[backend_services.{svc}.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\n",
                t.backend_ip(*i)
            );
        }
    }
    c
}

fn start_backends(t: &Topology) -> Result<Vec<ProcGuard>> {
    let vip = t.vip().to_string();
    (0..t.backends.len())
        .map(|i| t.backends[i].spawn(&[BACKEND_BIN, &format!("backend-{i}"), "80", "53", &vip]))
        .collect()
}

/// Up to `n` TCP and UDP exchanges from the client namespace: banners.
fn flows(t: &Topology, n: usize, udp: bool) -> Result<Vec<String>> {
    let to = SocketAddr::new(t.vip().into(), if udp { 53 } else { 80 });
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

fn wait_ready(t: &Topology, agent: &Agent) {
    let to = SocketAddr::new(t.vip().into(), 80);
    let ok = t
        .client
        .run_in(move || {
            wait_for(Duration::from_secs(20), || {
                tcp_banner(to, Duration::from_millis(500))
            })
        })
        .unwrap();
    if ok.is_err() {
        if let Ok(secs) = std::env::var("LB_TEST_HOLD") {
            // Debugging aid: keep the topology up for inspection.
            eprintln!(
                "holding {} / {} for {secs} s",
                t.prefix,
                agent.pin_dir.display()
            );
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
        }
    }
    assert!(
        ok.is_ok(),
        "the VIP never answered; agent log:\n{}",
        agent.log()
    );
}

/// A topology with three backends serving, and `lb` balancing them, answering on the VIP.
fn running() -> (Topology, Vec<ProcGuard>, Agent) {
    let t = Topology::new(3).expect("topology");
    let backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &[0, 1, 2])).unwrap();
    wait_ready(&t, &agent);
    (t, backends, agent)
}

#[test]
fn tcp_and_udp_reach_all_three_backends_with_the_client_address() {
    if !root_or_skip("l4 netns") {
        return;
    }
    let (t, _backends, agent) = running();
    for udp in [false, true] {
        let banners =
            flows(&t, 300, udp).unwrap_or_else(|e| panic!("{e}; agent log:\n{}", agent.log()));
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &banners {
            *per.entry(field(b, "name").unwrap().to_string())
                .or_default() += 1;
            let client = field(b, "client").unwrap();
            assert!(
                client.starts_with(&format!("{}:", t.client_ip())),
                "backend saw {client}, not the client's address"
            );
            if !udp {
                assert_eq!(
                    field(b, "local").unwrap(),
                    format!("{}:80", t.vip()),
                    "backend did not see the VIP"
                );
            }
        }
        println!("{} flows: {per:?}", if udp { "UDP" } else { "TCP" });
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
}

#[test]
fn an_open_connection_survives_removal_of_its_backend_while_new_ones_avoid_it() {
    if !root_or_skip("l4 netns") {
        return;
    }
    let (t, _backends, agent) = running();
    // A long-lived connection, held by a thread in the client namespace.
    let conv = Conversation::open(&t).unwrap();
    let pinned = conv.backend.clone();
    let idx: usize = pinned.trim_start_matches("backend-").parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    agent.reload(&config(&t, &rest)).unwrap();
    // New connections stop reaching the removed backend (within a bounded wait).
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
