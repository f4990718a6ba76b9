//! Health remembered across a restart. A restarted agent has no verdicts until its checker
//! reaches a threshold, and "no verdict" counts as healthy; without this, a backend that was
//! down when the old agent died would take new flows again for a few probe intervals. The
//! pinned `BACKENDS` map still says which backends the previous agent held unhealthy, so
//! those start unhealthy until the checker decides (services with a health check only: a
//! service without one never gets a verdict, so nothing may be carried over there).

use aya::maps::{Array, HashMap, MapData};
use lb_common::{backend_flags, limits, names, Backend, VipKey, VipMeta};
use std::collections::BTreeMap;

use super::overrides::Key;
use crate::{
    dataplane::loader::{open_pinned, LoadError},
    model::{self, BackendState},
};

/// Backends of `cfg` that the pinned maps mark in use but not healthy.
pub fn pinned_unhealthy(cfg: &crate::model::Model) -> Result<Vec<Key>, LoadError> {
    let pins = &cfg.dataplane.pin_path;
    let vips: HashMap<MapData, VipKey, VipMeta> = open_pinned(pins, names::MAP_VIPS)?;
    let slots: Array<MapData, Backend> = open_pinned(pins, names::MAP_BACKENDS)?;
    let mut vip_services = BTreeMap::new();
    for kv in vips.iter() {
        let (k, v) = kv?;
        vip_services.insert(k, v.service);
    }
    let mut backends = Vec::new();
    for slot in 0..limits::MAX_BACKENDS {
        backends.push(slots.get(&slot, 0)?);
    }
    Ok(unhealthy_from(cfg, &vip_services, &backends))
}

/// The pure part: names service ids through the VIPs the configuration still has, then
/// backend slots through their address.
pub fn unhealthy_from(
    cfg: &crate::model::Model,
    vip_services: &BTreeMap<VipKey, u32>,
    slots: &[Backend],
) -> Vec<Key> {
    let plan = model::l4_plan(cfg, &|_, _| BackendState::default(), &|_, _| None);
    let mut service_of = BTreeMap::new();
    for v in &plan.vips {
        if let Some(sid) = vip_services.get(&v.key()) {
            service_of.insert(*sid, v.service.clone());
        }
    }
    let mut out = Vec::new();
    for b in slots {
        if b.flags & backend_flags::IN_USE == 0 || b.flags & backend_flags::HEALTHY != 0 {
            continue;
        }
        let Some(svc) = service_of.get(&b.service) else {
            continue;
        };
        let Some(bs) = cfg.backend_services.get(svc) else {
            continue;
        };
        if bs.health_check.is_none() {
            continue;
        }
        let addr = lb_common::addr::from_map(b.family, &b.addr);
        for be in bs.backends.iter().filter(|be| be.address == addr) {
            out.push(Key::new(svc.clone(), be.display_name()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[health_checks.hc]
protocol = "TCP"
[backend_services.web]
protocol = "TCP"
health_check = "hc"
[[backend_services.web.backends]]
name = "b1"
address = "10.0.0.1"
[[backend_services.web.backends]]
name = "b2"
address = "10.0.0.2"
[backend_services.plain]
protocol = "TCP"
[[backend_services.plain.backends]]
address = "10.0.0.3"
[forwarding_rules.a]
ip_address = "10.0.0.100"
ports = [80]
backend_service = "web"
[forwarding_rules.b]
ip_address = "10.0.0.101"
ports = [80]
backend_service = "plain"
"#;

    fn slot(last: u8, service: u32, flags: u32) -> Backend {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 0, 0, last]);
        Backend {
            addr,
            service,
            flags,
            generation: 1,
            ..Default::default()
        }
    }

    #[test]
    fn unhealthy_slots_of_checked_services_are_carried_over() {
        let cfg = crate::model::parse(CFG).unwrap();
        let plan = model::l4_plan(&cfg, &|_, _| BackendState::default(), &|_, _| None);
        let key = |svc: &str| plan.vips.iter().find(|v| v.service == svc).unwrap().key();
        let vips = BTreeMap::from([(key("web"), 7), (key("plain"), 3)]);
        let used = backend_flags::IN_USE;
        let slots = [
            slot(1, 7, used),                          // web/b1 unhealthy
            slot(2, 7, used | backend_flags::HEALTHY), // web/b2 healthy
            slot(3, 3, used),                          // plain: no health check
            slot(9, 7, used),                          // address no longer configured
            slot(1, 5, used),                          // a service id no VIP names
            slot(2, 7, 0),                             // a freed slot
        ];
        assert_eq!(
            unhealthy_from(&cfg, &vips, &slots),
            vec![crate::ids::BackendKey::new("web", "b1")]
        );
    }
}
