//! The decapsulation program (`lb decap`) through BPF_PROG_TEST_RUN: input frame, expected
//! verdict, exact expected output frame, and the counters each verdict moves. Encapsulated
//! frames to one of "our" addresses come out as the original Ethernet header (ethertype of
//! the inner packet) followed by the inner packet byte for byte; everything else comes out
//! untouched.

use lb_common::encap::GUE_DEFAULT_PORT;
use lb_tests::{
    decap::{decapsulated, encap_frame, eth, ipv4_header, DecapHarness, Encap},
    packet::{arp_request, Frame, Frame6},
    root_or_skip,
};
use std::net::IpAddr;

const DROP: u32 = 1;
const PASS: u32 = 2;

/// The backend's own addresses (decapsulated for) and another host's.
const US4: [u8; 4] = [192, 168, 7, 11];
const US6: [u8; 16] = [0xfd, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const OTHER4: [u8; 4] = [192, 168, 7, 12];
const OTHER6: [u8; 16] = [0xfd, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];
/// The balancer (outer source).
const LB4: [u8; 4] = [192, 168, 5, 2];
const LB6: [u8; 16] = [0xfd, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// Client and VIP of the inner packets.
const CLIENT: [u8; 4] = [10, 9, 0, 1];
const VIP: [u8; 4] = [10, 9, 0, 100];
const CLIENT6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const VIP6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

fn ip(a: impl Into<IpAddr>) -> IpAddr {
    a.into()
}

fn gue() -> Encap {
    Encap::Gue {
        sport: 50_123,
        dport: GUE_DEFAULT_PORT,
    }
}

fn harness() -> Option<DecapHarness> {
    if !root_or_skip("xdp decap fixtures") {
        return None;
    }
    let addrs = [ip(US4), ip(US6)];
    Some(DecapHarness::new(&addrs, GUE_DEFAULT_PORT).expect("load lb-decap"))
}

/// Inner packets as the client sent them (no Ethernet header).
fn inner_tcp4() -> Vec<u8> {
    Frame::tcp(CLIENT, 40000, VIP, 80).bytes()[14..].to_vec()
}
fn inner_udp4() -> Vec<u8> {
    Frame::udp(CLIENT, 40001, VIP, 53).bytes()[14..].to_vec()
}
fn inner_tcp6() -> Vec<u8> {
    Frame6::tcp(CLIENT6, 40002, VIP6, 80).packet()
}
fn inner_udp6() -> Vec<u8> {
    Frame6::udp(CLIENT6, 40003, VIP6, 53).packet()
}

/// Runs every (what, input, verdict, output) case.
fn check(h: &DecapHarness, cases: &[(&str, Vec<u8>, u32, Vec<u8>)]) {
    for (what, input, verdict, output) in cases {
        let r = h.run(input).unwrap();
        assert_eq!(r.verdict, *verdict, "{what}: verdict");
        assert_eq!(&r.frame, output, "{what}: output frame");
    }
}

/// Every counter is zero except those named.
fn assert_counts(h: &DecapHarness, want: &[(&str, u64)]) {
    for (name, n) in h.counters().unwrap() {
        let expected = want.iter().find(|w| w.0 == name).map_or(0, |w| w.1);
        assert_eq!(n, expected, "counter {name}");
    }
}

#[test]
fn ipip_and_gue_to_us_come_out_as_the_inner_packet_exactly() {
    let Some(h) = harness() else { return };
    let mut cases = Vec::new();
    for (what, how, src, dst, inner) in [
        (
            "IPIP v4 (4in4), TCP SYN",
            Encap::Ipip,
            ip(LB4),
            ip(US4),
            inner_tcp4(),
        ),
        (
            "IPIP v6 (6in6), UDP",
            Encap::Ipip,
            ip(LB6),
            ip(US6),
            inner_udp6(),
        ),
        ("GUE over IPv4, UDP", gue(), ip(LB4), ip(US4), inner_udp4()),
        (
            "GUE over IPv6, TCP SYN",
            gue(),
            ip(LB6),
            ip(US6),
            inner_tcp6(),
        ),
        (
            "GUE over IPv4 carrying IPv6",
            gue(),
            ip(LB4),
            ip(US4),
            inner_tcp6(),
        ),
        (
            "IPIP 6in4 (protocol 41)",
            Encap::Ipip,
            ip(LB4),
            ip(US4),
            inner_udp6(),
        ),
    ] {
        let expected = decapsulated(&inner);
        cases.push((what, encap_frame(how, src, dst, &inner), PASS, expected));
    }
    check(&h, &cases);
    assert_counts(&h, &[("decap_ipip", 3), ("decap_gue", 3)]);
    // A backend pays for three small maps, none of the balancer's tables.
    let mut maps: Vec<&str> = h.ebpf.maps().map(|(n, _)| n).collect();
    maps.sort();
    assert_eq!(maps, ["DECAP_ADDRS", "DECAP_COUNTS", "DECAP_SETTINGS"]);
}

#[test]
fn frames_that_are_not_encapsulation_pass_untouched() {
    let Some(h) = harness() else { return };
    let mut icmp = Frame::udp(LB4, 0, US4, 0);
    icmp.proto = 1;
    let mut vlan = encap_frame(Encap::Ipip, ip(LB4), ip(US4), &inner_tcp4());
    vlan.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("TCP to us", Frame::tcp(LB4, 1234, US4, 22).bytes()),
        (
            "UDP to us, another port",
            Frame::udp(LB4, 1234, US4, 53).bytes(),
        ),
        ("ICMP to us", icmp.bytes()),
        (
            "TCP over IPv6 to us",
            Frame6::tcp(LB6, 1234, US6, 22).bytes(),
        ),
        (
            "UDP over IPv6 to us, another port",
            Frame6::udp(LB6, 1234, US6, 6081).bytes(),
        ),
        ("ARP", arp_request()),
        ("VLAN-tagged IPIP", vlan),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, f)| (what, f.clone(), PASS, f))
        .collect();
    check(&h, &cases);
    assert_counts(
        &h,
        &[
            ("pass_not_encap", 3),
            ("pass_udp_other_port", 2),
            ("pass_not_ip", 2),
        ],
    );
}

