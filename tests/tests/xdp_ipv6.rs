//! IPv6 verdicts through BPF_PROG_TEST_RUN, as `xdp_fixtures` does for IPv4: input frame,
//! expected verdict, exact expected output frame. Backends of new flows are predicted
//! independently (shared flow hash, Maglev table built here). The plan holds IPv6 VIPs and
//! one IPv4 VIP, so both families share the maps as they do in a running agent.

use lb_common::hash_mode;
use lb_tests::{
    packet::{
        icmpv6_packet_too_big, ndp_solicitation, Frame, Frame6, EXT_DEST_OPTS, EXT_FRAGMENT,
        EXT_HOP_BY_HOP, EXT_ROUTING,
    },
    root_or_skip,
    xdp::XdpHarness,
    xdp_cases::*,
};
use lb_userspace::dataplane::plan::L4Plan;

fn harness() -> Option<(XdpHarness, L4Plan)> {
    if !root_or_skip("xdp IPv6 fixtures") {
        return None;
    }
    let mut h = XdpHarness::with_services(RING, 8).expect("load");
    let plan = plan_v6();
    h.apply(&plan).expect("program maps");
    Some((h, plan))
}

fn client(i: u8) -> [u8; 16] {
    let mut a = CLIENT6;
    a[14] = i;
    a
}

#[test]
fn tcp_and_udp_to_an_ipv6_vip_are_forwarded_with_only_the_macs_changed() {
    let Some((h, plan)) = harness() else { return };
    let syn = Frame6::tcp(CLIENT6, 40000, VIP6, 80);
    let udp = Frame6::udp(CLIENT6, 40001, VIP6, 53);
    let any_tcp = Frame6::tcp(CLIENT6, 40002, VIP6B, 12345);
    let any_udp = Frame6::udp(CLIENT6, 40003, VIP6B, 5353);
    let v4 = Frame::tcp(CLIENT, 40004, VIP, 80);
    let mut cases = Vec::new();
    for (what, f, svc) in [
        ("TCP SYN to an IPv6 VIP", &syn, "five6"),
        ("UDP to an IPv6 VIP", &udp, "five6"),
        ("TCP to an all-ports IPv6 VIP", &any_tcp, "cipp6"),
        ("UDP to an all-ports IPv6 VIP", &any_udp, "cipp6"),
    ] {
        let to = predict6(&plan, svc, f);
        assert!(to[5] > 0x60, "{what}: predicted an IPv6 backend's MAC");
        cases.push(Case {
            what,
            output: forwarded(&f.bytes(), to),
            input: f.bytes(),
            verdict: TX,
        });
    }
    cases.push(Case {
        what: "TCP to the IPv4 VIP beside them",
        output: forwarded(&v4.bytes(), predict(&plan, "five", &v4)),
        input: v4.bytes(),
        verdict: TX,
    });
    check(&h, &cases);
    assert_eq!(h.reason("tx").unwrap(), 5);
    assert_eq!(h.reason("conn_young_insert").unwrap(), 5);
    assert_eq!(h.reason("seen_ipv6_ext").unwrap(), 0);
}

#[test]
fn an_ipv6_flow_stays_on_its_draining_backend_and_new_flows_avoid_it() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let f = Frame6::tcp(CLIENT6, 41000, VIP6, 80);
    let first = h.run(&f.bytes()).unwrap();
    assert_eq!(first.verdict, TX);
    let chosen: [u8; 6] = first.frame[0..6].try_into().unwrap();
    assert_eq!(chosen, predict6(&plan, "five6", &f));
    let drained = draining(&plan, chosen);
    h.apply(&drained).unwrap();
    let mut ack = f.clone();
    ack.tcp_flags = 0x10;
    for _ in 0..3 {
        let r = h.run(&ack.bytes()).unwrap();
        assert_eq!((r.verdict, &r.frame[0..6]), (TX, &chosen[..]), "flow moved");
    }
    for port in 42000..42100u16 {
        let n = Frame6::tcp(CLIENT6, port, VIP6, 80);
        let r = h.run(&n.bytes()).unwrap();
        assert_ne!(
            &r.frame[0..6],
            &chosen[..],
            "a new flow reached a draining backend"
        );
        assert_eq!(&r.frame[0..6], &predict6(&drained, "five6", &n)[..]);
    }
    // Established (promoted into CONNS) and still on its backend.
    h.promote(&ack.bytes()).unwrap();
    let r = h.run(&ack.bytes()).unwrap();
    assert_eq!(&r.frame[0..6], &chosen[..]);
    assert_eq!(h.reason("conn_miss_mid_flow").unwrap(), 0);
}

