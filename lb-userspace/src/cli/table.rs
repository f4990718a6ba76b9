//! Human-readable output of admin results: aligned tables, one line per resource.

use crate::admin::protocol::{BackendInfo, RuleInfo, ServiceInfo, StatusInfo};

/// Formats rows as columns separated by two spaces, each as wide as its widest cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

pub fn status(s: &StatusInfo) -> String {
    let mut out = format!(
        "agent {} (pid {}), up {} s, config {}\n\
         forwarding rules {}, backend services {}, backends {} ({} healthy)\n\
         table rebuilds {}, configuration changes {}\n",
        s.agent_version,
        s.pid,
        s.uptime_sec,
        s.config_file.as_deref().unwrap_or("-"),
        s.forwarding_rules,
        s.backend_services,
        s.backends,
        s.healthy_backends,
        s.table_rebuilds,
        s.config_changes,
    );
    if let Some(e) = &s.dataplane_unknown {
        out += &format!("DATAPLANE STATE UNKNOWN: {e}\n");
    }
    if let Some(e) = &s.last_error {
        out += &format!("LAST ERROR: {e}\n");
    }
    let nonzero: Vec<String> = s
        .reasons
        .iter()
        .filter(|(_, v)| *v > 0)
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if !nonzero.is_empty() {
        out += &format!("verdicts: {}\n", nonzero.join(" "));
    }
    for l in &s.l7_listeners {
        out += &format!(
            "L7 listener {} ({}) -> {}, {}\n",
            l.address,
            if l.tls { "HTTPS" } else { "HTTP" },
            l.target_proxy,
            l.bound
                .as_ref()
                .map_or_else(|| "NOT BOUND".to_string(), |b| format!("bound {b}")),
        );
    }
    if let Some(a) = &s.announce {
        out += &announce(a);
    }
    out
}

/// The announcement part of `status`: the daemon, whether it is in step, and each rule.
fn announce(a: &crate::model::announce::AnnounceStatus) -> String {
    let drained = if a.node_drained { ", NODE DRAINED" } else { "" };
    let sync = if a.in_sync {
        ""
    } else {
        ", daemon not in step yet"
    };
    let mut out = format!(
        "announce via {} ({}){drained}{sync}\n",
        a.daemon, a.include_file
    );
    if let Some(e) = &a.last_error {
        out += &format!("ANNOUNCE ERROR: {e}\n");
    }
    for r in &a.rules {
        let state = match r.withdrawn {
            None => "announced".to_string(),
            Some(w) => format!("withdrawn: {}", w.words()),
        };
        out += &format!("  {} {} {state}\n", r.rule, r.prefix());
    }
    out
}

pub fn rules(rs: &[RuleInfo]) -> String {
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.address.to_string(),
                r.protocol.clone(),
                r.ports.clone(),
                r.backend_service
                    .clone()
                    .or(r.target.clone())
                    .unwrap_or_default(),
                r.packets.to_string(),
                r.new_flows.to_string(),
                r.no_backend.to_string(),
            ]
        })
        .collect();
    render(
        &[
            "RULE",
            "ADDRESS",
            "PROTO",
            "PORTS",
            "SERVICE/TARGET",
            "PACKETS",
            "NEW_FLOWS",
            "NO_BACKEND",
        ],
        &rows,
    )
}

/// L4 backends with the dataplane's counters, L7 backends with the proxy's; one table each.
pub fn backends(bs: &[BackendInfo]) -> String {
    let (l7, l4): (Vec<&BackendInfo>, Vec<&BackendInfo>) = bs.iter().partition(|b| b.l7.is_some());
    let mut out = Vec::new();
    if !l4.is_empty() || l7.is_empty() {
        out.push(l4_backends(&l4));
    }
    if !l7.is_empty() {
        out.push(l7_backends(&l7));
    }
    out.join("\n")
}

fn health_and_state(b: &BackendInfo) -> (String, String) {
    let health = match &b.forced {
        Some(f) => format!("{} (forced {f})", b.health),
        None => b.health.clone(),
    };
    let state = match b.drain_remaining_sec {
        Some(s) => format!("{} ({s:.0} s left)", b.state),
        None => b.state.clone(),
    };
    (health, state)
}

