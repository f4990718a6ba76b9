//! `lb flows` through `lb run`: connections a client opens through the VIP are listed from
//! the pinned connection tables with their client, VIP and backend, and the filters
//! (--vip, --backend, --client, --count) select them; `lb explain` on each names the same
//! backend, decided by the connection table; `lb top` shows the VIP's rates and the
//! backends. The agent also warns that it attached XDP to a veth (the topology's interfaces
//! are veth pairs).

mod agent_support;

use agent_support::*;
use lb_tests::{
    lbrun::{Agent, Conversation},
    netns::Topology,
    root_or_skip,
};
use std::{collections::BTreeMap, process::Command};

fn flows(agent: &Agent, args: &[&str]) -> String {
    let o = Command::new(lb_tests::lb_binary())
        .args(["flows", "--pin-path", agent.pin_dir.to_str().unwrap()])
        .args(args)
        .output()
        .expect("lb flows");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn count(agent: &Agent, args: &[&str]) -> usize {
    let mut a = args.to_vec();
    a.push("--count");
    flows(agent, &a).parse().expect("a number")
}

#[test]
fn lb_flows_lists_the_connections_a_client_opened() {
    if !root_or_skip("agent flows") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &Opts::default())).unwrap();
    wait_ready(&t, &agent);
    assert!(
        agent.log().contains("XDP attached to a veth"),
        "no veth warning:\n{}",
        agent.log()
    );

    let convs: Vec<Conversation> = (0..6).map(|_| Conversation::open(&t).unwrap()).collect();
    let mut per_backend: BTreeMap<usize, usize> = BTreeMap::new();
    for c in &convs {
        *per_backend.entry(index_of(&c.backend)).or_default() += 1;
    }

    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&flows(&agent, &["-o", "json"])).unwrap();
    let vip = t.vip().to_string();
    let client = t.client_ip().to_string();
    let ours: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|f| f["client"] == client.as_str() && f["vip"] == vip.as_str())
        .collect();
    // wait_ready's probes add flows of their own: at least the six conversations.
    assert!(ours.len() >= 6, "{listed:#?}");
    for f in &ours {
        assert_eq!(f["vip_port"], 80);
        assert_eq!(f["proto"], "tcp");
        assert_eq!(f["stale"], false);
        let b = f["backend"].as_str().unwrap();
        assert!(
            (0..3).any(|i| t.backend_ip(i).to_string() == b),
            "backend {b} unknown"
        );
    }

    // Filters: every conversation's backend holds at least its conversations.
    for (i, n) in &per_backend {
        let b = t.backend_ip(*i).to_string();
        let got = count(&agent, &["--backend", &b]);
        assert!(got >= *n, "backend {b}: {got} < {n}");
        let table = flows(&agent, &["--backend", &b]);
        assert!(
            table
                .lines()
                .skip(1)
                .filter(|l| l.contains("tcp"))
                .all(|l| l.contains(&b)),
            "{table}"
        );
    }
    let total = count(&agent, &[]);
    assert_eq!(count(&agent, &["--client", &client]), total);
    assert_eq!(count(&agent, &["--vip", &format!("{vip}:80")]), total);
    assert_eq!(count(&agent, &["--vip", &format!("{vip}:81")]), 0);
    assert_eq!(count(&agent, &["--client", "192.0.2.1"]), 0);
    // Each flow has one backend: the per-backend counts add up to the total.
    let sum: usize = (0..3)
        .map(|i| count(&agent, &["--backend", &t.backend_ip(i).to_string()]))
        .sum();
    assert_eq!(sum, total);

    // `lb explain` on each listed flow names the same backend, decided by the table.
    for f in &ours {
        let o = Command::new(lb_tests::lb_binary())
            .args([
                "-o",
                "json",
                "explain",
                "--pin-path",
                agent.pin_dir.to_str().unwrap(),
            ])
            .args(["tcp", &client, &f["client_port"].to_string(), &vip, "80"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        let x: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(x["verdict"], "forward", "{x:#}");
        assert_eq!(x["backend"], f["backend"], "{x:#}");
        assert_eq!(x["decided_by"], "connection table", "{x:#}");
        assert_eq!(x["rule"], format!("{vip}:80/tcp"), "{x:#}");
    }
    for c in &convs {
        assert!(c.works(1), "conversation broke");
    }
    top_shows_rates(&t, &agent);
}

/// `lb top` through the admin socket: three frames while new connections arrive; the rule
/// and every backend are shown, and some frame has a non-zero new-flow rate on the VIP.
fn top_shows_rates(t: &Topology, agent: &Agent) {
    let top = Command::new(lb_tests::lb_binary())
        .args(["--socket", socket(agent).to_str().unwrap()])
        .args(["top", "--interval", "0.5", "--iterations", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_millis(1500) {
        new_flows(t, 5).unwrap();
    }
    let out = top.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("lb top:").count(), 4, "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "escape codes off a terminal:\n{text}"
    );
    for i in 0..3 {
        assert!(text.contains(&format!("web/backend-{i}")), "{text}");
    }
    // Rule rows: RULE VIP SERVICE PKT/S BIT/S NEW/S NO-BACKEND/S.
    let new_rates: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("web "))
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    assert_eq!(new_rates.len(), 4, "{text}");
    assert!(
        new_rates.iter().any(|r| *r != "0"),
        "no new-flow rate:\n{text}"
    );
}
