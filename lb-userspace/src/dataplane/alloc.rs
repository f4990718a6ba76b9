//! Id and slot allocation for a plan, before any write: service ids, backend slots (with
//! their generation) and VIP ids. Everything that can fail for lack of room fails here, so
//! a refused plan has written nothing.

use lb_common::{limits, VipKey};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    plan::L4Plan,
    programmer::{Current, ProgramError},
};

/// The ids a plan resolves to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ids {
    pub service_ids: BTreeMap<String, u32>,
    /// (service id, address) → (slot, generation).
    pub slots: BTreeMap<(u32, IpAddr), (u32, u32)>,
    pub vip_ids: BTreeMap<VipKey, u32>,
}

/// Keeps every id `cur` already gives a service, backend or VIP of the plan, and takes the
/// lowest free one otherwise. A reused slot gets its last generation + 1, so flows of the
/// previous occupant are hashed again.
pub fn allocate(cur: &Current, plan: &L4Plan, max_services: u32) -> Result<Ids, ProgramError> {
    let mut ids = Ids::default();
    let mut free_sids: Vec<u32> = (0..max_services)
        .filter(|id| !cur.service_ids.values().any(|v| v == id))
        .rev()
        .collect();
    for s in &plan.services {
        let id = match cur.service_ids.get(&s.name) {
            Some(id) => *id,
            None => free_sids.pop().ok_or_else(|| {
                ProgramError::NoRoom(format!(
                    "more than {max_services} L4 backend services; raise dataplane.max_services"
                ))
            })?,
        };
        ids.service_ids.insert(s.name.clone(), id);
    }
    let used_slots: BTreeSet<u32> = cur.slots.values().map(|(s, _)| *s).collect();
    let mut free_slots = (0..limits::MAX_BACKENDS).filter(|s| !used_slots.contains(s));
    for s in &plan.services {
        let sid = ids.service_ids[&s.name];
        for b in &s.backends {
            let key = (sid, b.addr);
            let v = match cur.slots.get(&key) {
                Some(v) => *v,
                None => {
                    let slot = free_slots.next().ok_or_else(|| {
                        ProgramError::NoRoom(format!(
                            "more than {} L4 backends in all",
                            limits::MAX_BACKENDS
                        ))
                    })?;
                    (slot, cur.generations.get(&slot).copied().unwrap_or(0) + 1)
                }
            };
            ids.slots.insert(key, v);
        }
    }
    let used_vids: BTreeSet<u32> = cur.vips.values().map(|m| m.vip_id).collect();
    let mut free_vids = (0..limits::MAX_VIPS).filter(|v| !used_vids.contains(v));
    for v in &plan.vips {
        let k = v.key();
        let id = match cur.vips.get(&k) {
            Some(m) => m.vip_id,
            None => free_vids.next().ok_or_else(|| {
                ProgramError::NoRoom(format!("more than {} VIPs", limits::MAX_VIPS))
            })?,
        };
        ids.vip_ids.insert(k, id);
    }
    Ok(ids)
}
