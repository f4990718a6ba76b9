//! Range rules: every number, string and address of the file is bounded here, so no value
//! reaches code that would panic, overflow or exhaust memory on it, and values that would
//! only fail at run time (a metrics address that does not parse, a VIP that cannot be one,
//! map sizes beyond the memory budget) are refused by `lb validate` with their place.
//! Cross-references and semantic pairings stay in `validate` and `validate_l7`.

use super::{
    limits::{self, check_seconds, MAX_TEXT_LEN, MAX_TIMEOUT_SEC},
    types::*,
    validate::ConfigError,
};
use std::net::IpAddr;

/// Every range problem of `cfg`, each with its place.
pub fn validate_ranges(cfg: &Config) -> Vec<ConfigError> {
    let mut v = Ranges(Vec::new());
    v.dataplane(&cfg.dataplane);
    v.admin(&cfg.admin);
    v.l7_limits(&cfg.l7);
    for (name, hc) in &cfg.health_checks {
        v.name("health_checks", name);
        v.health_check(&format!("health_checks.{name}"), hc);
    }
    for (name, bs) in &cfg.backend_services {
        v.name("backend_services", name);
        v.backend_service(&format!("backend_services.{name}"), bs);
    }
    for (name, fr) in &cfg.forwarding_rules {
        v.name("forwarding_rules", name);
        v.forwarding_rule(&format!("forwarding_rules.{name}"), fr);
    }
    for (name, m) in &cfg.url_maps {
        v.name("url_maps", name);
        v.url_map(&format!("url_maps.{name}"), m);
    }
    for (name, t) in &cfg.target_http_proxies {
        v.name("target_http_proxies", name);
        v.keep_alive(
            &format!("target_http_proxies.{name}"),
            t.http_keep_alive_timeout_sec,
        );
    }
    for (name, t) in &cfg.target_https_proxies {
        v.name("target_https_proxies", name);
        v.keep_alive(
            &format!("target_https_proxies.{name}"),
            t.http_keep_alive_timeout_sec,
        );
    }
    for name in cfg.ssl_certificates.keys() {
        v.name("ssl_certificates", name);
    }
    v.0
}

struct Ranges(Vec<ConfigError>);

