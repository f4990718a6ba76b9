//! eBPF verdicts through BPF_PROG_TEST_RUN: each case is an input frame, the expected
//! verdict and the exact expected output frame. The expected backend of a new flow is
//! predicted independently from the shared flow hash and a Maglev table built in the test,
//! so a wrong hash field, slot or MAC shows up as a byte difference.

use lb_common::{hash_mode, service_flags};
use lb_tests::{
    packet::{arp_request, ipv6_udp, Frame, CLIENT_MAC},
    root_or_skip,
    xdp::XdpHarness,
    xdp_cases::*,
};
use lb_userspace::dataplane::plan::L4Plan;

fn harness() -> Option<(XdpHarness, L4Plan)> {
    if !root_or_skip("xdp fixtures") {
        return None;
    }
    let mut h = XdpHarness::new(RING).expect("load");
    let plan = base_plan();
    h.apply(&plan).expect("program maps");
    Some((h, plan))
}

#[test]
fn new_flows_are_forwarded_with_only_the_macs_changed() {
    let Some((h, plan)) = harness() else { return };
    let syn = Frame::tcp(CLIENT, 40000, VIP, 80);
    let udp = Frame::udp(CLIENT, 40001, VIP, 53);
    let mut opts = Frame::tcp(CLIENT, 40002, VIP, 80);
    opts.ip_options = vec![1, 1, 1, 0]; // NOP, NOP, NOP, EOL
    let any_port = Frame::tcp(CLIENT, 40003, VIP2, 12345);
    check(
        &h,
        &[
            Case {
                what: "TCP SYN to VIP",
                output: forwarded(&syn.bytes(), predict(&plan, "five", &syn)),
                input: syn.bytes(),
                verdict: TX,
            },
            Case {
                what: "UDP to VIP",
                output: forwarded(&udp.bytes(), predict(&plan, "five", &udp)),
                input: udp.bytes(),
                verdict: TX,
            },
            Case {
                what: "TCP with IP options to VIP",
                output: forwarded(&opts.bytes(), predict(&plan, "five", &opts)),
                input: opts.bytes(),
                verdict: TX,
            },
            Case {
                what: "TCP to an all-ports VIP",
                output: forwarded(&any_port.bytes(), predict(&plan, "cipp", &any_port)),
                input: any_port.bytes(),
                verdict: TX,
            },
        ],
    );
    assert_eq!(h.reason("tx").unwrap(), 4);
    assert_eq!(h.reason("seen_ip_options").unwrap(), 1);
}

#[test]
fn the_same_flow_stays_on_its_backend_through_the_connection_table() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let f = Frame::tcp(CLIENT, 41000, VIP, 80);
    let first = h.run(&f.bytes()).unwrap();
    assert_eq!(first.verdict, TX);
    let chosen: [u8; 6] = first.frame[0..6].try_into().unwrap();
    assert_eq!(chosen, predict(&plan, "five", &f));
    // Change the backend set so that Maglev would now send this flow elsewhere: drop the
    // chosen backend from the table but keep it in use (draining). The entry keeps it there.
    let drained = draining(&plan, chosen);
    h.apply(&drained).unwrap();
    for _ in 0..3 {
        let again = h.run(&f.bytes()).unwrap();
        assert_eq!(
            (again.verdict, &again.frame[0..6]),
            (TX, &chosen[..]),
            "established flow moved"
        );
    }
    // A new flow that Maglev would have given to the drained backend now goes elsewhere.
    let c = h.counters().unwrap();
    let vs = c.vip(0).unwrap();
    assert_eq!(vs.new_flows, 1);
    assert_eq!(vs.conn_hits, 3);
    let mut moved = 0;
    for port in 42000..42100u16 {
        let n = Frame::tcp(CLIENT, port, VIP, 80);
        let r = h.run(&n.bytes()).unwrap();
        assert_ne!(
            &r.frame[0..6],
            &chosen[..],
            "a new flow reached a draining backend"
        );
        assert_eq!(&r.frame[0..6], &predict(&drained, "five", &n)[..]);
        moved += 1;
    }
    assert_eq!(moved, 100);
}

