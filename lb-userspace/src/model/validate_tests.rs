//! One test case per validation rule: each breaks one value of a valid file and checks the
//! error's place (dotted path) and that its line is the line that holds the broken value.

fn parse(text: &str) -> Result<crate::config::Config, crate::config::ConfigErrors> {
    super::parse(text).map(|m| m.config().clone())
}

const BASE: &str = r#"
[dataplane]
interfaces = ["eth0"]
ring_size = 65537
max_services = 32
conn_table_size = 262144

[health_checks.hc]
protocol = "HTTP"
port = 80
request_path = "/2"
check_interval_sec = 1.0
timeout_sec = 1.0
healthy_threshold = 2
unhealthy_threshold = 2

[backend_services.l4]
protocol = "TCP"
health_check = "hc"
session_affinity = "NONE"
connection_draining_timeout_sec = 10
timeout_sec = 30.0
failover_policy = { failover_ratio = 0.5 }
connection_tracking_policy = { idle_timeout_sec = 600 }

[[backend_services.l4.backends]]
name = "a"
address = "10.0.0.1"
weight = 1
capacity_scaler = 1.0
mac = "02:00:00:00:00:01"

[[backend_services.l4.backends]]
name = "b"
address = "10.0.0.2"

[backend_services.web]
protocol = "HTTP"
session_affinity = "NONE"

[[backend_services.web.backends]]
address = "10.0.0.3"
port = 8080

[forwarding_rules.vip]
ip_address = "10.0.0.100"
ip_protocol = "TCP"
ports = [80]
backend_service = "l4"

[forwarding_rules.http]
ip_address = "10.0.0.101"
ports = [80]
target = "px"

[forwarding_rules.https]
ip_address = "10.0.0.101"
ports = [443]
target = "pxs"

[url_maps.um]
default_service = "web"

[target_http_proxies.px]
url_map = "um"

[target_https_proxies.pxs]
url_map = "um"
ssl_certificates = ["cert"]

[ssl_certificates.cert]
certificate = "/tmp/c.pem"
private_key = "/tmp/k.pem"
"#;

/// Replaces the first `from` with `to`, parses, and checks that an error at `place` is
/// reported on the line containing `line_has` (and that the message contains `says`).
fn broken(from: &str, to: &str, place: &str, line_has: &str, says: &str) {
    assert!(
        BASE.contains(from),
        "test bug: {from:?} not in the base file"
    );
    let text = BASE.replacen(from, to, 1);
    let errs = parse(&text)
        .expect_err(&format!("{to:?} must be refused"))
        .0;
    let e = errs
        .iter()
        .find(|e| e.place == place)
        .unwrap_or_else(|| panic!("no error at {place}; got {errs:#?}"));
    let line = e
        .line
        .unwrap_or_else(|| panic!("{place}: no line in {e:?}"));
    let got = text.lines().nth(line - 1).unwrap_or_default();
    assert!(
        got.contains(line_has),
        "{place}: line {line} is {got:?}, expected one containing {line_has:?}"
    );
    assert!(
        e.message.contains(says),
        "{place}: message {:?} lacks {says:?}",
        e.message
    );
}

#[test]
fn the_base_file_is_valid() {
    parse(BASE).unwrap();
}

#[test]
fn an_ipv6_rule_with_ipv6_backends_is_valid() {
    let text = BASE
        .replacen("address = \"10.0.0.1\"", "address = \"fd00::1\"", 1)
        .replacen("address = \"10.0.0.2\"", "address = \"fd00::2\"", 1)
        .replacen(
            "ip_address = \"10.0.0.100\"",
            "ip_address = \"fd00::100\"",
            1,
        );
    parse(&text).unwrap();
}

#[test]
fn dataplane_rules() {
    broken(
        "ring_size = 65537",
        "ring_size = 65536",
        "dataplane.ring_size",
        "ring_size",
        "not a prime",
    );
    broken(
        "ring_size = 65537",
        "ring_size = 5",
        "dataplane.ring_size",
        "ring_size",
        "≥ 7",
    );
    broken(
        "max_services = 32",
        "max_services = 0",
        "dataplane.max_services",
        "max_services",
        "1..=1024",
    );
    broken(
        "conn_table_size = 262144",
        "conn_table_size = 10",
        "dataplane.conn_table_size",
        "conn_table_size",
        "at least 1024",
    );
}

