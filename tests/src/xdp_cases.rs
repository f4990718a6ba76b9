//! The fixture vocabulary shared by the `xdp_*` tests: a base plan of services and VIPs, an
//! independent prediction of a new flow's backend (the shared flow hash and a Maglev table
//! built here), and `Case`s of input frame, expected verdict and exact expected output.

use crate::{
    packet::{Frame, Frame6, BALANCER_MAC},
    xdp::XdpHarness,
};
use lb_common::{flow_hash, hash_mode, service_flags, FlowKey};
use lb_userspace::{
    dataplane::plan::{L4Backend, L4Plan, L4Service, L4Vip},
    maglev,
};
use std::net::{Ipv4Addr, Ipv6Addr};

pub const ABORTED: u32 = 0;
pub const DROP: u32 = 1;
pub const PASS: u32 = 2;
pub const TX: u32 = 3;
pub const RING: u32 = 251;

pub const VIP: [u8; 4] = [10, 0, 0, 100];
pub const VIP2: [u8; 4] = [10, 0, 0, 101];
pub const OTHER: [u8; 4] = [10, 0, 0, 200];
pub const CLIENT: [u8; 4] = [10, 0, 0, 1];

pub fn mac(i: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0b, i]
}

pub fn backend(i: u8) -> L4Backend {
    L4Backend {
        name: format!("b{i}"),
        addr: Ipv4Addr::new(10, 0, 0, 10 + i).into(),
        mac: Some(mac(i)),
        src: None,
        weight: 1,
        in_table: true,
        healthy: true,
        draining: false,
        evict: false,
        failover: false,
    }
}

pub fn service(name: &str, mode: u32, flags: u32, backends: Vec<L4Backend>) -> L4Service {
    L4Service {
        name: name.into(),
        hash_mode: mode,
        flags,
        idle_timeout_s: 600,
        forwarding: 0,
        gue_port: 0,
        backends,
    }
}

pub fn vip(name: &str, addr: [u8; 4], port: u16, proto: u8, svc: &str) -> L4Vip {
    L4Vip {
        name: name.into(),
        addr: addr.into(),
        port,
        proto,
        service: svc.into(),
    }
}

/// Services: `five` (5-tuple, VIP:80/tcp, VIP:53/udp), `cip` (CLIENT_IP, VIP2 all TCP
/// ports and OTHER... no: VIP2:443), `cipp` (CLIENT_IP_PROTO, VIP2 every TCP port), `nodst`
/// (CLIENT_IP_NO_DESTINATION), `empty` (no backends).
pub fn base_plan() -> L4Plan {
    let three = || vec![backend(1), backend(2), backend(3)];
    L4Plan {
        services: vec![
            service(
                "five",
                hash_mode::FIVE_TUPLE,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "cip",
                hash_mode::CLIENT_IP,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "cipp",
                hash_mode::CLIENT_IP_PROTO,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service("empty", hash_mode::FIVE_TUPLE, 0, vec![]),
        ],
        vips: vec![
            vip("web", VIP, 80, 6, "five"),
            vip("dns", VIP, 53, 17, "five"),
            vip("sticky-a", VIP, 8080, 6, "cip"),
            vip("sticky-b", VIP2, 8080, 6, "cip"),
            vip("proto", VIP2, 0, 6, "cipp"),
            vip("void", VIP, 9999, 6, "empty"),
        ],
    }
}

pub const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
pub const VIP6B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x65];
pub const OTHER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc8];
pub const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
pub const ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];

/// An IPv6 backend (fd00::1x, MAC as [`mac`] with 0x60 + i).
pub fn backend6(i: u8) -> L4Backend {
    L4Backend {
        name: format!("v6b{i}"),
        addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10 + i as u16).into(),
        mac: Some(mac(0x60 + i)),
        src: None,
        ..backend(i)
    }
}

pub fn vip6(name: &str, addr: [u8; 16], port: u16, proto: u8, svc: &str) -> L4Vip {
    L4Vip {
        name: name.into(),
        addr: Ipv6Addr::from(addr).into(),
        port,
        proto,
        service: svc.into(),
    }
}

/// The IPv6 plan: `five6` (5-tuple: VIP6:80/tcp, VIP6:53/udp), `cip6` (CLIENT_IP:
/// VIP6:8080/tcp), `cipp6` (CLIENT_IP_PROTO: VIP6B every TCP and UDP port), `session6`
/// (CLIENT_IP, PER_SESSION: VIP6:9000/tcp), each over three IPv6 backends; beside the IPv4
/// base plan's `five` (VIP:80/tcp), so both families share the maps.
pub fn plan_v6() -> L4Plan {
    let three = || vec![backend6(1), backend6(2), backend6(3)];
    let mut p = L4Plan {
        services: vec![
            service(
                "five6",
                hash_mode::FIVE_TUPLE,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "cip6",
                hash_mode::CLIENT_IP,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "cipp6",
                hash_mode::CLIENT_IP_PROTO,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "session6",
                hash_mode::CLIENT_IP,
                service_flags::PERSIST_TCP | service_flags::PER_SESSION,
                three(),
            ),
        ],
        vips: vec![
            vip6("web6", VIP6, 80, 6, "five6"),
            vip6("dns6", VIP6, 53, 17, "five6"),
            vip6("sticky6", VIP6, 8080, 6, "cip6"),
            vip6("proto6-tcp", VIP6B, 0, 6, "cipp6"),
            vip6("proto6-udp", VIP6B, 0, 17, "cipp6"),
            vip6("session6", VIP6, 9000, 6, "session6"),
        ],
    };
    let base = base_plan();
    p.services.push(base.services[0].clone());
    p.vips.push(base.vips[0].clone());
    p
}

