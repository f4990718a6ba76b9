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

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    backend_flags, limits, names, Backend, BackendStats, ServiceMeta, VipAddrKey, VipKey, VipMeta,
    VipState, VipStats, FAMILY_V4, NO_BACKEND, VIP_ADDR_ALL_PORTS, VIP_ADDR_PORTS,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
};
use tracing::debug;

use super::{
    loader::{open_pinned, LoadError},
    plan::L4Plan,
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
struct Current {
    service_ids: BTreeMap<String, u32>,
    /// (service id, address) → (slot, generation).
    slots: BTreeMap<(u32, Ipv4Addr), (u32, u32)>,
    /// Generation last used by each slot (so reuse bumps it even across restarts).
    generations: BTreeMap<u32, u32>,
    backends: BTreeMap<u32, Backend>,
    tables: BTreeMap<u32, Vec<u32>>,
    metas: BTreeMap<u32, ServiceMeta>,
    vips: BTreeMap<VipKey, VipMeta>,
    vip_addrs: BTreeMap<VipAddrKey, u32>,
    /// Last generation written to `VIP_STATE` per VIP id.
    vip_gens: BTreeMap<u32, u32>,
}

pub struct Programmer {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_addrs: HashMap<MapData, VipAddrKey, u32>,
    vip_state: Array<MapData, VipState>,
    services: Array<MapData, ServiceMeta>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
    ring_size: u32,
    max_services: u32,
    cur: Current,
}

/// Ids a plan resolved to, for status displays and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assignment {
    pub service_ids: BTreeMap<String, u32>,
    /// (service name, backend name) → slot.
    pub backend_slots: BTreeMap<(String, String), u32>,
    /// VIP name (rule name/port/proto) → vip id.
    pub vip_ids: BTreeMap<String, u32>,
}

impl Programmer {
    /// Opens the pinned maps and adopts what they hold.
    pub fn open(pin_dir: &Path, ring_size: u32, max_services: u32) -> Result<Self, ProgramError> {
        let mut p = Programmer {
            vips: open_pinned(pin_dir, names::MAP_VIPS)?,
            vip_addrs: open_pinned(pin_dir, names::MAP_VIP_ADDRS)?,
            vip_state: open_pinned(pin_dir, names::MAP_VIP_STATE)?,
            services: open_pinned(pin_dir, names::MAP_SERVICES)?,
            backends: open_pinned(pin_dir, names::MAP_BACKENDS)?,
            maglev: open_pinned(pin_dir, names::MAP_MAGLEV)?,
            vip_stats: open_pinned(pin_dir, names::MAP_VIP_STATS)?,
            backend_stats: open_pinned(pin_dir, names::MAP_BACKEND_STATS)?,
            ring_size,
            max_services,
            cur: Current::default(),
        };
        p.adopt()?;
        Ok(p)
    }

