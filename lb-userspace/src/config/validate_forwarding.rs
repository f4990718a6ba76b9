//! `forwarding` and `gue_port` of a backend service: L4 settings, each meaningful only with
//! the method it belongs to (a field that would be ignored is refused instead).

use super::{
    types::{BackendService, Forwarding},
    validate::Err,
};

pub fn check(bs: &BackendService, p: &str, err: &mut Err<'_>) {
    if !bs.protocol.is_l4() && bs.forwarding != Forwarding::L2Dsr {
        err(
            format!("{p}.forwarding"),
            "forwarding applies to TCP/UDP backend services (the L7 tier proxies)".into(),
        );
    }
    match bs.gue_port {
        Some(_) if bs.forwarding != Forwarding::Gue => err(
            format!("{p}.gue_port"),
            "gue_port applies only with forwarding = \"GUE\"".into(),
        ),
        Some(0) => err(format!("{p}.gue_port"), "must be 1..=65535".into()),
        _ => {}
    }
    if bs.forwarding.is_routed() {
        for (i, b) in bs.backends.iter().enumerate() {
            if b.mac.is_some() {
                err(
                    format!("{p}.backends[{i}].mac"),
                    format!(
                        "a {} backend's next hop comes from the routing table; mac applies to L2_DSR only",
                        bs.forwarding.name()
                    ),
                );
            }
        }
    }
}