#[test]
fn health_check_rules() {
    let hc = "health_checks.hc";
    broken(
        "check_interval_sec = 1.0",
        "check_interval_sec = 0.05",
        &format!("{hc}.check_interval_sec"),
        "check_interval_sec",
        "0.1..=300",
    );
    broken(
        "timeout_sec = 1.0",
        "timeout_sec = 2.0",
        &format!("{hc}.timeout_sec"),
        "timeout_sec = 2.0",
        "not above check_interval_sec",
    );
    broken(
        "timeout_sec = 1.0",
        "timeout_sec = 0.0",
        &format!("{hc}.timeout_sec"),
        "timeout_sec = 0.0",
        "positive",
    );
    broken(
        "healthy_threshold = 2",
        "healthy_threshold = 0",
        &format!("{hc}.healthy_threshold"),
        "healthy_threshold",
        "1..=10",
    );
    broken(
        "unhealthy_threshold = 2",
        "unhealthy_threshold = 11",
        &format!("{hc}.unhealthy_threshold"),
        "unhealthy_threshold",
        "1..=10",
    );
    broken(
        "request_path = \"/2\"",
        "request_path = \"2\"",
        &format!("{hc}.request_path"),
        "request_path",
        "start with '/'",
    );
    broken(
        "port = 80\n",
        "port = 0\n",
        &format!("{hc}.port"),
        "port = 0",
        "1..=65535",
    );
}

#[test]
fn backend_service_rules() {
    let s = "backend_services.l4";
    broken(
        "health_check = \"hc\"",
        "health_check = \"nope\"",
        &format!("{s}.health_check"),
        "health_check",
        "no health check named \"nope\"",
    );
    broken(
        "failover_ratio = 0.5",
        "failover_ratio = 1.5",
        &format!("{s}.failover_policy.failover_ratio"),
        "failover_policy",
        "0..=1",
    );
    broken(
        "connection_draining_timeout_sec = 10",
        "connection_draining_timeout_sec = 4000",
        &format!("{s}.connection_draining_timeout_sec"),
        "connection_draining_timeout_sec",
        "0..=3600",
    );
    broken(
        "idle_timeout_sec = 600",
        "idle_timeout_sec = 700",
        &format!("{s}.connection_tracking_policy.idle_timeout_sec"),
        "connection_tracking_policy",
        "1..=600",
    );
    broken(
        "idle_timeout_sec = 600",
        "idle_timeout_sec = 0",
        &format!("{s}.connection_tracking_policy.idle_timeout_sec"),
        "connection_tracking_policy",
        "1..=600",
    );
    broken(
        "session_affinity = \"NONE\"",
        "session_affinity = \"GENERATED_COOKIE\"",
        &format!("{s}.session_affinity"),
        "GENERATED_COOKIE",
        "need an L7",
    );
    broken(
        "protocol = \"HTTP\"\nsession_affinity = \"NONE\"",
        "protocol = \"HTTP\"\nsession_affinity = \"CLIENT_IP_PROTO\"",
        "backend_services.web.session_affinity",
        "CLIENT_IP_PROTO",
        "L7 backend services support",
    );
    broken(
        "timeout_sec = 30.0",
        "timeout_sec = -1.0",
        &format!("{s}.timeout_sec"),
        "timeout_sec = -1.0",
        "positive",
    );
}

#[test]
fn backend_rules() {
    let b0 = "backend_services.l4.backends[0]";
    let b1 = "backend_services.l4.backends[1]";
    broken(
        "name = \"b\"",
        "name = \"a\"",
        &format!("{b1}.name"),
        "name = \"a\"",
        "duplicate backend \"a\"",
    );
    broken(
        "weight = 1\n",
        "weight = 0\n",
        &format!("{b0}.weight"),
        "weight = 0",
        "outside 1..=1000",
    );
    broken(
        "weight = 1\n",
        "weight = 1001\n",
        &format!("{b0}.weight"),
        "weight = 1001",
        "outside 1..=1000",
    );
    broken(
        "capacity_scaler = 1.0",
        "capacity_scaler = 0.05",
        &format!("{b0}.capacity_scaler"),
        "capacity_scaler",
        "0.1..=1.0",
    );
    broken(
        "mac = \"02:00:00:00:00:01\"",
        "mac = \"02:00:00\"",
        &format!("{b0}.mac"),
        "mac =",
        "not a MAC address",
    );
    broken(
        "port = 8080\n",
        "",
        "backend_services.web.backends[0].port",
        "[[backend_services.web.backends]]",
        "serving port",
    );
    broken(
        "address = \"10.0.0.2\"",
        "address = \"10.0.0.1\"",
        &format!("{b1}.address"),
        "address = \"10.0.0.1\"",
        "distinct addresses",
    );
    // One family per rule and service: an IPv6 backend behind an IPv4 rule is refused at
    // the rule (the rule decides which packets reach the backends).
    broken(
        "address = \"10.0.0.2\"",
        "address = \"fd00::2\"",
        "forwarding_rules.vip.ip_address",
        "ip_address = \"10.0.0.100\"",
        "different address families",
    );
}

