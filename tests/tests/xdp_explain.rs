//! `lb explain` agrees with the program: for a few hundred generated 5-tuples across every
//! hash mode (5-tuple, CLIENT_IP_PROTO on a TCP and a UDP rule, CLIENT_IP on an all-ports
//! rule, CLIENT_IP_NO_DESTINATION with PER_SESSION tracking), a service with a failover
//! backend, rules without backends and addresses or ports without rules, the explanation
//! read from the pinned maps names the backend that BPF_PROG_TEST_RUN then sends the frame
//! to, before and after drains, unhealthy backends (TCP persists, UDP does not),
//! maintenance, failover, failback and the last-resort spread over unhealthy primaries.
//! IPv6 rules (5-tuple, PER_SESSION) sit beside the IPv4 ones.

use lb_common::{hash_mode, service_flags};
use lb_tests::{
    packet::{Frame, Frame6},
    root_or_skip,
    xdp::XdpHarness,
    xdp_cases::{
        backend, backend6, mac, service, vip, vip6, CLIENT6, DROP, OTHER, OTHER6, PASS, RING, TX,
        VIP, VIP2, VIP6,
    },
};
use lb_userspace::dataplane::plan::L4Backend;
use lb_userspace::dataplane::{
    explain::{explain, report, Tuple, Verdict},
    plan::L4Plan,
};
use std::{collections::BTreeMap, net::IpAddr};

fn plan() -> L4Plan {
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
                "sess",
                hash_mode::CLIENT_IP_NO_DESTINATION,
                service_flags::PER_SESSION | service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "cipp",
                hash_mode::CLIENT_IP_PROTO,
                service_flags::PERSIST_TCP,
                three(),
            ),
            service(
                "fo",
                hash_mode::FIVE_TUPLE,
                // NEVER_PERSIST: flows leave an unhealthy primary, so failover gets some.
                0,
                vec![backend(1), backend(2), failover(4)],
            ),
            service("empty", hash_mode::FIVE_TUPLE, 0, vec![]),
            service(
                "five6",
                hash_mode::FIVE_TUPLE,
                service_flags::PERSIST_TCP,
                vec![backend6(1), backend6(2), backend6(3)],
            ),
            service(
                "sess6",
                hash_mode::CLIENT_IP_NO_DESTINATION,
                service_flags::PER_SESSION | service_flags::PERSIST_TCP,
                vec![backend6(1), backend6(2), backend6(3)],
            ),
        ],
        vips: vec![
            vip("web", VIP, 80, 6, "five"),
            vip("dns", VIP, 53, 17, "five"),
            vip("all", VIP2, 0, 6, "cip"),
            vip("sess", VIP, 9000, 6, "sess"),
            vip("void", VIP, 9999, 6, "empty"),
            vip("cipp-tcp", VIP, 7000, 6, "cipp"),
            vip("cipp-udp", VIP, 7000, 17, "cipp"),
            vip("fo", VIP, 8000, 6, "fo"),
            vip6("web6", VIP6, 80, 6, "five6"),
            vip6("dns6", VIP6, 53, 17, "five6"),
            vip6("sess6", VIP6, 9000, 6, "sess6"),
        ],
    }
}

/// A failover backend: out of the table until failover.
fn failover(i: u8) -> L4Backend {
    L4Backend {
        in_table: false,
        failover: true,
        ..backend(i)
    }
}

/// (proto, dst, dport) of every destination tried: eight rules, then two without one.
const DESTS: &[(u8, [u8; 4], u16)] = &[
    (6, VIP, 80),
    (17, VIP, 53),
    (6, VIP2, 443),
    (6, VIP2, 8080),
    (6, VIP, 9000),
    (6, VIP, 9999),
    (6, VIP, 7000),
    (17, VIP, 7000),
    (6, VIP, 8000),
    (6, VIP, 81),
    (6, OTHER, 80),
];

/// The IPv6 destinations: three rules, then a port and an address without one.
const DESTS6: &[(u8, [u8; 16], u16)] = &[
    (6, VIP6, 80),
    (17, VIP6, 53),
    (6, VIP6, 9000),
    (6, VIP6, 81),
    (6, OTHER6, 80),
];

fn tuples() -> Vec<Tuple> {
    let mut out = Vec::new();
    for c in 1..=5u8 {
        for p in 0..5u16 {
            for &(proto, dst, dport) in DESTS {
                out.push(Tuple {
                    proto,
                    src: [10, 0, 1, c].into(),
                    sport: 40000 + p * 7,
                    dst: dst.into(),
                    dport,
                });
            }
            for &(proto, dst, dport) in DESTS6 {
                let mut src = CLIENT6;
                src[14] = c;
                out.push(Tuple {
                    proto,
                    src: src.into(),
                    sport: 40000 + p * 7,
                    dst: dst.into(),
                    dport,
                });
            }
        }
    }
    out
}