#[test]
fn ipv6_affinity_modes_hash_their_fields() {
    let Some((h, plan)) = harness() else { return };
    // CLIENT_IP: one client's connections share a backend whatever the ports.
    for c in 1..=20u8 {
        let mut seen = None;
        for port in 0..4u16 {
            let f = Frame6::tcp(client(c), 50000 + port * 11, VIP6, 8080);
            let r = h.run(&f.bytes()).unwrap();
            assert_eq!(r.verdict, TX);
            assert_eq!(&r.frame[0..6], &predict6(&plan, "cip6", &f)[..]);
            let b = r.frame[0..6].to_vec();
            assert_eq!(*seen.get_or_insert(b.clone()), b, "client {c} split");
        }
    }
    // CLIENT_IP_PROTO: the protocol is hashed, so TCP and UDP of one client may differ;
    // over 40 clients some must.
    let mut differ = 0;
    for c in 1..=40u8 {
        let t = Frame6::tcp(client(c), 1000, VIP6B, 7000);
        let u = Frame6::udp(client(c), 1000, VIP6B, 7000);
        let rt = h.run(&t.bytes()).unwrap();
        let ru = h.run(&u.bytes()).unwrap();
        assert_eq!(&rt.frame[0..6], &predict6(&plan, "cipp6", &t)[..]);
        assert_eq!(&ru.frame[0..6], &predict6(&plan, "cipp6", &u)[..]);
        differ += usize::from(rt.frame[0..6] != ru.frame[0..6]);
    }
    assert!(differ > 0, "TCP and UDP of every client landed together");
    // The prediction masks ports for CLIENT_IP: the hash really ignores them.
    let mut k = lb_common::FlowKey {
        src: client(1),
        dst: VIP6,
        sport_be: 1,
        dport_be: 2,
        proto: 6,
        family: 6,
        ..Default::default()
    };
    lb_common::flow_hash::mask_for_hash(&mut k, hash_mode::CLIENT_IP);
    assert_eq!((k.sport_be, k.proto), (0, 0));
}

#[test]
fn per_session_tracking_keeps_an_ipv6_client_on_its_backend() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let f = Frame6::tcp(client(7), 30000, VIP6, 9000);
    let owner: [u8; 6] = h.run(&f.bytes()).unwrap().frame[0..6].try_into().unwrap();
    let mut drained = plan.clone();
    for b in &mut drained.services[3].backends {
        if b.mac == Some(owner) {
            b.in_table = false;
            b.draining = true;
        }
    }
    h.apply(&drained).unwrap();
    // A new connection of the same session (another port) follows the session entry.
    let g = Frame6::tcp(client(7), 30001, VIP6, 9000);
    assert_eq!(&h.run(&g.bytes()).unwrap().frame[0..6], &owner[..]);
    // Another client goes by the table, never to the draining backend.
    for c in 100..140u8 {
        let n = Frame6::tcp(client(c), 30000, VIP6, 9000);
        assert_ne!(&h.run(&n.bytes()).unwrap().frame[0..6], &owner[..]);
    }
}

#[test]
fn non_vip_ipv6_and_ndp_pass_untouched() {
    let Some((h, _)) = harness() else { return };
    let other = Frame6::tcp(CLIENT6, 40000, OTHER6, 80).bytes();
    let other_udp = Frame6::udp(CLIENT6, 40000, OTHER6, 53).bytes();
    // A VIP address on a port without a rule: passes (no rule, as for IPv4).
    let no_rule = Frame6::tcp(CLIENT6, 40000, VIP6, 81).bytes();
    let ns = ndp_solicitation(CLIENT6, VIP6);
    let echo = Frame6::icmp(CLIENT6, VIP6, 128, 0, [0, 1, 0, 1], b"ping").bytes();
    let na = Frame6::icmp(VIP6, CLIENT6, 136, 0, [0x60, 0, 0, 0], &VIP6).bytes();
    let mut cases = Vec::new();
    for (what, f) in [
        ("TCP to another address", other),
        ("UDP to another address", other_udp),
        ("TCP to a VIP address on a port without a rule", no_rule),
        ("NDP neighbour solicitation for the VIP", ns),
        ("NDP neighbour advertisement", na),
        ("ICMPv6 echo to a VIP", echo),
    ] {
        cases.push(Case {
            what,
            output: f.clone(),
            input: f,
            verdict: PASS,
        });
    }
    check(&h, &cases);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 3);
    assert_eq!(h.reason("pass_not_tcp_udp").unwrap(), 3);
    assert_eq!(h.reason("tx").unwrap(), 0);
}

