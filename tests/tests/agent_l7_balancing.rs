//! Fairness request by request through `lb run` (L7 only, loopback): sequential requests
//! over short windows, for every locality policy, and the RATE and UTILIZATION balancing
//! modes. One agent serves one listener per case.

#[path = "l7_agent/mod.rs"]
mod agent;
#[path = "l7_support/mod.rs"]
mod support;

use agent::{entry, get, sequence, site, LbRun};
use lb_tests::root_or_skip;
use std::time::{Duration, Instant};
use support::{backend, free_port, free_ports, Behaviour, TestBackend};

/// Every window of `len` consecutive answers holds `want` of each backend name.
fn assert_windows(seq: &[String], len: usize, want: &[(&str, usize)]) {
    for (k, w) in seq.windows(len).enumerate() {
        for (name, n) in want {
            let got = w.iter().filter(|b| b == name).count();
            assert_eq!(got, *n, "window {k} of {seq:?}: {name}");
        }
    }
}

fn count(seq: &[String], name: &str) -> usize {
    seq.iter().filter(|b| *b == name).count()
}

fn service(policy: &str, extra: &str, bs: &[(&TestBackend, &str)]) -> String {
    let list: Vec<String> = bs.iter().map(|(b, e)| entry(b, e)).collect();
    let policy = if policy.is_empty() {
        String::new()
    } else {
        format!("locality_lb_policy = \"{policy}\"\n")
    };
    format!("{policy}{extra}\nbackends = [{}]\n", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_is_fair_over_short_windows() {
    if !root_or_skip("agent L7 balancing") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let ports: Vec<u16> = free_ports(8);
    let cases = [
        ("equal", service("", "", &[(&a, ""), (&b, "")])),
        (
            "three-to-one",
            service("ROUND_ROBIN", "", &[(&a, ", weight = 3"), (&b, "")]),
        ),
        (
            "scaled",
            service("", "", &[(&a, ""), (&b, ", capacity_scaler = 0.5")]),
        ),
        ("least", service("LEAST_REQUEST", "", &[(&a, ""), (&b, "")])),
        ("random", service("RANDOM", "", &[(&a, ""), (&b, "")])),
        (
            "maglev",
            service(
                "MAGLEV",
                "session_affinity = \"HEADER_FIELD\"\nconsistent_hash = { http_header_name = \"x-user\" }",
                &[(&a, ""), (&b, "")],
            ),
        ),
        (
            "ring",
            service(
                "RING_HASH",
                "session_affinity = \"HEADER_FIELD\"\nconsistent_hash = { http_header_name = \"x-user\" }",
                &[(&a, ""), (&b, "")],
            ),
        ),
        (
            "rate",
            service(
                "",
                "max_rate_per_endpoint = 2.0",
                &[(&a, ", weight = 10"), (&b, "")],
            ),
        ),
    ];
    let mut cfg = "[admin]\nsocket = \"{SOCK}\"\n".to_string();
    for ((name, svc), port) in cases.iter().zip(&ports) {
        cfg += &site(name, *port, svc);
    }
    let names: Vec<&'static str> = cases.iter().map(|c| c.0).collect();
    let port = move |name: &str| ports[names.iter().position(|c| *c == name).unwrap()];
    let lb = LbRun::start(&cfg, port("equal"));

    let run = tokio::task::spawn_blocking(move || {
        // RATE first: its meters must not have seen the other cases' requests (they are
        // per backend). Weights alone send a 10 requests of 11; at 2 per second each, a
        // burst of 4 is 2 and 2, and a full pair still serves (by weight).
        let burst = sequence(port("rate"), 4, &[]);
        assert_eq!(count(&burst, "a"), 2, "RATE: {burst:?}");
        assert_eq!(count(&burst, "b"), 2, "RATE: {burst:?}");
        let over = sequence(port("rate"), 6, &[]);
        assert!(count(&over, "a") >= 4, "all full: by weight: {over:?}");

        let eq = sequence(port("equal"), 12, &[]);
        assert_windows(&eq, 2, &[("a", 1), ("b", 1)]);
        let tto = sequence(port("three-to-one"), 16, &[]);
        assert_windows(&tto, 4, &[("a", 3), ("b", 1)]);
        let scaled = sequence(port("scaled"), 12, &[]);
        assert_windows(&scaled, 3, &[("a", 2), ("b", 1)]);

        // Sequential requests find both backends idle: LEAST_REQUEST's two choices and
        // RANDOM are random draws by weight; each window of 20 holds both (the chance of
        // 20 alike is 2e-6), well inside binomial bounds.
        for policy in ["least", "random"] {
            let seq = sequence(port(policy), 60, &[]);
            for w in seq.chunks(20) {
                let n = count(w, "a");
                assert!((3..=17).contains(&n), "{policy}: {w:?}");
            }
        }

        // Hashed affinity: the same key sticks, distinct keys spread over both.
        for policy in ["maglev", "ring"] {
            let mut owners = Vec::new();
            for user in 0..24 {
                let u = format!("user-{user}");
                let seq = sequence(port(policy), 4, &[("x-user", &u)]);
                assert!(
                    seq.iter().all(|b| *b == seq[0]),
                    "{policy}: {u} moved: {seq:?}"
                );
                owners.push(seq[0].clone());
            }
            let n = count(&owners, "a");
            assert!(
                (4..=20).contains(&n),
                "{policy}: keys not spread: {owners:?}"
            );
        }
    });
    let result = run.await;
    if let Err(e) = result {
        panic!("{e}; agent log:\n{}", lb.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utilization_passes_over_a_busy_backend() {
    if !root_or_skip("agent L7 utilization") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let port = free_port();
    // One request in flight is 50% of 2, the target: a backend holding one is full. Weights
    // alone would send both concurrent requests to `a` (10:1).
    let svc = service(
        "",
        "balancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 2\nmax_utilization = 0.5",
        &[(&a, ", weight = 10"), (&b, "")],
    );
    let cfg = format!("[admin]\nsocket = \"{{SOCK}}\"\n{}", site("u", port, &svc));
    let lb = LbRun::start(&cfg, port);
    let (a0, b0) = (a.count(), b.count());
    a.set(Behaviour::Delay(Duration::from_millis(1500)));
    b.set(Behaviour::Delay(Duration::from_millis(1500)));
    let first = std::thread::spawn(move || get(port, "/", &[]));
    // Wait until the first request is at a backend, then send the second.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() == a0 + b0 {
        assert!(
            Instant::now() < deadline,
            "first request never reached a backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = std::thread::spawn(move || get(port, "/", &[]));
    let third_deadline = Instant::now() + Duration::from_secs(5);
    while a.count() + b.count() < a0 + b0 + 2 {
        assert!(
            Instant::now() < third_deadline,
            "second request never reached a backend"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both full: a third is still served.
    let third = std::thread::spawn(move || get(port, "/", &[]));
    let answers: Vec<_> = [first, second, third]
        .into_iter()
        .map(|t| t.join().unwrap().expect("answer"))
        .collect();
    assert!(answers.iter().all(|(s, _, _)| *s == 200), "{answers:?}");
    let names: Vec<&str> = answers[..2].iter().map(|(_, b, _)| b.as_str()).collect();
    assert!(
        names.contains(&"a") && names.contains(&"b"),
        "the second request went to the backend with room: {names:?}; log:\n{}",
        lb.log()
    );
}