fn frame(t: &Tuple) -> Vec<u8> {
    match (t.src, t.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let (s, d) = (s.octets(), d.octets());
            if t.proto == 6 {
                Frame::tcp(s, t.sport, d, t.dport).bytes()
            } else {
                Frame::udp(s, t.sport, d, t.dport).bytes()
            }
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let (s, d) = (s.octets(), d.octets());
            if t.proto == 6 {
                Frame6::tcp(s, t.sport, d, t.dport).bytes()
            } else {
                Frame6::udp(s, t.sport, d, t.dport).bytes()
            }
        }
        _ => panic!("mixed families in {t:?}"),
    }
}

/// Whether a plan backend is backend `i` of either family (same position, both MACs).
fn is(b: &lb_userspace::dataplane::plan::L4Backend, i: u8) -> bool {
    b.mac == Some(mac(i)) || b.mac == Some(mac(0x60 + i))
}

/// Explains then runs every tuple; returns how many were decided each way.
fn agree(h: &XdpHarness, phase: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for t in tuples() {
        let x = explain(&h.pin_dir, t).unwrap();
        let r = h.run(&frame(&t)).unwrap();
        let what = format!("{phase}: {t:?}\n{x:#?}");
        match x.verdict {
            Verdict::Pass => assert_eq!(r.verdict, PASS, "{what}"),
            Verdict::Drop => assert_eq!(r.verdict, DROP, "{what}"),
            Verdict::Abort => panic!("abort explained: {what}"),
            Verdict::Forward => {
                assert_eq!(r.verdict, TX, "{what}");
                let to = match x.backend {
                    Some(IpAddr::V4(b)) => mac(b.octets()[3] - 10),
                    Some(IpAddr::V6(b)) => mac(0x60 + b.octets()[15] - 0x10),
                    None => panic!("forward without a backend: {what}"),
                };
                assert_eq!(&r.frame[0..6], &to, "{what}");
            }
        }
        let key = match x.verdict {
            Verdict::Forward => x.decided_by.to_string(),
            v => format!("{v:?}"),
        };
        *seen.entry(key).or_default() += 1;
        if x.steps.iter().any(|s| s.contains("backend is draining")) {
            *seen.entry("kept by a drain".into()).or_default() += 1;
        }
        for (step, what) in [
            ("persists connections", "kept by persistence"),
            (
                "a failover backend: failover is active",
                "put there by failover",
            ),
            (
                "failover is active: new flows",
                "kept on a primary during failover",
            ),
            (
                "failover ended",
                "kept on a failover backend after failback",
            ),
            ("last resort", "last resort"),
        ] {
            if x.steps.iter().any(|s| s.contains(step)) {
                *seen.entry(what.into()).or_default() += 1;
            }
        }
    }
    seen
}