#[test]
fn a_flow_whose_backend_is_removed_is_hashed_again() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let f = Frame::tcp(CLIENT, 43000, VIP, 80);
    let chosen: [u8; 6] = h.run(&f.bytes()).unwrap().frame[0..6].try_into().unwrap();
    let mut without = plan.clone();
    without.services[0]
        .backends
        .retain(|b| b.mac != Some(chosen));
    h.apply(&without).unwrap();
    let r = h.run(&f.bytes()).unwrap();
    assert_eq!(r.verdict, TX);
    assert_eq!(
        r.frame,
        forwarded(&f.bytes(), predict(&without, "five", &f))
    );
    assert_ne!(&r.frame[0..6], &chosen[..]);
}

#[test]
fn unhealthy_backend_keeps_tcp_flows_and_loses_udp_flows() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    // Find a TCP and a UDP flow that land on the same backend.
    let tcp = Frame::tcp(CLIENT, 44000, VIP, 80);
    let target = predict(&plan, "five", &tcp);
    let udp = (44000..45000u16)
        .map(|p| Frame::udp(CLIENT, p, VIP, 53))
        .find(|u| predict(&plan, "five", u) == target)
        .unwrap();
    assert_eq!(&h.run(&tcp.bytes()).unwrap().frame[0..6], &target[..]);
    assert_eq!(&h.run(&udp.bytes()).unwrap().frame[0..6], &target[..]);
    let mut sick = plan.clone();
    for b in &mut sick.services[0].backends {
        if b.mac == Some(target) {
            b.healthy = false;
            b.in_table = false;
        }
    }
    h.apply(&sick).unwrap();
    // DEFAULT_FOR_PROTOCOL with per-connection tracking: TCP persists, UDP never does.
    assert_eq!(&h.run(&tcp.bytes()).unwrap().frame[0..6], &target[..]);
    let moved = h.run(&udp.bytes()).unwrap();
    assert_eq!(
        moved.frame,
        forwarded(&udp.bytes(), predict(&sick, "five", &udp))
    );
    assert_ne!(&moved.frame[0..6], &target[..]);
}

#[test]
fn affinity_modes_hash_the_right_fields() {
    let Some((h, plan)) = harness() else { return };
    // CLIENT_IP: many source ports of one client land together, on both VIPs of the service
    // as predicted from (src, dst) alone.
    let first = h
        .run(&Frame::tcp(CLIENT, 50000, VIP, 8080).bytes())
        .unwrap();
    for port in 50001..50050u16 {
        let f = Frame::tcp(CLIENT, port, VIP, 8080);
        let r = h.run(&f.bytes()).unwrap();
        assert_eq!(
            r.frame[0..6],
            first.frame[0..6],
            "CLIENT_IP split one client"
        );
        assert_eq!(r.frame, forwarded(&f.bytes(), predict(&plan, "cip", &f)));
    }
    let b = Frame::tcp(CLIENT, 50000, VIP2, 8080);
    assert_eq!(
        h.run(&b.bytes()).unwrap().frame,
        forwarded(&b.bytes(), predict(&plan, "cip", &b))
    );
    // CLIENT_IP_PROTO: any destination port of the all-ports VIP, same backend.
    let p0 = h.run(&Frame::tcp(CLIENT, 1, VIP2, 1).bytes()).unwrap();
    for port in [22u16, 80, 443, 5000, 65535] {
        let r = h
            .run(&Frame::tcp(CLIENT, port, VIP2, port).bytes())
            .unwrap();
        assert_eq!(
            r.frame[0..6],
            p0.frame[0..6],
            "CLIENT_IP_PROTO split by port"
        );
    }
    // Different clients spread (the hash does use the source address).
    let mut seen = std::collections::BTreeSet::new();
    for i in 1..60u8 {
        let r = h
            .run(&Frame::tcp([10, 0, 1, i], 1000, VIP, 8080).bytes())
            .unwrap();
        seen.insert(r.frame[0..6].to_vec());
    }
    assert_eq!(
        seen.len(),
        3,
        "CLIENT_IP did not spread clients over 3 backends"
    );
    // NONE (5-tuple): one client's source ports spread over all backends.
    let mut seen = std::collections::BTreeSet::new();
    for port in 51000..51060u16 {
        let r = h.run(&Frame::tcp(CLIENT, port, VIP, 80).bytes()).unwrap();
        seen.insert(r.frame[0..6].to_vec());
    }
    assert_eq!(seen.len(), 3, "5-tuple hashing ignored the source port");
}

