//! Validation of `[announce]` and of the rules' `announce` flag.

use super::types::*;
use super::validate::ConfigError;
use std::path::Path;

/// Longest `sun_path` of a Unix socket, without its terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const MAX_PATH: usize = 1024;

pub fn validate_announce(cfg: &Config) -> Vec<ConfigError> {
    let mut errs = Vec::new();
    let a = &cfg.announce;
    let mut err = |place: &str, msg: String| errs.push(ConfigError::new(place, msg));
    match a.daemon {
        AnnounceDaemon::None => {
            for (field, set) in [
                ("include_file", a.include_file.is_some()),
                ("control_socket", a.control_socket.is_some()),
            ] {
                if set {
                    err(
                        &format!("announce.{field}"),
                        "only used with daemon = \"bird\"; set the daemon or remove it".into(),
                    );
                }
            }
        }
        AnnounceDaemon::Bird => {
            if cfg.dataplane.interfaces.is_empty() {
                err(
                    "announce.daemon",
                    "announcing VIPs needs the L4 tier (dataplane.interfaces): nothing would forward the traffic the routers send".into(),
                );
            }
            if let Some(m) = path_problem(&a.include_file(), MAX_PATH) {
                err("announce.include_file", m);
            }
            if let Some(m) = path_problem(&a.control_socket(), MAX_SOCKET_PATH) {
                err("announce.control_socket", m);
            }
        }
    }
    for (name, fr) in &cfg.forwarding_rules {
        // The include file holds one IPv4 static protocol, and the shipped BIRD configuration
        // peers over IPv4: an IPv6 VIP would be silently left out, so it is refused instead.
        let announced = fr.target.is_none() && fr.announce != Some(false);
        if a.daemon == AnnounceDaemon::Bird && announced && fr.ip_address.is_ipv6() {
            err(
                &format!("forwarding_rules.{name}.announce"),
                "IPv6 VIPs are not announced yet (the include file and the shipped BIRD \
                 configuration are IPv4): set announce = false on this rule and route its \
                 prefix another way"
                    .into(),
            );
        }
        if fr.announce.is_some() && fr.target.is_some() {
            err(
                &format!("forwarding_rules.{name}.announce"),
                "only L4 rules (backend_service) are announced; remove it from this L7 rule".into(),
            );
        }
    }
    errs
}

fn path_problem(p: &Path, max: usize) -> Option<String> {
    let len = p.as_os_str().len();
    if !p.is_absolute() {
        Some(format!("{} must be an absolute path", p.display()))
    } else if len > max {
        Some(format!("{len} bytes is over the {max}-byte limit"))
    } else if p.file_name().is_none() || p.as_os_str().to_string_lossy().ends_with('/') {
        Some(format!("{} names a folder, not a file", p.display()))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    fn errors(text: &str) -> Vec<String> {
        match crate::config::from_toml(text).and_then(|c| crate::config::validate::validate(&c)) {
            Ok(()) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.place, e.message))
                    .collect()
            }
        }
    }

    const L4: &str = r#"
[dataplane]
interfaces = ["eth0"]
[backend_services.web]
protocol = "TCP"
[forwarding_rules.web]
ip_address = "10.0.0.100"
ports = [80]
backend_service = "web"
"#;

    #[test]
    fn a_bird_section_with_defaults_is_accepted() {
        let t = format!("{L4}announce = false\n[announce]\ndaemon = \"bird\"\n");
        assert!(errors(&t).is_empty(), "{:?}", errors(&t));
        let m = crate::config::from_toml(&t).unwrap();
        assert_eq!(
            m.announce.include_file(),
            std::path::PathBuf::from("/var/lib/lb/bird-vips.conf")
        );
        assert_eq!(
            m.announce.control_socket(),
            std::path::PathBuf::from("/run/bird/bird.ctl")
        );
    }

    #[test]
    fn bad_announce_settings_are_refused_with_their_place() {
        let e = errors(&format!(
            "{L4}[announce]\ninclude_file = \"/etc/bird/x.conf\"\n"
        ));
        assert!(
            e.iter()
                .any(|e| e.starts_with("announce.include_file: only used")),
            "{e:?}"
        );
        let e = errors(&format!(
            "{L4}[announce]\ndaemon = \"bird\"\ninclude_file = \"lb.conf\"\ncontrol_socket = \"/run/{}\"\n",
            "x".repeat(200)
        ));
        assert!(e.iter().any(|e| e.contains("absolute")), "{e:?}");
        assert!(
            e.iter()
                .any(|e| e.starts_with("announce.control_socket") && e.contains("limit")),
            "{e:?}"
        );
        let e = errors("[announce]\ndaemon = \"bird\"\n");
        assert!(e.iter().any(|e| e.contains("needs the L4 tier")), "{e:?}");
        let e = errors("[announce]\ndaemon = \"gobgp\"\n");
        assert!(e.iter().any(|e| e.contains("unknown variant")), "{e:?}");
    }

    #[test]
    fn an_announced_ipv6_rule_is_refused_until_opted_out() {
        let t = |announce: &str| {
            format!(
                r#"
[dataplane]
interfaces = ["eth0"]
[announce]
daemon = "bird"
[backend_services.web6]
protocol = "TCP"
backends = [{{ address = "fd00::11" }}]
[forwarding_rules.web6]
ip_address = "fd00::100"
ports = [80]
backend_service = "web6"
{announce}
"#
            )
        };
        let e = errors(&t(""));
        assert!(
            e.iter()
                .any(|e| e
                    .starts_with("forwarding_rules.web6.announce: IPv6 VIPs are not announced")),
            "{e:?}"
        );
        assert!(errors(&t("announce = false")).is_empty());
    }

    #[test]
    fn announce_on_an_l7_rule_is_refused() {
        let t = r#"
[backend_services.site]
protocol = "HTTP"
backends = [{ address = "10.0.0.21", port = 80 }]
[url_maps.m]
default_service = "site"
[target_http_proxies.p]
url_map = "m"
[forwarding_rules.l7]
ip_address = "10.0.0.102"
ports = [80]
target = "p"
announce = true
"#;
        let e = errors(t);
        assert!(
            e.iter()
                .any(|e| e.starts_with("forwarding_rules.l7.announce")),
            "{e:?}"
        );
    }
}
