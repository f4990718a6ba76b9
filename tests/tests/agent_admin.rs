//! The admin socket end to end: every verb through the `lb` client binary, and every kind
//! of refusal (malformed request, unknown name, out-of-range value, broken reload file,
//! unprivileged peer, a change the pinned maps have no room for) leaving every pinned map
//! byte-for-byte as it was.

mod agent_support;

use agent_support::*;
use lb_common::backend_flags;
use lb_tests::{lbrun::Agent, netns::Topology, root_or_skip};
use lb_userspace::cli::client::call_line;
use std::{os::unix::fs::PermissionsExt, time::Duration};

const T: Duration = Duration::from_secs(10);

/// Runs a refused request and checks the error kind, message and that the maps stayed.
fn refused(agent: &Agent, args: &[&str], kind: &str, says: &str) {
    let before = Dump::read(&agent.pin_dir).unwrap();
    let o = lb(agent, args);
    assert_eq!(o.code, 1, "lb {args:?} should be refused: {o:?}");
    let e = &o.json()["error"];
    assert_eq!(e["kind"], kind, "lb {args:?}: {o:?}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains(says),
        "lb {args:?}: message {msg:?} lacks {says:?}"
    );
    // The answer comes after the agent has applied or refused: no wait is needed.
    assert_eq!(
        Dump::read(&agent.pin_dir).unwrap(),
        before,
        "lb {args:?} changed the dataplane"
    );
}

