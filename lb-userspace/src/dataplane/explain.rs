//! `lb explain`: the XDP program's decision for one IPv4 5-tuple, replayed in userspace
//! from the pinned maps, step by step (`lb-ebpf/src/forward.rs` is the reference; each step
//! here names the program's step). Read only: where the program would remove a stale
//! connection-table entry or create one, this only says so.
//!
//! It answers: does a rule match (exact port, then the all-ports rule), which service and
//! affinity mode, which fields are hashed, the Maglev slot and its backend, whether a
//! connection-table entry exists and where it points, and why the answer differs from the
//! hash (draining, persistence on an unhealthy backend, a table that changed since).

use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    backend_flags, flow_hash, hash_mode, names, service_flags, Backend, ConnEntry, FlowKey,
    ServiceMeta, Settings, VipAddrSlot, VipKey, VipMeta, VipState, KEY_FLOW, KEY_SESSION,
    NO_BACKEND, PROTO_TCP, VIP_ADDR_ALL_PORTS,
};
use serde::Serialize;
use std::{net::IpAddr, path::Path};

use super::{
    conn_tables::{ConnTables, Table},
    loader::{open_pinned, LoadError},
};

/// The pinned maps the decision reads.
struct Maps {
    addr_set: Array<MapData, VipAddrSlot>,
    vips: HashMap<MapData, VipKey, VipMeta>,
    vip_state: Array<MapData, VipState>,
    services: Array<MapData, ServiceMeta>,
    settings: Array<MapData, Settings>,
    maglev: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conns: ConnTables,
}

impl Maps {
    fn open(pin_dir: &Path) -> Result<Maps, LoadError> {
        Ok(Maps {
            addr_set: open_pinned(pin_dir, names::MAP_VIP_ADDR_SET)?,
            vips: open_pinned(pin_dir, names::MAP_VIPS)?,
            vip_state: open_pinned(pin_dir, names::MAP_VIP_STATE)?,
            services: open_pinned(pin_dir, names::MAP_SERVICES)?,
            settings: open_pinned(pin_dir, names::MAP_SETTINGS)?,
            maglev: open_pinned(pin_dir, names::MAP_MAGLEV)?,
            backends: open_pinned(pin_dir, names::MAP_BACKENDS)?,
            conns: ConnTables::open(pin_dir)?,
        })
    }
}

/// The program's verdict for the tuple.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `XDP_PASS`: not for a VIP.
    Pass,
    /// `XDP_DROP`: for a VIP whose service has no usable backend.
    Drop,
    /// `XDP_TX` to `backend`.
    Forward,
    /// `XDP_ABORTED`: a map inconsistent with the configuration.
    Abort,
}

/// Where the connection table stands for the tuple.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// `conns` or `young`.
    pub table: &'static str,
    /// `flow` (5-tuple) or `session` (PER_SESSION: the affinity fields).
    pub kind: &'static str,
    pub backend_slot: u32,
    pub backend: Option<IpAddr>,
    /// `None` when the packet follows the entry; else why not.
    pub unusable: Option<String>,
}

/// The Maglev choice for the tuple.
#[derive(Debug, Clone, Serialize)]
pub struct MaglevInfo {
    pub hash: u32,
    /// `hash % ring_size`, in the service's active table (0 or 1).
    pub index: u32,
    pub table: u32,
    pub backend_slot: Option<u32>,
    pub backend: Option<IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    pub backend_slot: Option<u32>,
    pub backend: Option<IpAddr>,
    /// `rule vip:port/proto` (port 0: every port) that matched.
    pub rule: Option<String>,
    pub service_id: Option<u32>,
    pub affinity: Option<&'static str>,
    pub hashed_fields: Vec<&'static str>,
    pub maglev: Option<MaglevInfo>,
    pub entries: Vec<EntryInfo>,
    /// `connection table`, `session entry`, `maglev` or `none`.
    pub decided_by: &'static str,
    /// Human-readable steps, in the program's order.
    pub steps: Vec<String>,
}

