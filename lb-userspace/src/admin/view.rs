//! Read-only views of the agent for `status`, `list` and `describe`: configuration joined
//! with health, overrides, what the applied plan says, and counters read from the pinned
//! maps (so a view shows what the dataplane does, not only what the agent intends).

use std::time::Instant;

use super::protocol::{BackendInfo, L7BackendFigures, ListWhat, RuleInfo, ServiceInfo, StatusInfo};
use crate::agent::{
    overrides::{self, AdminState},
    state::{Agent, ChangeError},
};
use crate::config::BackendService;

pub fn status(agent: &Agent) -> StatusInfo {
    let cfg = agent.config();
    let mut backends = 0;
    let mut healthy = 0;
    for (s, bs) in &cfg.backend_services {
        for b in &bs.backends {
            backends += 1;
            let forced = agent.overrides().get(s, &b.display_name()).forced;
            if forced.unwrap_or_else(|| agent.health().is_healthy(s, &b.display_name())) {
                healthy += 1;
            }
        }
    }
    StatusInfo {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        pid: std::process::id(),
        config_file: agent.config_path().map(|p| p.display().to_string()),
        uptime_sec: agent.uptime().as_secs(),
        forwarding_rules: cfg.forwarding_rules.len(),
        backend_services: cfg.backend_services.len(),
        backends,
        healthy_backends: healthy,
        table_rebuilds: agent.table_rebuilds,
        config_changes: agent.config_changes,
        last_error: agent.last_error().map(str::to_string),
        dataplane_unknown: agent.dataplane_unknown().map(str::to_string),
        reasons: agent.port().reasons(),
        l7_listeners: agent.l7_listeners(),
        announce: agent.announce_status(),
    }
}

pub fn list(agent: &Agent, what: ListWhat, now: Instant) -> serde_json::Value {
    let v = match what {
        ListWhat::Rules => serde_json::to_value(rules(agent)),
        ListWhat::Services => serde_json::to_value(all_services(agent, now)),
        ListWhat::Backends => serde_json::to_value(
            all_services(agent, now)
                .into_iter()
                .flat_map(|s| s.backends)
                .collect::<Vec<_>>(),
        ),
    };
    v.unwrap_or_default()
}

fn rules(agent: &Agent) -> Vec<RuleInfo> {
    agent
        .config()
        .forwarding_rules
        .iter()
        .map(|(name, fr)| {
            let mut r = RuleInfo {
                name: name.clone(),
                address: fr.ip_address,
                protocol: format!("{:?}", fr.ip_protocol).to_uppercase(),
                ports: if fr.all_ports {
                    "all".into()
                } else {
                    fr.ports
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                backend_service: fr.backend_service.clone(),
                target: fr.target.clone(),
                packets: 0,
                bytes: 0,
                new_flows: 0,
                no_backend: 0,
            };
            // A rule has one VIP per port.
            for (_, id) in agent
                .assignment()
                .vip_ids
                .iter()
                .filter(|(k, _)| k.rule == *name)
            {
                if let Some(c) = agent.port().vip_counters(*id) {
                    r.packets += c.packets;
                    r.bytes += c.bytes;
                    r.new_flows += c.new_flows;
                    r.no_backend += c.no_backend;
                }
            }
            r
        })
        .collect()
}

/// Every service, with the L7 tier's counters read once for all of them.
fn all_services(agent: &Agent, now: Instant) -> Vec<ServiceInfo> {
    let l7 = agent.l7_stats();
    agent
        .config()
        .backend_services
        .keys()
        .filter_map(|n| service_with(agent, n, now, l7.as_ref()).ok())
        .collect()
}

pub fn service(agent: &Agent, name: &str, now: Instant) -> Result<ServiceInfo, ChangeError> {
    service_with(agent, name, now, agent.l7_stats().as_ref())
}

fn service_with(
    agent: &Agent,
    name: &str,
    now: Instant,
    l7: Option<&crate::l7::L7Stats>,
) -> Result<ServiceInfo, ChangeError> {
    let bs: &BackendService = agent.find_service(name)?;
    let timeout = agent.drain_timeout(name);
    let planned = agent
        .applied()
        .and_then(|p| p.services.iter().find(|s| s.name == name));
    let l7 = l7
        .filter(|_| !bs.protocol.is_l4())
        .and_then(|st| st.services.iter().find(|s| s.name == name));
    let backends = bs
        .backends
        .iter()
        .map(|b| {
            let bname = b.display_name();
            let ov = agent.overrides().get(name, &bname);
            let health = match agent.health().get(name, &bname) {
                Some(crate::health::Health::Healthy) => "healthy",
                Some(crate::health::Health::Unhealthy) => "unhealthy",
                // No check configured: never probed, counted as healthy.
                None if bs.health_check.is_none() => "unchecked",
                None => "unknown",
            };
            let state = match overrides::admin_state(ov, timeout, now) {
                AdminState::Maintenance => "maintenance",
                AdminState::Draining => "draining",
                AdminState::Drained => "drained",
                AdminState::Ready => "ready",
            };
            let l7b = l7
                .as_ref()
                .and_then(|s| s.backends.iter().find(|x| x.name == bname));
            let in_table = match &l7 {
                Some(_) => l7b.is_some_and(|x| x.serving),
                None => planned
                    .and_then(|s| s.backends.iter().find(|x| x.name == bname))
                    .is_some_and(|x| x.in_table && x.mac.is_some() && x.weight > 0),
            };
            let slot = agent
                .assignment()
                .backend_slots
                .get(&crate::ids::BackendKey::new(name, bname.clone()))
                .copied();
            let counters = slot
                .and_then(|s| agent.port().backend_counters(s))
                .unwrap_or_default();
            BackendInfo {
                service: name.into(),
                outer_src: planned
                    .and_then(|s| s.backends.iter().find(|x| x.name == bname))
                    .and_then(|x| x.src),
                name: bname,
                address: b.address,
                port: b.port,
                weight: b.weight,
                failover: b.failover,
                health: health.into(),
                forced: ov.forced.map(|f| if f { "up" } else { "down" }.into()),
                state: state.into(),
                in_table,
                drain_remaining_sec: overrides::drain_deadline(ov, timeout)
                    .filter(|_| state == "draining")
                    .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                slot,
                packets: counters.packets,
                bytes: counters.bytes,
                new_flows: counters.new_flows,
                l7: l7b.map(|x| L7BackendFigures {
                    requests: x.requests,
                    errors: x.errors,
                    in_flight: x.in_flight,
                    ejected: x.ejected,
                    ejections: x.ejections,
                }),
            }
        })
        .collect();
    Ok(ServiceInfo {
        name: name.into(),
        protocol: format!("{:?}", bs.protocol).to_uppercase(),
        health_check: bs.health_check.clone(),
        session_affinity: serde_json::to_value(bs.session_affinity)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        failover_ratio: bs.failover_policy.failover_ratio,
        connection_draining_timeout_sec: bs.connection_draining_timeout_sec,
        forwarding: if bs.protocol.is_l4() {
            bs.forwarding.name().into()
        } else {
            String::new()
        },
        gue_port: (bs.forwarding == crate::config::types::Forwarding::Gue)
            .then(|| bs.gue_port.unwrap_or(lb_common::encap::GUE_DEFAULT_PORT)),
        backends,
    })
}