    fn adopt(&mut self) -> Result<(), ProgramError> {
        for item in self.vips.iter() {
            let (k, v) = item?;
            self.cur.vips.insert(k, v);
        }
        for item in self.vip_addrs.iter() {
            let (k, v) = item?;
            self.cur.vip_addrs.insert(k, v);
        }
        for id in 0..limits::MAX_VIPS {
            let st = self.vip_state.get(&id, 0)?;
            if st.generation != 0 {
                self.cur.vip_gens.insert(id, st.generation);
            }
        }
        for slot in 0..limits::MAX_BACKENDS {
            let b = self.backends.get(&slot, 0)?;
            if b.generation != 0 {
                self.cur.generations.insert(slot, b.generation);
            }
            if b.flags & backend_flags::IN_USE != 0 {
                let addr = Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]);
                self.cur
                    .slots
                    .insert((b.service, addr), (slot, b.generation));
                self.cur.backends.insert(slot, b);
            }
        }
        let used: BTreeSet<u32> = self.cur.vips.values().map(|m| m.service).collect();
        for sid in used {
            let meta = self.services.get(&sid, 0)?;
            let base = (sid * 2 + (meta.active & 1)) * self.ring_size;
            let mut table = Vec::with_capacity(self.ring_size as usize);
            for i in 0..self.ring_size {
                table.push(self.maglev.get(&(base + i), 0)?);
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

    /// Names adopted service ids: `names` maps a VIP key to the service the plan puts behind
    /// it; an adopted VIP whose key the plan still has keeps that service's old id.
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

    /// Makes the maps say what `plan` says. Either every write happens or, when the plan
    /// does not fit, none does.
    pub fn apply(&mut self, plan: &L4Plan) -> Result<Assignment, ProgramError> {
        if self.cur.service_ids.is_empty() && !self.cur.vips.is_empty() {
            self.name_services(plan);
        }
        // ---- 1. Resolve ids without writing anything. ----
        let mut service_ids = BTreeMap::new();
        let mut free_sids: Vec<u32> = (0..self.max_services)
            .filter(|id| !self.cur.service_ids.values().any(|v| v == id))
            .rev()
            .collect();
        for s in &plan.services {
            let id = match self.cur.service_ids.get(&s.name) {
                Some(id) => *id,
                None => free_sids.pop().ok_or_else(|| {
                    ProgramError::NoRoom(format!(
                        "more than {} L4 backend services; raise dataplane.max_services",
                        self.max_services
                    ))
                })?,
            };
            service_ids.insert(s.name.clone(), id);
        }
        let mut slots: BTreeMap<(u32, Ipv4Addr), (u32, u32)> = BTreeMap::new();
        let used_slots: BTreeSet<u32> = self.cur.slots.values().map(|(s, _)| *s).collect();
        let mut free_slots = (0..limits::MAX_BACKENDS).filter(|s| !used_slots.contains(s));
        for s in &plan.services {
            let sid = service_ids[&s.name];
            for b in &s.backends {
                let key = (sid, b.addr);
                let v = match self.cur.slots.get(&key) {
                    Some(v) => *v,
                    None => {
                        let slot = free_slots.next().ok_or_else(|| {
                            ProgramError::NoRoom(format!(
                                "more than {} L4 backends in all",
                                limits::MAX_BACKENDS
                            ))
                        })?;
                        let generation = self.cur.generations.get(&slot).copied().unwrap_or(0) + 1;
                        (slot, generation)
                    }
                };
                slots.insert(key, v);
            }
        }
        let mut vip_ids: BTreeMap<VipKey, u32> = BTreeMap::new();
        let used_vids: BTreeSet<u32> = self.cur.vips.values().map(|m| m.vip_id).collect();
        let mut free_vids = (0..limits::MAX_VIPS).filter(|v| !used_vids.contains(v));
        for v in &plan.vips {
            let k = v.key();
            let id = match self.cur.vips.get(&k) {
                Some(m) => m.vip_id,
                None => free_vids.next().ok_or_else(|| {
                    ProgramError::NoRoom(format!("more than {} VIPs", limits::MAX_VIPS))
                })?,
            };
            vip_ids.insert(k, id);
        }

        // ---- 2. Backends first: a table may only name slots that are ready. ----
        let mut assignment = Assignment::default();
        let mut wanted_slots = BTreeSet::new();
        for s in &plan.services {
            let sid = service_ids[&s.name];
            for b in &s.backends {
                let (slot, generation) = slots[&(sid, b.addr)];
                wanted_slots.insert(slot);
                assignment
                    .backend_slots
                    .insert((s.name.clone(), b.name.clone()), slot);
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
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&b.addr.octets());
                let entry = Backend {
                    addr,
                    mac: b.mac.unwrap_or([0; 6]),
                    family: FAMILY_V4,
                    _pad: 0,
                    flags,
                    generation,
                    service: sid,
                };
                if self.cur.backends.get(&slot) != Some(&entry) {
                    if !self.cur.slots.contains_key(&(sid, b.addr)) {
                        // A new occupant starts with zeroed counters.
                        self.zero_backend_stats(slot)?;
                    }
                    self.backends.set(slot, entry, 0)?;
                    self.cur.backends.insert(slot, entry);
                    self.cur.generations.insert(slot, generation);
                }
            }
        }

        // ---- 3. Tables and service metadata. ----
        for s in &plan.services {
            let sid = service_ids[&s.name];
            let members: Vec<(&str, u32, u32)> = s
                .backends
                .iter()
                .filter(|b| b.in_table && b.mac.is_some() && b.weight > 0)
                .map(|b| (b.name.as_str(), b.weight, slots[&(sid, b.addr)].0))
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
            };
            if self.cur.tables.get(&sid) != Some(&table) {
                let next = if old_meta.is_some() {
                    meta.active ^ 1
                } else {
                    meta.active
                };
                let base = (sid * 2 + next) * self.ring_size;
                for (i, b) in table.iter().enumerate() {
                    self.maglev.set(base + i as u32, *b, 0)?;
                }
                meta.active = next;
                self.cur.tables.insert(sid, table);
            }
            if old_meta != Some(meta) {
                self.services.set(sid, meta, 0)?;
                self.cur.metas.insert(sid, meta);
            }
            assignment.service_ids.insert(s.name.clone(), sid);
        }

        // ---- 4. VIPs: add and change, then remove the ones gone. ----
        let mut wanted_vips = BTreeSet::new();
        let mut wanted_addrs: BTreeMap<VipAddrKey, u32> = BTreeMap::new();
        for v in &plan.vips {
            let k = v.key();
            let service = service_ids[&v.service];
            let vip_id = vip_ids[&k];
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
            *wanted_addrs
                .entry(VipAddrKey {
                    addr: k.addr,
                    proto: k.proto,
                    family: k.family,
                    _pad: [0; 2],
                })
                .or_default() |= addr_flag;
            assignment.vip_ids.insert(
                format!("{}/{}:{}/{}", v.name, v.addr, v.port, v.proto_name()),
                meta.vip_id,
            );
            if self.cur.vips.get(&k) != Some(&meta) {
                if !self.cur.vips.contains_key(&k) {
                    self.zero_vip_stats(meta.vip_id)?;
                }
                // State before the rule: a packet that finds the rule finds its state.
                self.vip_state.set(
                    vip_id,
                    VipState {
                        service,
                        generation: meta.generation,
                    },
                    0,
                )?;
                self.cur.vip_gens.insert(vip_id, meta.generation);
                self.vips.insert(k, meta, 0)?;
                self.cur.vips.insert(k, meta);
            }
        }
        for (a, flags) in &wanted_addrs {
            if self.cur.vip_addrs.get(a) != Some(flags) {
                self.vip_addrs.insert(*a, *flags, 0)?;
                self.cur.vip_addrs.insert(*a, *flags);
            }
        }
        let gone: Vec<VipKey> = self
            .cur
            .vips
            .keys()
            .filter(|k| !wanted_vips.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.vips.remove(&k)?;
            if let Some(m) = self.cur.vips.remove(&k) {
                // Invalidate the flows of the rule that went away.
                let generation = self.cur.vip_gens.get(&m.vip_id).copied().unwrap_or(0) + 1;
                self.vip_state.set(
                    m.vip_id,
                    VipState {
                        service: u32::MAX,
                        generation,
                    },
                    0,
                )?;
                self.cur.vip_gens.insert(m.vip_id, generation);
            }
        }
        let gone: Vec<VipAddrKey> = self
            .cur
            .vip_addrs
            .keys()
            .filter(|k| !wanted_addrs.contains_key(k))
            .copied()
            .collect();
        for k in gone {
            self.vip_addrs.remove(&k)?;
            self.cur.vip_addrs.remove(&k);
        }

        // ---- 5. Slots no longer wanted: clear IN_USE so their flows are hashed again. ----
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
            self.backends.set(slot, b, 0)?;
            self.cur.backends.remove(&slot);
        }
        self.cur.slots = slots;
        self.cur.service_ids = service_ids;
        Ok(assignment)
    }

    fn zero_vip_stats(&mut self, id: u32) -> Result<(), ProgramError> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| ProgramError::NoRoom(e.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![VipStats::default(); n])?;
        self.vip_stats.set(id, zeros, 0)?;
        Ok(())
    }

    fn zero_backend_stats(&mut self, id: u32) -> Result<(), ProgramError> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| ProgramError::NoRoom(e.to_string()))?;
        let zeros = PerCpuValues::try_from(vec![BackendStats::default(); n])?;
        self.backend_stats.set(id, zeros, 0)?;
        Ok(())
    }
}