/// One tuple to explain.
#[derive(Debug, Clone, Copy)]
pub struct Tuple {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

/// An address in map layout (both addresses of a tuple are of one family: `explain`).
fn pad(a: IpAddr) -> [u8; 16] {
    lb_common::addr::to_map(a).0
}

fn family(a: IpAddr) -> u8 {
    lb_common::addr::to_map(a).1
}

fn ip(b: &Backend) -> IpAddr {
    lb_common::addr::from_map(b.family, &b.addr)
}

/// CLOCK_MONOTONIC_COARSE, the program's clock.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn mode_name(mode: u32) -> (&'static str, Vec<&'static str>) {
    match mode {
        hash_mode::FIVE_TUPLE => (
            "5-tuple (NONE / CLIENT_IP_PORT_PROTO)",
            vec![
                "client address",
                "client port",
                "VIP",
                "VIP port",
                "protocol",
            ],
        ),
        hash_mode::CLIENT_IP_PROTO => {
            ("CLIENT_IP_PROTO", vec!["client address", "VIP", "protocol"])
        }
        hash_mode::CLIENT_IP => ("CLIENT_IP", vec!["client address", "VIP"]),
        hash_mode::CLIENT_IP_NO_DESTINATION => ("CLIENT_IP_NO_DESTINATION", vec!["client address"]),
        _ => ("unknown", vec![]),
    }
}

/// Why a flow on `be` may not stay there (`keeps_flow` of the program), or `None`.
fn leaves(be: &Backend, generation: u32, svc: &ServiceMeta, proto: u8) -> Option<String> {
    let f = be.flags;
    if f & backend_flags::IN_USE == 0 {
        return Some("its backend slot is empty (backend removed)".into());
    }
    if be.generation != generation {
        return Some("its backend slot went to another backend since".into());
    }
    if f & backend_flags::EVICT != 0 {
        return Some("its backend is in maintenance or its drain timed out (evict)".into());
    }
    if f & backend_flags::HEALTHY != 0 {
        return None;
    }
    let persist = if proto == PROTO_TCP {
        service_flags::PERSIST_TCP
    } else {
        service_flags::PERSIST_UDP
    };
    (svc.flags & persist == 0).then(|| {
        "its backend is unhealthy and the service does not persist connections there".into()
    })
}

impl Maps {
    fn backend(&self, slot: u32) -> Option<Backend> {
        self.backends.get(&slot, 0).ok()
    }

    /// `usable_entry` of the program: not idle past the timeout, and the backend keeps it.
    fn unusable(&self, e: &ConnEntry, svc: &ServiceMeta, proto: u8, now: u64) -> Option<String> {
        let idle_ns = svc.idle_timeout_s as u64 * 1_000_000_000;
        if now.wrapping_sub(e.last_seen_ns) > idle_ns {
            return Some(format!("idle longer than {} s", svc.idle_timeout_s));
        }
        match self.backend(e.backend) {
            None => Some("its backend slot is out of range".into()),
            Some(be) => leaves(&be, e.generation, svc, proto),
        }
    }

    /// Both tables' entries for `key`, each checked by `check` (a reason it is unusable).
    fn entries(
        &self,
        key: &FlowKey,
        check: impl Fn(&ConnEntry) -> Option<String>,
    ) -> Vec<(EntryInfo, ConnEntry)> {
        let kind = if key.kind == KEY_SESSION {
            "session"
        } else {
            "flow"
        };
        let mut out = Vec::new();
        for (table, which) in [("conns", Table::Established), ("young", Table::Young)] {
            if let Some(e) = self.conns.get(which, key) {
                let be = self
                    .backend(e.backend)
                    .filter(|b| b.flags & backend_flags::IN_USE != 0);
                out.push((
                    EntryInfo {
                        table,
                        kind,
                        backend_slot: e.backend,
                        backend: be.map(|b| ip(&b)),
                        unusable: check(&e),
                    },
                    e,
                ));
            }
        }
        out
    }
}

/// Replays the program's decision for `t` on the maps pinned in `pin_dir`.
pub fn explain(pin_dir: &Path, t: Tuple) -> Result<Explanation, LoadError> {
    let maps = Maps::open(pin_dir)?;
    Ok(decide(&maps, t, now_ns()))
}

fn empty(verdict: Verdict, steps: Vec<String>) -> Explanation {
    Explanation {
        verdict,
        backend_slot: None,
        backend: None,
        rule: None,
        service_id: None,
        affinity: None,
        hashed_fields: vec![],
        maglev: None,
        entries: vec![],
        decided_by: "none",
        steps,
    }
}

