//! `lb flows`: the connection-table entries, read from the pinned `CONNS*` (established
//! flows) and `YOUNG_FLOWS*` (flows in their first second, see `lb-ebpf/src/conntrack.rs`)
//! of both families (`conn_tables`),
//! like `conntrack -L` or `ipvsadm -Lc`. Backend slots are named by the pinned `BACKENDS`
//! map, so it works with or without a running agent.

use aya::maps::{Array, MapData};
use lb_common::{backend_flags, names, Backend, ConnEntry, FlowKey, KEY_SESSION};
use serde::Serialize;
use std::{fmt::Write as _, net::IpAddr, path::Path};

use super::{
    conn_tables::{ConnTables, Table},
    loader::{open_pinned, LoadError},
};

/// One entry as listed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// `conns` (established) or `young` (first second).
    pub table: &'static str,
    pub proto: &'static str,
    /// `flow` (a 5-tuple, PER_CONNECTION) or `session` (PER_SESSION: fields the affinity
    /// ignores are zero).
    pub kind: &'static str,
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    pub vip_port: u16,
    pub backend_slot: u32,
    /// `None` when the slot is empty (the backend was removed; the entry is stale).
    pub backend: Option<IpAddr>,
    /// The slot has been given to another backend since, or emptied: the next packet is
    /// hashed again.
    pub stale: bool,
    /// Seconds since the flow's last packet (the program refreshes it at most once a second).
    pub idle_sec: u64,
}

/// Which entries to list; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub vip: Option<IpAddr>,
    pub vip_port: Option<u16>,
    pub backend: Option<IpAddr>,
    pub client: Option<IpAddr>,
}

impl Filter {
    fn matches(&self, f: &Flow) -> bool {
        self.vip.is_none_or(|v| v == f.vip)
            && self.vip_port.is_none_or(|p| p == f.vip_port)
            && self.backend.is_none_or(|b| Some(b) == f.backend)
            && self.client.is_none_or(|c| c == f.client)
    }
}

fn addr(family: u8, a: &[u8; 16]) -> IpAddr {
    lb_common::addr::from_map(family, a)
}

/// CLOCK_MONOTONIC_COARSE, the program's clock (`bpf_ktime_get_coarse_ns`).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

fn describe(table: &'static str, k: &FlowKey, e: &ConnEntry, b: Option<Backend>, now: u64) -> Flow {
    let in_use = b.filter(|b| b.flags & backend_flags::IN_USE != 0);
    Flow {
        table,
        proto: match k.proto {
            lb_common::PROTO_TCP => "tcp",
            lb_common::PROTO_UDP => "udp",
            _ => "?",
        },
        kind: if k.kind == KEY_SESSION {
            "session"
        } else {
            "flow"
        },
        client: addr(k.family, &k.src),
        client_port: u16::from_be(k.sport_be),
        vip: addr(k.family, &k.dst),
        vip_port: u16::from_be(k.dport_be),
        backend_slot: e.backend,
        backend: in_use.map(|b| addr(b.family, &b.addr)),
        stale: in_use.is_none_or(|b| b.generation != e.generation),
        idle_sec: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
    }
}

/// Every entry of both tables that passes `filter`, established ones first.
pub fn list(pin_dir: &Path, filter: &Filter) -> Result<Vec<Flow>, LoadError> {
    let backends: Array<MapData, Backend> = open_pinned(pin_dir, names::MAP_BACKENDS)?;
    let now = now_ns();
    let tables = ConnTables::open(pin_dir)?;
    let mut out = Vec::new();
    for (name, table) in [("conns", Table::Established), ("young", Table::Young)] {
        for (k, e) in tables.entries(table) {
            let f = describe(name, &k, &e, backends.get(&e.backend, 0).ok(), now);
            if filter.matches(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// The table `lb flows` prints.
pub fn table(flows: &[Flow]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:<5} {:<8} {:<22} {:<22} {:<16} {:>5}",
        "table", "proto", "kind", "client", "vip", "backend", "idle"
    );
    for f in flows {
        let backend = match (f.backend, f.stale) {
            (Some(b), false) => b.to_string(),
            (Some(b), true) => format!("{b} (stale)"),
            (None, _) => format!("slot {} (empty)", f.backend_slot),
        };
        let _ = writeln!(
            out,
            "{:<6} {:<5} {:<8} {:<22} {:<22} {:<16} {:>4}s",
            f.table,
            f.proto,
            f.kind,
            std::net::SocketAddr::new(f.client, f.client_port).to_string(),
            std::net::SocketAddr::new(f.vip, f.vip_port).to_string(),
            backend,
            f.idle_sec
        );
    }
    let _ = writeln!(out, "{} flow(s)", flows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        let mut k = FlowKey::default();
        k.src[..4].copy_from_slice(&src);
        k.dst[..4].copy_from_slice(&[10, 0, 0, 100]);
        k.sport_be = sport.to_be();
        k.dport_be = 80u16.to_be();
        k.proto = lb_common::PROTO_TCP;
        k.family = lb_common::FAMILY_V4;
        k
    }

    fn backend(last: u8, generation: u32) -> Backend {
        let mut b = Backend {
            flags: backend_flags::IN_USE | backend_flags::HEALTHY,
            generation,
            family: lb_common::FAMILY_V4,
            ..Default::default()
        };
        b.addr[..4].copy_from_slice(&[10, 0, 0, last]);
        b
    }

    #[test]
    fn entries_are_described_and_filtered() {
        let e = ConnEntry {
            backend: 3,
            generation: 7,
            last_seen_ns: 1_000_000_000,
            ..Default::default()
        };
        let f = describe(
            "conns",
            &key([10, 0, 0, 2], 40000),
            &e,
            Some(backend(11, 7)),
            5_500_000_000,
        );
        assert_eq!(f.client, IpAddr::from([10, 0, 0, 2]));
        assert_eq!((f.vip_port, f.client_port), (80, 40000));
        assert_eq!(f.backend, Some(IpAddr::from([10, 0, 0, 11])));
        assert!(!f.stale);
        assert_eq!(f.idle_sec, 4);
        // A slot given to another backend since: stale.
        let g = describe("conns", &key([10, 0, 0, 2], 1), &e, Some(backend(12, 8)), 0);
        assert!(g.stale);
        let by_backend = Filter {
            backend: Some(IpAddr::from([10, 0, 0, 11])),
            ..Default::default()
        };
        assert!(by_backend.matches(&f) && !by_backend.matches(&g));
        let by_client = Filter {
            client: Some(IpAddr::from([10, 0, 0, 3])),
            ..Default::default()
        };
        assert!(!by_client.matches(&f));
        let by_vip = Filter {
            vip: Some(IpAddr::from([10, 0, 0, 100])),
            vip_port: Some(81),
            ..Default::default()
        };
        assert!(!by_vip.matches(&f));
        assert!(table(&[f]).contains("10.0.0.11"));
    }
}
