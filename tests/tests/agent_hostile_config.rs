//! Hostile configuration values (inf, NaN, negatives, 1e20, u32/u64 overflow, empty and
//! huge strings, addresses that cannot be VIPs) through `lb validate`, through a reload of a
//! running `lb run` (`lb reload` and SIGHUP) and through admin changes: each is refused with
//! a clear error naming its place, nothing panics, and the running agent keeps serving with
//! its configuration unchanged. Loopback, L7 only (no XDP); root because `lb run` is.

#[path = "l7_agent_support/mod.rs"]
mod support;

use lb_tests::{lb_binary, root_or_skip};
use std::{io::Write, os::unix::net::UnixStream, process::Command, time::Duration};
use support::*;

/// (what, text replaced, replacement, place the error must name)
fn hostile() -> Vec<(&'static str, &'static str, String, &'static str)> {
    let huge = "x".repeat(200_000);
    vec![
        ("infinite service timeout", "[backend_services.web]", "[backend_services.web]\ntimeout_sec = inf".into(), "backend_services.web.timeout_sec"),
        ("NaN service timeout", "[backend_services.web]", "[backend_services.web]\ntimeout_sec = nan".into(), "backend_services.web.timeout_sec"),
        ("negative service timeout", "[backend_services.web]", "[backend_services.web]\ntimeout_sec = -5.0".into(), "backend_services.web.timeout_sec"),
        ("route timeout 1e20", "default_service = \"web\"", "default_service = \"web\"\ndefault_route_action = { timeout_sec = 1e20 }".into(), "url_maps.m.default_route_action.timeout_sec"),
        ("per-try timeout inf", "default_service = \"web\"", "default_service = \"web\"\ndefault_route_action = { retry_policy = { per_try_timeout_sec = inf } }".into(), "url_maps.m.default_route_action.retry_policy.per_try_timeout_sec"),
        ("NaN check interval", "check_interval_sec = 0.2", "check_interval_sec = nan".into(), "health_checks.hc.check_interval_sec"),
        ("u32 overflow (weight)", "port = {BACKEND} }]", "port = {BACKEND}, weight = 4294967296 }]".into(), "line 20: backend_services.web.backends"),
        ("u64 overflow (weight)", "port = {BACKEND} }]", "port = {BACKEND}, weight = 18446744073709551616 }]".into(), "line 20: backend_services.web.backends"),
        ("weight above 1000", "port = {BACKEND} }]", "port = {BACKEND}, weight = 4294967295 }]".into(), "backend_services.web.backends[0].weight"),
        ("ring size u32::MAX", "[backend_services.web]", "[backend_services.web]\nconsistent_hash = { minimum_ring_size = 4294967295 }".into(), "backend_services.web.consistent_hash.minimum_ring_size"),
        ("outlier interval inf", "[backend_services.web]", "[backend_services.web]\noutlier_detection = { interval_sec = inf }".into(), "backend_services.web.outlier_detection.interval_sec"),
        ("empty backend name", "name = \"b1\"", "name = \"\"".into(), "backend_services.web.backends[0].name"),
        ("huge request path", "request_path = \"/healthz\"", format!("request_path = \"/{huge}\""), "health_checks.hc.request_path"),
        ("huge header value", "default_service = \"web\"", format!("default_service = \"web\"\nheader_action = {{ request_headers_to_add = [{{ header_name = \"x\", header_value = \"{huge}\" }}] }}"), "url_maps.m.header_action.request_headers_to_add[0].header_value"),
        ("keep-alive 0", "url_map = \"m\"", "url_map = \"m\"\nhttp_keep_alive_timeout_sec = 0".into(), "target_http_proxies.p.http_keep_alive_timeout_sec"),
        ("first-request timeout inf", "[l7]", "[l7]\nfirst_request_timeout_sec = inf".into(), "l7.first_request_timeout_sec"),
        ("broadcast listener", "ip_address = \"127.0.0.1\"", "ip_address = \"255.255.255.255\"".into(), "forwarding_rules.web.ip_address"),
        ("unspecified backend", "address = \"127.0.0.1\"", "address = \"0.0.0.0\"".into(), "backend_services.web.backends[0].address"),
        ("metrics address", "[admin]", "[admin]\nmetrics_listen = \"not an address\"".into(), "admin.metrics_listen"),
    ]
}