// One function on purpose: it follows `forward.rs` step for step, so the two read alike.
fn decide(m: &Maps, t: Tuple, now: u64) -> Explanation {
    let mut steps = Vec::new();
    let proto_name = if t.proto == PROTO_TCP { "tcp" } else { "udp" };
    // The address set the program reads first (`VIP_ADDR_SET`), probed the same way.
    let found = super::vip_addr_set::lookup_with(
        |slot| m.addr_set.get(&slot, 0).unwrap_or_default(),
        (pad(t.dst), family(t.dst)),
        t.proto,
    );
    let Some(addr_flags) = found else {
        steps.push(format!(
            "{}/{proto_name} is no VIP address: XDP_PASS",
            t.dst
        ));
        return empty(Verdict::Pass, steps);
    };
    let flow = FlowKey {
        src: pad(t.src),
        dst: pad(t.dst),
        sport_be: t.sport.to_be(),
        dport_be: t.dport.to_be(),
        proto: t.proto,
        family: family(t.dst),
        kind: KEY_FLOW,
        _pad: 0,
        vip_id: 0,
    };
    // Fast path: the raw 5-tuple in the connection tables.
    let fast = m.entries(&flow, |e| {
        let Ok(state) = m.vip_state.get(&e.vip_id, 0) else {
            return Some("its VIP id is out of range".into());
        };
        if state.generation != e.vip_generation {
            return Some("its forwarding rule changed or went away since".into());
        }
        let Ok(svc) = m.services.get(&state.service, 0) else {
            return Some("its service id is out of range".into());
        };
        if svc.flags & service_flags::PER_SESSION != 0 {
            return Some("the service now tracks sessions, not connections".into());
        }
        m.unusable(e, &svc, t.proto, now)
    });
    let mut entries: Vec<EntryInfo> = Vec::new();
    let mut followed: Option<(EntryInfo, ConnEntry)> = None;
    for (info, e) in fast {
        match &info.unusable {
            None if followed.is_none() => {
                steps.push(format!(
                    "connection table ({}) has this flow on slot {} ({}): followed",
                    info.table,
                    info.backend_slot,
                    info.backend.map_or("-".into(), |b| b.to_string())
                ));
                followed = Some((info.clone(), e));
            }
            None => {}
            Some(why) => steps.push(format!(
                "connection table ({}) has this flow on slot {}, not followed: {why}{}",
                info.table,
                info.backend_slot,
                if info.table == "conns" {
                    " (the program removes it)"
                } else {
                    ""
                }
            )),
        }
        entries.push(info);
    }
    // The rule: exact port first, then the all-ports rule.
    let mut vk = VipKey {
        addr: pad(t.dst),
        port_be: t.dport.to_be(),
        proto: t.proto,
        family: family(t.dst),
    };
    let mut meta = m.vips.get(&vk, 0).ok();
    if meta.is_none() && addr_flags & VIP_ADDR_ALL_PORTS != 0 {
        vk.port_be = 0;
        meta = m.vips.get(&vk, 0).ok();
    }
    let rule = meta.map(|_| {
        let port = u16::from_be(vk.port_be);
        format!(
            "{}:{}/{proto_name}",
            match t.dst {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            },
            if port == 0 {
                "*".into()
            } else {
                port.to_string()
            }
        )
    });
    // The service of the entry followed (fast path) or of the rule.
    let service_id = match (&followed, meta) {
        (Some((_, e)), _) => m.vip_state.get(&e.vip_id, 0).ok().map(|s| s.service),
        (None, Some(meta)) => Some(meta.service),
        (None, None) => None,
    };
    let Some(service_id) = service_id else {
        steps.push(format!(
            "no rule for port {} of {}: XDP_PASS",
            t.dport, t.dst
        ));
        let mut x = empty(Verdict::Pass, steps);
        x.entries = entries;
        return x;
    };
    if let Some(r) = &rule {
        steps.push(format!("rule {r} → service #{service_id}"));
    }
    let Ok(svc) = m.services.get(&service_id, 0) else {
        steps.push("service id out of range: XDP_ABORTED".into());
        return empty(Verdict::Abort, steps);
    };
    let (affinity, hashed_fields) = mode_name(svc.hash_mode);
    steps.push(format!(
        "affinity {affinity}: hashes {}",
        hashed_fields.join(", ")
    ));
    let mut hashed = flow;
    flow_hash::mask_for_hash(&mut hashed, svc.hash_mode);
    let per_session = svc.flags & service_flags::PER_SESSION != 0;
    if per_session {
        hashed.kind = KEY_SESSION;
        hashed.vip_id = meta.map_or(0, |v| v.vip_id);
    }
    // The Maglev choice, computed in every case so a difference can be explained.
    let maglev = m
        .settings
        .get(&0, 0)
        .ok()
        .filter(|s| s.ring_size > 0)
        .map(|s| {
            let hash = flow_hash::flow_hash(&hashed);
            let index = hash % s.ring_size;
            let table = svc.active & 1;
            let slot = (service_id * 2 + table) * s.ring_size + index;
            let id = m.maglev.get(&slot, 0).ok().filter(|&id| id != NO_BACKEND);
            let be = id
                .and_then(|id| m.backend(id))
                .filter(|b| b.flags & backend_flags::IN_USE != 0);
            MaglevInfo {
                hash,
                index,
                table,
                backend_slot: be.and(id),
                backend: be.map(|b| ip(&b)),
            }
        });
    let mut x = Explanation {
        verdict: Verdict::Drop,
        backend_slot: None,
        backend: None,
        rule,
        service_id: Some(service_id),
        affinity: Some(affinity),
        hashed_fields,
        maglev: maglev.clone(),
        entries,
        decided_by: "none",
        steps,
    };
    if let Some(mg) = &maglev {
        x.steps.push(format!(
            "Maglev: hash {:#010x} → index {} of table {} → {}",
            mg.hash,
            mg.index,
            mg.table,
            match (mg.backend_slot, mg.backend) {
                (Some(s), Some(b)) => format!("slot {s} ({b})"),
                _ => "no backend".into(),
            }
        ));
    }
    let chosen = if let Some((info, _)) = followed {
        x.decided_by = "connection table";
        Some((info.backend_slot, info.backend))
    } else {
        let Some(meta) = meta else {
            unreachable_pass(&mut x);
            return x;
        };
        let mut session = None;
        if per_session {
            for (info, _) in m.entries(&hashed, |e| {
                if e.vip_id != meta.vip_id || e.vip_generation != meta.generation {
                    return Some("made for another rule or an older version of it".into());
                }
                m.unusable(e, &svc, t.proto, now)
            }) {
                match &info.unusable {
                    None if session.is_none() => {
                        x.steps.push(format!(
                            "session entry ({}) on slot {}: followed",
                            info.table, info.backend_slot
                        ));
                        session = Some((info.backend_slot, info.backend));
                    }
                    None => {}
                    Some(why) => x.steps.push(format!(
                        "session entry ({}) on slot {}, not followed: {why}",
                        info.table, info.backend_slot
                    )),
                }
                x.entries.push(info);
            }
        }
        match session {
            Some(s) => {
                x.decided_by = "session entry";
                Some(s)
            }
            None => {
                let Some(mg) = &maglev else {
                    x.verdict = Verdict::Abort;
                    x.steps.push("ring size 0: XDP_ABORTED".into());
                    return x;
                };
                x.decided_by = "maglev";
                match mg.backend_slot {
                    Some(s) => {
                        x.steps.extend(table_role(m, s));
                        x.steps
                            .push("new flow: the young table records the choice".into());
                        Some((s, mg.backend))
                    }
                    None => {
                        x.steps.push(
                            "no usable backend (none configured, or every one unhealthy, \
                             draining or in maintenance with drop_traffic_if_unhealthy): \
                             XDP_DROP (drop_no_backend)"
                                .into(),
                        );
                        None
                    }
                }
            }
        }
    };
    if let Some((slot, addr)) = chosen {
        x.verdict = Verdict::Forward;
        x.backend_slot = Some(slot);
        x.backend = addr;
        if x.decided_by != "maglev" {
            if let Some(why) = differs(m, &maglev, slot) {
                x.steps.push(why);
            }
        }
        let to = addr.map_or("-".into(), |a| a.to_string());
        x.steps.push(transmit_step(m, &svc, slot, &to));
    }
    x
}