#[test]
fn client_ip_no_destination_ignores_the_vip() {
    if !root_or_skip("xdp fixtures") {
        return;
    }
    let mut h = XdpHarness::new(RING).unwrap();
    let plan = L4Plan {
        services: vec![service(
            "nodst",
            hash_mode::CLIENT_IP_NO_DESTINATION,
            0,
            vec![backend(1), backend(2), backend(3)],
        )],
        vips: vec![
            vip("a", VIP, 80, 6, "nodst"),
            vip("b", VIP2, 443, 6, "nodst"),
        ],
    };
    h.apply(&plan).unwrap();
    for i in 1..30u8 {
        let c = [10, 0, 2, i];
        let a = h
            .run(&Frame::tcp(c, 1000 + i as u16, VIP, 80).bytes())
            .unwrap();
        let b = h.run(&Frame::tcp(c, 2000, VIP2, 443).bytes()).unwrap();
        assert_eq!(
            a.frame[0..6],
            b.frame[0..6],
            "one client, two VIPs, two backends"
        );
    }
}

#[test]
fn traffic_not_for_a_vip_passes_unchanged() {
    let Some((h, _)) = harness() else { return };
    let not_vip = Frame::tcp(CLIENT, 40000, OTHER, 80).bytes();
    let wrong_port = Frame::tcp(CLIENT, 40000, VIP, 81).bytes();
    let wrong_proto = Frame::udp(CLIENT, 40000, VIP, 80).bytes();
    let mut icmp = Frame::udp(CLIENT, 0, VIP, 0);
    icmp.proto = 1;
    let icmp = icmp.bytes();
    check(
        &h,
        &[
            Case {
                what: "TCP to another address",
                output: not_vip.clone(),
                input: not_vip,
                verdict: PASS,
            },
            Case {
                what: "TCP to a VIP address, other port",
                output: wrong_port.clone(),
                input: wrong_port,
                verdict: PASS,
            },
            Case {
                what: "UDP to a TCP-only VIP port",
                output: wrong_proto.clone(),
                input: wrong_proto,
                verdict: PASS,
            },
            Case {
                what: "ICMP to a VIP",
                output: icmp.clone(),
                input: icmp,
                verdict: PASS,
            },
            Case {
                what: "ARP",
                output: arp_request(),
                input: arp_request(),
                verdict: PASS,
            },
            Case {
                what: "IPv6 not to a VIP",
                output: ipv6_udp(),
                input: ipv6_udp(),
                verdict: PASS,
            },
        ],
    );
    // The IPv6 frame is TCP/UDP to an address without a VIP (IPv6 cases: xdp_ipv6).
    assert_eq!(h.reason("pass_not_vip").unwrap(), 4);
    assert_eq!(h.reason("pass_not_tcp_udp").unwrap(), 1);
    assert_eq!(h.reason("pass_not_ip").unwrap(), 1);
}

