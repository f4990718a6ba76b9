//! Restarts keep flows: the agent is killed with SIGKILL and started again, with another
//! backend added to the file meanwhile, while a TCP connection through the VIP exchanges a
//! line every 100 ms; no exchange may fail, the connection table keeps every entry, and
//! the exchanges after the restart are connection-table hits, not new flows. `lb down` then removes the dataplane and its pins.

mod agent_support;

use agent_support::*;
use lb_tests::{
    lbrun::{Agent, Conversation},
    netns::Topology,
    root_or_skip,
};
use lb_userspace::dataplane::stats::Counters;
use std::time::{Duration, Instant};

/// VIP counters summed over CPUs, read from the pinned map (not through the agent).
fn vip_stats(pins: &std::path::Path) -> lb_common::VipStats {
    let d = Dump::read(pins).unwrap();
    let id = d.vips.values().next().expect("one VIP").vip_id;
    Counters::open(pins).unwrap().vip(id).unwrap()
}

#[test]
fn sigkill_and_restart_lose_no_exchange_and_down_removes_everything() {
    if !root_or_skip("agent restart") {
        return;
    }
    let t = Topology::new(4).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let mut agent = Agent::start(&t.balancer, &config(&t, &Opts::default())).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();

    let conv = Conversation::open(&t).unwrap();
    // One other backend drained (the override must survive the restart), one left in the
    // table: the conversation's backend is not the table's only entry, so a lost connection
    // table would hash the flow again, possibly elsewhere.
    let others: Vec<String> = (0..3)
        .map(|i| format!("backend-{i}"))
        .filter(|n| *n != conv.backend)
        .collect();
    lb_ok(&agent, &["drain", "web", &others[0]]);
    let before = Maps::read(&pins).unwrap();
    assert_eq!(before.shares().len(), 2, "{:?}", before.shares());
    let dump_before = Dump::read(&pins).unwrap();
    second_agent_is_refused(&t, &agent);
    assert_eq!(
        Dump::read(&pins).unwrap(),
        dump_before,
        "a refused second agent touched the maps"
    );
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
    let flows_before = Dump::read(&pins).unwrap().flows();
    // The restarted agent gets a changed backend set: backend-3 joins the table.
    let four = Opts {
        backends: vec![0, 1, 2, 3],
        ..Default::default()
    };
    agent.rewrite_config(&config(&t, &four)).unwrap();
    // The dataplane forwards alone while no agent runs.
    for _ in 0..10 {
        exchange("agent dead", &agent);
    }
    agent.restart().unwrap();
    let started = Instant::now();
    let sock = socket(&agent);
    let mut while_starting = 0;
    while started.elapsed() < Duration::from_secs(15) && lb(&agent, &["status"]).code != 0 {
        exchange("agent starting", &agent);
        while_starting += 1;
    }
    assert_eq!(
        lb(&agent, &["status"]).code,
        0,
        "restarted agent never answered on {}",
        sock.display()
    );
    let ip3 = t.backend_ip(3);
    until_maps(&pins, Duration::from_secs(10), |m| {
        m.shares().contains_key(&ip3)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    let stats_before = vip_stats(&pins);
    for _ in 0..10 {
        exchange("after the restart", &agent);
    }
    let stats_after = vip_stats(&pins);
    assert_eq!(
        i,
        30 + while_starting,
        "every exchange of every phase answered"
    );
    // Those 10 exchanges were carried by the connection table: hits, and no new flow.
    assert_eq!(
        stats_after.new_flows, stats_before.new_flows,
        "the flow was hashed again"
    );
    assert!(
        stats_after.conn_hits >= stats_before.conn_hits + 10,
        "{stats_before:?} → {stats_after:?}"
    );
    // Every connection-table entry (the conversation's included) survived with its backend
    // slot and generations, although the table now has another backend.
    let flows_after = Dump::read(&pins).unwrap().flows();
    for (k, e) in &flows_before {
        assert_eq!(
            flows_after.get(k),
            Some(e),
            "entry {k:?} changed or vanished"
        );
    }
    // Adopted, not rebuilt: the slots that stay keep their entries (generation included),
    // and the drain survived.
    let after = Maps::read(&pins).unwrap();
    for (slot, b) in &before.backends {
        assert_eq!(after.backends.get(slot), Some(b), "slot {slot} changed");
    }
    assert_eq!(after.shares().len(), 3, "{:?}", after.shares());
    let drained = t.backend_ip(index_of(&others[0]));
    assert!(!after.shares().contains_key(&drained), "the drain was lost");
    assert!(
        agent.log().contains("adopted the pinned XDP link"),
        "log:\n{}",
        agent.log()
    );
    let per = new_flows(&t, 30).unwrap();
    assert!(!per.contains_key(&others[0]), "{per:?}");
    assert_eq!(per.values().sum::<usize>(), 30, "{per:?}");
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

/// A second `lb run` on the same config finds the pin folder locked and exits before
/// touching the dataplane.
fn second_agent_is_refused(t: &Topology, agent: &Agent) {
    let mut child = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.balancer.0))
        .arg("--")
        .arg(lb_tests::lb_binary())
        .args(["run", "--config", agent.config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ignored = child.kill();
            let _ignored = child.wait();
            panic!("a second agent kept running next to the first");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("another lb agent is running over") && err.contains("dataplane.pin_path"),
        "{err}"
    );
}

#[test]
fn a_backend_down_before_a_restart_gets_no_new_flows_after_it() {
    if !root_or_skip("agent restart with a down backend") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let mut backends = start_backends(&t).unwrap();
    let o = Opts {
        check: Some((0.5, 2, 2)),
        ..Default::default()
    };
    let mut agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    let ip1 = t.backend_ip(1);
    until_maps(&pins, Duration::from_secs(5), |m| m.shares().len() == 3).unwrap();
    backends[1].kill();
    until_maps(&pins, Duration::from_secs(5), |m| {
        !m.shares().contains_key(&ip1)
    })
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", agent.log()));
    agent.restart().unwrap();
    // From the restart on, through the new agent's first reconciles and until its own
    // checker has judged backend-1 (at least two 0.5 s probes), it never re-enters.
    let t0 = Instant::now();
    let mut reads = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        if let Ok(m) = Maps::read(&pins) {
            reads += 1;
            assert!(
                !m.shares().contains_key(&ip1),
                "backend-1 back in the table {:?} after the restart; log:\n{}",
                t0.elapsed(),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Each read walks every backend slot and Maglev entry (debug build, one syscall each):
    // on a loaded 2-core machine fewer than 50 fit in 3 s; 20 still sample the whole window.
    assert!(reads >= 20, "the maps could be read only {reads} times");
    assert!(
        agent
            .log()
            .contains("backend-1 was unhealthy before the restart"),
        "{}",
        agent.log()
    );
    let d = lb_ok(&agent, &["describe", "service", "web"]);
    assert_eq!(d["backends"][1]["health"], "unhealthy");
    let per = new_flows(&t, 30).unwrap();
    assert!(!per.contains_key("backend-1"), "{per:?}");
}
