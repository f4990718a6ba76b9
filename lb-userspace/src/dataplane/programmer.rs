//! Turns an [`L4Plan`] into map contents.
//!
//! Identity is kept stable so established flows survive changes and restarts:
//! - a service keeps its id (index into `SERVICES` and its Maglev tables) while it exists;
//! - a backend slot is keyed by (service id, address) and keeps its generation; a freed slot
//!   that is reused gets generation + 1, so flows of the old occupant are hashed again;
//! - on start, the programmer adopts ids from the pinned maps (`VIPS` names service ids,
//!   `BACKENDS` carries service id and address) instead of starting from zero.
//!
//! Maglev tables are double-buffered per service: the inactive half is written completely,
//! then `ServiceMeta.active` flips in one map update, so a packet never reads a half-written
//! table. Everything that can fail for lack of room is checked before the first write, so
//! a refused plan leaves the maps as they were.

use lb_common::{
    addr, backend_flags, limits, Backend, ServiceMeta, VipAddrKey, VipKey, VipMeta, VipState,
    NO_BACKEND, VIP_ADDR_ALL_PORTS, VIP_ADDR_PORTS,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};
use tracing::debug;

use super::{
    alloc::{self, Ids},
    loader::LoadError,
    maps::{MapLayer, PinnedMaps},
    plan::{L4Plan, L4Service},
};
use crate::maglev;

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("map update: {0}")]
    Map(#[from] aya::maps::MapError),
    /// The plan needs more room than the loaded maps have; nothing was changed.
    #[error("{0}")]
    NoRoom(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the programmer believes the maps hold.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub service_ids: BTreeMap<String, u32>,
    /// (service id, address) → (slot, generation).
    pub slots: BTreeMap<(u32, IpAddr), (u32, u32)>,
    /// Generation last used by each slot (so reuse bumps it even across restarts).
    pub generations: BTreeMap<u32, u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, Vec<u32>>,
    pub metas: BTreeMap<u32, ServiceMeta>,
    pub vips: BTreeMap<VipKey, VipMeta>,
    /// Non-empty slots of `VIP_ADDR_SET` (the VIP addresses, placed by `vip_addr_set`).
    pub addr_slots: BTreeMap<u32, lb_common::VipAddrSlot>,
    /// Last generation written to `VIP_STATE` per VIP id.
    pub vip_gens: BTreeMap<u32, u32>,
}

pub struct Programmer<M: MapLayer = PinnedMaps> {
    maps: M,
    ring_size: u32,
    max_services: u32,
    cur: Current,
    /// A write failed since the last whole plan: `cur` may not match the maps, so nothing
    /// is skipped as "already there".
    dirty: bool,
}

/// Ids a plan resolved to, for status displays and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub service_ids: BTreeMap<String, u32>,
    /// (service name, backend name) → slot.
    pub backend_slots: BTreeMap<crate::ids::BackendKey, u32>,
    /// VIP → vip id.
    pub vip_ids: BTreeMap<crate::ids::VipName, u32>,
}

impl Programmer<PinnedMaps> {
    /// Opens the pinned maps and adopts what they hold.
    pub fn open(pin_dir: &Path, ring_size: u32, max_services: u32) -> Result<Self, ProgramError> {
        Self::with_maps(PinnedMaps::open(pin_dir)?, ring_size, max_services)
    }
}

