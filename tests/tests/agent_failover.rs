//! Failover backends receive traffic only when the healthy share of primaries is below the
//! failover ratio (Google Cloud's failoverRatio), driven by real health checks.

mod agent_support;

use agent_support::*;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use std::time::Duration;

const T: Duration = Duration::from_secs(6);

fn opts(ratio: f64) -> Opts {
    Opts {
        failover: vec![2],
        failover_ratio: ratio,
        check: Some((0.5, 2, 2)),
        ..Default::default()
    }
}

fn names(per: &std::collections::BTreeMap<String, usize>) -> Vec<&str> {
    per.keys().map(String::as_str).collect()
}

#[test]
fn failover_backends_serve_only_below_the_ratio() {
    if !root_or_skip("agent failover") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let mut backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &opts(0.6))).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    let (ip0, ip1, ip2) = (t.backend_ip(0), t.backend_ip(1), t.backend_ip(2));

    // 2/2 primaries healthy (1.0 ≥ 0.6): the failover backend is idle.
    let per = new_flows(&t, 60).unwrap();
    assert_eq!(names(&per), ["backend-0", "backend-1"], "{per:?}");

    // 1/2 healthy (0.5 < 0.6): everything moves to the failover backend.
    backends[1].kill();
    until_maps(&pins, T, |m| {
        let s = m.shares();
        s.len() == 1 && s.contains_key(&ip2)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let per = new_flows(&t, 60).unwrap();
    assert_eq!(names(&per), ["backend-2"], "{per:?}");
    // The pinned slots carry each backend's role, which `lb explain` reads.
    let maps = Maps::read(&pins).unwrap();
    let failover = |ip| maps.flags(ip).unwrap() & lb_common::backend_flags::FAILOVER != 0;
    assert!(failover(ip2) && !failover(ip0) && !failover(ip1));

    // Same health with ratio 0.4 (0.5 ≥ 0.4): the remaining primary serves alone.
    let text = config(&t, &opts(0.4))
        .replace("{PIN}", pins.to_str().unwrap())
        .replace("{SOCK}", socket(&agent).to_str().unwrap());
    std::fs::write(&agent.config, text).unwrap();
    lb_ok(&agent, &["reload"]);
    until_maps(&pins, T, |m| {
        let s = m.shares();
        s.len() == 1 && s.contains_key(&ip0)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let per = new_flows(&t, 60).unwrap();
    assert_eq!(names(&per), ["backend-0"], "{per:?}");

    // The primary comes back: both primaries, no failover.
    backends[1] = start_backend(&t, 1).unwrap();
    until_maps(&pins, T, |m| {
        let s = m.shares();
        s.contains_key(&ip0) && s.contains_key(&ip1) && !s.contains_key(&ip2)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let per = new_flows(&t, 60).unwrap();
    assert_eq!(names(&per), ["backend-0", "backend-1"], "{per:?}");
}
