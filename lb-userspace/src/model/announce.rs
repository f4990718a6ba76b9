//! Which VIP prefixes this balancer announces to its routers, and why each rule is or is not
//! announced: a pure decision from the configuration, the L4 plan the maps hold and the node
//! drain, so it is tested without a routing daemon (`agent::announce` speaks to BIRD).
//!
//! A rule is announced when it is an L4 rule that has not opted out (`announce = false`),
//! the node is not drained, and its service has at least one *usable* backend: in the
//! Maglev table, healthy (or forced up) and with a known MAC. A balancer whose backends all
//! look dead from where it stands (its link to the backends' segment is down, say) thus
//! steps aside and the routers send the VIP's traffic to balancers that can serve it; the
//! last-resort spreading over unhealthy backends still applies to packets that arrive.
//! A prefix (the rule's address, /32) is announced when any rule at that address is.

use crate::dataplane::plan::L4Plan;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeSet, net::IpAddr};

/// Why a rule is not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Withdrawn {
    /// `lb node drain`: every announcement is withdrawn.
    NodeDrained,
    /// The service has no backend in its Maglev table that is healthy and reachable.
    NoUsableBackend,
    /// The rule says `announce = false`.
    OptedOut,
}

impl Withdrawn {
    pub fn words(self) -> &'static str {
        match self {
            Withdrawn::NodeDrained => "node drained",
            Withdrawn::NoUsableBackend => "no usable backend",
            Withdrawn::OptedOut => "opted out",
        }
    }
}

/// One L4 rule's announcement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleAnnouncement {
    pub rule: String,
    pub address: IpAddr,
    /// The prefix length announced for the address (32 for IPv4).
    pub prefix_len: u8,
    /// `None`: announced.
    pub withdrawn: Option<Withdrawn>,
}

impl RuleAnnouncement {
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

/// What `lb status` and the metrics show about announcements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    /// "bird" (only announcing daemons have a status).
    pub daemon: String,
    pub include_file: String,
    pub node_drained: bool,
    /// Every L4 rule and whether it is announced.
    pub rules: Vec<RuleAnnouncement>,
    /// The prefixes the daemon was last configured with (what routers are told).
    pub configured: Option<BTreeSet<String>>,
    /// Whether the daemon holds exactly the desired prefixes.
    pub in_sync: bool,
    /// The last failure to write the file or reconfigure the daemon (retried until it works).
    pub last_error: Option<String>,
    pub configure_runs: u64,
    pub configure_errors: u64,
}

/// Every L4 rule's announcement, by rule name.
pub fn decide(model: &super::Model, plan: &L4Plan, node_drained: bool) -> Vec<RuleAnnouncement> {
    let cfg = model.config();
    let mut out = Vec::new();
    for (name, fr) in &cfg.forwarding_rules {
        let Some(service) = &fr.backend_service else {
            continue;
        };
        if !cfg
            .backend_services
            .get(service)
            .is_some_and(|bs| bs.protocol.is_l4())
        {
            continue;
        }
        let usable = plan.services.iter().any(|s| {
            s.name == *service
                && s.backends
                    .iter()
                    .any(|b| b.in_table && b.healthy && b.mac.is_some() && b.weight > 0)
        });
        let withdrawn = if fr.announce == Some(false) {
            Some(Withdrawn::OptedOut)
        } else if node_drained {
            Some(Withdrawn::NodeDrained)
        } else if !usable {
            Some(Withdrawn::NoUsableBackend)
        } else {
            None
        };
        out.push(RuleAnnouncement {
            rule: name.clone(),
            address: fr.ip_address,
            prefix_len: if fr.ip_address.is_ipv4() { 32 } else { 128 },
            withdrawn,
        });
    }
    out
}

/// The prefixes to announce ("10.0.0.10/32"), sorted.
pub fn prefixes(rules: &[RuleAnnouncement]) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|r| r.withdrawn.is_none())
        .map(RuleAnnouncement::prefix)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{l4_plan, BackendState};

    const CFG: &str = r#"
[backend_services.web]
protocol = "TCP"
backends = [{ address = "10.0.0.11", mac = "02:00:00:00:00:11" }, { address = "10.0.0.12", mac = "02:00:00:00:00:12" }]
[backend_services.empty]
protocol = "TCP"
[backend_services.site]
protocol = "HTTP"
backends = [{ address = "10.0.0.21", port = 80 }]
[url_maps.m]
default_service = "site"
[target_http_proxies.p]
url_map = "m"
[forwarding_rules.web]
ip_address = "10.0.0.100"
ports = [80]
backend_service = "web"
[forwarding_rules.web-alt]
ip_address = "10.0.0.100"
ports = [8080]
backend_service = "web"
announce = false
[forwarding_rules.void]
ip_address = "10.0.0.101"
ports = [80]
backend_service = "empty"
[forwarding_rules.l7]
ip_address = "10.0.0.102"
ports = [80]
target = "p"
"#;

    fn plan(model: &crate::model::Model, healthy: bool) -> L4Plan {
        l4_plan(
            model,
            &|_, _| BackendState {
                health: Some(healthy),
                ..Default::default()
            },
            &|_, how| match how {
                crate::model::Reach::L2(mac) => {
                    mac.map(|mac| crate::model::Reachable { mac, src: None })
                }
                crate::model::Reach::Routed => None,
            },
        )
    }

    fn by_rule(v: &[RuleAnnouncement]) -> Vec<(&str, Option<Withdrawn>)> {
        v.iter().map(|r| (r.rule.as_str(), r.withdrawn)).collect()
    }

    #[test]
    fn usable_rules_are_announced_others_say_why_not() {
        let m = crate::model::parse(CFG).unwrap();
        let a = decide(&m, &plan(&m, true), false);
        assert_eq!(
            by_rule(&a),
            vec![
                ("void", Some(Withdrawn::NoUsableBackend)),
                ("web", None),
                ("web-alt", Some(Withdrawn::OptedOut)),
            ],
            "L7 rules are not announced by the L4 tier"
        );
        assert_eq!(
            prefixes(&a).into_iter().collect::<Vec<_>>(),
            vec!["10.0.0.100/32"]
        );
    }

    #[test]
    fn a_drained_node_announces_nothing() {
        let m = crate::model::parse(CFG).unwrap();
        let a = decide(&m, &plan(&m, true), true);
        assert!(prefixes(&a).is_empty());
        assert_eq!(a[1].withdrawn, Some(Withdrawn::NodeDrained));
        assert_eq!(a[2].withdrawn, Some(Withdrawn::OptedOut), "opt-out wins");
    }

    #[test]
    fn no_healthy_backend_withdraws_although_the_dataplane_spreads() {
        let m = crate::model::parse(CFG).unwrap();
        let p = plan(&m, false);
        assert!(
            p.services[0].backends.iter().all(|b| b.in_table),
            "last-resort spreading keeps them in the table"
        );
        let a = decide(&m, &p, false);
        assert!(prefixes(&a).is_empty());
        assert_eq!(a[1].withdrawn, Some(Withdrawn::NoUsableBackend));
        let unresolved = l4_plan(&m, &|_, _| BackendState::default(), &|_, _| None);
        assert!(prefixes(&decide(&m, &unresolved, false)).is_empty());
    }
}