impl<M: MapLayer> Programmer<M> {
    /// Adopts what `maps` hold.
    pub fn with_maps(maps: M, ring_size: u32, max_services: u32) -> Result<Self, ProgramError> {
        let mut p = Programmer {
            maps,
            ring_size,
            max_services,
            cur: Current::default(),
            dirty: false,
        };
        p.adopt()?;
        Ok(p)
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Whether a write failed since the last plan applied whole.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    fn adopt(&mut self) -> Result<(), ProgramError> {
        self.cur.vips = self.maps.vips()?.into_iter().collect();
        self.cur.addr_slots = self.maps.addr_slots()?.into_iter().collect();
        for id in 0..limits::MAX_VIPS {
            let st = self.maps.vip_state(id)?;
            if st.generation != 0 {
                self.cur.vip_gens.insert(id, st.generation);
            }
        }
        for slot in 0..limits::MAX_BACKENDS {
            let b = self.maps.backend(slot)?;
            if b.generation != 0 {
                self.cur.generations.insert(slot, b.generation);
            }
            if b.flags & backend_flags::IN_USE != 0 {
                let addr = addr::from_map(b.family, &b.addr);
                self.cur
                    .slots
                    .insert((b.service, addr), (slot, b.generation));
                self.cur.backends.insert(slot, b);
            }
        }
        let used: BTreeSet<u32> = self.cur.vips.values().map(|m| m.service).collect();
        for sid in used {
            let meta = self.maps.service(sid)?;
            let base = (sid * 2 + (meta.active & 1)) * self.ring_size;
            let mut table = Vec::with_capacity(self.ring_size as usize);
            for i in 0..self.ring_size {
                table.push(self.maps.maglev(base + i)?);
            }
            self.cur.metas.insert(sid, meta);
            self.cur.tables.insert(sid, table);
        }
        debug!(
            vips = self.cur.vips.len(),
            backends = self.cur.backends.len(),
            "adopted pinned dataplane state"
        );
        Ok(())
    }

    /// Names adopted service ids: an adopted VIP whose key the plan still has keeps the id
    /// of the service it pointed at for the service the plan puts behind it.
    fn name_services(&mut self, plan: &L4Plan) {
        for v in &plan.vips {
            if let Some(meta) = self.cur.vips.get(&v.key()) {
                let taken = self.cur.service_ids.values().any(|id| *id == meta.service);
                if !self.cur.service_ids.contains_key(&v.service) && !taken {
                    self.cur.service_ids.insert(v.service.clone(), meta.service);
                }
            }
        }
    }

    /// Makes the maps say what `plan` says. When the plan does not fit nothing is written;
    /// when a write fails part of it may be, and the programmer turns dirty (see the
    /// module comment) so that applying any plan afterwards rewrites every entry.
    pub fn apply(&mut self, plan: &L4Plan) -> Result<Assignment, ProgramError> {
        if self.cur.service_ids.is_empty() && !self.cur.vips.is_empty() {
            self.name_services(plan);
        }
        let ids = alloc::allocate(&self.cur, plan, self.max_services)?;
        match self.write(plan, &ids) {
            Ok(a) => {
                self.cur.slots = ids.slots;
                self.cur.service_ids = ids.service_ids;
                self.dirty = false;
                Ok(a)
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// The writes, in the order packets need: backends before the tables naming them,
    /// tables before the flip, VIP state before the VIP, removals last.
    fn write(&mut self, plan: &L4Plan, ids: &Ids) -> Result<Assignment, ProgramError> {
        let mut assignment = Assignment::default();
        let wanted_slots = self.write_backends(plan, ids, &mut assignment)?;
        for s in &plan.services {
            self.write_table(s, ids)?;
            let sid = ids.service_ids[&s.name];
            assignment.service_ids.insert(s.name.clone(), sid);
        }
        let (wanted_vips, wanted_addrs) = self.write_vips(plan, ids, &mut assignment)?;
        self.remove_vips(&wanted_vips)?;
        self.write_addr_set(&wanted_addrs)?;
        self.free_slots(&wanted_slots)?;
        Ok(assignment)
    }

    /// Brings the program's array-based VIP address set in line with the plan: standing
    /// addresses keep their slots, removed ones become tombstones, new ones take free slots
    /// (`vip_addr_set`).
    fn write_addr_set(
        &mut self,
        wanted_addrs: &BTreeMap<VipAddrKey, u32>,
    ) -> Result<(), ProgramError> {
        let wanted = super::vip_addr_set::wanted(wanted_addrs);
        let next = super::vip_addr_set::place(&self.cur.addr_slots, &wanted)
            .map_err(ProgramError::NoRoom)?;
        for (slot, s) in &next {
            if self.dirty || self.cur.addr_slots.get(slot) != Some(s) {
                self.maps.set_addr_slot(*slot, *s)?;
                self.cur.addr_slots.insert(*slot, *s);
            }
        }
        Ok(())
    }

    fn write_backends(
        &mut self,
        plan: &L4Plan,
        ids: &Ids,
        assignment: &mut Assignment,
    ) -> Result<BTreeSet<u32>, ProgramError> {
        let mut wanted_slots = BTreeSet::new();
        for s in &plan.services {
            let sid = ids.service_ids[&s.name];
            for b in &s.backends {
                let (slot, generation) = ids.slots[&(sid, b.addr)];
                wanted_slots.insert(slot);
                assignment.backend_slots.insert(
                    crate::ids::BackendKey::new(s.name.clone(), b.name.clone()),
                    slot,
                );
                let mut flags = backend_flags::IN_USE;
                if b.healthy {
                    flags |= backend_flags::HEALTHY;
                }
                if b.draining {
                    flags |= backend_flags::DRAINING;
                }
                if b.evict || b.mac.is_none() {
                    flags |= backend_flags::EVICT;
                }
                if b.failover {
                    flags |= backend_flags::FAILOVER;
                }
                let (addr, family) = addr::to_map(b.addr);
                let entry = Backend {
                    addr,
                    mac: b.mac.unwrap_or([0; 6]),
                    family,
                    _pad: 0,
                    flags,
                    generation,
                    service: sid,
                    src: b.src.map_or([0; 16], |a| addr::to_map(a).0),
                };
                if self.dirty || self.cur.backends.get(&slot) != Some(&entry) {
                    if !self.cur.slots.contains_key(&(sid, b.addr)) {
                        // A new occupant starts with zeroed counters.
                        self.maps.zero_backend_stats(slot)?;
                    }
                    self.maps.set_backend(slot, entry)?;
                    self.cur.backends.insert(slot, entry);
                    self.cur.generations.insert(slot, generation);
                }
            }
        }
        Ok(wanted_slots)
    }

    /// Builds the service's Maglev table; when it differs (or the programmer is dirty) it
    /// goes to the inactive half, then the metadata flips `active` in one write.
    fn write_table(&mut self, s: &L4Service, ids: &Ids) -> Result<(), ProgramError> {
        let sid = ids.service_ids[&s.name];
        // The table is built over backend identities (addresses) and only then mapped to
        // this host's slots, so it is the same on every balancer with the same backends.
        let members: Vec<(String, u32, u32)> = s
            .backends
            .iter()
            .filter(|b| b.in_table && b.mac.is_some() && b.weight > 0)
            .map(|b| (b.maglev_key(), b.weight, ids.slots[&(sid, b.addr)].0))
            .collect();
        let mb: Vec<maglev::MaglevBackend> = members
            .iter()
            .map(|(n, w, _)| maglev::MaglevBackend {
                name: n,
                weight: *w,
            })
            .collect();
        let table: Vec<u32> = maglev::build(&mb, self.ring_size)
            .into_iter()
            .map(|i| i.map_or(NO_BACKEND, |i| members[i as usize].2))
            .collect();
        let old_meta = self.cur.metas.get(&sid).copied();
        let mut meta = ServiceMeta {
            active: old_meta.map_or(0, |m| m.active & 1),
            hash_mode: s.hash_mode,
            flags: s.flags,
            idle_timeout_s: s.idle_timeout_s,
            forwarding: s.forwarding,
            gue_port_be: s.gue_port.to_be(),
            _pad: 0,
        };
        if self.dirty || self.cur.tables.get(&sid) != Some(&table) {
            let next = if old_meta.is_some() {
                meta.active ^ 1
            } else {
                meta.active
            };
            self.maps
                .set_maglev((sid * 2 + next) * self.ring_size, &table)?;
            meta.active = next;
            // Until the flip lands `cur` keeps the old table and half: a failed flip leaves
            // the maps on them, and the next attempt writes the inactive half again.
            self.maps.set_service(sid, meta)?;
            self.cur.tables.insert(sid, table);
            self.cur.metas.insert(sid, meta);
        } else if old_meta != Some(meta) {
            self.maps.set_service(sid, meta)?;
            self.cur.metas.insert(sid, meta);
        }
        Ok(())
    }

    fn write_vips(
        &mut self,
        plan: &L4Plan,
        ids: &Ids,
        assignment: &mut Assignment,
    ) -> Result<(BTreeSet<VipKey>, BTreeMap<VipAddrKey, u32>), ProgramError> {
        let mut wanted_vips = BTreeSet::new();
        let mut wanted_addrs: BTreeMap<VipAddrKey, u32> = BTreeMap::new();
        for v in &plan.vips {
            let k = v.key();
            let service = ids.service_ids[&v.service];
            let vip_id = ids.vip_ids[&k];
            let meta = match self.cur.vips.get(&k) {
                // Same rule, same service: keep the generation, so its flows stay valid.
                Some(m) if m.service == service => *m,
                _ => VipMeta {
                    service,
                    vip_id,
                    generation: self.cur.vip_gens.get(&vip_id).copied().unwrap_or(0) + 1,
                },
            };
            wanted_vips.insert(k);
            let addr_flag = if v.port == 0 {
                VIP_ADDR_ALL_PORTS
            } else {
                VIP_ADDR_PORTS
            };
            let addr_key = VipAddrKey {
                addr: k.addr,
                proto: k.proto,
                family: k.family,
                _pad: [0; 2],
            };
            *wanted_addrs.entry(addr_key).or_default() |= addr_flag;
            assignment.vip_ids.insert(v.name(), meta.vip_id);
            if self.dirty || self.cur.vips.get(&k) != Some(&meta) {
                if !self.cur.vips.contains_key(&k) {
                    self.maps.zero_vip_stats(meta.vip_id)?;
                }
                // State before the rule: a packet that finds the rule finds its state.
                let st = VipState {
                    service,
                    generation: meta.generation,
                };
                self.maps.set_vip_state(vip_id, st)?;
                self.cur.vip_gens.insert(vip_id, meta.generation);
                self.maps.insert_vip(k, meta)?;
                self.cur.vips.insert(k, meta);
            }
        }
        Ok((wanted_vips, wanted_addrs))
    }

    /// Removes VIPs the plan no longer has, invalidating their flows.
    fn remove_vips(&mut self, wanted_vips: &BTreeSet<VipKey>) -> Result<(), ProgramError> {
        let gone: Vec<VipKey> = self
            .cur
            .vips
            .keys()
            .filter(|k| !wanted_vips.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.maps.remove_vip(&k)?;
            if let Some(m) = self.cur.vips.remove(&k) {
                // Invalidate the flows of the rule that went away.
                let generation = self.cur.vip_gens.get(&m.vip_id).copied().unwrap_or(0) + 1;
                let st = VipState {
                    service: u32::MAX,
                    generation,
                };
                self.maps.set_vip_state(m.vip_id, st)?;
                self.cur.vip_gens.insert(m.vip_id, generation);
            }
        }
        Ok(())
    }

    /// Slots no longer wanted: clear IN_USE so their flows are hashed again.
    fn free_slots(&mut self, wanted_slots: &BTreeSet<u32>) -> Result<(), ProgramError> {
        let gone: Vec<u32> = self
            .cur
            .backends
            .keys()
            .filter(|s| !wanted_slots.contains(s))
            .copied()
            .collect();
        for slot in gone {
            let mut b = self.cur.backends[&slot];
            b.flags = 0;
            self.maps.set_backend(slot, b)?;
            self.cur.backends.remove(&slot);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "programmer_tests.rs"]
mod tests;