fn l7_backends(bs: &[&BackendInfo]) -> String {
    let rows: Vec<Vec<String>> = bs
        .iter()
        .map(|b| {
            let (health, state) = health_and_state(b);
            let f =
                b.l7.clone()
                    .unwrap_or(crate::admin::protocol::L7BackendFigures {
                        requests: 0,
                        errors: 0,
                        in_flight: 0,
                        ejected: false,
                        ejections: 0,
                    });
            vec![
                b.service.clone(),
                b.name.clone(),
                format!("{}:{}", b.address, b.port.unwrap_or(0)),
                b.weight.to_string(),
                if b.failover { "failover" } else { "primary" }.into(),
                health,
                state,
                if b.in_table { "yes" } else { "no" }.into(),
                f.requests.to_string(),
                f.errors.to_string(),
                f.in_flight.to_string(),
                if f.ejected { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE",
            "BACKEND",
            "ADDRESS",
            "WEIGHT",
            "ROLE",
            "HEALTH",
            "STATE",
            "SERVING",
            "REQUESTS",
            "ERRORS",
            "IN_FLIGHT",
            "EJECTED",
        ],
        &rows,
    )
}

fn l4_backends(bs: &[&BackendInfo]) -> String {
    let rows: Vec<Vec<String>> = bs
        .iter()
        .map(|b| {
            let (health, state) = health_and_state(b);
            vec![
                b.service.clone(),
                b.name.clone(),
                b.address.to_string(),
                b.weight.to_string(),
                if b.failover { "failover" } else { "primary" }.into(),
                health,
                state,
                if b.in_table { "yes" } else { "no" }.into(),
                b.packets.to_string(),
                b.new_flows.to_string(),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE",
            "BACKEND",
            "ADDRESS",
            "WEIGHT",
            "ROLE",
            "HEALTH",
            "STATE",
            "IN_TABLE",
            "PACKETS",
            "NEW_FLOWS",
        ],
        &rows,
    )
}

pub fn services(ss: &[ServiceInfo]) -> String {
    let rows: Vec<Vec<String>> = ss
        .iter()
        .map(|s| {
            let healthy = s
                .backends
                .iter()
                .filter(|b| b.health != "unhealthy")
                .count();
            vec![
                s.name.clone(),
                s.protocol.clone(),
                s.health_check.clone().unwrap_or("-".into()),
                s.session_affinity.clone(),
                format!("{healthy}/{}", s.backends.len()),
                s.backends.iter().filter(|b| b.in_table).count().to_string(),
            ]
        })
        .collect();
    render(
        &[
            "SERVICE",
            "PROTOCOL",
            "HEALTH_CHECK",
            "AFFINITY",
            "HEALTHY",
            "IN_TABLE",
        ],
        &rows,
    )
}

pub fn service(s: &ServiceInfo) -> String {
    format!(
        "service {} ({}), health check {}, affinity {}, failover ratio {}, draining timeout {} s\n{}{}",
        s.name,
        s.protocol,
        s.health_check.as_deref().unwrap_or("-"),
        s.session_affinity,
        s.failover_ratio,
        s.connection_draining_timeout_sec,
        forwarding(s),
        backends(&s.backends)
    )
}

/// The L4 forwarding method, and for encapsulation the outer addresses per backend.
fn forwarding(s: &ServiceInfo) -> String {
    let method = match (s.forwarding.as_str(), s.gue_port) {
        ("", _) => return String::new(),
        ("L2_DSR", _) => return "forwarding L2_DSR (MAC rewrite on the local segment)\n".into(),
        (m, Some(port)) => format!("forwarding {m}, outer UDP port {port}"),
        (m, None) => format!("forwarding {m}"),
    };
    let mut out = format!("{method}; outer headers per backend:\n");
    for b in &s.backends {
        let src = b
            .outer_src
            .map_or("(route unresolved)".to_string(), |a| a.to_string());
        out += &format!("  {}: {src} -> {}\n", b.name, b.address);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let t = super::render(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}
