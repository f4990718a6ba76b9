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

/// A readable report of every counter: verdict reasons, then per VIP and per backend slot.
/// Names come from the maps themselves (addresses), so it needs no running agent.
pub fn report(pin_dir: &Path) -> Result<String, LoadError> {
    use aya::maps::{Array, HashMap};
    use lb_common::{backend_flags, Backend, VipKey, VipMeta};
    use std::fmt::Write as _;
    let c = Counters::open(pin_dir)?;
    let vips: HashMap<MapData, VipKey, VipMeta> = open_pinned(pin_dir, names::MAP_VIPS)?;
    let backends: Array<MapData, Backend> = open_pinned(pin_dir, names::MAP_BACKENDS)?;
    let mut out = String::new();
    let _ = writeln!(out, "{:<28} {:>12}", "verdict reason", "packets");
    for (name, v) in c.reasons()? {
        let _ = writeln!(out, "{name:<28} {v:>12}");
    }
    let _ = writeln!(
        out,
        "\n{:<28} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10}",
        "VIP", "packets", "bytes", "new", "hits", "misses", "no_backend"
    );
    let mut rows = Vec::new();
    for item in vips.iter() {
        let (k, m) = item?;
        let proto = match k.proto {
            lb_common::PROTO_TCP => "tcp",
            lb_common::PROTO_UDP => "udp",
            _ => "?",
        };
        let port = u16::from_be(k.port_be);
        let port = if port == 0 {
            "*".to_string()
        } else {
            port.to_string()
        };
        let name = match lb_common::addr::from_map(k.family, &k.addr) {
            std::net::IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
            std::net::IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
        };
        rows.push((name, c.vip(m.vip_id)?));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, s) in rows {
        let _ = writeln!(
            out,
            "{name:<28} {:>10} {:>12} {:>9} {:>9} {:>9} {:>10}",
            s.packets, s.bytes, s.new_flows, s.conn_hits, s.conn_misses, s.no_backend
        );
    }
    let _ = writeln!(
        out,
        "\n{:<6} {:<16} {:>4} {:<22} {:>10} {:>12} {:>9}",
        "slot", "backend", "svc", "state", "packets", "bytes", "new"
    );
    for slot in 0..lb_common::limits::MAX_BACKENDS {
        let b = backends.get(&slot, 0)?;
        if b.flags & backend_flags::IN_USE == 0 {
            continue;
        }
        let mut state = Vec::new();
        for (f, n) in [
            (backend_flags::HEALTHY, "healthy"),
            (backend_flags::DRAINING, "draining"),
            (backend_flags::EVICT, "evict"),
            (backend_flags::FAILOVER, "failover"),
        ] {
            if b.flags & f != 0 {
                state.push(n);
            }
        }
        if b.flags & backend_flags::HEALTHY == 0 {
            state.insert(0, "unhealthy");
        }
        let s = c.backend(slot)?;
        let addr = lb_common::addr::from_map(b.family, &b.addr).to_string();
        let _ = writeln!(
            out,
            "{slot:<6} {addr:<16} {:>4} {:<22} {:>10} {:>12} {:>9}",
            b.service,
            state.join(","),
            s.packets,
            s.bytes,
            s.new_flows
        );
    }
    Ok(out)
}
