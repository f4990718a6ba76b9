//! The checker end to end on 127.0.0.1: detection times of a stopped and restarted backend,
//! black-holed backends not delaying the others, and reload keeping state.
//!
//! Run with `--nocapture` to see the measured detection times and the transition log lines.

mod health_support;

use health_support::{routes, start, Mode};
use lb_userspace::{
    config::Config,
    health::{Health, HealthChecker, HealthSnapshot},
};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::watch;

fn init_log() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
}

fn config(check: &str, backends: &[(&str, u16)]) -> Config {
    let list: Vec<String> = backends
        .iter()
        .map(|(name, port)| {
            format!("{{ name = \"{name}\", address = \"127.0.0.1\", port = {port} }}")
        })
        .collect();
    let text = format!(
        r#"
        [health_checks.hc]
        port_specification = "USE_SERVING_PORT"
        {check}
        [backend_services.web]
        protocol = "HTTP"
        health_check = "hc"
        backends = [{}]
        "#,
        list.join(", ")
    );
    lb_userspace::model::parse(&text)
        .expect("valid test config")
        .config()
        .clone()
}

/// Waits until `backend` of service "web" has verdict `want`; returns how long it took.
async fn wait_for(
    rx: &mut watch::Receiver<Arc<HealthSnapshot>>,
    backend: &str,
    want: Health,
    limit: Duration,
) -> Duration {
    let t = Instant::now();
    tokio::time::timeout(limit, rx.wait_for(|s| s.get("web", backend) == Some(want)))
        .await
        .unwrap_or_else(|_| panic!("{backend} not {want:?} within {limit:?}"))
        .expect("checker alive");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_backend_detected_and_recovers() {
    init_log();
    let (interval, unhealthy_threshold, healthy_threshold) = (0.5, 2.0, 2.0);
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let addr = b.addr;
    let cfg = config(
        r#"protocol = "HTTP"
        request_path = "/healthz"
        response = "ok"
        check_interval_sec = 0.5
        timeout_sec = 0.25
        healthy_threshold = 2
        unhealthy_threshold = 2"#,
        &[("a", addr.port())],
    );
    let checker = HealthChecker::start(&cfg);
    let mut rx = checker.subscribe();
    assert!(
        rx.borrow().is_healthy("web", "a"),
        "unknown counts as healthy"
    );
    let first = wait_for(&mut rx, "a", Health::Healthy, Duration::from_secs(3)).await;

    drop(b);
    let down_bound = Duration::from_secs_f64(interval * unhealthy_threshold + 1.0);
    let down = wait_for(&mut rx, "a", Health::Unhealthy, down_bound).await;
    assert!(!rx.borrow().is_healthy("web", "a"));

    let _b = start(addr, Mode::Http, routes()).await;
    let up_bound = Duration::from_secs_f64(interval * healthy_threshold + 1.0);
    let up = wait_for(&mut rx, "a", Health::Healthy, up_bound).await;

    let st = &checker.status()[0];
    assert_eq!(st.health, Some(Health::Healthy));
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("connect"),
        "{st:?}"
    );
    println!(
        "DETECTION (interval {interval} s, timeout 0.25 s, thresholds {healthy_threshold}/{unhealthy_threshold}): \
         first verdict healthy after {first:?}; stopped → unhealthy after {down:?} (bound {down_bound:?}); \
         restarted → healthy after {up:?} (bound {up_bound:?})"
    );
}

/// A backend that stops answering (no RST, no response) costs the timeout on top of the
/// probes: detection is within U·I + T. The stop happens at a random point of the interval,
/// so the figures printed are typical rather than worst-case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_detected_and_recovers() {
    init_log();
    let (interval, timeout, threshold) = (0.5, 0.25, 2.0);
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let cfg = config(
        r#"protocol = "HTTP"
        request_path = "/healthz"
        check_interval_sec = 0.5
        timeout_sec = 0.25
        healthy_threshold = 2
        unhealthy_threshold = 2"#,
        &[("a", b.addr.port())],
    );
    let checker = HealthChecker::start(&cfg);
    let mut rx = checker.subscribe();
    wait_for(&mut rx, "a", Health::Healthy, Duration::from_secs(3)).await;
    tokio::time::sleep(random_fraction_of(interval)).await;

    b.hung.store(true, std::sync::atomic::Ordering::Relaxed);
    let bound = Duration::from_secs_f64(interval * threshold + timeout + 1.0);
    let down = wait_for(&mut rx, "a", Health::Unhealthy, bound).await;
    assert_eq!(
        checker.status()[0].last_error.as_deref(),
        Some("response timeout")
    );
    tokio::time::sleep(random_fraction_of(interval)).await;
    b.hung.store(false, std::sync::atomic::Ordering::Relaxed);
    let up_bound = Duration::from_secs_f64(interval * threshold + 1.0);
    let up = wait_for(&mut rx, "a", Health::Healthy, up_bound).await;
    println!(
        "DETECTION hung backend (interval {interval} s, timeout {timeout} s, thresholds 2/2, \
         random phase): stops answering → unhealthy after {down:?} (bound {bound:?}); \
         answers again → healthy after {up:?} (bound {up_bound:?})"
    );
}

