//! Desired L4 state from configuration, health and admin overrides: pure decisions with no
//! I/O (failover, last-resort spreading, draining, persistence), unit-tested without root.

use crate::config::{
    BackendService, Config, IpProtocol, Persistence, SessionAffinity, TrackingMode,
};
use crate::dataplane::plan::{L4Backend, L4Plan, L4Service, L4Vip};
use lb_common::{hash_mode, service_flags, PROTO_TCP, PROTO_UDP};
use std::net::IpAddr;

/// What the agent knows about one backend beyond its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendState {
    /// Health from the checker; `None` before the first verdict (counted as healthy, so a
    /// starting or restarted agent does not pull every backend out of rotation).
    pub health: Option<bool>,
    /// Admin override: force health up or down.
    pub forced: Option<bool>,
    /// Admin drain, or the backend was removed from failover/maintenance: out of the table,
    /// existing flows stay.
    pub draining: bool,
    /// Draining timeout expired (or maintenance): existing flows leave too.
    pub evict: bool,
    /// Admin weight override.
    pub weight: Option<u32>,
}

impl BackendState {
    pub fn healthy(&self) -> bool {
        self.forced.or(self.health).unwrap_or(true)
    }
}

/// Maps the affinity setting to the fields the program hashes.
pub fn hash_mode_of(a: SessionAffinity) -> u32 {
    match a {
        SessionAffinity::ClientIpProto => hash_mode::CLIENT_IP_PROTO,
        SessionAffinity::ClientIp => hash_mode::CLIENT_IP,
        SessionAffinity::ClientIpNoDestination => hash_mode::CLIENT_IP_NO_DESTINATION,
        _ => hash_mode::FIVE_TUPLE,
    }
}

/// SEMANTICS: connection persistence on unhealthy backends.
/// DEFAULT_FOR_PROTOCOL keeps TCP flows when tracking is per connection or affinity is
/// 5-tuple, and never keeps UDP flows.
pub fn persistence_flags(bs: &BackendService) -> u32 {
    let ct = &bs.connection_tracking_policy;
    let five_tuple = hash_mode_of(bs.session_affinity) == hash_mode::FIVE_TUPLE;
    let mut f = match ct.connection_persistence_on_unhealthy_backends {
        Persistence::AlwaysPersist => service_flags::PERSIST_TCP | service_flags::PERSIST_UDP,
        Persistence::NeverPersist => 0,
        Persistence::DefaultForProtocol => {
            if ct.tracking_mode == TrackingMode::PerConnection || five_tuple {
                service_flags::PERSIST_TCP
            } else {
                0
            }
        }
    };
    if ct.tracking_mode == TrackingMode::PerSession && !five_tuple {
        f |= service_flags::PER_SESSION;
    }
    f
}

/// Which backends take new flows (the Maglev table members), by index into `bs.backends`,
/// and which must give up their existing flows. Google Cloud's failover rules:
/// - failover backends serve only when the healthy share of primaries is below
///   `failover_ratio` (with ratio 0: only when no primary is healthy) and some failover
///   backend is healthy;
/// - with no healthy backend in the chosen pool, new flows spread over every primary as a
///   last resort, unless `drop_traffic_if_unhealthy` (then the table is empty: drop);
/// - draining backends never take new flows.
pub fn select(bs: &BackendService, states: &[BackendState]) -> (Vec<bool>, Vec<bool>) {
    select_with(bs, states, Fallback::SpreadOverPrimaries)
}

/// What new traffic does when no backend of the active pool is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// L4 (Google Cloud's passthrough balancer): spread over every primary as a last
    /// resort, unless `drop_traffic_if_unhealthy`.
    SpreadOverPrimaries,
    /// L7 (the Application Load Balancer): nothing takes new requests, clients get 503.
    Refuse,
}

/// [`select`] with an explicit fallback.
pub fn select_with(
    bs: &BackendService,
    states: &[BackendState],
    fallback: Fallback,
) -> (Vec<bool>, Vec<bool>) {
    let n = bs.backends.len();
    let st = |i: usize| states.get(i).copied().unwrap_or_default();
    let usable = |i: usize| !st(i).draining && !st(i).evict;
    let primaries: Vec<usize> = (0..n).filter(|i| !bs.backends[*i].failover).collect();
    let failovers: Vec<usize> = (0..n).filter(|i| bs.backends[*i].failover).collect();
    let healthy_p: Vec<usize> = primaries
        .iter()
        .copied()
        .filter(|i| st(*i).healthy() && usable(*i))
        .collect();
    let healthy_f: Vec<usize> = failovers
        .iter()
        .copied()
        .filter(|i| st(*i).healthy() && usable(*i))
        .collect();
    let fp = &bs.failover_policy;
    let ratio = if primaries.is_empty() {
        0.0
    } else {
        healthy_p.len() as f64 / primaries.len() as f64
    };
    let failover = !healthy_f.is_empty()
        && (healthy_p.is_empty() || (fp.failover_ratio > 0.0 && ratio < fp.failover_ratio));
    let pool: Vec<usize> = if failover { healthy_f } else { healthy_p };
    let spread = fallback == Fallback::SpreadOverPrimaries && !fp.drop_traffic_if_unhealthy;
    let pool = if pool.is_empty() && spread {
        // Last resort: every primary that is not administratively out (or every backend
        // when there are only failover backends).
        let base = if primaries.is_empty() {
            &failovers
        } else {
            &primaries
        };
        base.iter().copied().filter(|i| usable(*i)).collect()
    } else {
        pool
    };
    let mut in_table = vec![false; n];
    for i in &pool {
        in_table[*i] = true;
    }
    let mut evict: Vec<bool> = (0..n).map(|i| st(i).evict).collect();
    if fp.disable_connection_drain_on_failover {
        // Without connection draining on failover, flows leave the backends that are out of
        // the active pool as soon as the pool changes.
        for i in 0..n {
            if !in_table[i] && !st(i).draining {
                evict[i] = true;
            }
        }
    }
    (in_table, evict)
}