#[test]
fn forwarding_rule_rules() {
    let v = "forwarding_rules.vip";
    broken(
        "backend_service = \"l4\"",
        "backend_service = \"nope\"",
        &format!("{v}.backend_service"),
        "backend_service",
        "no backend service named \"nope\"",
    );
    broken(
        "backend_service = \"l4\"",
        "backend_service = \"web\"",
        &format!("{v}.backend_service"),
        "backend_service",
        "is an L7 service",
    );
    broken(
        "ip_protocol = \"TCP\"",
        "ip_protocol = \"UDP\"",
        &format!("{v}.ip_protocol"),
        "ip_protocol",
        "Udp rule in front of a Tcp backend service",
    );
    broken(
        "backend_service = \"l4\"",
        "backend_service = \"l4\"\ntarget = \"px\"",
        v,
        "[forwarding_rules.vip]",
        "exactly one of",
    );
    broken(
        "ports = [80]\nbackend_service",
        "ports = [80]\nall_ports = true\nbackend_service",
        &format!("{v}.ports"),
        "ports = [80]",
        "or all_ports = true",
    );
    broken(
        "ports = [80]\nbackend_service",
        "ports = [1, 2, 3, 4, 5, 6]\nbackend_service",
        &format!("{v}.ports"),
        "ports = [1, 2",
        "at most 5 ports",
    );
    broken(
        "ports = [80]\nbackend_service",
        "ports = [0]\nbackend_service",
        &format!("{v}.ports"),
        "ports = [0]",
        "port 0 is not a port",
    );
    broken(
        "ip_address = \"10.0.0.100\"",
        "ip_address = \"fd00::100\"",
        &format!("{v}.ip_address"),
        "fd00::100",
        "backends must be of its family",
    );
    broken(
        "ports = [443]",
        "ports = [80]",
        "forwarding_rules.https.ports",
        "ports = [80]",
        "also claimed by forwarding rule \"http\"",
    );
    broken(
        "target = \"px\"",
        "target = \"nope\"",
        "forwarding_rules.http.target",
        "target = \"nope\"",
        "no target HTTP(S) proxy",
    );
}

#[test]
fn proxy_rules() {
    broken(
        "[target_http_proxies.px]\nurl_map = \"um\"",
        "[target_http_proxies.px]\nurl_map = \"x\"",
        "target_http_proxies.px.url_map",
        "url_map = \"x\"",
        "no URL map named \"x\"",
    );
    broken(
        "[target_https_proxies.pxs]\nurl_map = \"um\"",
        "[target_https_proxies.pxs]\nurl_map = \"y\"",
        "target_https_proxies.pxs.url_map",
        "url_map = \"y\"",
        "no URL map named \"y\"",
    );
    broken(
        "ssl_certificates = [\"cert\"]",
        "ssl_certificates = []",
        "target_https_proxies.pxs.ssl_certificates",
        "ssl_certificates = []",
        "at least one certificate",
    );
    broken(
        "ssl_certificates = [\"cert\"]",
        "ssl_certificates = [\"other\"]",
        "target_https_proxies.pxs.ssl_certificates",
        "\"other\"",
        "no certificate named \"other\"",
    );
}

#[test]
fn syntax_and_unknown_fields_report_the_line() {
    broken(
        "weight = 1\n",
        "wieght = 1\n",
        "backend_services.l4.backends.wieght",
        "wieght",
        "unknown field `wieght`",
    );
    broken(
        "ring_size = 65537",
        "ring_size = \"big\"",
        "dataplane.ring_size",
        "ring_size",
        "invalid type",
    );
    broken("[url_maps.um]", "[url_maps.um", "file", "[url_maps.um", "");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let text = BASE.replacen("weight = 1\n", "weight = 0\n", 1).replacen(
        "max_services = 32",
        "max_services = 0",
        1,
    );
    assert_eq!(parse(&text).unwrap_err().0.len(), 2);
}

