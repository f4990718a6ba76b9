//! Balancing modes and request logging (SEMANTICS.md; Google Cloud's `balancingMode`,
//! `maxRatePerEndpoint`, `maxConnectionsPerEndpoint`, `maxUtilization`, `logConfig`).
//!
//! L7 services take RATE (the default) or UTILIZATION; CONNECTION is what an L4 passthrough
//! service does, and the only mode it accepts (its balancing is per connection, by Maglev,
//! with no per-backend target), so the targets are refused there rather than ignored.

use super::types::*;
use super::validate::ConfigError;

/// Largest `max_rate_per_endpoint` (requests per second) and `max_connections_per_endpoint`.
pub const MAX_RATE: f64 = 1e7;
pub const MAX_CONNECTIONS: u32 = 10_000_000;

/// Every balancing-mode and logging problem of `cfg`, each with its place.
pub fn validate_balancing(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    for (name, bs) in &cfg.backend_services {
        let p = format!("backend_services.{name}");
        let mut err =
            |field: &str, msg: String| errs.push(ConfigError::new(format!("{p}.{field}"), msg));
        if bs.protocol.is_l4() {
            if matches!(bs.balancing_mode, Some(m) if m != BalancingMode::Connection) {
                err("balancing_mode", "an L4 passthrough service balances connections (CONNECTION, the default); RATE and UTILIZATION are for L7 services".into());
            }
            for (set, field) in [
                (bs.max_rate_per_endpoint.is_some(), "max_rate_per_endpoint"),
                (
                    bs.max_connections_per_endpoint.is_some(),
                    "max_connections_per_endpoint",
                ),
                (bs.max_utilization.is_some(), "max_utilization"),
                (bs.log_config.is_some(), "log_config"),
            ] {
                if set {
                    err(field, "not supported on L4 passthrough services (no per-backend targets, no request log); remove it".into());
                }
            }
            continue;
        }
        let mode = bs.balancing_mode.unwrap_or(BalancingMode::Rate);
        if mode == BalancingMode::Connection {
            err("balancing_mode", "CONNECTION is for L4 passthrough (TCP/UDP) services; an L7 service uses RATE or UTILIZATION".into());
        }
        if let Some(r) = bs.max_rate_per_endpoint {
            if !(r.is_finite() && r > 0.0 && r <= MAX_RATE) {
                err("max_rate_per_endpoint", format!("{r} must be a number of requests per second above 0 and at most {MAX_RATE}"));
            }
        }
        if let Some(c) = bs.max_connections_per_endpoint {
            if mode != BalancingMode::Utilization {
                err("max_connections_per_endpoint", "is the in-flight capacity of UTILIZATION; set balancing_mode = \"UTILIZATION\" or remove it".into());
            } else if !(1..=MAX_CONNECTIONS).contains(&c) {
                err(
                    "max_connections_per_endpoint",
                    format!("{c} is outside 1..={MAX_CONNECTIONS}"),
                );
            }
        }
        if let Some(u) = bs.max_utilization {
            if mode != BalancingMode::Utilization {
                err(
                    "max_utilization",
                    "applies to balancing_mode = \"UTILIZATION\" only".into(),
                );
            } else if !(u.is_finite() && (0.0..=1.0).contains(&u)) {
                err("max_utilization", format!("{u} must be 0.0..=1.0"));
            }
        }
        if mode == BalancingMode::Utilization && bs.max_connections_per_endpoint.is_none() {
            err("max_connections_per_endpoint", "UTILIZATION needs each backend's in-flight capacity (requests in progress at 100% utilization)".into());
        }
        if let Some(lc) = &bs.log_config {
            if !(lc.sample_rate.is_finite() && (0.0..=1.0).contains(&lc.sample_rate)) {
                err(
                    "log_config.sample_rate",
                    format!("{} must be 0.0..=1.0", lc.sample_rate),
                );
            }
        }
    }
    let dest = cfg.logging.access_log.as_str();
    if dest.is_empty() {
        errs.push(ConfigError::new(
            "logging.access_log",
            "must be \"off\", \"stderr\" or a file path",
        ));
    } else if !matches!(dest, "off" | "stderr") && !dest.starts_with('/') {
        errs.push(ConfigError::new(
            "logging.access_log",
            format!("{dest:?} is neither \"off\", \"stderr\" nor an absolute file path"),
        ));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        let cfg: Config = toml::from_str(text).unwrap();
        validate_balancing(&cfg)
            .into_iter()
            .map(|e| format!("{}: {}", e.place, e.message))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn modes_per_tier() {
        assert_eq!(
            errors("[backend_services.a]\nprotocol = \"HTTP\"\nmax_rate_per_endpoint = 100.0"),
            ""
        );
        assert_eq!(
            errors("[backend_services.a]\nprotocol = \"TCP\"\nbalancing_mode = \"CONNECTION\""),
            ""
        );
        let e =
            errors("[backend_services.a]\nprotocol = \"HTTP\"\nbalancing_mode = \"CONNECTION\"");
        assert!(
            e.contains("backend_services.a.balancing_mode: CONNECTION is for L4"),
            "{e}"
        );
        let e = errors("[backend_services.a]\nprotocol = \"UDP\"\nbalancing_mode = \"RATE\"\nmax_rate_per_endpoint = 5.0\nlog_config = { enable = true }");
        assert!(e.contains("a.balancing_mode: an L4"), "{e}");
        assert!(
            e.contains("a.max_rate_per_endpoint: not supported on L4"),
            "{e}"
        );
        assert!(e.contains("a.log_config: not supported on L4"), "{e}");
    }

    #[test]
    fn targets_and_ranges() {
        let e =
            errors("[backend_services.a]\nprotocol = \"HTTP\"\nbalancing_mode = \"UTILIZATION\"");
        assert!(
            e.contains("a.max_connections_per_endpoint: UTILIZATION needs"),
            "{e}"
        );
        let e = errors("[backend_services.a]\nprotocol = \"HTTP\"\nmax_utilization = 0.5\nmax_connections_per_endpoint = 3");
        assert!(e.contains("max_utilization: applies to"), "{e}");
        assert!(
            e.contains("max_connections_per_endpoint: is the in-flight"),
            "{e}"
        );
        for bad in ["inf", "nan", "-1.0", "0.0", "1e20"] {
            let e = errors(&format!(
                "[backend_services.a]\nprotocol = \"HTTP\"\nmax_rate_per_endpoint = {bad}"
            ));
            assert!(e.contains("max_rate_per_endpoint"), "{bad}: {e}");
        }
        for bad in ["nan", "1.5", "-0.1"] {
            let e = errors(&format!("[backend_services.a]\nprotocol = \"HTTP\"\nbalancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 4\nmax_utilization = {bad}\nlog_config = {{ enable = true, sample_rate = {bad} }}"));
            assert!(
                e.contains("max_utilization:") && e.contains("sample_rate:"),
                "{bad}: {e}"
            );
        }
        let e = errors("[backend_services.a]\nprotocol = \"HTTP\"\nbalancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 0");
        assert!(e.contains("0 is outside"), "{e}");
    }

    #[test]
    fn access_log_destination() {
        assert_eq!(
            errors("[logging]\naccess_log = \"/var/log/lb.log\"\naccess_log_format = \"json\""),
            ""
        );
        assert!(errors("[logging]\naccess_log = \"relative.log\"").contains("logging.access_log"));
        assert!(errors("[logging]\naccess_log = \"\"").contains("logging.access_log"));
    }
}
