//! `compile`, section by section: a valid file compiles with its URL maps compiled once;
//! one broken value per section is refused at its dotted place, and errors of every
//! section come together (the config's own rules and the URL maps').

use super::*;

const BASE: &str = r#"
[dataplane]
interfaces = ["eth0"]
ring_size = 65537
max_services = 4

[admin]
socket = "/run/lb-test/admin.sock"

[health_checks.hc]
protocol = "HTTP"
request_path = "/"

[backend_services.l4]
protocol = "TCP"
health_check = "hc"
backends = [{ name = "a", address = "10.0.0.1" }]

[backend_services.web]
protocol = "HTTP"
backends = [{ name = "w", address = "10.0.0.3", port = 8080 }]

[forwarding_rules.vip]
ip_address = "10.0.0.100"
ports = [80]
backend_service = "l4"

[forwarding_rules.http]
ip_address = "10.0.0.101"
ports = [80]
target = "px"

[url_maps.um]
default_service = "web"
[[url_maps.um.host_rules]]
hosts = ["api.test"]
path_matcher = "api"
[[url_maps.um.path_matchers]]
name = "api"
default_service = "web"

[target_http_proxies.px]
url_map = "um"
"#;

fn places(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| e.place).collect(),
    }
}

#[test]
fn a_valid_file_compiles_with_its_url_maps() {
    let m = parse(BASE).unwrap();
    assert_eq!(m.routers().len(), 1);
    let r = m.router("um").expect("url map compiled");
    let mut services: Vec<&str> = r.services().collect();
    services.dedup();
    assert_eq!(services, ["web"]);
    assert_eq!(m.config().backend_services.len(), 2);
    // The model is its configuration: equal configurations, equal models.
    assert_eq!(m, parse(BASE).unwrap());
}

/// (section, value replaced, replacement, place expected).
const BROKEN: &[(&str, &str, &str, &str)] = &[
    (
        "dataplane",
        "ring_size = 65537",
        "ring_size = 65536",
        "dataplane.ring_size",
    ),
    (
        "health_checks",
        "request_path = \"/\"",
        "request_path = \"nope\"",
        "health_checks.hc.request_path",
    ),
    (
        "backend_services",
        "health_check = \"hc\"",
        "health_check = \"other\"",
        "backend_services.l4.health_check",
    ),
    (
        "forwarding_rules",
        "backend_service = \"l4\"",
        "backend_service = \"none\"",
        "forwarding_rules.vip.backend_service",
    ),
    (
        "url_maps",
        "default_service = \"web\"\n[[",
        "default_service = \"l4\"\n[[",
        "url_maps.um.default_service",
    ),
    (
        "target_http_proxies",
        "url_map = \"um\"",
        "url_map = \"nope\"",
        "target_http_proxies.px.url_map",
    ),
];

#[test]
fn each_section_refuses_a_broken_value_at_its_place() {
    for (section, from, to, place) in BROKEN {
        assert!(BASE.contains(from), "test bug: {from:?}");
        let got = places(&BASE.replacen(from, to, 1));
        assert!(
            got.iter().any(|p| p == place),
            "{section}: no error at {place}; got {got:?}"
        );
    }
}

#[test]
fn errors_of_every_section_come_together() {
    let text = BASE
        .replacen("ring_size = 65537", "ring_size = 65536", 1)
        .replacen(
            "default_service = \"web\"\n[[",
            "default_service = \"l4\"\n[[",
            1,
        );
    let got = places(&text);
    assert!(got.contains(&"dataplane.ring_size".to_string()), "{got:?}");
    assert!(
        got.contains(&"url_maps.um.default_service".to_string()),
        "{got:?}"
    );
}

#[test]
fn only_compile_reaches_a_model() {
    // `config::from_toml` takes the shapes only; a URL map naming an L4 service passes
    // there and is refused by `compile`.
    let text = BASE.replacen(
        "default_service = \"web\"\n[[",
        "default_service = \"l4\"\n[[",
        1,
    );
    let cfg = config::from_toml(&text).expect("shapes are fine");
    assert!(compile(cfg).is_err());
}
