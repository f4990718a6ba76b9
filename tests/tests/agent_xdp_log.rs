//! `lb run --xdp-log`: the XDP program's rare verdicts reach the agent's log (aya-log), and
//! without the option they are only counted. With the service's only backend drained, a
//! new connection's SYN finds no backend (`drop_no_backend`).

mod agent_support;

use agent_support::*;
use lb_tests::{
    lbrun::{wait_for, Agent},
    netns::Topology,
    root_or_skip,
};
use std::{
    net::{SocketAddr, TcpStream},
    time::Duration,
};

const LINE: &str = "drop_no_backend: the VIP's service has no usable backend";

/// Tries a new connection to the VIP (its SYN is dropped: no answer within 300 ms).
fn new_connection(t: &Topology) {
    let to = SocketAddr::new(t.vip().into(), 80);
    let r = t
        .client
        .run_in(move || TcpStream::connect_timeout(&to, Duration::from_millis(300)).is_ok())
        .unwrap();
    assert!(!r, "a connection succeeded with no backend");
}

fn no_backend_drops(agent: &Agent) -> u64 {
    let out = lb(
        agent,
        &["stats", "--pin-path", agent.pin_dir.to_str().unwrap()],
    );
    out.stdout
        .lines()
        .find(|l| l.trim_start().starts_with("drop_no_backend"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn rare_verdicts_are_logged_only_with_xdp_log() {
    if !root_or_skip("agent xdp log") {
        return;
    }
    let t = Topology::new(1).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        backends: vec![0],
        ..Default::default()
    };
    let mut agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    lb_ok(&agent, &["drain", "web", "backend-0"]);

    // Off: the drop is counted, not logged.
    let before = no_backend_drops(&agent);
    new_connection(&t);
    let counted = wait_for(Duration::from_secs(10), || {
        let now = no_backend_drops(&agent);
        anyhow::ensure!(now > before, "drop_no_backend still {now}");
        Ok(now)
    });
    assert!(
        counted.is_ok(),
        "{counted:?}\n{}\n{}",
        lb(
            &agent,
            &["stats", "--pin-path", agent.pin_dir.to_str().unwrap()]
        )
        .stdout,
        agent.log()
    );
    assert!(!agent.log().contains(LINE), "{}", agent.log());

    // On: a restart with --xdp-log loads the program with its logs on.
    agent.run_args = vec!["--xdp-log".into()];
    agent.restart().unwrap();
    let logged = wait_for(Duration::from_secs(20), || {
        new_connection(&t);
        anyhow::ensure!(agent.log().contains(LINE), "not logged yet");
        Ok(())
    });
    assert!(logged.is_ok(), "{}", agent.log());
    let log = agent.log();
    eprintln!("{}", log.lines().find(|l| l.contains(LINE)).unwrap());
}
