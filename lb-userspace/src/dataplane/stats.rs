//! Reading the per-CPU counters from the pinned maps (works whether or not the agent runs).

use aya::maps::{MapData, PerCpuArray};
use lb_common::{names, BackendStats, Reason, VipStats};
use std::path::Path;

use super::loader::{open_pinned, LoadError};

pub struct Counters {
    reasons: PerCpuArray<MapData, u64>,
    vips: PerCpuArray<MapData, VipStats>,
    backends: PerCpuArray<MapData, BackendStats>,
}

impl Counters {
    pub fn open(pin_dir: &Path) -> Result<Self, LoadError> {
        Ok(Counters {
            reasons: open_pinned(pin_dir, names::MAP_REASONS)?,
            vips: open_pinned(pin_dir, names::MAP_VIP_STATS)?,
            backends: open_pinned(pin_dir, names::MAP_BACKEND_STATS)?,
        })
    }

    /// Packets per verdict reason, summed over CPUs, in `Reason` order.
    pub fn reasons(&self) -> Result<Vec<(&'static str, u64)>, LoadError> {
        let mut out = Vec::new();
        for i in 0..Reason::COUNT {
            let v = self.reasons.get(&i, 0)?;
            out.push((Reason(i).name(), v.iter().sum()));
        }
        Ok(out)
    }

    pub fn vip(&self, id: u32) -> Result<VipStats, LoadError> {
        let mut total = VipStats::default();
        for v in self.vips.get(&id, 0)?.iter() {
            total.add(v);
        }
        Ok(total)
    }

    pub fn backend(&self, slot: u32) -> Result<BackendStats, LoadError> {
        let mut total = BackendStats::default();
        for v in self.backends.get(&slot, 0)?.iter() {
            total.add(v);
        }
        Ok(total)
    }
}
