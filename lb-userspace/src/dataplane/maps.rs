//! The map layer under the programmer: every read and write the programmer makes, behind
//! one small trait, so its logic (allocation, ordering, rollback, adoption) is tested
//! against an in-memory fake without root, and against a fake that fails a chosen write.

use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    names, Backend, BackendStats, ServiceMeta, VipAddrSlot, VipKey, VipMeta, VipState, VipStats,
};
use std::path::Path;

use super::{loader::open_pinned, programmer::ProgramError};

/// What the programmer reads (to adopt) and writes (to program).
pub trait MapLayer {
    fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, ProgramError>;
    fn vip_state(&self, id: u32) -> Result<VipState, ProgramError>;
    fn backend(&self, slot: u32) -> Result<Backend, ProgramError>;
    fn service(&self, sid: u32) -> Result<ServiceMeta, ProgramError>;
    fn maglev(&self, index: u32) -> Result<u32, ProgramError>;
    /// The non-empty slots of the VIP address set.
    fn addr_slots(&self) -> Result<Vec<(u32, VipAddrSlot)>, ProgramError>;

    fn set_backend(&mut self, slot: u32, b: Backend) -> Result<(), ProgramError>;
    /// Writes `table` from `base` on (one Maglev half).
    fn set_maglev(&mut self, base: u32, table: &[u32]) -> Result<(), ProgramError>;
    fn set_service(&mut self, sid: u32, meta: ServiceMeta) -> Result<(), ProgramError>;
    fn set_vip_state(&mut self, id: u32, st: VipState) -> Result<(), ProgramError>;
    fn insert_vip(&mut self, k: VipKey, m: VipMeta) -> Result<(), ProgramError>;
    fn remove_vip(&mut self, k: &VipKey) -> Result<(), ProgramError>;
    fn set_addr_slot(&mut self, slot: u32, s: VipAddrSlot) -> Result<(), ProgramError>;
    fn zero_vip_stats(&mut self, id: u32) -> Result<(), ProgramError>;
    fn zero_backend_stats(&mut self, slot: u32) -> Result<(), ProgramError>;
}

/// The pinned BPF maps.
pub struct PinnedMaps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_state: Array<MapData, VipState>,
    services: Array<MapData, ServiceMeta>,
    backends: Array<MapData, Backend>,
    maglev: Array<MapData, u32>,
    addr_set: Array<MapData, VipAddrSlot>,
    vip_stats: PerCpuArray<MapData, VipStats>,
    backend_stats: PerCpuArray<MapData, BackendStats>,
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self, ProgramError> {
        Ok(PinnedMaps {
            vips: open_pinned(pin_dir, names::MAP_VIPS)?,
            vip_state: open_pinned(pin_dir, names::MAP_VIP_STATE)?,
            services: open_pinned(pin_dir, names::MAP_SERVICES)?,
            backends: open_pinned(pin_dir, names::MAP_BACKENDS)?,
            maglev: open_pinned(pin_dir, names::MAP_MAGLEV)?,
            addr_set: open_pinned(pin_dir, names::MAP_VIP_ADDR_SET)?,
            vip_stats: open_pinned(pin_dir, names::MAP_VIP_STATS)?,
            backend_stats: open_pinned(pin_dir, names::MAP_BACKEND_STATS)?,
        })
    }
}

fn cpus() -> Result<usize, ProgramError> {
    aya::util::nr_cpus().map_err(|(_, e)| ProgramError::Io(e))
}