#[test]
fn encapsulation_for_another_host_or_port_passes_untouched() {
    let Some(h) = harness() else { return };
    let other_port = Encap::Gue {
        sport: 50_000,
        dport: GUE_DEFAULT_PORT + 1,
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPIP v4 to another host",
            encap_frame(Encap::Ipip, ip(LB4), ip(OTHER4), &inner_tcp4()),
        ),
        (
            "IPIP v6 to another host",
            encap_frame(Encap::Ipip, ip(LB6), ip(OTHER6), &inner_udp6()),
        ),
        (
            "GUE v4 to another host",
            encap_frame(gue(), ip(LB4), ip(OTHER4), &inner_udp4()),
        ),
        (
            "GUE v6 to another host",
            encap_frame(gue(), ip(LB6), ip(OTHER6), &inner_tcp6()),
        ),
        (
            "GUE v4 to us on another port",
            encap_frame(other_port, ip(LB4), ip(US4), &inner_udp4()),
        ),
        (
            "GUE v6 to us on another port",
            encap_frame(other_port, ip(LB6), ip(US6), &inner_udp6()),
        ),
    ];
    let cases: Vec<_> = cases
        .into_iter()
        .map(|(what, f)| (what, f.clone(), PASS, f))
        .collect();
    check(&h, &cases);
    assert_counts(&h, &[("pass_other_host", 4), ("pass_udp_other_port", 2)]);
}

#[test]
fn outer_ipv4_options_and_fragments_pass_untouched() {
    let Some(h) = harness() else { return };
    let inner = inner_tcp4();
    // Outer header with one 4-byte option (NOP NOP NOP EOL): IHL 6.
    let mut options = eth(0x0800);
    let mut outer = ipv4_header(LB4, US4, 4, inner.len() + 4);
    outer[0] = 0x46;
    outer[2..4].copy_from_slice(&((24 + inner.len()) as u16).to_be_bytes());
    outer.extend_from_slice(&[1, 1, 1, 0]);
    options.extend_from_slice(&outer);
    options.extend_from_slice(&inner);
    // A first fragment (more fragments set) of a GUE packet.
    let mut fragment = encap_frame(gue(), ip(LB4), ip(US4), &inner_udp4());
    fragment[14 + 6] = 0x20;
    let cases = vec![
        ("IPIP with IPv4 options", options.clone(), PASS, options),
        ("GUE first fragment", fragment.clone(), PASS, fragment),
    ];
    check(&h, &cases);
    assert_counts(&h, &[("pass_ip_options", 1), ("pass_fragment", 1)]);
}