#[test]
fn every_verb_works_and_every_refusal_leaves_the_dataplane_unchanged() {
    if !root_or_skip("agent admin") {
        return;
    }
    let t = Topology::new(3).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let two = Opts {
        backends: vec![0, 1],
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &two)).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    let ip = |i: usize| t.backend_ip(i);

    // ---- Reads ----
    let st = lb_ok(&agent, &["status"]);
    assert_eq!(st["backends"], 2);
    assert_eq!(st["forwarding_rules"], 1);
    let rules = lb_ok(&agent, &["list", "rules"]);
    assert_eq!(rules[0]["name"], "web");
    assert!(
        rules[0]["packets"].as_u64().unwrap() > 0,
        "VIP counters come from the maps: {rules}"
    );
    assert_eq!(lb_ok(&agent, &["list", "services"])[0]["name"], "web");
    let bs = lb_ok(&agent, &["list", "backends"]);
    assert_eq!(bs.as_array().unwrap().len(), 2);
    assert_eq!(bs[0]["state"], "ready");
    let d = lb_ok(&agent, &["describe", "service", "web"]);
    assert_eq!(d["backends"][1]["name"], "backend-1");
    let human = |args: &[&str]| {
        let o = std::process::Command::new(lb_tests::lb_binary())
            .args(["--socket", socket(&agent).to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "lb {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let text = human(&["list", "backends"]);
    assert!(
        text.starts_with("SERVICE") && text.contains("backend-1"),
        "{text}"
    );
    let text = human(&["status"]);
    assert!(
        text.contains("forwarding rules 1, backend services 1, backends 2"),
        "{text}"
    );
    println!("$ lb status\n{text}");
    let text = human(&["list", "rules"]);
    assert!(text.starts_with("RULE") && text.contains("web"), "{text}");
    println!("$ lb list rules\n{text}");

    // ---- Changes, each checked in the maps ----
    lb_ok(
        &agent,
        &[
            "backend",
            "add",
            "web",
            "--address",
            &ip(2).to_string(),
            "--name",
            "backend-2",
        ],
    );
    until_maps(&pins, T, |m| m.shares().len() == 3).expect("added backend in the table");
    let per = new_flows(&t, 60).unwrap();
    assert_eq!(per.len(), 3, "traffic reaches the added backend: {per:?}");

    lb_ok(&agent, &["weight", "web", "backend-2", "5"]);
    let m = Maps::read(&pins).unwrap();
    let share = m.shares()[&ip(2)] as f64 / RING as f64;
    assert!(
        (0.66..0.77).contains(&share),
        "weight 5 of 7 gives ~71%, got {share}"
    );

    lb_ok(&agent, &["drain", "web", "backend-0"]);
    let m = Maps::read(&pins).unwrap();
    assert!(
        !m.shares().contains_key(&ip(0)),
        "drained backend out of the table"
    );
    assert!(m.flags(ip(0)).unwrap() & backend_flags::DRAINING != 0);
    assert_eq!(
        lb_ok(&agent, &["describe", "service", "web"])["backends"][0]["state"],
        "draining"
    );
    lb_ok(&agent, &["undrain", "web", "backend-0"]);
    assert!(Maps::read(&pins).unwrap().shares().contains_key(&ip(0)));

    lb_ok(&agent, &["maintenance", "web", "backend-1", "on"]);
    let m = Maps::read(&pins).unwrap();
    assert!(!m.shares().contains_key(&ip(1)));
    assert!(
        m.flags(ip(1)).unwrap() & backend_flags::EVICT != 0,
        "maintenance evicts flows"
    );
    lb_ok(&agent, &["maintenance", "web", "backend-1", "off"]);
    let m = Maps::read(&pins).unwrap();
    assert!(m.shares().contains_key(&ip(1)) && m.flags(ip(1)).unwrap() & backend_flags::EVICT == 0);

    lb_ok(&agent, &["health", "web", "backend-0", "down"]);
    let m = Maps::read(&pins).unwrap();
    assert!(
        !m.shares().contains_key(&ip(0)) && m.flags(ip(0)).unwrap() & backend_flags::HEALTHY == 0
    );
    lb_ok(&agent, &["health", "web", "backend-0", "up"]);
    assert!(Maps::read(&pins).unwrap().flags(ip(0)).unwrap() & backend_flags::HEALTHY != 0);
    lb_ok(&agent, &["health", "web", "backend-0", "auto"]);
    assert!(Maps::read(&pins).unwrap().shares().contains_key(&ip(0)));

    lb_ok(&agent, &["backend", "remove", "web", "backend-2"]);
    let m = Maps::read(&pins).unwrap();
    assert!(
        !m.shares().contains_key(&ip(2)),
        "removed backend out of the table"
    );
    assert!(
        m.flags(ip(2)).unwrap() & backend_flags::DRAINING != 0,
        "and draining its flows"
    );

    // Reload back to three backends from the file.
    let three = config(&t, &Opts::default())
        .replace("{PIN}", pins.to_str().unwrap())
        .replace("{SOCK}", socket(&agent).to_str().unwrap());
    std::fs::write(&agent.config, &three).unwrap();
    lb_ok(&agent, &["reload"]);
    until_maps(&pins, T, |m| m.shares().len() == 3).expect("reloaded file in the maps");
    let m = Maps::read(&pins).unwrap();
    let share = m.shares()[&ip(2)] as f64 / RING as f64;
    assert!(
        share < 0.4,
        "reload returns to the file's weight 1: {share}"
    );

    println!(
        "$ lb describe service web\n{}",
        human(&["describe", "service", "web"])
    );

    // ---- Refusals ----
    for (line, says) in [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        (r#"{"verb":"status"}"#, "no \"version\""),
        (
            r#"{"version":9,"verb":"status"}"#,
            "version 9 is not supported",
        ),
        (
            r#"{"version":1,"verb":"explode"}"#,
            "unknown variant `explode`",
        ),
        (
            r#"{"version":1,"verb":"drain","service":"web"}"#,
            "missing field `backend`",
        ),
        (
            r#"{"version":1,"verb":"set-weight","service":"web","backend":"backend-0","weight":-3}"#,
            "invalid value",
        ),
    ] {
        let before = Dump::read(&pins).unwrap();
        let r = call_line(&socket(&agent), line).unwrap();
        assert!(!r.ok, "{line} accepted");
        let e = r.error.unwrap();
        assert!(
            e.message.contains(says),
            "{line}: {:?} lacks {says:?}",
            e.message
        );
        assert_eq!(Dump::read(&pins).unwrap(), before);
    }
    refused(
        &agent,
        &["drain", "nope", "backend-0"],
        "not-found",
        "no backend service named \"nope\" (known: web)",
    );
    refused(
        &agent,
        &["drain", "web", "backend-9"],
        "not-found",
        "known: backend-0, backend-1, backend-2",
    );
    refused(
        &agent,
        &["backend", "remove", "web", "backend-9"],
        "not-found",
        "no backend named \"backend-9\"",
    );
    refused(
        &agent,
        &["weight", "web", "backend-0", "0"],
        "invalid",
        "backend_services.web.backends[0].weight: 0 is outside 1..=1000",
    );
    refused(
        &agent,
        &["weight", "web", "backend-0", "5000"],
        "invalid",
        "5000 is outside 1..=1000",
    );
    refused(
        &agent,
        &[
            "backend",
            "add",
            "web",
            "--address",
            &ip(0).to_string(),
            "--name",
            "dup",
        ],
        "invalid",
        "distinct addresses",
    );
    refused(
        &agent,
        &[
            "backend",
            "add",
            "web",
            "--address",
            "10.9.9.9",
            "--name",
            "backend-0",
        ],
        "invalid",
        "duplicate backend \"backend-0\"",
    );
    // A broken file: syntax error, then a broken rule; each with its line.
    std::fs::write(&agent.config, format!("{three}\n[oops\n")).unwrap();
    let line = format!("{three}\n[oops\n")
        .lines()
        .position(|l| l == "[oops")
        .unwrap()
        + 1;
    refused(
        &agent,
        &["reload"],
        "invalid",
        &format!("line {line}: file: invalid table header"),
    );
    std::fs::write(
        &agent.config,
        three.replace(
            "connection_draining_timeout_sec = 300",
            "connection_draining_timeout_sec = 9999",
        ),
    )
    .unwrap();
    refused(
        &agent,
        &["reload"],
        "invalid",
        "backend_services.web.connection_draining_timeout_sec: must be 0..=3600",
    );
    std::fs::write(
        &agent.config,
        three.replace(&format!("ring_size = {RING}"), "ring_size = 1031"),
    )
    .unwrap();
    refused(&agent, &["reload"], "invalid", "dataplane.ring_size");
    // A valid file the L7 tier cannot take (an unreadable certificate) next to an L4 change
    // (a second VIP port): refused before any map is written, so both tiers stay.
    let with_tls = three.replace("ports = [80]", "ports = [80, 8080]")
        + r#"
[backend_services.app]
protocol = "HTTP"
backends = [{ name = "a", address = "10.0.0.77", port = 8080 }]

[url_maps.app]
default_service = "app"

[ssl_certificates.missing]
certificate = "/nonexistent/lb-test.pem"
private_key = "/nonexistent/lb-test.key"

[target_https_proxies.tls]
url_map = "app"
ssl_certificates = ["missing"]

[forwarding_rules.tls]
ip_address = "127.0.0.1"
ports = [8443]
target = "tls"
"#;
    std::fs::write(&agent.config, &with_tls).unwrap();
    refused(&agent, &["reload"], "dataplane", "ssl_certificates.missing");
    std::fs::write(&agent.config, &three).unwrap();

    // ---- Unprivileged peers ----
    let sock = socket(&agent);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let o = lb_as(&agent, Some(65534), &["status"]);
    assert_ne!(
        o.code, 0,
        "nobody must not even connect through a 0600 socket: {o:?}"
    );
    assert!(o.stderr.contains("Permission denied"), "{o:?}");
    // Widen the mode: the credential check (SO_PEERCRED) still refuses every change.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(&agent.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = lb_as(&agent, Some(65534), &["status"]);
    assert_eq!(
        o.code, 0,
        "reads are allowed when the mode lets the peer in: {o:?}"
    );
    let before = Dump::read(&pins).unwrap();
    for args in [
        vec!["drain", "web", "backend-0"],
        vec!["maintenance", "web", "backend-1", "on"],
        vec!["backend", "remove", "web", "backend-2"],
        vec!["reload"],
    ] {
        let o = lb_as(&agent, Some(65534), &args);
        assert_eq!(o.code, 1, "{args:?}: {o:?}");
        assert_eq!(o.json()["error"]["kind"], "permission-denied", "{args:?}");
        assert!(o.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534"));
    }
    assert_eq!(
        Dump::read(&pins).unwrap(),
        before,
        "an unprivileged peer changed the dataplane"
    );
    assert!(
        agent.log().contains("admin change refused"),
        "refusals are logged"
    );
}

/// Four services fill `max_services = 4`; a reload that replaces one by another is valid
/// (still four) but the pinned maps cannot hold both ids during the change, so the
/// programmer refuses before its first write: every map stays byte-identical and the
/// running configuration keeps serving.
#[test]
fn a_change_the_pinned_maps_have_no_room_for_is_refused_whole() {
    if !root_or_skip("agent no-room refusal") {
        return;
    }
    let t = Topology::new(2).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        backends: vec![0, 1],
        ..Default::default()
    };
    let mut four = config(&t, &o);
    for (i, port) in [(1, 81), (2, 82), (3, 83)] {
        four += &format!(
            "\n[forwarding_rules.r{i}]\nip_address = \"{vip}\"\nip_protocol = \"TCP\"\nports = [{port}]\nbackend_service = \"s{i}\"\n\n[backend_services.s{i}]\nprotocol = \"TCP\"\nbackends = [{{ name = \"b\", address = \"{addr}\" }}]\n",
            vip = t.vip(),
            addr = t.backend_ip(i % 2),
        );
    }
    let agent = Agent::start(&t.balancer, &four).unwrap();
    wait_ready(&t, &agent);
    let pins = agent.pin_dir.clone();
    until_maps(&pins, T, |m| m.vips.len() == 4).expect("four VIPs programmed");
    let running = std::fs::read_to_string(&agent.config).unwrap();
    std::fs::write(
        &agent.config,
        running
            .replace("backend_service = \"s3\"", "backend_service = \"s4\"")
            .replace("[backend_services.s3]", "[backend_services.s4]"),
    )
    .unwrap();
    refused(
        &agent,
        &["reload"],
        "dataplane",
        "more than 4 L4 backend services; raise dataplane.max_services",
    );
    let st = lb_ok(&agent, &["status"]);
    assert_eq!(st["backend_services"], 4);
    assert!(st["dataplane_unknown"].is_null(), "{st}");
    let d = lb_ok(&agent, &["describe", "service", "s3"]);
    assert_eq!(d["name"], "s3", "the running configuration keeps s3");
    let per = new_flows(&t, 10).unwrap();
    assert_eq!(
        per.values().sum::<usize>(),
        10,
        "the VIP still forwards: {per:?}"
    );
}
