//! The connection-table settings and counters through `lb run`: the configured promotion
//! rate limit reaches the running program, a long-lived connection is promoted from the
//! young-flow table into the connection table, and `lb stats` and the metrics endpoint
//! show the connection-table counters.

mod agent_support;

use agent_support::*;
use aya::maps::{Array, MapData};
use lb_common::{names, Settings};
use lb_tests::{
    lbrun::{Agent, Conversation},
    netns::Topology,
    root_or_skip,
};
use lb_userspace::dataplane::loader::open_pinned;
use std::{
    process::Command,
    time::{Duration, Instant},
};

const METRICS_PORT: u16 = 9191;

/// `lb stats` for the agent's pin folder: (reason, packets) rows.
fn stats(agent: &Agent) -> String {
    let out = Command::new(lb_tests::lb_binary())
        .args(["stats", "--pin-path", agent.pin_dir.to_str().unwrap()])
        .output()
        .expect("lb stats");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into()
}

fn stat(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {name} in lb stats:\n{text}"))
}

#[test]
fn lb_run_applies_the_promotion_limit_and_shows_connection_table_counters() {
    if !root_or_skip("agent conntrack") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        metrics_port: Some(METRICS_PORT),
        ..Default::default()
    };
    let cfg = config(&t, &o).replace(
        "[dataplane]\n",
        "[dataplane]\nconn_promotions_per_sec = 777\n",
    );
    let agent = Agent::start(&t.balancer, &cfg).unwrap();
    wait_ready(&t, &agent);
    let settings: Array<MapData, Settings> =
        open_pinned(&agent.pin_dir, names::MAP_SETTINGS).unwrap();
    assert_eq!(settings.get(&0, 0).unwrap().conn_promotions_per_sec, 777);

    // A connection exchanging a line every 100 ms lives past a second: promoted.
    let conv = Conversation::open(&t).unwrap();
    let started = Instant::now();
    let mut i = 0;
    while stat(&stats(&agent), "conn_promoted") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the connection was never promoted:\n{}",
            stats(&agent)
        );
        assert!(conv.works(i), "exchange {i} failed");
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = stats(&agent);
    assert!(stat(&text, "conn_young_insert") >= 1, "{text}");
    assert_eq!(stat(&text, "conn_insert_failed"), 0, "{text}");
    assert_eq!(stat(&text, "conn_promotion_skipped"), 0, "{text}");
    let metrics = scrape(&t, METRICS_PORT);
    for name in [
        "conn_young_insert",
        "conn_young_replaced",
        "conn_promoted",
        "conn_promotion_skipped",
    ] {
        let line = format!("lb_dataplane_packets_total{{reason=\"{name}\"}}");
        assert!(metrics.contains(&line), "no {line}:\n{metrics}");
    }
    assert!(conv.works(i), "the promoted connection stopped working");

    // The limit sizes nothing but is fixed at load: a reload that changes it is refused and
    // the running value stays.
    agent
        .reload(&cfg.replace("= 777", "= 778"))
        .expect("reload signal");
    let refused = lb_tests::lbrun::wait_for(Duration::from_secs(10), || {
        anyhow::ensure!(
            agent.log().contains("dataplane.conn_promotions_per_sec"),
            "not yet"
        );
        Ok(())
    });
    assert!(refused.is_ok(), "reload not refused:\n{}", agent.log());
    assert_eq!(settings.get(&0, 0).unwrap().conn_promotions_per_sec, 777);
}