#[test]
fn encapsulation_to_us_with_a_broken_inner_packet_is_dropped() {
    let Some(h) = harness() else { return };
    let v4 = inner_tcp4();
    let v6 = inner_udp6();
    let mut wrong_nibble = inner_udp4();
    wrong_nibble[0] = 0x55;
    // IPIP protocol 4 carrying an IPv6 packet: the header's announcement is wrong.
    let mut mismatch = encap_frame(Encap::Ipip, ip(LB4), ip(US4), &v6);
    mismatch[14 + 9] = 4;
    let mismatch = {
        let mut m = mismatch;
        // Keep the outer checksum valid: it is not what the verdict is about.
        m[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
        let c = lb_tests::packet::checksum(&m[14..34]);
        m[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
        m
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "IPIP v4 with 12 bytes of inner header",
            encap_frame(Encap::Ipip, ip(LB4), ip(US4), &v4[..12]),
        ),
        (
            "IPIP v6 with 30 bytes of inner header",
            encap_frame(Encap::Ipip, ip(LB6), ip(US6), &v6[..30]),
        ),
        (
            "GUE with nothing after the UDP header",
            encap_frame(gue(), ip(LB4), ip(US4), &[]),
        ),
        (
            "GUE v6 with an inner IPv6 header cut at 39 bytes",
            encap_frame(gue(), ip(LB6), ip(US6), &v6[..39]),
        ),
        (
            "GUE whose payload starts with version 5",
            encap_frame(gue(), ip(LB4), ip(US4), &wrong_nibble),
        ),
        ("IPIP protocol 4 carrying IPv6", mismatch),
    ];
    for (what, f) in &cases {
        let r = h.run(f).unwrap();
        assert_eq!(r.verdict, DROP, "{what}: verdict");
    }
    assert_counts(&h, &[("drop_bad_inner", cases.len() as u64)]);
}

#[test]
fn a_second_configuration_changes_addresses_and_port_in_place() {
    let Some(mut h) = harness() else { return };
    let inner = inner_udp4();
    let to_us_default = encap_frame(gue(), ip(LB4), ip(US4), &inner);
    let new_port = Encap::Gue {
        sport: 50_123,
        dport: 7000,
    };
    let to_other_new = encap_frame(new_port, ip(LB4), ip(OTHER4), &inner);
    let to_us_ipip = encap_frame(Encap::Ipip, ip(LB4), ip(US4), &inner);
    assert_eq!(h.run(&to_us_default).unwrap().frame, decapsulated(&inner));
    // Now only OTHER4, GUE on 7000.
    h.configure(&[ip(OTHER4)], 7000).unwrap();
    check(
        &h,
        &[
            (
                "GUE to the new address and port",
                to_other_new.clone(),
                PASS,
                decapsulated(&inner),
            ),
            (
                "GUE on the old port",
                encap_frame(gue(), ip(LB4), ip(OTHER4), &inner),
                PASS,
                encap_frame(gue(), ip(LB4), ip(OTHER4), &inner),
            ),
            (
                "IPIP to the removed address",
                to_us_ipip.clone(),
                PASS,
                to_us_ipip,
            ),
        ],
    );
    let report = lb_userspace::dataplane::decap::report(&h.pin_dir).unwrap();
    assert_eq!(report.addresses, vec![ip(OTHER4)]);
    assert_eq!(report.gue_port, 7000);
    assert_counts(
        &h,
        &[
            ("decap_gue", 2),
            ("pass_udp_other_port", 1),
            ("pass_other_host", 1),
        ],
    );
}

/// An independent statement of the documented verdicts (README, "Routed backends"): the
/// verdict, the output frame (for a pass) and the counter of any frame.
fn model(f: &[u8], us: &[IpAddr], port: u16) -> (u32, Vec<u8>, &'static str) {
    let pass = |r| (PASS, f.to_vec(), r);
    let drop = (DROP, Vec::new(), "drop_bad_inner");
    if f.len() < 14 {
        return pass("pass_not_ip");
    }
    let (proto, dst, outer_end): (u8, IpAddr, usize) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => {
            let ihl = (f.get(14).copied().unwrap_or(0) & 0x0f) as usize * 4;
            if f.len() < 34 || f[14] >> 4 != 4 || ihl < 20 {
                return pass("pass_bad_ip");
            }
            let dst: [u8; 4] = f[30..34].try_into().unwrap();
            if ![4, 41, 17].contains(&f[23]) {
                return pass("pass_not_encap");
            }
            if !us.contains(&dst.into()) {
                return pass("pass_other_host");
            }
            if ihl != 20 {
                return pass("pass_ip_options");
            }
            if u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0 {
                return pass("pass_fragment");
            }
            (f[23], dst.into(), 34)
        }
        0x86dd => {
            if f.len() < 54 || f[14] >> 4 != 6 {
                return pass("pass_bad_ip");
            }
            let dst: [u8; 16] = f[38..54].try_into().unwrap();
            if ![4, 41, 17].contains(&f[20]) {
                return pass("pass_not_encap");
            }
            (f[20], dst.into(), 54)
        }
        _ => return pass("pass_not_ip"),
    };
    if !us.contains(&dst) {
        return pass("pass_other_host");
    }
    let (inner, announced, counted) = match proto {
        17 if f.len() < outer_end + 8 => return pass("pass_bad_ip"),
        17 if u16::from_be_bytes([f[outer_end + 2], f[outer_end + 3]]) != port => {
            return pass("pass_udp_other_port")
        }
        17 => (outer_end + 8, 0, "decap_gue"),
        4 => (outer_end, 4, "decap_ipip"),
        _ => (outer_end, 6, "decap_ipip"),
    };
    let Some(&first) = f.get(inner) else {
        return drop;
    };
    let version = first >> 4;
    let need = match version {
        4 => 20,
        6 => 40,
        _ => return drop,
    };
    if (announced != 0 && version != announced) || f.len() < inner + need {
        return drop;
    }
    let mut out = f[..12].to_vec();
    out.extend_from_slice(if version == 4 { &[8, 0] } else { &[0x86, 0xdd] });
    out.extend_from_slice(&f[inner..]);
    (PASS, out, counted)
}