#[test]
fn explain_agrees_with_the_program_across_modes_drains_and_failures() {
    if !root_or_skip("xdp explain") {
        return;
    }
    let mut h = XdpHarness::with_services(RING, 8).unwrap();
    let mut p = plan();
    h.apply(&p).unwrap();
    let n = tuples().len();
    assert!(n >= 200, "{n} tuples");

    // Fresh tables: every forwarded flow is a Maglev choice (sessions share entries once
    // their first flow made one).
    let fresh = agree(&h, "fresh");
    assert!(fresh.get("maglev").copied().unwrap_or(0) >= 50, "{fresh:?}");
    assert!(
        fresh.contains_key("Drop") && fresh.contains_key("Pass"),
        "{fresh:?}"
    );
    assert!(fresh.contains_key("session entry"), "{fresh:?}");

    // The same flows again: they follow their entries.
    let again = agree(&h, "again");
    assert!(
        again.get("connection table").copied().unwrap_or(0) >= 50,
        "{again:?}"
    );

    // Drain backend 1 everywhere: tracked flows stay on it and the explanation says why.
    for s in &mut p.services {
        for b in &mut s.backends {
            if is(b, 1) {
                b.in_table = false;
                b.draining = true;
            }
        }
    }
    h.apply(&p).unwrap();
    let drained = agree(&h, "drained");
    assert!(drained.contains_key("kept by a drain"), "{drained:?}");
    let kept = tuples()
        .into_iter()
        .map(|t| explain(&h.pin_dir, t).unwrap())
        .find(|x| {
            x.decided_by == "connection table"
                && x.steps.iter().any(|s| s.contains("backend is draining"))
        })
        .unwrap();
    let text = report(&kept);
    assert!(text.contains("decided by the connection table"), "{text}");
    eprintln!("{text}");

    // Backend 2 unhealthy and out of the table (as failover leaves it): TCP flows persist,
    // UDP flows (no UDP persistence) move.
    for s in &mut p.services {
        for b in &mut s.backends {
            if is(b, 2) {
                b.in_table = false;
                b.healthy = false;
            }
        }
    }
    h.apply(&p).unwrap();
    let unhealthy = agree(&h, "unhealthy");
    assert!(
        unhealthy.contains_key("kept by persistence"),
        "{unhealthy:?}"
    );

    // Maintenance on backend 1: its flows leave at once.
    for s in &mut p.services {
        for b in &mut s.backends {
            if is(b, 1) {
                b.evict = true;
            }
        }
    }
    h.apply(&p).unwrap();
    let evicted = agree(&h, "evicted");
    assert!(!evicted.contains_key("kept by a drain"), "{evicted:?}");
    eprintln!("{n} tuples per phase: {fresh:?} {again:?} {drained:?} {unhealthy:?} {evicted:?}");

    // Every backend back; then failover in `fo`: b1 unhealthy, b2 healthy but below the
    // ratio, the failover backend b4 takes new flows while flows on b2 stay.
    let mut p = plan();
    h.apply(&p).unwrap();
    agree(&h, "restored");
    let fo = |p: &mut L4Plan, f: &dyn Fn(&mut L4Backend)| {
        for b in &mut p
            .services
            .iter_mut()
            .find(|s| s.name == "fo")
            .unwrap()
            .backends
        {
            f(b)
        }
    };
    fo(&mut p, &|b| {
        b.in_table = b.failover;
        b.healthy = b.mac != Some(mac(1));
    });
    h.apply(&p).unwrap();
    let failed_over = agree(&h, "failover");
    assert!(
        failed_over.contains_key("put there by failover"),
        "{failed_over:?}"
    );
    assert!(
        failed_over.contains_key("kept on a primary during failover"),
        "{failed_over:?}"
    );

    // Failback: the primaries healthy and in the table again; flows on b4 stay.
    fo(&mut p, &|b| {
        b.in_table = !b.failover;
        b.healthy = true;
    });
    h.apply(&p).unwrap();
    let failed_back = agree(&h, "failback");
    assert!(
        failed_back.contains_key("kept on a failover backend after failback"),
        "{failed_back:?}"
    );

    // Nothing healthy in `fo`: the table holds the unhealthy primaries (last resort).
    fo(&mut p, &|b| {
        b.in_table = !b.failover;
        b.healthy = false;
        b.evict = b.failover;
    });
    h.apply(&p).unwrap();
    let last = agree(&h, "last resort");
    assert!(last.contains_key("last resort"), "{last:?}");
    eprintln!("{failed_over:?} {failed_back:?} {last:?}");
}

/// CLIENT_IP_PROTO hashes the client address, the VIP and the protocol: every source port of
/// one client lands on one backend, and TCP and UDP from one client may land apart; the
/// explanation names the hashed fields and agrees with the program.
#[test]
fn client_ip_proto_keeps_ports_together_and_protocols_apart() {
    if !root_or_skip("xdp explain") {
        return;
    }
    let mut h = XdpHarness::new(RING).unwrap();
    h.apply(&plan()).unwrap();
    let mut apart = 0;
    for c in 1..=12u8 {
        let mut by_proto = BTreeMap::new();
        for proto in [6u8, 17] {
            for p in 0..6u16 {
                let t = Tuple {
                    proto,
                    src: [10, 0, 2, c].into(),
                    sport: 30000 + p * 101,
                    dst: VIP.into(),
                    dport: 7000,
                };
                let x = explain(&h.pin_dir, t).unwrap();
                assert_eq!(x.affinity, Some("CLIENT_IP_PROTO"));
                assert!(x.hashed_fields.contains(&"protocol"), "{x:?}");
                let r = h.run(&frame(&t)).unwrap();
                assert_eq!(r.verdict, TX, "{x:?}");
                let b = x.backend.unwrap();
                let IpAddr::V4(v4) = b else { panic!() };
                assert_eq!(&r.frame[0..6], &mac(v4.octets()[3] - 10), "{x:?}");
                let first = *by_proto.entry(proto).or_insert(b);
                assert_eq!(first, b, "client {c} {proto}: ports split");
            }
        }
        if by_proto[&6] != by_proto[&17] {
            apart += 1;
        }
    }
    assert!(apart > 0, "TCP and UDP from every client landed together");
}
