//! L7 rules of validation (SEMANTICS.md, "L7 Application Load Balancer tier"): URL maps
//! compile (regexes, templates, retry conditions, weights) and name existing L7 backend
//! services; L7 listeners name concrete ports; affinity settings have what they need.

use crate::config::{types::*, ConfigError};
use crate::routing::router::Router;
use std::{collections::BTreeMap, sync::Arc};

/// URL maps compiled once, by name; the L7 table shares them.
pub type Routers = BTreeMap<String, Arc<Router>>;

/// Every L7 problem of `cfg`, each with its place, and the compiled URL maps.
pub fn validate_l7(cfg: &Config) -> (Routers, Vec<ConfigError>) {
    let mut errs = Vec::new();
    let mut routers = Routers::new();
    for (name, map) in &cfg.url_maps {
        match Router::compile(name, map) {
            Err(e) => errs.push(ConfigError::new(e.place, e.message)),
            Ok(router) => {
                let mut named: Vec<&str> = router.services().collect();
                named.sort_unstable();
                named.dedup();
                for s in named {
                    // The map's own default names its field; services named deeper (path
                    // and route rules) point at the map.
                    let place = if map.default_service.as_deref() == Some(s) {
                        format!("url_maps.{name}.default_service")
                    } else {
                        format!("url_maps.{name}")
                    };
                    match cfg.backend_services.get(s) {
                        None => errs.push(ConfigError::new(
                            place,
                            format!("no backend service named {s:?}"),
                        )),
                        Some(bs) if bs.protocol.is_l4() => errs.push(ConfigError::new(
                            place,
                            format!("{s:?} is an L4 ({:?}) service; a URL map needs HTTP, HTTPS, HTTP2 or H2C", bs.protocol),
                        )),
                        Some(_) => {}
                    }
                }
                routers.insert(name.clone(), Arc::new(router));
            }
        }
        if map.default_service.is_none()
            && map.default_url_redirect.is_none()
            && map.default_route_action.is_none()
        {
            errs.push(ConfigError::new(
                format!("url_maps.{name}"),
                "needs default_service, default_url_redirect or default_route_action (requests matching no host rule go there)",
            ));
        }
    }
    l7_listeners_and_services(cfg, &mut errs);
    (routers, errs)
}

/// L7 listeners name concrete TCP ports; L7 services have what their affinity needs.
fn l7_listeners_and_services(cfg: &Config, errs: &mut Vec<ConfigError>) {
    for (name, fr) in &cfg.forwarding_rules {
        if fr.target.is_some() {
            if fr.all_ports {
                errs.push(ConfigError::new(
                    format!("forwarding_rules.{name}.all_ports"),
                    "an L7 listener needs explicit ports",
                ));
            }
            if fr.ip_protocol != IpProtocol::Tcp {
                errs.push(ConfigError::new(
                    format!("forwarding_rules.{name}.ip_protocol"),
                    "an L7 listener is TCP",
                ));
            }
        }
    }
    for (name, bs) in &cfg.backend_services {
        if bs.protocol.is_l4() {
            continue;
        }
        let p = format!("backend_services.{name}");
        if bs.session_affinity == SessionAffinity::HeaderField
            && bs.consistent_hash.http_header_name.is_none()
        {
            errs.push(ConfigError::new(
                format!("{p}.consistent_hash.http_header_name"),
                "HEADER_FIELD affinity needs the header to hash",
            ));
        }
        if let Some(h) = &bs.consistent_hash.http_header_name {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(ConfigError::new(
                    format!("{p}.consistent_hash.http_header_name"),
                    format!("{h:?} is not a header name"),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let cfg: Config = toml::from_str(text).unwrap();
        validate_l7(&cfg)
            .1
            .into_iter()
            .map(|e| format!("{}: {}", e.place, e.message))
            .collect()
    }

    #[test]
    fn l7_rules() {
        let e = errors(
            r#"
[url_maps.m]
default_service = "nope"
[[url_maps.m.path_matchers]]
name = "p"
[[url_maps.m.path_matchers.route_rules]]
priority = 1
service = "l4"
match_rules = [{ prefix_match = "/" }]
route_action = { retry_policy = { retry_conditions = ["bogus"] } }

[url_maps.empty]

[backend_services.l4]
protocol = "TCP"

[backend_services.h]
protocol = "HTTP"
session_affinity = "HEADER_FIELD"
"#,
        );
        let all = e.join("\n");
        assert!(all.contains("bogus"), "{all}");
        assert!(
            all.contains("url_maps.empty: needs default_service"),
            "{all}"
        );
        assert!(
            all.contains("backend_services.h.consistent_hash.http_header_name"),
            "{all}"
        );
        let e = errors(
            r#"
[url_maps.m]
default_service = "l4"
[backend_services.l4]
protocol = "TCP"
"#,
        );
        assert!(e.join("\n").contains("is an L4"), "{e:?}");
    }
}
