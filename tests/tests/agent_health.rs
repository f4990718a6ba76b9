//! Health-driven reconciliation, measured in the dataplane: a backend whose service stops
//! leaves the Maglev table within interval × unhealthy threshold + 1 s and returns within
//! healthy threshold × interval (+ 1 s) of restarting; a black-holed backend (SYNs dropped,
//! no reset) does not delay the detection of another failure.

mod agent_support;

use agent_support::*;
use lb_common::backend_flags;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use std::time::{Duration, Instant};

const INTERVAL: f64 = 0.5;
const HEALTHY: u32 = 2;
const UNHEALTHY: u32 = 2;

fn opts() -> Opts {
    Opts {
        check: Some((INTERVAL, HEALTHY, UNHEALTHY)),
        ..Default::default()
    }
}

fn down_bound() -> Duration {
    Duration::from_secs_f64(INTERVAL * UNHEALTHY as f64 + 1.0)
}

fn up_bound() -> Duration {
    Duration::from_secs_f64(INTERVAL * HEALTHY as f64 + 1.0)
}

#[test]
fn a_stopped_backend_leaves_within_the_bound_and_returns_after_restart() {
    if !root_or_skip("agent health") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let mut backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &opts())).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    let ip1 = t.backend_ip(1);
    // Let every backend get its first verdict (not merely "no verdict, counted healthy").
    until_maps(&pins, Duration::from_secs(5), |m| m.shares().len() == 3).unwrap();
    wait_health(&agent, "web", &["healthy"; 3], Duration::from_secs(5));

    let stopped = Instant::now();
    backends[1].kill();
    until_maps(&pins, down_bound() + Duration::from_secs(3), |m| {
        !m.shares().contains_key(&ip1)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let down = stopped.elapsed();
    println!(
        "stopped backend out of rotation after {down:?} (bound {:?})",
        down_bound()
    );
    assert!(
        down <= down_bound(),
        "detection took {down:?} > {:?}",
        down_bound()
    );
    let per = new_flows(&t, 60).unwrap();
    assert!(!per.contains_key("backend-1"), "{per:?}");
    assert_eq!(
        per.values().sum::<usize>(),
        60,
        "no new flow may fail once it is out"
    );
    assert!(
        agent.log().contains("backend-1 is now UNHEALTHY"),
        "transition not logged:\n{}",
        agent.log()
    );

    backends[1] = start_backend(&t, 1).unwrap();
    let restarted = Instant::now();
    until_maps(&pins, up_bound() + Duration::from_secs(3), |m| {
        m.shares().contains_key(&ip1)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let up = restarted.elapsed();
    println!(
        "restarted backend back in rotation after {up:?} (bound {:?})",
        up_bound()
    );
    assert!(up <= up_bound(), "recovery took {up:?} > {:?}", up_bound());
    let per = new_flows(&t, 60).unwrap();
    assert!(per.contains_key("backend-1"), "{per:?}");
    let st = lb_ok(&agent, &["describe", "service", "web"]);
    assert_eq!(st["backends"][1]["health"], "healthy");
}

#[test]
fn a_black_holed_backend_does_not_delay_the_probes_of_the_others() {
    if !root_or_skip("agent health black hole") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let mut backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &opts())).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    until_maps(&pins, Duration::from_secs(5), |m| m.shares().len() == 3).unwrap();
    wait_health(&agent, "web", &["healthy"; 3], Duration::from_secs(5));

    // Backend 0 silently drops every SYN to port 80: probes time out, nothing resets.
    let b0 = &t.backends[0];
    b0.exec(&["nft", "add", "table", "inet", "lbtest"]).unwrap();
    b0.exec(&[
        "nft",
        "add",
        "chain",
        "inet",
        "lbtest",
        "in",
        "{ type filter hook input priority 0 ; }",
    ])
    .unwrap();
    b0.exec(&[
        "nft", "add", "rule", "inet", "lbtest", "in", "tcp", "dport", "80", "drop",
    ])
    .unwrap();
    // At the same moment backend 1 stops (refused at once).
    let t0 = Instant::now();
    backends[1].kill();
    let (ip0, ip1, ip2) = (t.backend_ip(0), t.backend_ip(1), t.backend_ip(2));
    let mut d0 = None;
    let mut d1 = None;
    let limit = down_bound() + Duration::from_secs_f64(INTERVAL) + Duration::from_secs(3);
    while (d0.is_none() || d1.is_none()) && t0.elapsed() < limit {
        let m = Maps::read(&pins).unwrap();
        let s = m.shares();
        assert!(s.contains_key(&ip2), "the healthy backend left the table");
        if d0.is_none() && !s.contains_key(&ip0) {
            d0 = Some(t0.elapsed());
        }
        if d1.is_none() && !s.contains_key(&ip1) {
            d1 = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("with backend-0 black-holed: stopped backend-1 out after {d1:?}, black-holed backend-0 out after {d0:?}");
    let d1 = d1.unwrap_or_else(|| panic!("backend-1 never left; log:\n{}", agent.log()));
    assert!(
        d1 <= down_bound(),
        "the black hole delayed backend-1's detection: {d1:?} > {:?}",
        down_bound()
    );
    // Sharper: with probes independent per backend, two failed probes take at most two
    // intervals (plus a reconcile). Probes queued behind the black hole's 0.5 s timeouts
    // would space rounds a full timeout apart and need up to twice as long.
    let independent = Duration::from_secs_f64(INTERVAL * UNHEALTHY as f64 + 0.4);
    assert!(
        d1 <= independent,
        "backend-1 detected after {d1:?} > {independent:?}: probes wait on the black hole"
    );
    // A timed-out probe counts as failed after the timeout (here = the interval).
    let d0 =
        d0.unwrap_or_else(|| panic!("black-holed backend-0 never left; log:\n{}", agent.log()));
    assert!(
        d0 <= down_bound() + Duration::from_secs_f64(INTERVAL),
        "{d0:?}"
    );
    let per = new_flows(&t, 30).unwrap();
    assert_eq!(per.keys().collect::<Vec<_>>(), vec!["backend-2"], "{per:?}");
}

#[test]
fn a_backend_added_through_the_socket_is_health_checked() {
    if !root_or_skip("agent health after add") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _b0 = start_backend(&t, 0).unwrap();
    let _b1 = start_backend(&t, 1).unwrap();
    let o = Opts {
        backends: vec![0, 1],
        ..opts()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    let ip2 = t.backend_ip(2);
    // Nothing listens on backend 2 yet: once added, its probes are refused and the
    // dataplane marks it unhealthy (its MAC may still be resolving, so the HEALTHY flag,
    // which only health sets, is what shows the checker follows admin changes).
    lb_ok(
        &agent,
        &[
            "backend",
            "add",
            "web",
            "--address",
            &ip2.to_string(),
            "--name",
            "backend-2",
        ],
    );
    let added = Instant::now();
    let m = Maps::read(&pins).unwrap();
    assert!(
        m.flags(ip2).unwrap() & backend_flags::HEALTHY != 0,
        "a new backend starts healthy (no verdict yet)"
    );
    until_maps(&pins, down_bound() + Duration::from_secs(3), |m| {
        m.flags(ip2)
            .is_some_and(|f| f & backend_flags::HEALTHY == 0)
            && !m.shares().contains_key(&ip2)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    println!(
        "added backend without a server marked unhealthy after {:?}",
        added.elapsed()
    );
    assert!(added.elapsed() <= down_bound(), "{:?}", added.elapsed());
    let st = lb_ok(&agent, &["describe", "service", "web"]);
    assert_eq!(st["backends"][2]["health"], "unhealthy");
    let _b2 = start_backend(&t, 2).unwrap();
    until_maps(&pins, up_bound() + Duration::from_secs(3), |m| {
        m.shares().contains_key(&ip2)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let per = new_flows(&t, 60).unwrap();
    assert!(per.contains_key("backend-2"), "{per:?}");
}