#[test]
fn malformed_packets_get_their_documented_verdicts() {
    let Some((h, _)) = harness() else { return };
    let syn = Frame::tcp(CLIENT, 40000, VIP, 80).bytes();
    // The kernel refuses frames shorter than an Ethernet header before any XDP program
    // runs (test runs get EINVAL; drivers never deliver them), so the shortest frame the
    // program can meet is a bare Ethernet header.
    assert!(h.run(&syn[..10]).is_err(), "a 10-byte frame reached XDP");
    let eth_only = syn[..14].to_vec();
    let short_ip = syn[..14 + 12].to_vec();
    let short_tcp_vip = syn[..14 + 20 + 10].to_vec();
    let short_tcp_other = Frame::tcp(CLIENT, 40000, OTHER, 80).bytes()[..14 + 20 + 10].to_vec();
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    let mut bad_version = syn.clone();
    bad_version[14] = 0x65;
    let mut bad_len = syn.clone();
    bad_len[16..18].copy_from_slice(&10u16.to_be_bytes());
    let mut first_frag = Frame::udp(CLIENT, 40000, VIP, 53);
    first_frag.frag = 0x2000; // MF, offset 0
    let mut later_frag = Frame::udp(CLIENT, 40000, VIP, 53);
    later_frag.frag = 0x0010; // offset 128 bytes
    let mut frag_other = Frame::udp(CLIENT, 40000, OTHER, 53);
    frag_other.frag = 0x2000;
    let mut opts_truncated = Frame::tcp(CLIENT, 40000, VIP, 80);
    opts_truncated.ip_options = vec![1; 40];
    let opts_truncated = opts_truncated.bytes()[..14 + 60 + 4].to_vec();
    check(
        &h,
        &[
            Case {
                what: "Ethernet header only",
                output: eth_only.clone(),
                input: eth_only,
                verdict: PASS,
            },
            Case {
                what: "truncated IPv4 header",
                output: short_ip.clone(),
                input: short_ip,
                verdict: PASS,
            },
            Case {
                what: "IHL 4",
                output: bad_ihl.clone(),
                input: bad_ihl,
                verdict: PASS,
            },
            Case {
                what: "IP version 6 in an IPv4 frame",
                output: bad_version.clone(),
                input: bad_version,
                verdict: PASS,
            },
            Case {
                what: "total length below header",
                output: bad_len.clone(),
                input: bad_len,
                verdict: PASS,
            },
            Case {
                what: "truncated TCP to a VIP",
                output: short_tcp_vip.clone(),
                input: short_tcp_vip,
                verdict: DROP,
            },
            Case {
                what: "truncated TCP elsewhere",
                output: short_tcp_other.clone(),
                input: short_tcp_other,
                verdict: PASS,
            },
            Case {
                what: "options past the end, to a VIP",
                output: opts_truncated.clone(),
                input: opts_truncated,
                verdict: DROP,
            },
            Case {
                what: "first fragment to a VIP",
                output: first_frag.bytes(),
                input: first_frag.bytes(),
                verdict: DROP,
            },
            Case {
                what: "later fragment to a VIP",
                output: later_frag.bytes(),
                input: later_frag.bytes(),
                verdict: DROP,
            },
            Case {
                what: "fragment elsewhere",
                output: frag_other.bytes(),
                input: frag_other.bytes(),
                verdict: PASS,
            },
        ],
    );
    assert_eq!(h.reason("pass_short_ip").unwrap(), 2);
    assert_eq!(h.reason("pass_bad_ip").unwrap(), 3);
    assert_eq!(h.reason("drop_short_l4").unwrap(), 2);
    assert_eq!(h.reason("drop_fragment").unwrap(), 2);
    assert_eq!(h.reason("tx").unwrap(), 0);
    assert_eq!(h.reason("abort_internal").unwrap(), 0);
    let _ = ABORTED;
}

#[test]
fn a_service_without_backends_drops_and_counts() {
    let Some((h, _)) = harness() else { return };
    let f = Frame::tcp(CLIENT, 40000, VIP, 9999).bytes();
    check(
        &h,
        &[Case {
            what: "VIP with no backend",
            output: f.clone(),
            input: f,
            verdict: DROP,
        }],
    );
    assert_eq!(h.reason("drop_no_backend").unwrap(), 1);
}

#[test]
fn table_swaps_are_whole() {
    // Every rebuild flips to a completely written table: after each of many changes, every
    // new flow goes exactly where a freshly built table says.
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let mut p = plan.clone();
    for round in 0..6u8 {
        p.services[0].backends = (1..=3 + round).map(backend).collect();
        h.apply(&p).unwrap();
        for port in 0..20u16 {
            let f = Frame::tcp([10, 9, round, 1], 30000 + port, VIP, 80);
            let r = h.run(&f.bytes()).unwrap();
            assert_eq!(
                r.frame,
                forwarded(&f.bytes(), predict(&p, "five", &f)),
                "round {round}"
            );
        }
    }
    let _ = CLIENT_MAC;
}

#[test]
fn an_established_flow_of_a_removed_vip_is_no_longer_forwarded() {
    // The fast path finds the entry without the VIP lookup; the VIP's generation must stop it.
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let f = Frame::tcp(CLIENT, 46000, VIP, 80);
    assert_eq!(h.run(&f.bytes()).unwrap().verdict, TX);
    let mut without = plan.clone();
    without.vips.retain(|v| v.name != "web");
    h.apply(&without).unwrap();
    let r = h.run(&f.bytes()).unwrap();
    assert_eq!(
        (r.verdict, r.frame),
        (PASS, f.bytes()),
        "a removed VIP kept forwarding"
    );
    // Back again: a fresh flow entry is made under the new generation.
    h.apply(&plan).unwrap();
    let r = h.run(&f.bytes()).unwrap();
    assert_eq!(r.frame, forwarded(&f.bytes(), predict(&plan, "five", &f)));
}