#[test]
fn hostile_values_are_refused_everywhere_and_the_agent_keeps_serving() {
    if !root_or_skip("hostile configuration") {
        return;
    }
    let b = backend();
    let listen = free_port();
    let good = |dir: &std::path::Path| config(dir, listen, b.port, "");
    let run = Run::start(good);
    wait_serving(listen, &run);
    let cfg_path = run.dir.join("lb.toml");
    let good_text = good(&run.dir);

    for (what, from, to, place) in hostile() {
        let to = to.replace("{BACKEND}", &b.port.to_string());
        let from = from.replace("{BACKEND}", &b.port.to_string());
        assert!(
            good_text.contains(&from),
            "test bug: {from:?} not in the config"
        );
        let bad = good_text.replacen(&from, &to, 1);
        std::fs::write(&cfg_path, &bad).unwrap();

        // lb validate: a clear error with the place, exit status 1, no panic.
        let out = Command::new(lb_binary())
            .args(["validate", cfg_path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: lb validate exit status; {text:.300}"
        );
        assert!(!text.contains("panicked"), "{what}: {text:.300}");
        assert!(
            text.contains(place),
            "{what}: lb validate does not name {place}: {text:.300}"
        );

        // lb reload: refused with the place; the agent keeps its configuration.
        let (ok, text) = cli(&run, &["reload"]);
        assert!(!ok, "{what}: reload accepted");
        assert!(
            text.contains(place),
            "{what}: reload error does not name {place}: {text:.300}"
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(get_on(&mut s).unwrap(), 200, "{what}: still serving");
        assert!(run.status_ok(), "{what}: lb status after the refusal");
    }

    // SIGHUP with a hostile file (the path that used to kill the agent): logged, survived.
    let bad = good_text.replacen(
        "[backend_services.web]",
        "[backend_services.web]\ntimeout_sec = inf",
        1,
    );
    std::fs::write(&cfg_path, &bad).unwrap();
    // SAFETY: signalling the agent we started.
    unsafe { libc::kill(run.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !run.log().contains("backend_services.web.timeout_sec") {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP refusal not logged:\n{}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_serving(listen, &run);
    assert!(run.status_ok());
    assert!(!run.log().contains("panicked"), "{}", run.log());
    std::fs::write(&cfg_path, &good_text).unwrap();

    // Admin changes with hostile values: refused with a clear error, state unchanged.
    let huge_name = "n".repeat(10_000);
    let port = b.port.to_string();
    for (what, args, says) in [
        ("weight 0", vec!["weight", "web", "b1", "0"], "weight"),
        (
            "weight above 1000",
            vec!["weight", "web", "b1", "4294967295"],
            "weight",
        ),
        (
            "unspecified address",
            vec![
                "backend",
                "add",
                "web",
                "--address",
                "0.0.0.0",
                "--port",
                &port,
            ],
            "address",
        ),
        (
            "multicast address",
            vec![
                "backend",
                "add",
                "web",
                "--address",
                "224.0.0.1",
                "--port",
                &port,
            ],
            "address",
        ),
        (
            "port 0",
            vec![
                "backend",
                "add",
                "web",
                "--address",
                "127.0.0.2",
                "--port",
                "0",
            ],
            "port",
        ),
        (
            "huge name",
            vec![
                "backend",
                "add",
                "web",
                "--address",
                "127.0.0.2",
                "--port",
                &port,
                "--name",
                &huge_name,
            ],
            "name",
        ),
        (
            "empty name",
            vec![
                "backend",
                "add",
                "web",
                "--address",
                "127.0.0.2",
                "--port",
                &port,
                "--name",
                "",
            ],
            "name",
        ),
    ] {
        let (ok, text) = cli(&run, &args);
        assert!(!ok, "{what}: accepted");
        assert!(
            text.contains(says),
            "{what}: error does not say {says}: {text:.300}"
        );
        assert!(!text.contains("panicked"), "{what}: {text:.300}");
    }
    // Overflowing numbers straight on the socket (the CLI's parser would stop them first).
    for line in [
        r#"{"version":1,"verb":"set-weight","service":"web","backend":"b1","weight":1e20}"#,
        r#"{"version":1,"verb":"set-weight","service":"web","backend":"b1","weight":-1}"#,
        r#"{"version":1,"verb":"set-weight","service":"web","backend":"b1","weight":18446744073709551616}"#,
    ] {
        let mut s = UnixStream::connect(run.dir.join("admin.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        writeln!(s, "{line}").unwrap();
        let mut answer = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&s), &mut answer).unwrap();
        assert!(
            answer.contains("\"ok\":false") && answer.contains("bad-request"),
            "{line}: {answer}"
        );
    }
    let (ok, text) = cli(&run, &["-o", "json", "describe", "service", "web"]);
    assert!(ok, "{text}");
    assert!(text.contains("\"b1\""), "b1 unchanged: {text}");
    assert!(!text.contains("127.0.0.2"), "no backend was added: {text}");
    wait_serving(listen, &run);
}
