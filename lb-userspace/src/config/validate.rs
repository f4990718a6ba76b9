//! Validation of a parsed [`Config`]: every rule reports an error with its place, a dotted
//! path such as `backend_services.web.backends[2].weight`, resolved to a line of the file
//! when the text is at hand. All errors are collected, not just the first.

use super::types::*;
use std::fmt;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    /// Dotted path of the offending value.
    pub place: String,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(place: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            place: place.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.place, self.message),
            None => write!(f, "{}: {}", self.place, self.message),
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    pub fn single(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }

    /// A TOML syntax or type error, with the line serde/toml reported.
    pub fn from_toml(text: &str, e: &toml::de::Error) -> Self {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        ConfigErrors::single(ConfigError {
            place: line
                .and_then(|l| key_at(text, l))
                .unwrap_or_else(|| "file".into()),
            line,
            message: e.message().trim().to_string(),
        })
    }

    /// Resolves each error's place to the line that defines it (best effort: the line of
    /// the deepest table header or key of the path found in the text).
    pub fn with_lines(mut self, text: &str) -> Self {
        for e in &mut self.0 {
            if e.line.is_none() {
                e.line = super::validate::locate(text, &e.place);
            }
        }
        self
    }
}

/// The dotted key defined on `line` (1-based): the last table header above it, then the
/// key before `=` on that line (a TOML error's place, which the parser does not name).
fn key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().take(line).collect();
    let here = lines.last()?.trim();
    let header = lines
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('['))
        .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = here
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches('"').to_string())
        .filter(|k| !k.is_empty() && !here.starts_with('['));
    match (header, key) {
        (Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, Some(k)) => Some(k),
        // A well-formed header line (a broken one is a syntax error of the file).
        (Some(h), None) if here.starts_with('[') && here.ends_with(']') => Some(h),
        _ => None,
    }
}

/// Finds the line of a dotted place such as `backend_services.web.backends[1].weight`:
/// the header `[backend_services.web]` (or `[[backend_services.web.backends]]`, counting
/// occurrences for the index), then the key below it.
pub fn locate(text: &str, place: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut table = String::new();
    let mut best: Option<usize> = None;
    let mut search_from = 0usize;
    for part in place.split('.') {
        let (name, index) = match part.find('[') {
            Some(i) => (
                &part[..i],
                part[i + 1..part.len() - 1].parse::<usize>().ok(),
            ),
            None => (part, None),
        };
        let candidate = if table.is_empty() {
            name.to_string()
        } else {
            format!("{table}.{name}")
        };
        let mut found = None;
        let mut seen = 0usize;
        for (i, l) in lines.iter().enumerate().skip(search_from) {
            let t = l.trim();
            let is_header = t == format!("[{candidate}]") || t == format!("[[{candidate}]]");
            let is_key = t.starts_with(&format!("{name} ")) || t.starts_with(&format!("{name}="));
            if is_header || (is_key && index.is_none()) {
                if index.is_none_or(|ix| ix == seen) {
                    found = Some(i);
                    break;
                }
                seen += 1;
            }
        }
        if let Some(i) = found {
            best = Some(i + 1);
            search_from = i;
        }
        table = candidate;
    }
    best
}

/// The promotion rate limit of the connection table: 0 would never promote a flow (every
/// flow would live in the flood-exposed young table), so it is refused.
fn conn_promotions_error(d: &Dataplane) -> Option<String> {
    const RANGE: std::ops::RangeInclusive<u32> = 1..=10_000_000;
    (!RANGE.contains(&d.conn_promotions_per_sec)).then(|| {
        format!(
            "{} is outside 1..=10000000 (flows per second per CPU; the default is {})",
            d.conn_promotions_per_sec,
            lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC
        )
    })
}