#[test]
fn per_session_tracking_keeps_a_session_on_its_backend() {
    if !root_or_skip("xdp fixtures") {
        return;
    }
    let mut h = XdpHarness::new(RING).unwrap();
    let three = || vec![backend(1), backend(2), backend(3)];
    let plan = L4Plan {
        services: vec![service(
            "sess",
            hash_mode::CLIENT_IP,
            service_flags::PER_SESSION,
            three(),
        )],
        vips: vec![vip("s", VIP, 0, 6, "sess")],
    };
    h.apply(&plan).unwrap();
    let first = Frame::tcp(CLIENT, 47000, VIP, 80);
    let r = h.run(&first.bytes()).unwrap();
    let chosen: [u8; 6] = r.frame[0..6].try_into().unwrap();
    assert_eq!(chosen, predict(&plan, "sess", &first));
    // Take the backend out of the table (draining): the whole session — other ports of
    // the same client — stays on it through its one session entry.
    let drained = draining(&plan, chosen);
    h.apply(&drained).unwrap();
    for port in [47001u16, 47002, 8080] {
        let r = h.run(&Frame::tcp(CLIENT, port, VIP, port).bytes()).unwrap();
        assert_eq!(&r.frame[0..6], &chosen[..], "the session left its backend");
    }
    // Another client starts a new session elsewhere.
    let other = Frame::tcp([10, 0, 3, 3], 1000, VIP, 80);
    let r = h.run(&other.bytes()).unwrap();
    assert_eq!(
        r.frame,
        forwarded(&other.bytes(), predict(&drained, "sess", &other))
    );
    let vs = h.counters().unwrap().vip(0).unwrap();
    assert_eq!((vs.new_flows, vs.conn_hits), (2, 3));
}

#[test]
fn icmp_fragmentation_needed_reaches_the_flows_backend() {
    let Some((h, plan)) = harness() else { return };
    let flow = Frame::tcp(CLIENT, 48000, VIP, 80);
    let owner = h.run(&flow.bytes()).unwrap().frame[0..6].to_vec();
    // The backend's reply (VIP:80 → client) was too big for a router on the way back.
    let reply = Frame::tcp(VIP, 80, CLIENT, 48000).bytes();
    let router = [10, 0, 0, 254];
    let icmp = lb_tests::packet::icmp_frag_needed(router, VIP, &reply, 1400);
    // A quoted flow the balancer never saw is hashed like its first packet would be.
    let unseen_reply = Frame::tcp(VIP, 80, CLIENT, 48001).bytes();
    let unseen = lb_tests::packet::icmp_frag_needed(router, VIP, &unseen_reply, 1400);
    let unseen_flow = Frame::tcp(CLIENT, 48001, VIP, 80);
    // Quoting something that is not a VIP flow, or ICMP of another kind: untouched.
    let foreign_reply = Frame::tcp(OTHER, 80, CLIENT, 48000).bytes();
    let foreign = lb_tests::packet::icmp_frag_needed(router, VIP, &foreign_reply, 1400);
    let mut echo = icmp.clone();
    echo[34] = 8; // echo request
    echo[35] = 0;
    check(
        &h,
        &[
            Case {
                what: "frag-needed about an established flow",
                output: forwarded(&icmp, owner.clone().try_into().unwrap()),
                input: icmp.clone(),
                verdict: TX,
            },
            Case {
                what: "frag-needed about an unseen VIP flow",
                output: forwarded(&unseen, predict(&plan, "five", &unseen_flow)),
                input: unseen.clone(),
                verdict: TX,
            },
            Case {
                what: "frag-needed quoting a non-VIP flow",
                output: foreign.clone(),
                input: foreign,
                verdict: PASS,
            },
            Case {
                what: "ICMP echo to a VIP",
                output: echo.clone(),
                input: echo,
                verdict: PASS,
            },
        ],
    );
    assert_eq!(h.reason("seen_icmp_to_backend").unwrap(), 2);
    // ICMP errors are not flows: the unseen flow got no connection entry.
    let vs = h.counters().unwrap().vip(0).unwrap();
    assert_eq!(vs.new_flows, 1);
}