/// The agent's decision about one L7 backend, mirrored into the proxy's atomics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L7Admit {
    /// Takes new requests (healthy or forced up, in the active failover pool, not drained).
    pub serving: bool,
    /// Health as shown to operators (forced health included).
    pub healthy: bool,
    /// Requests and tunnels still open on it must be closed (drain over, maintenance).
    pub evicted: bool,
}

/// Every L7 backend's admission, by (service, backend display name). A backend missing
/// from it serves (the contract of "no verdict yet").
pub type L7Admission = std::collections::HashMap<crate::ids::BackendKey, L7Admit>;

/// The admission of every backend of every L7 service: the same failover, drain and
/// forced-health rules as the L4 plan, except that no healthy backend means 503 rather
/// than spreading over unhealthy ones.
pub fn l7_admission(cfg: &Config, state: &dyn Fn(&str, usize) -> BackendState) -> L7Admission {
    let mut out = L7Admission::new();
    for (name, bs) in &cfg.backend_services {
        if bs.protocol.is_l4() {
            continue;
        }
        let states: Vec<BackendState> = (0..bs.backends.len()).map(|i| state(name, i)).collect();
        let (in_table, evict) = select_with(bs, &states, Fallback::Refuse);
        for (i, b) in bs.backends.iter().enumerate() {
            let admit = L7Admit {
                serving: in_table[i],
                healthy: states[i].healthy(),
                evicted: evict[i],
            };
            out.insert(
                crate::ids::BackendKey::new(name.clone(), b.display_name()),
                admit,
            );
        }
    }
    out
}

/// How the balancer must reach a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// On the balancer's L2 segment, at this MAC if one is configured.
    L2(Option<crate::ids::Mac>),
    /// Through the routing table (IPIP, GUE).
    Routed,
}

/// A backend the balancer can reach now: its MAC (L2; zero when routed) and, when routed,
/// the outer source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reachable {
    pub mac: [u8; 6],
    pub src: Option<IpAddr>,
}

/// Finds how a backend is reached now; `None` while it cannot be (MAC or next hop unknown).
pub type MacLookup<'a> = dyn Fn(IpAddr, Reach) -> Option<Reachable> + 'a;