impl MapLayer for PinnedMaps {
    fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, ProgramError> {
        Ok(self.vips.iter().collect::<Result<_, _>>()?)
    }
    fn vip_state(&self, id: u32) -> Result<VipState, ProgramError> {
        Ok(self.vip_state.get(&id, 0)?)
    }
    fn backend(&self, slot: u32) -> Result<Backend, ProgramError> {
        Ok(self.backends.get(&slot, 0)?)
    }
    fn service(&self, sid: u32) -> Result<ServiceMeta, ProgramError> {
        Ok(self.services.get(&sid, 0)?)
    }
    fn maglev(&self, index: u32) -> Result<u32, ProgramError> {
        Ok(self.maglev.get(&index, 0)?)
    }
    fn addr_slots(&self) -> Result<Vec<(u32, VipAddrSlot)>, ProgramError> {
        let mut out = Vec::new();
        for (i, s) in self.addr_set.iter().enumerate() {
            let s = s?;
            if s.family != 0 {
                out.push((i as u32, s));
            }
        }
        Ok(out)
    }
    fn set_backend(&mut self, slot: u32, b: Backend) -> Result<(), ProgramError> {
        Ok(self.backends.set(slot, b, 0)?)
    }
    fn set_maglev(&mut self, base: u32, table: &[u32]) -> Result<(), ProgramError> {
        for (i, b) in table.iter().enumerate() {
            self.maglev.set(base + i as u32, *b, 0)?;
        }
        Ok(())
    }
    fn set_service(&mut self, sid: u32, meta: ServiceMeta) -> Result<(), ProgramError> {
        Ok(self.services.set(sid, meta, 0)?)
    }
    fn set_vip_state(&mut self, id: u32, st: VipState) -> Result<(), ProgramError> {
        Ok(self.vip_state.set(id, st, 0)?)
    }
    fn insert_vip(&mut self, k: VipKey, m: VipMeta) -> Result<(), ProgramError> {
        Ok(self.vips.insert(k, m, 0)?)
    }
    fn remove_vip(&mut self, k: &VipKey) -> Result<(), ProgramError> {
        Ok(self.vips.remove(k)?)
    }
    fn set_addr_slot(&mut self, slot: u32, s: VipAddrSlot) -> Result<(), ProgramError> {
        Ok(self.addr_set.set(slot, s, 0)?)
    }
    fn zero_vip_stats(&mut self, id: u32) -> Result<(), ProgramError> {
        let zeros = PerCpuValues::try_from(vec![VipStats::default(); cpus()?])?;
        Ok(self.vip_stats.set(id, zeros, 0)?)
    }
    fn zero_backend_stats(&mut self, slot: u32) -> Result<(), ProgramError> {
        let zeros = PerCpuValues::try_from(vec![BackendStats::default(); cpus()?])?;
        Ok(self.backend_stats.set(slot, zeros, 0)?)
    }
}

#[cfg(test)]
pub mod fake {
    //! In-memory maps with the pinned maps' shapes, a log of every write, and an optional
    //! failure: the k-th write (0-based) fails, and with `sticky` every later one too.

    use super::*;
    use lb_common::limits;
    use std::collections::BTreeMap;