#[test]
fn extension_headers_are_walked_up_to_the_documented_bound() {
    let Some((h, plan)) = harness() else { return };
    let with = |ext: Vec<(u8, u8)>, dst, port| {
        let mut f = Frame6::tcp(CLIENT6, port, dst, 80);
        f.ext = ext;
        f
    };
    let four = vec![
        (EXT_HOP_BY_HOP, 0),
        (EXT_DEST_OPTS, 1),
        (EXT_ROUTING, 2),
        (EXT_DEST_OPTS, 0),
    ];
    let walked = with(four.clone(), VIP6, 40100);
    let one = with(vec![(EXT_DEST_OPTS, 3)], VIP6, 40101);
    let mut five = four.clone();
    five.push((EXT_DEST_OPTS, 0));
    let too_many = with(five.clone(), VIP6, 40102).bytes();
    let too_many_other = with(five, OTHER6, 40103).bytes();
    let mut udp = Frame6::udp(CLIENT6, 40104, VIP6, 53);
    udp.ext = vec![(EXT_HOP_BY_HOP, 0)];
    check(
        &h,
        &[
            Case {
                what: "TCP after four extension headers",
                output: forwarded(&walked.bytes(), predict6(&plan, "five6", &walked)),
                input: walked.bytes(),
                verdict: TX,
            },
            Case {
                what: "TCP after one long destination-options header",
                output: forwarded(&one.bytes(), predict6(&plan, "five6", &one)),
                input: one.bytes(),
                verdict: TX,
            },
            Case {
                what: "UDP after hop-by-hop",
                output: forwarded(&udp.bytes(), predict6(&plan, "five6", &udp)),
                input: udp.bytes(),
                verdict: TX,
            },
            Case {
                what: "five extension headers to a VIP address",
                output: too_many.clone(),
                input: too_many,
                verdict: DROP,
            },
            Case {
                what: "five extension headers to another address",
                output: too_many_other.clone(),
                input: too_many_other,
                verdict: PASS,
            },
        ],
    );
    assert_eq!(h.reason("seen_ipv6_ext").unwrap(), 3);
    assert_eq!(h.reason("drop_ext_headers").unwrap(), 1);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 1);
}

#[test]
fn fragments_to_a_vip_are_dropped_and_counted() {
    let Some((h, _)) = harness() else { return };
    let frag = |dst, off_flags: u16, ext: Vec<(u8, u8)>| {
        let mut f = Frame6::udp(CLIENT6, 40200, dst, 53);
        f.ext = ext;
        f.frag = off_flags;
        f.bytes()
    };
    let first = frag(VIP6, 0x0001, vec![(EXT_FRAGMENT, 0)]); // offset 0, M set
    let later = frag(VIP6, 0x00a8, vec![(EXT_FRAGMENT, 0)]); // offset 21 * 8, last
    let after_hbh = frag(VIP6, 0x0001, vec![(EXT_HOP_BY_HOP, 0), (EXT_FRAGMENT, 0)]);
    let other = frag(OTHER6, 0x0001, vec![(EXT_FRAGMENT, 0)]);
    let mut cases = Vec::new();
    for (what, f, verdict) in [
        ("first fragment to a VIP", first, DROP),
        ("later fragment to a VIP", later, DROP),
        ("fragment after hop-by-hop to a VIP", after_hbh, DROP),
        ("fragment to another address", other, PASS),
    ] {
        cases.push(Case {
            what,
            output: f.clone(),
            input: f,
            verdict,
        });
    }
    check(&h, &cases);
    assert_eq!(h.reason("drop_fragment").unwrap(), 3);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 1);
}

