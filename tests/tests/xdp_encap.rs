//! Encapsulated forwarding through BPF_PROG_TEST_RUN, with exact expected frames: IPIP and
//! GUE over IPv4 and IPv6 (outer headers, checksums, the GUE source port and IPv6 flow
//! label from the flow hash, next-hop MACs from the FIB), XDP_REDIRECT when the FIB's egress
//! is another interface, the FIB-miss verdicts, and the "too big" ICMP answers.
//!
//! FIB lookups happen in the network namespace of the interface the frame "arrived" on, so
//! each test builds a private namespace (a veth pair with addresses, routes and permanent
//! neighbours) and runs the program from a thread inside it.

use lb_common::{encap, flow_hash::flow_hash, hash_mode, service_flags};
use lb_tests::{
    fib::{FibNs, BACKEND, BACKEND6, OTHER_ROUTER_MAC, OUR_MAC, ROUTER_MAC, SRC, SRC6},
    netns::sh,
    packet::{checksum, Frame, Frame6, BALANCER_MAC, CLIENT_MAC},
    xdp_cases::{key_of, key_of6, service, vip, vip6, CLIENT, CLIENT6, DROP, TX, VIP, VIP6},
};
use lb_userspace::dataplane::plan::{L4Backend, L4Plan};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const REDIRECT: u32 = 4;

fn routed(addr: IpAddr, src: IpAddr) -> L4Backend {
    L4Backend {
        name: addr.to_string(),
        addr,
        mac: Some([0; 6]),
        src: Some(src),
        weight: 1,
        in_table: true,
        healthy: true,
        draining: false,
        evict: false,
        failover: false,
    }
}

/// One service `s` with one routed backend at `addr`, behind VIP:80/tcp, VIP:53/udp and
/// VIP6:80/tcp (the IPv6 one through `s6`, backend BACKEND6).
fn plan(forwarding: u32, gue_port: u16, addr: [u8; 4]) -> L4Plan {
    let mut s = service(
        "s",
        hash_mode::FIVE_TUPLE,
        service_flags::PERSIST_TCP,
        vec![routed(
            Ipv4Addr::from(addr).into(),
            Ipv4Addr::from(SRC).into(),
        )],
    );
    s.forwarding = forwarding;
    s.gue_port = gue_port;
    let mut s6 = service(
        "s6",
        hash_mode::FIVE_TUPLE,
        service_flags::PERSIST_TCP,
        vec![routed(
            Ipv6Addr::from(BACKEND6).into(),
            Ipv6Addr::from(SRC6).into(),
        )],
    );
    s6.forwarding = forwarding;
    s6.gue_port = gue_port;
    L4Plan {
        services: vec![s, s6],
        vips: vec![
            vip("web", VIP, 80, 6, "s"),
            vip("dns", VIP, 53, 17, "s"),
            vip6("web6", VIP6, 80, 6, "s6"),
        ],
    }
}

