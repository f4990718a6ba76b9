//! Restarts keep flows: the agent is killed with SIGKILL and started again while a TCP
//! connection through the VIP exchanges a line every 100 ms; no exchange may fail, and new
//! connections keep working. `lb down` then removes the dataplane and its pins.

mod agent_support;

use agent_support::*;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use std::time::{Duration, Instant};

#[test]
fn sigkill_and_restart_lose_no_exchange_and_down_removes_everything() {
    if !root_or_skip("agent restart") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let mut agent = Agent::start(&t.balancer, &config(&t, &Opts::default())).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();

    let conv = Conversation::open(&t).unwrap();
    // Admin overrides on the other two backends must survive the restart too: one drained,
    // one in maintenance (neither may come back into rotation when the agent restarts).
    let others: Vec<String> = (0..3)
        .map(|i| format!("backend-{i}"))
        .filter(|n| *n != conv.backend)
        .collect();
    lb_ok(&agent, &["drain", "web", &others[0]]);
    lb_ok(&agent, &["maintenance", "web", &others[1], "on"]);
    let before = Maps::read(&pins).unwrap();
    assert_eq!(before.shares().len(), 1);
    let mut i = 0;
    let mut exchange = |phase: &str, agent: &Agent| {
        assert!(
            conv.works(i),
            "exchange {i} failed ({phase}); log:\n{}",
            agent.log()
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    };
    for _ in 0..10 {
        exchange("before the kill", &agent);
    }
    agent.kill();
    // The dataplane forwards alone while no agent runs.
    for _ in 0..10 {
        exchange("agent dead", &agent);
    }
    agent.restart().unwrap();
    let started = Instant::now();
    let sock = socket(&agent);
    while started.elapsed() < Duration::from_secs(15) && lb(&agent, &["status"]).code != 0 {
        exchange("agent starting", &agent);
    }
    assert_eq!(
        lb(&agent, &["status"]).code,
        0,
        "restarted agent never answered on {}",
        sock.display()
    );
    for _ in 0..10 {
        exchange("after the restart", &agent);
    }
    println!("{i} exchanges at 100 ms across SIGKILL and restart, none failed");
    // The restarted agent adopted slots, generations and tables rather than rebuilding.
    assert_eq!(
        Maps::read(&pins).unwrap(),
        before,
        "restart reshuffled the dataplane"
    );
    assert!(
        agent.log().contains("adopted the pinned XDP link"),
        "log:\n{}",
        agent.log()
    );
    let per = new_flows(&t, 30).unwrap();
    assert_eq!(
        per.keys().collect::<Vec<_>>(),
        vec![&conv.backend],
        "{per:?}"
    );
    drop(conv);

    // `lb down` detaches and removes every pin; the VIP no longer forwards.
    agent.kill();
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["down", "--pin-path", pins.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!pins.exists(), "pins left in {}", pins.display());
    let link = t.balancer.exec(&["ip", "link", "show", &t.iface]).unwrap();
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    assert!(
        new_flows(&t, 1).is_err(),
        "the VIP still forwards after lb down"
    );
}