/// The last step: L2 direct server return, or encapsulation toward a routed backend.
fn transmit_step(m: &Maps, svc: &ServiceMeta, slot: u32, to: &str) -> String {
    let method = match svc.forwarding {
        lb_common::encap::forwarding::IPIP => "IPIP".to_string(),
        lb_common::encap::forwarding::GUE => {
            format!("GUE (UDP port {})", u16::from_be(svc.gue_port_be))
        }
        _ => return format!("XDP_TX to slot {slot} ({to})"),
    };
    let src = m
        .backend(slot)
        .map(|b| lb_common::addr::from_map(b.family, &b.src).to_string())
        .unwrap_or_else(|| "-".into());
    format!(
        "encapsulated in {method}, outer {src} → {to}, to the FIB's next hop: XDP_TX to slot          {slot} (XDP_REDIRECT when the route leaves by another interface)"
    )
}

fn unreachable_pass(x: &mut Explanation) {
    x.verdict = Verdict::Pass;
    x.steps.push("no rule for this port: XDP_PASS".into());
}

/// Why the Maglev table holds `slot` when that is not the plain case of a healthy primary.
fn table_role(m: &Maps, slot: u32) -> Option<String> {
    let be = m.backend(slot)?;
    if be.flags & backend_flags::HEALTHY == 0 {
        Some(
            "its backend is unhealthy: no backend of the active pool is healthy, so new flows \
             spread over every primary as a last resort (drop_traffic_if_unhealthy = false)"
                .into(),
        )
    } else if be.flags & backend_flags::FAILOVER != 0 {
        Some(
            "its backend is a failover backend: failover is active (the healthy share of the \
             primaries is below failover_ratio, or none is healthy)"
                .into(),
        )
    } else {
        None
    }
}

