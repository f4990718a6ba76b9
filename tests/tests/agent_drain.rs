//! Draining through the admin socket: an open TCP connection to the drained backend keeps
//! working while new connections go elsewhere; after the service's draining timeout its
//! flows are evicted. Maintenance evicts at once.

mod agent_support;

use agent_support::*;
use lb_common::backend_flags;
use lb_tests::{
    lbrun::{Agent, Conversation},
    netns::Topology,
    root_or_skip,
};
use std::time::{Duration, Instant};

const DRAIN_SEC: u32 = 4;

#[test]
fn drain_keeps_open_connections_until_the_timeout_and_sends_new_ones_elsewhere() {
    if !root_or_skip("agent drain") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        drain_sec: DRAIN_SEC,
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    let conv = Conversation::open(&t).unwrap();
    let x = conv.backend.clone();
    let drained_at = Instant::now();
    lb_ok(&agent, &["drain", "web", &x]);
    // Existing connection: keeps exchanging for most of the draining timeout.
    let mut i = 0;
    while drained_at.elapsed() < Duration::from_millis(DRAIN_SEC as u64 * 1000 - 1500) {
        assert!(
            conv.works(i),
            "exchange {i} on the drained backend failed; log:\n{}",
            agent.log()
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // New connections: never the drained backend.
    let per = new_flows(&t, 60).unwrap();
    assert!(
        !per.contains_key(&x),
        "new flows reached the draining {x}: {per:?}"
    );
    assert_eq!(per.len(), 2, "{per:?}");
    println!("{i} exchanges on {x} while draining; new flows {per:?}");
    // After the timeout: evicted in the maps, and the old connection is cut (its packets
    // now hash to another backend, which resets it).
    let left = Duration::from_secs(DRAIN_SEC as u64 + 2).saturating_sub(drained_at.elapsed());
    let ip = t.backend_ip(index_of(&x));
    let took = until_maps(&agent.pin_dir, left, |m| {
        m.flags(ip).is_some_and(|f| f & backend_flags::EVICT != 0)
    })
    .expect("flows not evicted after the draining timeout");
    let evicted_after = drained_at.elapsed();
    println!("evicted {evicted_after:?} after the drain (timeout {DRAIN_SEC} s, seen after {took:?} of polling)");
    assert!(
        evicted_after >= Duration::from_secs(DRAIN_SEC as u64),
        "evicted before the timeout"
    );
    assert!(
        !conv.works(1000),
        "the drained connection survived eviction"
    );
    drop(conv);
    // Undrain: the backend takes new flows again.
    lb_ok(&agent, &["undrain", "web", &x]);
    let per = new_flows(&t, 60).unwrap();
    assert!(
        per.contains_key(&x),
        "undrained {x} gets no new flows: {per:?}"
    );
}

#[test]
fn maintenance_moves_open_connections_at_once() {
    if !root_or_skip("agent maintenance") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, &Opts::default())).unwrap();
    wait_ready(&t, &agent);
    let conv = Conversation::open(&t).unwrap();
    assert!(conv.works(0));
    let x = conv.backend.clone();
    lb_ok(&agent, &["maintenance", "web", &x, "on"]);
    assert!(
        !conv.works(1),
        "a connection to a backend in maintenance kept working"
    );
    let per = new_flows(&t, 30).unwrap();
    assert!(!per.contains_key(&x), "{per:?}");
    lb_ok(&agent, &["maintenance", "web", &x, "off"]);
    let per = new_flows(&t, 60).unwrap();
    assert!(per.contains_key(&x), "{per:?}");
}