/// A pseudo-random duration in [0, secs) from the clock, to stop backends at a random
/// point of the probe interval.
fn random_fraction_of(secs: f64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    Duration::from_secs_f64(secs * f64::from(nanos % 1000) / 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holes_do_not_delay_other_backends() {
    init_log();
    let good = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let silent = health_support::silent().await;
    let hole = health_support::syn_black_hole().await;
    let cfg = config(
        r#"protocol = "HTTP"
        request_path = "/healthz"
        check_interval_sec = 0.2
        timeout_sec = 0.2
        healthy_threshold = 1
        unhealthy_threshold = 1"#,
        &[
            ("good", good.addr.port()),
            ("silent", silent.addr.port()),
            ("synhole", hole.addr.port()),
        ],
    );
    let checker = HealthChecker::start(&cfg);
    let mut rx = checker.subscribe();
    // Every backend has its first verdict before the counting starts.
    wait_for(&mut rx, "good", Health::Healthy, Duration::from_secs(3)).await;
    wait_for(&mut rx, "silent", Health::Unhealthy, Duration::from_secs(3)).await;
    wait_for(
        &mut rx,
        "synhole",
        Health::Unhealthy,
        Duration::from_secs(3),
    )
    .await;
    let counts = || {
        let st = checker.status();
        let count = |name: &str| st.iter().find(|s| s.backend == name).unwrap().probe_count();
        (count("good"), count("silent"), count("synhole"))
    };
    let (g0, s0, h0) = counts();
    // The measurement window itself (probes per 2 s), not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (g1, s1, h1) = counts();
    let (g, s, h) = (g1 - g0, s1 - s0, h1 - h0);
    println!("PROBES in 2 s at 0.2 s interval: good {g}, silent {s}, syn black hole {h}");
    assert!(
        (8..=11).contains(&g),
        "healthy backend probed {g} times, expected about 10"
    );
    assert_eq!(
        good.request_count(),
        g1,
        "every probe reached the good backend"
    );
    let st = checker.status();
    let snap = checker.subscribe().borrow().clone();
    assert_eq!(snap.get("web", "good"), Some(Health::Healthy));
    assert_eq!(snap.get("web", "silent"), Some(Health::Unhealthy));
    assert_eq!(snap.get("web", "synhole"), Some(Health::Unhealthy));
    let err = |name: &str| {
        st.iter()
            .find(|s| s.backend == name)
            .unwrap()
            .last_error
            .clone()
    };
    assert_eq!(err("silent").as_deref(), Some("response timeout"));
    assert_eq!(err("synhole").as_deref(), Some("connect timeout"));
    // The black holes' probes are bounded by the timeout, so they keep their rhythm too
    // (probes waiting for the previous timeout before the next interval would give 5).
    assert!(
        (7..=11).contains(&s) && (7..=11).contains(&h),
        "silent {s}, syn black hole {h}, expected about 10"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_state_of_unchanged_targets() {
    init_log();
    let a = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let b = start("127.0.0.1:0".parse().unwrap(), Mode::Http, routes()).await;
    let check = r#"protocol = "TCP"
        check_interval_sec = 0.1
        timeout_sec = 0.1
        healthy_threshold = 1
        unhealthy_threshold = 1"#;
    let mut checker = HealthChecker::start(&config(check, &[("a", a.addr.port())]));
    let mut rx = checker.subscribe();
    wait_for(&mut rx, "a", Health::Healthy, Duration::from_secs(2)).await;
    let probes_before = checker.status()[0].probe_count();

    // Same target plus a new one: "a" keeps its verdict and counters, "b" starts unknown.
    checker.update(&config(
        check,
        &[("a", a.addr.port()), ("b", b.addr.port())],
    ));
    let snap = rx.borrow().clone();
    assert_eq!(snap.get("web", "a"), Some(Health::Healthy));
    assert_eq!(snap.get("web", "b"), None);
    let st = checker.status();
    assert!(st[0].probe_count() >= probes_before);
    wait_for(&mut rx, "b", Health::Healthy, Duration::from_secs(2)).await;

    // "a" removed: it leaves the snapshot and the status.
    checker.update(&config(check, &[("b", b.addr.port())]));
    assert_eq!(rx.borrow().get("web", "a"), None);
    assert_eq!(checker.status().len(), 1);

    // Shutdown stops probing.
    checker.shutdown();
    let n = b.request_count() + checker.status()[0].probe_count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.request_count() + checker.status()[0].probe_count(), n);
}