impl Ranges {
    fn err(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(place, message));
    }

    fn seconds(&mut self, place: String, value: f64, min: f64, max: f64) {
        if let Some(m) = check_seconds(value, min, max) {
            self.err(place, m);
        }
    }

    fn text(&mut self, place: String, value: &str, max: usize) {
        if value.len() > max {
            self.err(place, format!("{} bytes; at most {max}", value.len()));
        }
    }

    fn non_empty_text(&mut self, place: String, value: &str, max: usize) {
        if value.is_empty() {
            self.err(place, "must not be empty");
        } else {
            self.text(place, value, max);
        }
    }

    /// Resource names appear in places, logs, metrics labels and admin commands.
    fn name(&mut self, section: &str, name: &str) {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > limits::MAX_NAME_LEN || !name.chars().all(ok_char) {
            let shown: String = name.chars().take(40).collect();
            self.err(
                format!("{section}.{shown}"),
                format!(
                    "a name needs 1..={} characters among letters, digits, '-', '_' and '.'",
                    limits::MAX_NAME_LEN
                ),
            );
        }
    }

    fn dataplane(&mut self, d: &Dataplane) {
        let entries = u64::from(d.max_services) * 2 * u64::from(d.ring_size);
        if entries > limits::MAX_MAGLEV_ENTRIES {
            self.err(
                "dataplane.max_services",
                format!(
                    "max_services × 2 × ring_size = {entries} Maglev entries, above the budget of {} (256 MiB); lower max_services or ring_size",
                    limits::MAX_MAGLEV_ENTRIES
                ),
            );
        }
        if d.conn_table_size > limits::MAX_CONN_TABLE_SIZE {
            self.err(
                "dataplane.conn_table_size",
                format!(
                    "{} is above {} entries (about 1 GiB of kernel memory)",
                    d.conn_table_size,
                    limits::MAX_CONN_TABLE_SIZE
                ),
            );
        }
        for (i, ifname) in d.interfaces.iter().enumerate() {
            // IFNAMSIZ is 16 with the terminating NUL.
            let ok = !ifname.is_empty()
                && ifname.len() < 16
                && !ifname.contains(['/', '\0'])
                && !ifname.chars().any(char::is_whitespace);
            if !ok {
                self.err(
                    format!("dataplane.interfaces[{i}]"),
                    format!("{ifname:?} is not an interface name (1..=15 bytes, no '/' or spaces)"),
                );
            }
        }
        let pin = d.pin_path.as_os_str();
        if !d.pin_path.is_absolute() || pin.len() > 256 {
            self.err(
                "dataplane.pin_path",
                "must be an absolute path of at most 256 bytes",
            );
        }
    }

    fn admin(&mut self, a: &Admin) {
        // sun_path holds 108 bytes with the terminating NUL.
        if !a.socket.is_absolute() || a.socket.as_os_str().len() > 107 {
            self.err(
                "admin.socket",
                "must be an absolute path of at most 107 bytes (a Unix socket path)",
            );
        }
        if let Some(m) = &a.metrics_listen {
            if m.parse::<std::net::SocketAddr>().is_err() {
                let shown: String = m.chars().take(60).collect();
                self.err(
                    "admin.metrics_listen",
                    format!("{shown:?} is not an address:port such as 127.0.0.1:9100"),
                );
            }
        }
    }

    fn l7_limits(&mut self, l: &L7Limits) {
        self.seconds(
            "l7.first_request_timeout_sec".into(),
            l.first_request_timeout_sec,
            0.1,
            3600.0,
        );
        self.seconds(
            "l7.header_read_timeout_sec".into(),
            l.header_read_timeout_sec,
            0.1,
            3600.0,
        );
        if !(1..=1_000_000).contains(&l.max_connections_per_listener) {
            self.err(
                "l7.max_connections_per_listener",
                format!("{} is outside 1..=1000000", l.max_connections_per_listener),
            );
        }
        if !(1..=1000).contains(&l.http2_max_concurrent_streams) {
            self.err(
                "l7.http2_max_concurrent_streams",
                format!("{} is outside 1..=1000", l.http2_max_concurrent_streams),
            );
        }
    }

    fn keep_alive(&mut self, p: &str, secs: u32) {
        if !(5..=1200).contains(&secs) {
            self.err(
                format!("{p}.http_keep_alive_timeout_sec"),
                format!("{secs} is outside 5..=1200 seconds"),
            );
        }
    }

    fn health_check(&mut self, p: &str, hc: &HealthCheck) {
        self.seconds(
            format!("{p}.check_interval_sec"),
            hc.check_interval_sec,
            0.1,
            300.0,
        );
        self.seconds(format!("{p}.timeout_sec"), hc.timeout_sec, 0.001, 300.0);
        self.text(format!("{p}.request_path"), &hc.request_path, MAX_TEXT_LEN);
        if hc.request_path.parse::<http::uri::PathAndQuery>().is_err() {
            self.err(format!("{p}.request_path"), "is not a valid request path");
        }
        if let Some(h) = &hc.host {
            self.non_empty_text(format!("{p}.host"), h, 255);
            if http::HeaderValue::from_str(h).is_err() {
                self.err(format!("{p}.host"), "is not valid header text");
            }
        }
        if let Some(r) = &hc.response {
            // The text must appear in the first 1024 bytes of the answer.
            self.text(format!("{p}.response"), r, 1024);
        }
    }

    fn backend_service(&mut self, p: &str, bs: &BackendService) {
        self.seconds(
            format!("{p}.timeout_sec"),
            bs.timeout_sec,
            0.001,
            MAX_TIMEOUT_SEC,
        );
        if !(1..=3600).contains(&bs.keepalive_timeout_sec) {
            self.err(
                format!("{p}.keepalive_timeout_sec"),
                format!("{} is outside 1..=3600 seconds", bs.keepalive_timeout_sec),
            );
        }
        // Google Cloud's maximum cookie TTL is two weeks.
        if bs.affinity_cookie_ttl_sec > 1_209_600 {
            self.err(
                format!("{p}.affinity_cookie_ttl_sec"),
                "must be 0..=1209600 (two weeks)",
            );
        }
        self.consistent_hash(&format!("{p}.consistent_hash"), &bs.consistent_hash);
        self.outlier(&format!("{p}.outlier_detection"), &bs.outlier_detection);
        self.backends(p, bs);
    }

    fn backends(&mut self, p: &str, bs: &BackendService) {
        for (i, b) in bs.backends.iter().enumerate() {
            let bp = format!("{p}.backends[{i}]");
            if let Some(n) = &b.name {
                let ok = !n.is_empty()
                    && n.len() <= limits::MAX_NAME_LEN
                    && n.chars().all(|c| c.is_ascii_graphic());
                if !ok {
                    self.err(
                        format!("{bp}.name"),
                        format!(
                            "needs 1..={} printable characters without spaces",
                            limits::MAX_NAME_LEN
                        ),
                    );
                }
            }
            if b.port == Some(0) {
                self.err(format!("{bp}.port"), "must be 1..=65535");
            }
            if let Some(why) = unusable_backend(b.address, bs.protocol.is_l4()) {
                self.err(format!("{bp}.address"), format!("{} {why}", b.address));
            }
            if bs.protocol.is_l4() && b.capacity_scaler != 1.0 {
                self.err(
                    format!("{bp}.capacity_scaler"),
                    "is not supported on L4 (TCP/UDP) backend services; use weight, or `lb drain` to take a backend out",
                );
            }
        }
    }

    fn consistent_hash(&mut self, p: &str, ch: &ConsistentHash) {
        if let Some(n) = ch.minimum_ring_size {
            if !(1..=limits::MAX_RING_HASH_SIZE).contains(&n) {
                self.err(
                    format!("{p}.minimum_ring_size"),
                    format!("{n} is outside 1..={}", limits::MAX_RING_HASH_SIZE),
                );
            }
        }
        if let Some(h) = &ch.http_header_name {
            self.text(format!("{p}.http_header_name"), h, 256);
        }
        if let Some(c) = &ch.http_cookie {
            let cp = format!("{p}.http_cookie");
            if let Some(n) = &c.name {
                let token = |ch: char| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch);
                if n.is_empty() || n.len() > 256 || !n.chars().all(token) {
                    self.err(
                        format!("{cp}.name"),
                        "is not a cookie name (1..=256 token characters)",
                    );
                }
            }
            if let Some(path) = &c.path {
                let ok = path.starts_with('/')
                    && path.len() <= MAX_TEXT_LEN
                    && !path.contains(|ch: char| ch == ';' || ch.is_control() || ch == ' ');
                if !ok {
                    self.err(
                        format!("{cp}.path"),
                        "must start with '/' and hold no ';', spaces or control characters",
                    );
                }
            }
            if c.ttl_sec > 1_209_600 {
                self.err(format!("{cp}.ttl_sec"), "must be 0..=1209600 (two weeks)");
            }
        }
    }

    fn outlier(&mut self, p: &str, od: &OutlierDetection) {
        for (field, v, min, max) in [
            (
                "consecutive_gateway_failure",
                od.consecutive_gateway_failure,
                1,
                1000,
            ),
            ("consecutive_errors", od.consecutive_errors, 1, 1000),
            (
                "enforcing_consecutive_gateway_failure",
                od.enforcing_consecutive_gateway_failure,
                0,
                100,
            ),
            (
                "enforcing_consecutive_errors",
                od.enforcing_consecutive_errors,
                0,
                100,
            ),
            ("max_ejection_percent", od.max_ejection_percent, 0, 100),
        ] {
            if !(min..=max).contains(&v) {
                self.err(
                    format!("{p}.{field}"),
                    format!("{v} is outside {min}..={max}"),
                );
            }
        }
        self.seconds(format!("{p}.interval_sec"), od.interval_sec, 0.001, 3600.0);
        self.seconds(
            format!("{p}.base_ejection_time_sec"),
            od.base_ejection_time_sec,
            0.0,
            86_400.0,
        );
    }

    fn forwarding_rule(&mut self, p: &str, fr: &ForwardingRule) {
        let why = if fr.backend_service.is_some() {
            unusable_vip(fr.ip_address)
        } else {
            // L7 listeners bind a local socket: 0.0.0.0 (every address) and 127.0.0.1 are
            // legitimate there; only addresses no socket can listen on are refused.
            unusable_listener(fr.ip_address)
        };
        if let Some(why) = why {
            self.err(
                format!("{p}.ip_address"),
                format!("{} {why}", fr.ip_address),
            );
        }
    }

    fn url_map(&mut self, p: &str, m: &UrlMap) {
        if let Some(ra) = &m.default_route_action {
            self.route_action(&format!("{p}.default_route_action"), ra);
        }
        for (i, hr) in m.host_rules.iter().enumerate() {
            for (j, h) in hr.hosts.iter().enumerate() {
                self.non_empty_text(format!("{p}.host_rules[{i}].hosts[{j}]"), h, 255);
            }
        }
        self.header_action_opt(&format!("{p}.header_action"), &m.header_action);
        for (i, pm) in m.path_matchers.iter().enumerate() {
            let pp = format!("{p}.path_matchers[{i}]");
            self.header_action_opt(&format!("{pp}.header_action"), &pm.header_action);
            if let Some(ra) = &pm.default_route_action {
                self.route_action(&format!("{pp}.default_route_action"), ra);
            }
            for (j, pr) in pm.path_rules.iter().enumerate() {
                let rp = format!("{pp}.path_rules[{j}]");
                for (k, path) in pr.paths.iter().enumerate() {
                    self.non_empty_text(format!("{rp}.paths[{k}]"), path, MAX_TEXT_LEN);
                }
                if let Some(ra) = &pr.route_action {
                    self.route_action(&format!("{rp}.route_action"), ra);
                }
            }
            for (j, rr) in pm.route_rules.iter().enumerate() {
                self.route_rule(&format!("{pp}.route_rules[{j}]"), rr);
            }
        }
    }

    fn route_rule(&mut self, rp: &str, rr: &RouteRule) {
        if rr.priority > 2_147_483_647 {
            self.err(format!("{rp}.priority"), "must be 0..=2147483647");
        }
        self.header_action_opt(&format!("{rp}.header_action"), &rr.header_action);
        if let Some(ra) = &rr.route_action {
            self.route_action(&format!("{rp}.route_action"), ra);
        }
        for (k, mr) in rr.match_rules.iter().enumerate() {
            let mp = format!("{rp}.match_rules[{k}]");
            for (f, t) in [
                ("prefix_match", &mr.prefix_match),
                ("full_path_match", &mr.full_path_match),
                ("regex_match", &mr.regex_match),
                ("path_template_match", &mr.path_template_match),
            ] {
                if let Some(t) = t {
                    self.text(format!("{mp}.{f}"), t, MAX_TEXT_LEN);
                }
            }
            for (h, hm) in mr.header_matches.iter().enumerate() {
                let hp = format!("{mp}.header_matches[{h}]");
                self.non_empty_text(format!("{hp}.header_name"), &hm.header_name, 256);
                for t in [
                    &hm.exact_match,
                    &hm.prefix_match,
                    &hm.suffix_match,
                    &hm.regex_match,
                ]
                .into_iter()
                .flatten()
                {
                    self.text(hp.clone(), t, MAX_TEXT_LEN);
                }
            }
            for (q, qm) in mr.query_parameter_matches.iter().enumerate() {
                let qp = format!("{mp}.query_parameter_matches[{q}]");
                self.non_empty_text(format!("{qp}.name"), &qm.name, 256);
                for t in [&qm.exact_match, &qm.regex_match].into_iter().flatten() {
                    self.text(qp.clone(), t, MAX_TEXT_LEN);
                }
            }
        }
    }

    fn route_action(&mut self, p: &str, ra: &RouteAction) {
        if let Some(t) = ra.timeout_sec {
            self.seconds(format!("{p}.timeout_sec"), t, 0.001, MAX_TIMEOUT_SEC);
        }
        if let Some(rp) = &ra.retry_policy {
            if let Some(n) = rp.num_retries {
                if n > limits::MAX_NUM_RETRIES {
                    self.err(
                        format!("{p}.retry_policy.num_retries"),
                        format!("{n} is outside 0..={}", limits::MAX_NUM_RETRIES),
                    );
                }
            }
            if let Some(t) = rp.per_try_timeout_sec {
                self.seconds(
                    format!("{p}.retry_policy.per_try_timeout_sec"),
                    t,
                    0.001,
                    MAX_TIMEOUT_SEC,
                );
            }
        }
        for (i, w) in ra.weighted_backend_services.iter().enumerate() {
            let wp = format!("{p}.weighted_backend_services[{i}]");
            if w.weight > 1000 {
                self.err(
                    format!("{wp}.weight"),
                    format!("{} is outside 0..=1000", w.weight),
                );
            }
            self.header_action_opt(&format!("{wp}.header_action"), &w.header_action);
        }
        if let Some(rw) = &ra.url_rewrite {
            for (f, t) in [
                ("path_prefix_rewrite", &rw.path_prefix_rewrite),
                ("host_rewrite", &rw.host_rewrite),
                ("path_template_rewrite", &rw.path_template_rewrite),
            ] {
                if let Some(t) = t {
                    self.text(format!("{p}.url_rewrite.{f}"), t, MAX_TEXT_LEN);
                }
            }
        }
    }

    fn header_action_opt(&mut self, p: &str, ha: &Option<HeaderAction>) {
        let Some(ha) = ha else { return };
        for (field, names) in [
            ("request_headers_to_remove", &ha.request_headers_to_remove),
            ("response_headers_to_remove", &ha.response_headers_to_remove),
        ] {
            for (i, n) in names.iter().enumerate() {
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    self.err(format!("{p}.{field}[{i}]"), "is not a header name");
                }
            }
        }
        for (field, adds) in [
            ("request_headers_to_add", &ha.request_headers_to_add),
            ("response_headers_to_add", &ha.response_headers_to_add),
        ] {
            for (i, h) in adds.iter().enumerate() {
                let hp = format!("{p}.{field}[{i}]");
                if http::HeaderName::from_bytes(h.header_name.as_bytes()).is_err() {
                    self.err(format!("{hp}.header_name"), "is not a header name");
                }
                if h.header_value.len() > limits::MAX_HEADER_VALUE_LEN
                    || http::HeaderValue::from_str(&h.header_value).is_err()
                {
                    self.err(
                        format!("{hp}.header_value"),
                        format!(
                            "is not header text of at most {} bytes",
                            limits::MAX_HEADER_VALUE_LEN
                        ),
                    );
                }
            }
        }
    }
}

