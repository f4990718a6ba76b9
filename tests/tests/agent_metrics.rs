//! The agent's metrics endpoint carries the dataplane's per-VIP and per-backend counters
//! (read from the pinned maps and named through the agent), health state and table
//! rebuilds.

mod agent_support;

use agent_support::*;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use std::time::Duration;

/// The value of the first sample line starting with `prefix`.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_show_vip_and_backend_counters_health_and_rebuilds() {
    if !root_or_skip("agent metrics") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        check: Some((0.5, 1, 1)),
        metrics_port: Some(9190),
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    // Every backend has its verdict in the metrics (sample lines, not the HELP text).
    let up =
        |i: usize| format!("lb_health_backend_up{{service=\"web\",backend=\"backend-{i}\"}} 1");
    let ready = lb_tests::lbrun::wait_for(Duration::from_secs(10), || {
        let text = scrape(&t, 9190);
        anyhow::ensure!(
            (0..3).all(|i| text.lines().any(|l| l == up(i))),
            "not every backend is up yet:\n{text}"
        );
        Ok(text)
    });
    let before = ready.unwrap_or_else(|e| panic!("{e}\nlog:\n{}", agent.log()));
    let vip_new_before = value(&before, "lb_vip_new_flows_total{rule=\"web\"").unwrap_or(0.0);
    let backend_new = |text: &str, name: &str| {
        let line = format!("lb_backend_new_flows_total{{service=\"web\",backend=\"{name}\"}}");
        value(text, &line)
    };
    let per = new_flows(&t, 60).unwrap();
    let text = scrape(&t, 9190);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let vip_packets = value(&text, "lb_vip_packets_total{rule=\"web\"")
        .unwrap_or_else(|| panic!("no VIP counter:\n{text}"));
    assert!(
        vip_packets >= 180.0,
        "60 connections are at least 180 packets: {vip_packets}"
    );
    // Exactly the 60 connections made in between are new flows, each counted on its backend.
    let vip_new = value(&text, "lb_vip_new_flows_total{rule=\"web\"").unwrap();
    assert_eq!(
        vip_new - vip_new_before,
        60.0,
        "{vip_new_before} → {vip_new}"
    );
    for (name, n) in &per {
        let after =
            backend_new(&text, name).unwrap_or_else(|| panic!("no counter of {name}:\n{text}"));
        let was = backend_new(&before, name).unwrap_or(0.0);
        assert_eq!(
            after - was,
            *n as f64,
            "{name}: {was} → {after}, {n} flows made"
        );
    }
    assert!(
        value(&text, "lb_maglev_table_rebuilds_total").unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        text.lines().any(|l| l == "lb_dataplane_state_unknown 0"),
        "{text}"
    );
}