/// Checks every rule; returns all errors found. One function per section, each adding
/// the errors of its section with their places.
pub fn validate(cfg: &Config) -> Result<(), ConfigErrors> {
    let mut errs = Vec::new();
    dataplane(cfg, &mut errs);
    health_checks(cfg, &mut errs);
    backend_services(cfg, &mut errs);
    forwarding_rules(cfg, &mut errs);
    target_proxies(cfg, &mut errs);
    errs.extend(super::validate_ranges::validate_ranges(cfg));
    errs.extend(super::validate_balancing::validate_balancing(cfg));
    errs.extend(super::validate_announce::validate_announce(cfg));
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errs))
    }
}

/// A sink for errors: (place, message).
pub(super) type Err<'a> = dyn FnMut(String, String) + 'a;

fn dataplane(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let mut err = |place: String, msg: String| errs.push(ConfigError::new(place, msg));
    let d = &cfg.dataplane;
    if !is_prime(d.ring_size) || d.ring_size < 7 {
        err(
            "dataplane.ring_size".into(),
            format!(
                "{} is not a prime ≥ 7 (Maglev needs a prime table size; the default is 65537)",
                d.ring_size
            ),
        );
    }
    if d.max_services == 0 || d.max_services > 1024 {
        err("dataplane.max_services".into(), "must be 1..=1024".into());
    }
    if d.conn_table_size < 1024 {
        err(
            "dataplane.conn_table_size".into(),
            "must be at least 1024".into(),
        );
    }
    if let Some(msg) = conn_promotions_error(d) {
        err("dataplane.conn_promotions_per_sec".into(), msg);
    }
}

fn health_checks(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let mut err = |place: String, msg: String| errs.push(ConfigError::new(place, msg));
    for (name, hc) in &cfg.health_checks {
        let p = format!("health_checks.{name}");
        // Ranges (finite, bounded) are checked in `validate_ranges`; this is the pairing.
        if hc.timeout_sec.is_finite() && hc.timeout_sec > hc.check_interval_sec {
            err(
                format!("{p}.timeout_sec"),
                format!(
                    "{} must be positive and not above check_interval_sec ({})",
                    hc.timeout_sec, hc.check_interval_sec
                ),
            );
        }
        if !(1..=10).contains(&hc.healthy_threshold) {
            err(format!("{p}.healthy_threshold"), "must be 1..=10".into());
        }
        if !(1..=10).contains(&hc.unhealthy_threshold) {
            err(format!("{p}.unhealthy_threshold"), "must be 1..=10".into());
        }
        if !hc.request_path.starts_with('/') {
            err(format!("{p}.request_path"), "must start with '/'".into());
        }
        if hc.port == Some(0) {
            err(format!("{p}.port"), "must be 1..=65535".into());
        }
    }
}