/// Generated frames, each checked against [`model`]: every truncation of encapsulated
/// frames of each kind, then mutated ones (header bytes the decision reads set to chosen
/// or random values, bytes flipped, cut or appended). Never aborted; the counters add up.
#[test]
fn generated_frames_meet_the_documented_verdicts() {
    let Some(h) = harness() else { return };
    let us = [ip(US4), ip(US6)];
    let other_port = Encap::Gue {
        sport: 1,
        dport: 53,
    };
    let mut base = Vec::new();
    for (src, dst) in [
        (ip(LB4), ip(US4)),
        (ip(LB6), ip(US6)),
        (ip(LB4), ip(OTHER4)),
        (ip(LB6), ip(OTHER6)),
    ] {
        for how in [Encap::Ipip, gue(), other_port] {
            for inner in [inner_tcp4(), inner_udp6()] {
                base.push(encap_frame(how, src, dst, &inner));
            }
        }
    }
    base.push(Frame::tcp(LB4, 1, US4, 22).bytes());
    base.push(Frame6::udp(LB6, 1, US6, 6080).bytes());
    base.push(arp_request());
    let mut frames = Vec::new();
    for b in &base {
        frames.extend((14..=b.len()).map(|n| b[..n].to_vec()));
    }
    let mut rng = fastrand::Rng::with_seed(1103);
    // Offsets the decision reads: ethertype, version/IHL, fragment field, protocol / next
    // header, UDP port (both families), inner first byte.
    let hot = [12, 13, 14, 20, 21, 23, 20, 36, 37, 56, 57, 34, 42, 54, 62];
    for _ in 0..20_000 {
        let mut f = base[rng.usize(..base.len())].clone();
        for _ in 0..rng.usize(1..4) {
            let at = if rng.bool() {
                hot[rng.usize(..hot.len())]
            } else {
                rng.usize(..f.len())
            };
            if at < f.len() {
                f[at] = match rng.u8(..4) {
                    0 => rng.u8(..),
                    1 => [4, 6, 17, 41, 0x45, 0x46, 0x60, 0x20][rng.usize(..8)],
                    2 => f[at] ^ (1 << rng.u8(..8)),
                    _ => (GUE_DEFAULT_PORT >> 8) as u8,
                };
            }
        }
        match rng.u8(..4) {
            0 => f.truncate(rng.usize(14..=f.len())),
            1 => f.extend((0..rng.usize(1..40)).map(|_| rng.u8(..))),
            _ => {}
        }
        frames.push(f);
    }
    let mut want: std::collections::BTreeMap<&str, u64> = Default::default();
    for f in &frames {
        let (verdict, output, counted) = model(f, &us, GUE_DEFAULT_PORT);
        let r = h.run(f).unwrap();
        assert_eq!(r.verdict, verdict, "verdict of {f:02x?} ({counted})");
        if verdict == PASS {
            assert_eq!(r.frame, output, "output of {f:02x?} ({counted})");
        }
        *want.entry(counted).or_default() += 1;
    }
    let want: Vec<(&str, u64)> = want.into_iter().collect();
    eprintln!("{} frames: {want:?}", frames.len());
    assert_counts(&h, &want);
    for reason in [
        "decap_ipip",
        "decap_gue",
        "drop_bad_inner",
        "pass_other_host",
    ] {
        assert!(
            want.iter().any(|(n, c)| *n == reason && *c > 100),
            "too few frames reached {reason}: {want:?}"
        );
    }
}