/// Why a tracked flow's backend differs from what the hash picks now, if it does.
fn differs(m: &Maps, maglev: &Option<MaglevInfo>, slot: u32) -> Option<String> {
    let hashed = maglev.as_ref().and_then(|g| g.backend_slot);
    if hashed == Some(slot) {
        return None;
    }
    let be = m.backend(slot)?;
    let failover = |b: &Backend| b.flags & backend_flags::FAILOVER != 0;
    let hashed_failover = hashed.and_then(|s| m.backend(s)).map(|b| failover(&b));
    let why = if be.flags & backend_flags::DRAINING != 0 {
        "its backend is draining: out of the Maglev table, existing flows stay until the draining timeout"
    } else if be.flags & backend_flags::HEALTHY == 0 {
        "its backend is unhealthy and the service persists connections on unhealthy backends"
    } else if failover(&be) && hashed_failover == Some(false) {
        "failover ended (the primaries are healthy again): new flows go to the primaries, flows already on a failover backend stay"
    } else if !failover(&be) && hashed_failover == Some(true) {
        "failover is active: new flows go to the failover backends, flows already on a primary stay (connection draining on failover)"
    } else {
        "the Maglev table changed since the flow started (backends added or removed, weights, failover or health elsewhere)"
    };
    Some(format!(
        "the hash alone would pick {}: the flow stays on its backend because {why}",
        hashed.map_or("no backend".into(), |s| format!("slot {s}"))
    ))
}

/// A readable report of an explanation.
pub fn report(x: &Explanation) -> String {
    let mut out = String::new();
    for (i, s) in x.steps.iter().enumerate() {
        out.push_str(&format!("{:>2}. {s}\n", i + 1));
    }
    let verdict = match x.verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Drop => "drop".to_string(),
        Verdict::Abort => "aborted".to_string(),
        Verdict::Forward => format!(
            "forward to {} (slot {}), decided by the {}",
            x.backend.map_or("-".into(), |b| b.to_string()),
            x.backend_slot.unwrap_or(0),
            x.decided_by
        ),
    };
    out.push_str(&format!("verdict: {verdict}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_that_keeps_or_leaves_flows_says_why() {
        let svc = ServiceMeta {
            flags: service_flags::PERSIST_TCP,
            ..Default::default()
        };
        let mut be = Backend {
            flags: backend_flags::IN_USE | backend_flags::HEALTHY,
            generation: 2,
            ..Default::default()
        };
        assert_eq!(leaves(&be, 2, &svc, PROTO_TCP), None);
        assert!(leaves(&be, 1, &svc, PROTO_TCP)
            .unwrap()
            .contains("another backend"));
        be.flags = backend_flags::IN_USE;
        assert_eq!(leaves(&be, 2, &svc, PROTO_TCP), None, "TCP persists");
        assert!(leaves(&be, 2, &svc, lb_common::PROTO_UDP)
            .unwrap()
            .contains("unhealthy"));
        be.flags |= backend_flags::EVICT;
        assert!(leaves(&be, 2, &svc, PROTO_TCP).unwrap().contains("evict"));
    }
}