fn backend_services(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let mut err = |place: String, msg: String| errs.push(ConfigError::new(place, msg));
    for (name, bs) in &cfg.backend_services {
        let p = format!("backend_services.{name}");
        if let Some(hc) = &bs.health_check {
            if !cfg.health_checks.contains_key(hc) {
                err(
                    format!("{p}.health_check"),
                    format!("no health check named {hc:?}"),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeMap::new();
        for (i, b) in bs.backends.iter().enumerate() {
            backend(bs, &p, i, b, &mut names, &mut addrs, &mut err);
        }
        service_policies(bs, &p, &mut err);
        super::validate_forwarding::check(bs, &p, &mut err);
    }
}

/// One backend of service `bs` (at place `p`), with the names and L4 addresses seen so far.
fn backend(
    bs: &BackendService,
    p: &str,
    i: usize,
    b: &BackendConfig,
    names: &mut std::collections::BTreeSet<String>,
    addrs: &mut std::collections::BTreeMap<std::net::IpAddr, usize>,
    err: &mut Err<'_>,
) {
    let bp = format!("{p}.backends[{i}]");
    if !names.insert(b.display_name()) {
        err(
            format!("{bp}.name"),
            format!("duplicate backend {:?}", b.display_name()),
        );
    }
    if bs.protocol.is_l4() {
        // Passthrough forwards to an address (the VIP's port is kept), so two
        // backends at one address would be one backend counted twice; the
        // dataplane also keys backend slots by (service, address).
        if let Some(j) = addrs.insert(b.address, i) {
            err(
                format!("{bp}.address"),
                format!(
                    "{} is also backends[{j}]; an L4 backend service needs distinct addresses",
                    b.address
                ),
            );
        }
    }
    if !(1..=1000).contains(&b.weight) {
        err(
            format!("{bp}.weight"),
            format!("{} is outside 1..=1000", b.weight),
        );
    }
    if !(b.capacity_scaler == 0.0 || (0.1..=1.0).contains(&b.capacity_scaler)) {
        err(
            format!("{bp}.capacity_scaler"),
            "must be 0 (drained) or 0.1..=1.0".into(),
        );
    }
    if !bs.protocol.is_l4() && b.port.is_none() {
        err(
            format!("{bp}.port"),
            "an L7 backend needs its serving port".into(),
        );
    }
}

/// A service's failover, draining, tracking and affinity settings.
fn service_policies(bs: &BackendService, p: &str, err: &mut Err<'_>) {
    let fp = &bs.failover_policy;
    if !(0.0..=1.0).contains(&fp.failover_ratio) {
        err(
            format!("{p}.failover_policy.failover_ratio"),
            "must be 0..=1".into(),
        );
    }
    if bs.connection_draining_timeout_sec > 3600 {
        err(
            format!("{p}.connection_draining_timeout_sec"),
            "must be 0..=3600".into(),
        );
    }
    let ct = &bs.connection_tracking_policy;
    let five_tuple = matches!(
        bs.session_affinity,
        SessionAffinity::None | SessionAffinity::ClientIpPortProto
    );
    let max_idle = if ct.tracking_mode == TrackingMode::PerSession && !five_tuple {
        16 * 3600
    } else {
        600
    };
    if ct.idle_timeout_sec == 0 || ct.idle_timeout_sec > max_idle {
        err(
            format!("{p}.connection_tracking_policy.idle_timeout_sec"),
            format!("must be 1..={max_idle} (above 600 s only with PER_SESSION tracking and less-than-5-tuple affinity)"),
        );
    }
    if bs.protocol.is_l4()
        && matches!(
            bs.session_affinity,
            SessionAffinity::GeneratedCookie
                | SessionAffinity::HeaderField
                | SessionAffinity::HttpCookie
        )
    {
        err(
            format!("{p}.session_affinity"),
            "cookie and header affinity need an L7 (HTTP) backend service".into(),
        );
    }
    if !bs.protocol.is_l4()
        && matches!(
            bs.session_affinity,
            SessionAffinity::ClientIpPortProto
                | SessionAffinity::ClientIpProto
                | SessionAffinity::ClientIpNoDestination
        )
    {
        err(format!("{p}.session_affinity"), "L7 backend services support NONE, CLIENT_IP, GENERATED_COOKIE, HEADER_FIELD and HTTP_COOKIE".into());
    }
}

fn forwarding_rules(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let mut err = |place: String, msg: String| errs.push(ConfigError::new(place, msg));
    let mut vips = std::collections::BTreeMap::new();
    for (name, fr) in &cfg.forwarding_rules {
        let p = format!("forwarding_rules.{name}");
        rule_target(cfg, fr, &p, &mut err);
        if fr.all_ports != fr.ports.is_empty() {
            err(
                format!("{p}.ports"),
                "give 1 to 5 ports, or all_ports = true".into(),
            );
        }
        if fr.ports.len() > 5 {
            err(
                format!("{p}.ports"),
                "at most 5 ports (use all_ports for more)".into(),
            );
        }
        if fr.ports.contains(&0) {
            err(
                format!("{p}.ports"),
                "port 0 is not a port; use all_ports = true".into(),
            );
        }
        rule_family(cfg, fr, &p, &mut err);
        let ports: Vec<u16> = if fr.all_ports {
            vec![0]
        } else {
            fr.ports.clone()
        };
        for port in ports {
            if let Some(other) = vips.insert((fr.ip_address, port, fr.ip_protocol), name.clone()) {
                err(
                    format!("{p}.ports"),
                    format!(
                        "{}:{port}/{:?} is also claimed by forwarding rule {other:?}",
                        fr.ip_address, fr.ip_protocol
                    ),
                );
            }
        }
    }
}

/// An L4 rule and its service's backends are of one address family: direct server return
/// hands the client's packet, unchanged, to the backend, so an IPv6 packet can only go to
/// an IPv6 backend (no translation between families).
fn rule_family(cfg: &Config, fr: &ForwardingRule, p: &str, err: &mut Err<'_>) {
    let Some(bs) = fr
        .backend_service
        .as_ref()
        .and_then(|n| cfg.backend_services.get(n))
    else {
        return;
    };
    for b in &bs.backends {
        if b.address.is_ipv6() != fr.ip_address.is_ipv6() {
            err(
                format!("{p}.ip_address"),
                format!(
                    "{} and backend {:?} ({}) of backend service {:?} are of different address families; an L4 rule forwards packets unchanged, so its backends must be of its family",
                    fr.ip_address,
                    b.display_name(),
                    b.address,
                    fr.backend_service.as_deref().unwrap_or_default(),
                ),
            );
            return;
        }
    }
}

/// A rule's target: an L4 backend service of the rule's protocol, or a target proxy.
fn rule_target(cfg: &Config, fr: &ForwardingRule, p: &str, err: &mut Err<'_>) {
    match (&fr.backend_service, &fr.target) {
        (Some(bs), None) => match cfg.backend_services.get(bs) {
            None => err(
                format!("{p}.backend_service"),
                format!("no backend service named {bs:?}"),
            ),
            Some(s) if !s.protocol.is_l4() => err(
                format!("{p}.backend_service"),
                format!(
                    "{bs:?} is an L7 service ({:?}); a passthrough rule needs TCP or UDP",
                    s.protocol
                ),
            ),
            Some(s) => {
                let want = if fr.ip_protocol == IpProtocol::Tcp {
                    BackendProtocol::Tcp
                } else {
                    BackendProtocol::Udp
                };
                if s.protocol != want {
                    err(
                        format!("{p}.ip_protocol"),
                        format!(
                            "{:?} rule in front of a {:?} backend service",
                            fr.ip_protocol, s.protocol
                        ),
                    );
                }
            }
        },
        (None, Some(t)) => {
            if !cfg.target_http_proxies.contains_key(t) && !cfg.target_https_proxies.contains_key(t)
            {
                err(
                    format!("{p}.target"),
                    format!("no target HTTP(S) proxy named {t:?}"),
                );
            }
        }
        _ => err(
            p.to_string(),
            "needs exactly one of backend_service (L4) or target (L7)".into(),
        ),
    }
}

fn target_proxies(cfg: &Config, errs: &mut Vec<ConfigError>) {
    let mut err = |place: String, msg: String| errs.push(ConfigError::new(place, msg));
    for (name, t) in &cfg.target_http_proxies {
        if !cfg.url_maps.contains_key(&t.url_map) {
            err(
                format!("target_http_proxies.{name}.url_map"),
                format!("no URL map named {:?}", t.url_map),
            );
        }
    }
    for (name, t) in &cfg.target_https_proxies {
        if !cfg.url_maps.contains_key(&t.url_map) {
            err(
                format!("target_https_proxies.{name}.url_map"),
                format!("no URL map named {:?}", t.url_map),
            );
        }
        if t.ssl_certificates.is_empty() {
            err(
                format!("target_https_proxies.{name}.ssl_certificates"),
                "needs at least one certificate".into(),
            );
        }
        for c in &t.ssl_certificates {
            if !cfg.ssl_certificates.contains_key(c) {
                err(
                    format!("target_https_proxies.{name}.ssl_certificates"),
                    format!("no certificate named {c:?}"),
                );
            }
        }
    }
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut i = 2u64;
    while i * i <= n as u64 {
        if (n as u64).is_multiple_of(i) {
            return false;
        }
        i += 1;
    }
    true
}