    /// One write, as logged.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Write {
        Backend(u32),
        Maglev { base: u32, slots: Vec<u32> },
        Service(u32, ServiceMeta),
        VipState(u32),
        InsertVip(VipKey),
        RemoveVip(VipKey),
        AddrSlot(u32),
        ZeroVipStats(u32),
        ZeroBackendStats(u32),
    }

    #[derive(Debug, Clone, PartialEq)]
    pub struct Contents {
        pub vips: BTreeMap<VipKey, VipMeta>,
        pub vip_state: Vec<VipState>,
        pub backends: Vec<Backend>,
        pub services: Vec<ServiceMeta>,
        pub maglev: Vec<u32>,
        pub addr_set: BTreeMap<u32, VipAddrSlot>,
    }

    #[derive(Debug, Clone)]
    pub struct FakeMaps {
        pub c: Contents,
        pub log: Vec<Write>,
        /// Index of the write that fails (counted over the fake's life).
        pub fail_at: Option<usize>,
        /// Whether every write after `fail_at` fails too (a map that stays broken).
        pub sticky: bool,
        writes: usize,
    }

    impl FakeMaps {
        pub fn new(max_services: u32, ring_size: u32) -> Self {
            FakeMaps {
                c: Contents {
                    vips: BTreeMap::new(),
                    vip_state: vec![VipState::default(); limits::MAX_VIPS as usize],
                    backends: vec![Backend::default(); limits::MAX_BACKENDS as usize],
                    services: vec![ServiceMeta::default(); max_services as usize],
                    maglev: vec![0; (max_services * 2 * ring_size) as usize],
                    addr_set: BTreeMap::new(),
                },
                log: Vec::new(),
                fail_at: None,
                sticky: false,
                writes: 0,
            }
        }

        /// Fails the write `k` writes from now (and every later one when `sticky`).
        pub fn fail_after(&mut self, k: usize, sticky: bool) {
            self.fail_at = Some(self.writes + k);
            self.sticky = sticky;
        }

        pub fn heal(&mut self) {
            self.fail_at = None;
        }

        fn write(&mut self, w: Write) -> Result<(), ProgramError> {
            let n = self.writes;
            self.writes += 1;
            let fails = match self.fail_at {
                Some(k) if self.sticky => n >= k,
                Some(k) => n == k,
                None => false,
            };
            if fails {
                return Err(ProgramError::Io(std::io::Error::other(format!(
                    "injected failure of write {n} ({w:?})"
                ))));
            }
            self.log.push(w);
            Ok(())
        }

        fn oob() -> ProgramError {
            ProgramError::Io(std::io::Error::other("index out of bounds"))
        }
    }

    fn get<T: Copy>(v: &[T], i: u32) -> Result<T, ProgramError> {
        v.get(i as usize).copied().ok_or_else(FakeMaps::oob)
    }

    fn put<T>(v: &mut [T], i: u32, x: T) -> Result<(), ProgramError> {
        *v.get_mut(i as usize).ok_or_else(FakeMaps::oob)? = x;
        Ok(())
    }

    impl MapLayer for FakeMaps {
        fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, ProgramError> {
            Ok(self.c.vips.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn vip_state(&self, id: u32) -> Result<VipState, ProgramError> {
            get(&self.c.vip_state, id)
        }
        fn backend(&self, slot: u32) -> Result<Backend, ProgramError> {
            get(&self.c.backends, slot)
        }
        fn service(&self, sid: u32) -> Result<ServiceMeta, ProgramError> {
            get(&self.c.services, sid)
        }
        fn maglev(&self, index: u32) -> Result<u32, ProgramError> {
            get(&self.c.maglev, index)
        }
        fn addr_slots(&self) -> Result<Vec<(u32, VipAddrSlot)>, ProgramError> {
            Ok(self.c.addr_set.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn set_backend(&mut self, slot: u32, b: Backend) -> Result<(), ProgramError> {
            self.write(Write::Backend(slot))?;
            put(&mut self.c.backends, slot, b)
        }
        fn set_maglev(&mut self, base: u32, table: &[u32]) -> Result<(), ProgramError> {
            self.write(Write::Maglev {
                base,
                slots: table.to_vec(),
            })?;
            let end = base as usize + table.len();
            let dst = self.c.maglev.get_mut(base as usize..end);
            dst.ok_or_else(FakeMaps::oob)?.copy_from_slice(table);
            Ok(())
        }
        fn set_service(&mut self, sid: u32, meta: ServiceMeta) -> Result<(), ProgramError> {
            self.write(Write::Service(sid, meta))?;
            put(&mut self.c.services, sid, meta)
        }
        fn set_vip_state(&mut self, id: u32, st: VipState) -> Result<(), ProgramError> {
            self.write(Write::VipState(id))?;
            put(&mut self.c.vip_state, id, st)
        }
        fn insert_vip(&mut self, k: VipKey, m: VipMeta) -> Result<(), ProgramError> {
            self.write(Write::InsertVip(k))?;
            self.c.vips.insert(k, m);
            Ok(())
        }
        fn remove_vip(&mut self, k: &VipKey) -> Result<(), ProgramError> {
            self.write(Write::RemoveVip(*k))?;
            self.c.vips.remove(k);
            Ok(())
        }
        fn set_addr_slot(&mut self, slot: u32, s: VipAddrSlot) -> Result<(), ProgramError> {
            self.write(Write::AddrSlot(slot))?;
            if s.family == 0 {
                self.c.addr_set.remove(&slot);
            } else {
                self.c.addr_set.insert(slot, s);
            }
            Ok(())
        }
        fn zero_vip_stats(&mut self, id: u32) -> Result<(), ProgramError> {
            self.write(Write::ZeroVipStats(id))
        }
        fn zero_backend_stats(&mut self, slot: u32) -> Result<(), ProgramError> {
            self.write(Write::ZeroBackendStats(slot))
        }
    }
}