/// Why `ip` cannot be a passthrough VIP: the dataplane matches packets addressed to it, so it
/// must be a unicast address some client can send to.
pub fn unusable_vip(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("is the unspecified address, not a VIP"),
        IpAddr::V4(a) if a.is_broadcast() => Some("is the broadcast address, not a VIP"),
        IpAddr::V4(a) if a.is_multicast() => Some("is a multicast address, not a VIP"),
        IpAddr::V4(a) if a.is_loopback() => {
            Some("is a loopback address: packets to it never reach an interface's XDP program")
        }
        IpAddr::V6(a) if a.is_unspecified() => Some("is the unspecified address, not a VIP"),
        IpAddr::V6(a) if a.is_multicast() => Some("is a multicast address, not a VIP"),
        IpAddr::V6(a) if a.is_loopback() => {
            Some("is a loopback address: packets to it never reach an interface's XDP program")
        }
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
            Some("is an IPv4-mapped address: IPv4 clients send to the IPv4 address; use it")
        }
        _ => None,
    }
}

/// Why `ip` cannot be an L7 listener address (no socket can listen on it).
pub fn unusable_listener(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_broadcast() => {
            Some("is the broadcast address; a listener cannot bind it")
        }
        IpAddr::V4(a) if a.is_multicast() => {
            Some("is a multicast address; a listener cannot bind it")
        }
        IpAddr::V6(a) if a.is_multicast() => {
            Some("is a multicast address; a listener cannot bind it")
        }
        _ => None,
    }
}

/// Why `ip` cannot be a backend address (L4 backends also cannot be loopback: frames are
/// sent to them over the wire).
fn unusable_backend(ip: IpAddr, l4: bool) -> Option<&'static str> {
    let unspecified = ip.is_unspecified();
    let multicast = ip.is_multicast();
    let broadcast = matches!(ip, IpAddr::V4(a) if a.is_broadcast());
    if unspecified || multicast || broadcast {
        return Some("is not a unicast address a backend can have");
    }
    if l4 && ip.is_loopback() {
        return Some("is a loopback address; an L4 backend must be on the balancer's L2 segment");
    }
    None
}