/// Hostile values: each is refused with its place (never a panic, never accepted).
#[test]
fn hostile_values_are_refused_with_their_place() {
    let huge = "x".repeat(100_000);
    let cases: Vec<(&str, String, &str)> = vec![
        ("timeout_sec = 30.0", "timeout_sec = inf".into(), "backend_services.l4.timeout_sec"),
        ("timeout_sec = 30.0", "timeout_sec = nan".into(), "backend_services.l4.timeout_sec"),
        ("timeout_sec = 30.0", "timeout_sec = 1e20".into(), "backend_services.l4.timeout_sec"),
        ("timeout_sec = 30.0", "timeout_sec = -inf".into(), "backend_services.l4.timeout_sec"),
        ("check_interval_sec = 1.0", "check_interval_sec = inf".into(), "health_checks.hc.check_interval_sec"),
        ("timeout_sec = 1.0", "timeout_sec = nan".into(), "health_checks.hc.timeout_sec"),
        ("max_services = 32", "max_services = 1024".into(), "dataplane.max_services"),
        ("conn_table_size = 262144", "conn_table_size = 4294967295".into(), "dataplane.conn_table_size"),
        ("request_path = \"/2\"", format!("request_path = \"/{huge}\""), "health_checks.hc.request_path"),
        ("request_path = \"/2\"", "request_path = \"/a b\"".into(), "health_checks.hc.request_path"),
        ("weight = 1", "weight = 4294967295".into(), "backend_services.l4.backends[0].weight"),
        ("capacity_scaler = 1.0", "capacity_scaler = 0.5".into(), "backend_services.l4.backends[0].capacity_scaler"),
        ("capacity_scaler = 1.0", "capacity_scaler = nan".into(), "backend_services.l4.backends[0].capacity_scaler"),
        ("address = \"10.0.0.1\"", "address = \"0.0.0.0\"".into(), "backend_services.l4.backends[0].address"),
        ("address = \"10.0.0.1\"", "address = \"127.0.0.1\"".into(), "backend_services.l4.backends[0].address"),
        ("address = \"10.0.0.3\"", "address = \"224.0.0.1\"".into(), "backend_services.web.backends[0].address"),
        ("failover_ratio = 0.5", "failover_ratio = nan".into(), "backend_services.l4.failover_policy.failover_ratio"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"0.0.0.0\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"255.255.255.255\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"239.1.1.1\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"127.0.0.1\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"::1\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"ff02::1\"".into(), "forwarding_rules.vip.ip_address"),
        ("ip_address = \"10.0.0.100\"", "ip_address = \"::ffff:10.0.0.100\"".into(), "forwarding_rules.vip.ip_address"),
        ("address = \"10.0.0.1\"", "address = \"::1\"".into(), "backend_services.l4.backends[0].address"),
        ("ip_address = \"10.0.0.101\"", "ip_address = \"255.255.255.255\"".into(), "forwarding_rules.http.ip_address"),
        ("interfaces = [\"eth0\"]", "interfaces = [\"\"]".into(), "dataplane.interfaces[0]"),
        ("interfaces = [\"eth0\"]", format!("interfaces = [\"{huge}\"]"), "dataplane.interfaces[0]"),
        ("[dataplane]", "[admin]\nmetrics_listen = \"nonsense\"\n[dataplane]".into(), "admin.metrics_listen"),
        ("[dataplane]", "[admin]\nsocket = \"relative.sock\"\n[dataplane]".into(), "admin.socket"),
        ("[dataplane]", "[l7]\nfirst_request_timeout_sec = inf\n[dataplane]".into(), "l7.first_request_timeout_sec"),
        ("[dataplane]", "[l7]\nmax_connections_per_listener = 0\n[dataplane]".into(), "l7.max_connections_per_listener"),
        ("session_affinity = \"NONE\"\n\n[[backend_services.web", "session_affinity = \"NONE\"\nkeepalive_timeout_sec = 0\n\n[[backend_services.web".into(), "backend_services.web.keepalive_timeout_sec"),
        ("session_affinity = \"NONE\"\n\n[[backend_services.web", "session_affinity = \"NONE\"\noutlier_detection = { interval_sec = inf }\n\n[[backend_services.web".into(), "backend_services.web.outlier_detection.interval_sec"),
        ("session_affinity = \"NONE\"\n\n[[backend_services.web", "session_affinity = \"NONE\"\noutlier_detection = { enforcing_consecutive_errors = 101 }\n\n[[backend_services.web".into(), "backend_services.web.outlier_detection.enforcing_consecutive_errors"),
        ("session_affinity = \"NONE\"\n\n[[backend_services.web", "session_affinity = \"NONE\"\nconsistent_hash = { minimum_ring_size = 4294967295 }\n\n[[backend_services.web".into(), "backend_services.web.consistent_hash.minimum_ring_size"),
        ("[backend_services.web]", "[backend_services.\"\"]\nprotocol = \"HTTP\"\n[backend_services.web]".into(), "backend_services."),
    ];
    for (from, to, place) in &cases {
        assert!(
            BASE.contains(from),
            "test bug: {from:?} not in the base file"
        );
        let text = BASE.replacen(from, to, 1);
        let errs = parse(&text).expect_err(&format!("{place}: {to:.80} must be refused"));
        assert!(
            errs.0.iter().any(|e| e.place == *place),
            "{place}: no error there for {to:.80}; got {errs}"
        );
    }
}