/// The expected IPv4-outer frame: Ethernet to the router, outer IPv4 (DF, TTL 64, TOS of
/// the inner packet, checksum), GUE's UDP header when `gue` names the ports, then the
/// inner packet unchanged.
fn outer_v4(input: &[u8], dst_mac: [u8; 6], dst: [u8; 4], gue: Option<(u16, u16)>) -> Vec<u8> {
    let inner = &input[14..];
    let extra = if gue.is_some() { 8 } else { 0 };
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[1] = inner[1];
    ip[2..4].copy_from_slice(&((20 + extra + inner.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = if gue.is_some() { 17 } else { 4 };
    ip[12..16].copy_from_slice(&SRC);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    push_gue_and_inner(&mut f, gue, inner);
    f
}

/// GUE's UDP header (source and destination port, length, zero checksum) when `gue` names
/// the ports, then the inner packet unchanged.
fn push_gue_and_inner(f: &mut Vec<u8>, gue: Option<(u16, u16)>, inner: &[u8]) {
    if let Some((sport, dport)) = gue {
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(inner);
}

/// The expected IPv6-outer frame: flow label from the flow hash, hop limit 64, next header
/// 41 (IPIP) or 17 (GUE).
fn outer_v6(input: &[u8], hash: u32, gue: Option<(u16, u16)>) -> Vec<u8> {
    let inner = &input[14..];
    let tclass = (inner[0] << 4) | (inner[1] >> 4);
    let extra = if gue.is_some() { 8 } else { 0 };
    let mut f = Vec::new();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    let vtcfl: u32 = (6 << 28) | ((tclass as u32) << 20) | (hash & 0xf_ffff);
    f.extend_from_slice(&vtcfl.to_be_bytes());
    f.extend_from_slice(&((extra + inner.len()) as u16).to_be_bytes());
    f.push(if gue.is_some() { 17 } else { 41 });
    f.push(64);
    f.extend_from_slice(&SRC6);
    f.extend_from_slice(&BACKEND6);
    push_gue_and_inner(&mut f, gue, inner);
    f
}

fn root() -> bool {
    lb_tests::root_or_skip("xdp_encap")
}

/// `input` (an IPv4 frame) with another TOS byte, header checksum fixed.
fn with_tos(mut input: Vec<u8>, tos: u8) -> Vec<u8> {
    input[15] = tos;
    input[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&input[14..34]);
    input[24..26].copy_from_slice(&c.to_be_bytes());
    input
}

#[test]
fn ipip_and_gue_frames_are_exact_for_both_families() {
    if !root() {
        return;
    }
    let ns = FibNs::new().unwrap();
    for (forwarding, port) in [
        (encap::forwarding::IPIP, 0),
        (encap::forwarding::GUE, encap::GUE_DEFAULT_PORT),
        (encap::forwarding::GUE, 7777),
    ] {
        let gue = forwarding == encap::forwarding::GUE;
        ns.run(plan(forwarding, port, BACKEND), move |h, ifindex| {
            let mut tcp = Frame::tcp(CLIENT, 40000, VIP, 80);
            tcp.payload = vec![7; 100];
            let udp = Frame::udp(CLIENT, 5353, VIP, 53);
            for (what, f, tos) in [("tcp", &tcp, 0), ("udp", &udp, 0xb8)] {
                let input = with_tos(f.bytes(), tos);
                let sport = encap::gue_source_port(flow_hash(&key_of(f)));
                let want = outer_v4(&input, ROUTER_MAC, BACKEND, gue.then_some((sport, port)));
                for round in ["new flow", "established"] {
                    let r = h.run_on(&input, ifindex, 1).unwrap();
                    assert_eq!(r.verdict, TX, "{what} {round} gue={gue}");
                    assert_eq!(r.frame, want, "{what} {round} gue={gue}: exact frame");
                }
            }
            let f6 = Frame6::tcp(CLIENT6, 40000, VIP6, 80);
            let input = f6.bytes();
            let hash = flow_hash(&key_of6(&f6));
            let sport = encap::gue_source_port(hash);
            let r = h.run_on(&input, ifindex, 1).unwrap();
            assert_eq!(r.verdict, TX, "v6 gue={gue}");
            assert_eq!(
                r.frame,
                outer_v6(&input, hash, gue.then_some((sport, port))),
                "v6 gue={gue}: exact frame"
            );
            let reason = if gue { "tx_gue" } else { "tx_ipip" };
            assert_eq!(h.reason(reason).unwrap(), 5, "{reason}");
        });
    }
}

#[test]
fn the_source_port_spreads_flows_and_redirects_and_fib_misses_are_counted() {
    if !root() {
        return;
    }
    let ns = FibNs::new().unwrap();
    // GUE source ports: distinct client ports give spread-out source ports.
    ns.run(
        plan(encap::forwarding::GUE, encap::GUE_DEFAULT_PORT, BACKEND),
        |h, ifindex| {
            let mut ports = std::collections::BTreeSet::new();
            for p in 0..64u16 {
                let r = h
                    .run_on(&Frame::udp(CLIENT, 20000 + p, VIP, 53).bytes(), ifindex, 1)
                    .unwrap();
                assert_eq!(r.verdict, TX);
                ports.insert(u16::from_be_bytes([r.frame[34], r.frame[35]]));
            }
            assert!(ports.len() >= 60, "64 flows, {} source ports", ports.len());
            assert!(ports.iter().all(|p| *p >= 49152));
        },
    );
    // The next hop is cached per CPU for at most NEXT_HOP_TTL_NS: a neighbour's new MAC is
    // followed once it expires.
    let ns_name = ns.0 .0.clone();
    ns.run(
        plan(encap::forwarding::IPIP, 0, BACKEND),
        move |h, ifindex| {
            let input = Frame::tcp(CLIENT, 40005, VIP, 80).bytes();
            assert_eq!(
                &h.run_on(&input, ifindex, 1).unwrap().frame[0..6],
                &ROUTER_MAC
            );
            let moved = [0x02, 0, 0, 0, 0x0e, 0x99];
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns_name,
                "ip",
                "neigh",
                "replace",
                "10.9.0.1",
                "lladdr",
                "02:00:00:00:0e:99",
                "dev",
                "up0",
                "nud",
                "permanent",
            ])
            .unwrap();
            let ttl = std::time::Duration::from_nanos(lb_common::limits::NEXT_HOP_TTL_NS);
            std::thread::sleep(ttl + std::time::Duration::from_millis(50));
            let r = h.run_on(&input, ifindex, 1).unwrap();
            assert_eq!(
                &r.frame[0..6],
                &moved,
                "the new MAC after the cache's lifetime"
            );
        },
    );
    // Egress through another interface: XDP_REDIRECT, MACs of that interface's next hop.
    ns.run(
        plan(encap::forwarding::IPIP, 0, [10, 30, 0, 5]),
        |h, ifindex| {
            let input = Frame::tcp(CLIENT, 40001, VIP, 80).bytes();
            let r = h.run_on(&input, ifindex, 1).unwrap();
            assert_eq!(r.verdict, REDIRECT);
            assert_eq!(&r.frame[0..6], &OTHER_ROUTER_MAC);
            assert_eq!(h.reason("seen_encap_redirect").unwrap(), 1);
        },
    );
    // No neighbour for the next hop: dropped and counted, the frame untouched.
    ns.run(
        plan(encap::forwarding::IPIP, 0, [10, 40, 0, 5]),
        |h, ifindex| {
            let input = Frame::tcp(CLIENT, 40002, VIP, 80).bytes();
            let r = h.run_on(&input, ifindex, 1).unwrap();
            assert_eq!((r.verdict, &r.frame), (DROP, &input));
            assert_eq!(h.reason("drop_fib_no_neigh").unwrap(), 1);
        },
    );
    // Forwarding disabled on the interface: the kernel's FIB refuses to forward.
    ns.0.exec(&["sysctl", "-qw", "net.ipv4.conf.up0.forwarding=0"])
        .unwrap();
    ns.run(plan(encap::forwarding::IPIP, 0, BACKEND), |h, ifindex| {
        let input = Frame::tcp(CLIENT, 40004, VIP, 80).bytes();
        let r = h.run_on(&input, ifindex, 1).unwrap();
        assert_eq!((r.verdict, &r.frame), (DROP, &input));
        assert_eq!(h.reason("drop_fib_no_route").unwrap(), 1);
    });
    // No route (blackhole): dropped and counted.
    ns.run(
        plan(encap::forwarding::IPIP, 0, [10, 50, 0, 5]),
        |h, ifindex| {
            let input = Frame::tcp(CLIENT, 40003, VIP, 80).bytes();
            let r = h.run_on(&input, ifindex, 1).unwrap();
            assert_eq!(r.verdict, DROP);
            assert_eq!(h.reason("drop_fib_no_route").unwrap(), 1);
        },
    );
}

#[test]
fn a_packet_too_big_once_encapsulated_is_answered_with_the_mtu_left() {
    if !root() {
        return;
    }
    let ns = FibNs::new().unwrap();
    ns.run(plan(encap::forwarding::IPIP, 0, BACKEND), |h, ifindex| {
        // 1500-byte IPv4 packet with DF: 20 more bytes do not fit the 1500-byte MTU.
        let mut big = Frame::tcp(CLIENT, 40010, VIP, 80);
        big.tcp_flags = 0x10;
        big.payload = vec![1; 1460];
        let input = big.bytes();
        assert_eq!(input.len(), 14 + 1500);
        let r = h.run_on(&input, ifindex, 1).unwrap();
        assert_eq!(r.verdict, TX, "answered back out");
        let mut want = Vec::new();
        want.extend_from_slice(&CLIENT_MAC);
        want.extend_from_slice(&BALANCER_MAC);
        want.extend_from_slice(&0x0800u16.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&VIP);
        ip.extend_from_slice(&CLIENT);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        want.extend_from_slice(&ip);
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend_from_slice(&1480u16.to_be_bytes());
        icmp.extend_from_slice(&input[14..14 + 28]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        want.extend_from_slice(&icmp);
        assert_eq!(r.frame, want, "exact ICMP fragmentation-needed answer");
        assert_eq!(h.reason("tx_icmp_too_big").unwrap(), 1);
        // One byte less fits: forwarded.
        big.payload.truncate(1440);
        assert_eq!(h.run_on(&big.bytes(), ifindex, 1).unwrap().verdict, TX);
        assert_eq!(h.reason("tx_ipip").unwrap(), 1);
        // Without DF it may not be answered: dropped, counted.
        big.payload = vec![1; 1460];
        big.frag = 0;
        let input = big.bytes();
        let r = h.run_on(&input, ifindex, 1).unwrap();
        assert_eq!((r.verdict, &r.frame), (DROP, &input));
        assert_eq!(h.reason("drop_too_big").unwrap(), 1);

        // IPv6: Packet Too Big with the MTU left after the 40-byte outer header.
        let mut big6 = Frame6::tcp(CLIENT6, 40011, VIP6, 80);
        big6.payload = vec![2; 1440];
        let input = big6.bytes();
        assert_eq!(input.len(), 14 + 1500);
        let r = h.run_on(&input, ifindex, 1).unwrap();
        assert_eq!(r.verdict, TX);
        let mut want = Vec::new();
        want.extend_from_slice(&input[6..12]);
        want.extend_from_slice(&input[0..6]);
        want.extend_from_slice(&0x86ddu16.to_be_bytes());
        want.extend_from_slice(&[0x60, 0, 0, 0, 0, 136, 58, 64]);
        want.extend_from_slice(&VIP6);
        want.extend_from_slice(&CLIENT6);
        let mut icmp = vec![2, 0, 0, 0];
        icmp.extend_from_slice(&1460u32.to_be_bytes());
        icmp.extend_from_slice(&input[14..14 + 128]);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&VIP6);
        pseudo.extend_from_slice(&CLIENT6);
        pseudo.extend_from_slice(&136u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&icmp);
        let c = checksum(&pseudo);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        want.extend_from_slice(&icmp);
        assert_eq!(r.frame, want, "exact ICMPv6 Packet Too Big answer");
        assert_eq!(h.reason("tx_icmp_too_big").unwrap(), 2);
    });
}