#[test]
fn truncated_ipv6_headers_get_their_documented_verdicts() {
    let Some((h, _)) = harness() else { return };
    let syn = Frame6::tcp(CLIENT6, 40300, VIP6, 80).bytes();
    let other = Frame6::tcp(CLIENT6, 40300, OTHER6, 80).bytes();
    let mut ext = Frame6::tcp(CLIENT6, 40301, VIP6, 80);
    ext.ext = vec![(EXT_HOP_BY_HOP, 2)];
    let ext = ext.bytes();
    let mut bad_version = syn.clone();
    bad_version[14] = 0x40;
    let cases = [
        ("IPv6 header cut short", syn[..14 + 30].to_vec(), PASS),
        ("bad IP version in an IPv6 frame", bad_version, PASS),
        (
            "TCP header cut short, to a VIP",
            syn[..14 + 40 + 10].to_vec(),
            DROP,
        ),
        (
            "TCP header cut short, to another address",
            other[..14 + 40 + 10].to_vec(),
            PASS,
        ),
        (
            "extension header cut short, to a VIP",
            ext[..14 + 40 + 1].to_vec(),
            DROP,
        ),
        (
            "TCP cut after a hop-by-hop header, to a VIP",
            ext[..14 + 40 + 24 + 4].to_vec(),
            DROP,
        ),
    ];
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(what, f, verdict)| Case {
            what,
            output: f.clone(),
            input: f,
            verdict,
        })
        .collect();
    check(&h, &cases);
    assert_eq!(h.reason("pass_short_ip").unwrap(), 1);
    assert_eq!(h.reason("pass_bad_ip").unwrap(), 1);
    assert_eq!(h.reason("drop_short_l4").unwrap(), 2);
    assert_eq!(h.reason("drop_ext_headers").unwrap(), 1);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 1);
}

#[test]
fn packet_too_big_about_a_flow_goes_to_its_backend_even_after_a_drain() {
    let Some((mut h, plan)) = harness() else {
        return;
    };
    let flow = Frame6::tcp(CLIENT6, 48000, VIP6, 80);
    let owner: [u8; 6] = h.run(&flow.bytes()).unwrap().frame[0..6]
        .try_into()
        .unwrap();
    // Drained: the Maglev table no longer names the owner; the connection table does.
    let drained = draining(&plan, owner);
    h.apply(&drained).unwrap();
    // The backend's reply (VIP6:80 → client) was too big for a router on the way back.
    let reply = Frame6::tcp(VIP6, 80, CLIENT6, 48000).bytes();
    let ptb = icmpv6_packet_too_big(ROUTER6, VIP6, &reply, 1280);
    // A quoted flow the balancer never saw is hashed like its first packet would be.
    let unseen = icmpv6_packet_too_big(
        ROUTER6,
        VIP6,
        &Frame6::tcp(VIP6, 80, CLIENT6, 48001).bytes(),
        1280,
    );
    let unseen_flow = Frame6::tcp(CLIENT6, 48001, VIP6, 80);
    // Quoting a non-VIP flow, or a quote whose source is not the outer destination.
    let foreign = icmpv6_packet_too_big(
        ROUTER6,
        VIP6,
        &Frame6::tcp(OTHER6, 80, CLIENT6, 48000).bytes(),
        1280,
    );
    let elsewhere = icmpv6_packet_too_big(ROUTER6, OTHER6, &reply, 1280);
    check(
        &h,
        &[
            Case {
                what: "packet too big about a flow whose backend is draining",
                output: forwarded(&ptb, owner),
                input: ptb.clone(),
                verdict: TX,
            },
            Case {
                what: "packet too big about an unseen VIP flow",
                output: forwarded(&unseen, predict6(&drained, "five6", &unseen_flow)),
                input: unseen.clone(),
                verdict: TX,
            },
            Case {
                what: "packet too big quoting a non-VIP flow",
                output: foreign.clone(),
                input: foreign,
                verdict: PASS,
            },
            Case {
                what: "packet too big to an address the quote does not come from",
                output: elsewhere.clone(),
                input: elsewhere,
                verdict: PASS,
            },
        ],
    );
    assert_eq!(h.reason("seen_icmp_to_backend").unwrap(), 2);
    // ICMP errors are not flows: no entry for the unseen flow, the owner's untouched.
    assert_eq!(h.conn_entries(true).unwrap(), 1);
}