/// Predicts the backend MAC for a new flow on `svc` of `plan` (vip id is irrelevant to the
/// hash, which covers addresses, ports and protocol only).
pub fn predict(plan: &L4Plan, svc: &str, f: &Frame) -> [u8; 6] {
    predict_key(plan, svc, key_of(f))
}

/// [`predict`] for an IPv6 frame.
pub fn predict6(plan: &L4Plan, svc: &str, f: &Frame6) -> [u8; 6] {
    predict_key(plan, svc, key_of6(f))
}

/// The raw flow key (and flow-hash input) of an IPv4 frame.
pub fn key_of(f: &Frame) -> FlowKey {
    FlowKey {
        src: pad(f.src),
        dst: pad(f.dst),
        sport_be: f.sport.to_be(),
        dport_be: f.dport.to_be(),
        proto: f.proto,
        family: 4,
        ..Default::default()
    }
}

/// The young-table set of an IPv4 frame's flow, with `conn_table_size = table`
/// (`lb_common::young`: flows of one set share its two slots).
pub fn young_set(f: &Frame, table: u32) -> u32 {
    use lb_common::young::{set_index, sets_for, KeyWords};
    let k = lb_common::FlowKeyV4::narrow(&key_of(f)).expect("an IPv4 flow");
    set_index(k.young_hash(), sets_for(table) - 1)
}

/// The first `n` source numbers from `from` on whose frames (`frame(i)`) land in distinct
/// young sets with `conn_table_size = table`: flows that must all stay young (a flow whose
/// set later ones took over is hashed again, not promoted).
pub fn distinct_young_sets(
    from: u32,
    n: usize,
    table: u32,
    frame: impl Fn(u32) -> Frame,
) -> Vec<u32> {
    let mut used = std::collections::HashSet::new();
    (from..)
        .filter(|&i| used.insert(young_set(&frame(i), table)))
        .take(n)
        .collect()
}

/// [`key_of`] for an IPv6 frame.
pub fn key_of6(f: &Frame6) -> FlowKey {
    FlowKey {
        src: f.src,
        dst: f.dst,
        sport_be: f.sport.to_be(),
        dport_be: f.dport.to_be(),
        proto: f.proto,
        family: 6,
        ..Default::default()
    }
}

/// The backend MAC the Maglev table of `svc` gives the raw flow key `k`.
pub fn predict_key(plan: &L4Plan, svc: &str, mut k: FlowKey) -> [u8; 6] {
    let s = plan.services.iter().find(|s| s.name == svc).unwrap();
    let members: Vec<&L4Backend> = s.backends.iter().filter(|b| b.in_table).collect();
    let keys: Vec<String> = members.iter().map(|b| b.addr.to_string()).collect();
    let mb: Vec<maglev::MaglevBackend> = members
        .iter()
        .zip(&keys)
        .map(|(b, k)| maglev::MaglevBackend {
            name: k,
            weight: b.weight,
        })
        .collect();
    let table = maglev::build(&mb, RING);
    flow_hash::mask_for_hash(&mut k, s.hash_mode);
    let slot = flow_hash::flow_hash(&k) % RING;
    members[table[slot as usize].unwrap() as usize].mac.unwrap()
}

pub fn pad(a: [u8; 4]) -> [u8; 16] {
    let mut o = [0; 16];
    o[..4].copy_from_slice(&a);
    o
}

/// `plan` with the backend of MAC `mac` (in the first service) out of the table but still
/// in use, as a drain leaves it.
pub fn draining(plan: &L4Plan, mac: [u8; 6]) -> L4Plan {
    let mut p = plan.clone();
    for b in &mut p.services[0].backends {
        if b.mac == Some(mac) {
            b.in_table = false;
            b.draining = true;
        }
    }
    p
}

/// The input frame with only the MACs rewritten as L2 DSR does.
pub fn forwarded(input: &[u8], to: [u8; 6]) -> Vec<u8> {
    let mut out = input.to_vec();
    out[0..6].copy_from_slice(&to);
    out[6..12].copy_from_slice(&BALANCER_MAC);
    out
}

pub struct Case {
    pub what: &'static str,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
}

pub fn check(h: &XdpHarness, cases: &[Case]) {
    for c in cases {
        let r = h.run(&c.input).unwrap();
        assert_eq!(r.verdict, c.verdict, "{}: verdict", c.what);
        assert_eq!(r.frame, c.output, "{}: output frame", c.what);
    }
}