/// The route action's timeout used to panic inside validation (`Duration::from_secs_f64`).
#[test]
fn route_action_timeouts_are_bounded_without_panicking() {
    let text = BASE.to_string()
        + "[url_maps.m.default_route_action]\ntimeout_sec = 1e20\nretry_policy = { per_try_timeout_sec = inf, num_retries = 4294967295 }\nweighted_backend_services = [{ backend_service = \"web\", weight = 4294967295 }, { backend_service = \"web\", weight = 4294967295 }]\n";
    let errs = parse(&text).expect_err("refused").to_string();
    for place in [
        "url_maps.m.default_route_action.timeout_sec",
        "url_maps.m.default_route_action.retry_policy.per_try_timeout_sec",
        "url_maps.m.default_route_action.retry_policy.num_retries",
        "url_maps.m.default_route_action.weighted_backend_services[0].weight",
    ] {
        assert!(errs.contains(place), "{place} missing in:\n{errs}");
    }
}

#[test]
fn conn_promotion_limit_rule() {
    for bad in ["0", "10000001"] {
        broken(
            "conn_table_size = 262144",
            &format!("conn_table_size = 262144\nconn_promotions_per_sec = {bad}"),
            "dataplane.conn_promotions_per_sec",
            "conn_promotions_per_sec",
            "1..=10000000",
        );
    }
    let ok = BASE.replacen(
        "conn_table_size = 262144",
        "conn_table_size = 262144\nconn_promotions_per_sec = 1",
        1,
    );
    assert_eq!(parse(&ok).unwrap().dataplane.conn_promotions_per_sec, 1);
    assert_eq!(
        parse(BASE).unwrap().dataplane.conn_promotions_per_sec,
        lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC
    );
}

// forwarding and gue_port (config/validate_forwarding.rs)
fn forwarding_errors(extra: &str, backend: &str) -> String {
    let t = format!(
        "[backend_services.s]\nprotocol = \"TCP\"\n{extra}\n[[backend_services.s.backends]]\naddress = \"10.1.0.5\"\n{backend}\n"
    );
    match crate::model::parse(&t) {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn routed_methods_are_accepted_with_their_own_fields_only() {
    assert_eq!(forwarding_errors("forwarding = \"IPIP\"", ""), "");
    assert_eq!(
        forwarding_errors("forwarding = \"GUE\"\ngue_port = 7000", ""),
        ""
    );
    assert!(
        forwarding_errors("forwarding = \"IPIP\"\ngue_port = 7000", "")
            .contains("gue_port applies only")
    );
    assert!(forwarding_errors("gue_port = 7000", "").contains("gue_port applies only"));
    assert!(forwarding_errors("forwarding = \"GUE\"\ngue_port = 0", "").contains("1..=65535"));
    assert!(
        forwarding_errors("forwarding = \"GUE\"", "mac = \"02:00:00:00:00:01\"")
            .contains("mac applies to L2_DSR only")
    );
    assert!(forwarding_errors("forwarding = \"VXLAN\"", "").contains("forwarding"));
}

#[test]
fn l7_services_do_not_take_a_forwarding_method() {
    let t = "[backend_services.s]\nprotocol = \"HTTP\"\nforwarding = \"GUE\"\n[[backend_services.s.backends]]\naddress = \"10.1.0.5\"\nport = 80\n";
    let e = crate::model::parse(t).unwrap_err().to_string();
    assert!(e.contains("forwarding applies to TCP/UDP"), "{e}");
}