/// Builds the L4 plan. `state(service, backend_index)` gives each backend's state and
/// `mac(addr, configured)` its MAC.
pub fn l4_plan(
    model: &super::Model,
    state: &dyn Fn(&str, usize) -> BackendState,
    mac: &MacLookup,
) -> L4Plan {
    let cfg = model.config();
    let mut services = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    let mut vips = Vec::new();
    for (name, fr) in &cfg.forwarding_rules {
        let Some(bs_name) = &fr.backend_service else {
            continue;
        };
        let addr = fr.ip_address;
        let proto = match fr.ip_protocol {
            IpProtocol::Tcp => PROTO_TCP,
            IpProtocol::Udp => PROTO_UDP,
        };
        let ports = if fr.all_ports {
            vec![0]
        } else {
            fr.ports.clone()
        };
        for port in ports {
            vips.push(L4Vip {
                name: name.clone(),
                addr,
                port,
                proto,
                service: bs_name.clone(),
            });
        }
        used.insert(bs_name.clone());
    }
    for name in used {
        let Some(bs) = cfg.backend_services.get(&name) else {
            continue;
        };
        let states: Vec<BackendState> = (0..bs.backends.len()).map(|i| state(&name, i)).collect();
        let (in_table, evict) = select(bs, &states);
        let reached: Vec<Option<Reachable>> = bs
            .backends
            .iter()
            .map(|b| {
                let how = if bs.forwarding.is_routed() {
                    Reach::Routed
                } else {
                    Reach::L2(model.mac(&name, &b.display_name()))
                };
                mac(b.address, how)
            })
            .collect();
        let backends = bs
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| L4Backend {
                name: b.display_name(),
                addr: b.address,
                mac: reached[i].map(|r| r.mac),
                src: reached[i].and_then(|r| r.src),
                weight: states[i].weight.unwrap_or(b.weight),
                in_table: in_table[i],
                healthy: states[i].healthy(),
                draining: states[i].draining,
                evict: evict[i],
                failover: b.failover,
            })
            .collect();
        services.push(L4Service {
            name: name.clone(),
            hash_mode: hash_mode_of(bs.session_affinity),
            flags: persistence_flags(bs),
            idle_timeout_s: bs.connection_tracking_policy.idle_timeout_sec,
            forwarding: bs.forwarding.code(),
            gue_port: match bs.forwarding {
                crate::config::types::Forwarding::Gue => {
                    bs.gue_port.unwrap_or(lb_common::encap::GUE_DEFAULT_PORT)
                }
                _ => 0,
            },
            backends,
        });
    }
    L4Plan { services, vips }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn parse(t: &str) -> Result<Config, crate::config::ConfigErrors> {
        crate::model::parse(t).map(|m| m.config().clone())
    }

    fn svc(extra: &str, backends: &[(&str, bool)]) -> BackendService {
        let mut t = format!("[backend_services.s]\nprotocol = \"TCP\"\n{extra}\n");
        for (a, f) in backends {
            t += &format!("[[backend_services.s.backends]]\naddress = \"{a}\"\nfailover = {f}\n");
        }
        parse(&t).unwrap().backend_services["s"].clone()
    }

    fn st(h: &[bool]) -> Vec<BackendState> {
        h.iter()
            .map(|h| BackendState {
                health: Some(*h),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn healthy_primaries_take_all_traffic() {
        let bs = svc(
            "",
            &[("10.0.0.1", false), ("10.0.0.2", false), ("10.0.0.3", true)],
        );
        let (t, _) = select(&bs, &st(&[true, true, true]));
        assert_eq!(t, vec![true, true, false]);
        let (t, _) = select(&bs, &st(&[true, false, true]));
        assert_eq!(
            t,
            vec![true, false, false],
            "ratio 0: no failover while a primary lives"
        );
    }

    #[test]
    fn failover_below_ratio() {
        let bs = svc(
            "failover_policy = { failover_ratio = 0.6 }",
            &[("10.0.0.1", false), ("10.0.0.2", false), ("10.0.0.3", true)],
        );
        let (t, _) = select(&bs, &st(&[true, true, true]));
        assert_eq!(t, vec![true, true, false], "1.0 ≥ 0.6");
        let (t, _) = select(&bs, &st(&[true, false, true]));
        assert_eq!(t, vec![false, false, true], "0.5 < 0.6: failover");
        let (t, _) = select(&bs, &st(&[true, false, false]));
        assert_eq!(
            t,
            vec![true, false, false],
            "no healthy failover: stay on primaries"
        );
    }

    #[test]
    fn all_unhealthy_spreads_or_drops() {
        let bs = svc("", &[("10.0.0.1", false), ("10.0.0.2", false)]);
        let (t, _) = select(&bs, &st(&[false, false]));
        assert_eq!(t, vec![true, true]);
        let bs = svc(
            "failover_policy = { drop_traffic_if_unhealthy = true }",
            &[("10.0.0.1", false), ("10.0.0.2", false)],
        );
        let (t, _) = select(&bs, &st(&[false, false]));
        assert_eq!(t, vec![false, false]);
    }

    #[test]
    fn draining_takes_no_new_flows() {
        let bs = svc("", &[("10.0.0.1", false), ("10.0.0.2", false)]);
        let mut s = st(&[true, true]);
        s[0].draining = true;
        let (t, e) = select(&bs, &s);
        assert_eq!(t, vec![false, true]);
        assert_eq!(e, vec![false, false], "existing flows stay while draining");
    }

    #[test]
    fn persistence_defaults() {
        let bs = svc("", &[]);
        assert_eq!(persistence_flags(&bs), service_flags::PERSIST_TCP);
        let bs = svc(
            "session_affinity = \"CLIENT_IP\"\nconnection_tracking_policy = { tracking_mode = \"PER_SESSION\" }",
            &[],
        );
        assert_eq!(
            persistence_flags(&bs),
            service_flags::PER_SESSION,
            "TCP does not persist with per-session, 2-tuple"
        );
        let bs = svc(
            "connection_tracking_policy = { connection_persistence_on_unhealthy_backends = \"ALWAYS_PERSIST\" }",
            &[],
        );
        assert_eq!(
            persistence_flags(&bs),
            service_flags::PERSIST_TCP | service_flags::PERSIST_UDP
        );
        let bs = svc(
            "connection_tracking_policy = { connection_persistence_on_unhealthy_backends = \"NEVER_PERSIST\" }",
            &[],
        );
        assert_eq!(persistence_flags(&bs), 0);
    }
}
