//! Fixtures for the verdict branches the first fixtures left out (IPv4): truncated UDP, bad
//! inner headers of ICMP errors, idle expiry, the EVICT flag, slot generation reuse, a young
//! slot taken over, the VIP check before any table access, and the abort paths. Each case is an
//! input frame, the expected verdict and the exact expected output frame.
//!
//! Some branches depend on time or on map states no packet can produce (an entry idle for
//! ten minutes, an inconsistent map): those tests write the entry or the map value from
//! userspace first — the same bytes the program or the programmer would have written — and
//! then send the packet.

use aya::maps::{Array, HashMap, MapData};
use lb_common::{names, ConnEntry, FlowKey, Settings, VipKey, VipMeta};
use lb_tests::{
    packet::{icmp_frag_needed, Frame},
    root_or_skip,
    xdp::XdpHarness,
    xdp_cases::*,
};
use lb_userspace::dataplane::{loader::open_pinned, plan::L4Plan};

fn harness_with(table: u32) -> Option<(XdpHarness, L4Plan)> {
    if !root_or_skip("xdp fixtures") {
        return None;
    }
    let mut h = XdpHarness::with_conn_table(RING, table, 5000).expect("load");
    let plan = base_plan();
    h.apply(&plan).expect("program maps");
    Some((h, plan))
}

fn key(f: &Frame) -> FlowKey {
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

/// CLOCK_MONOTONIC_COARSE, the program's clock (`bpf_ktime_get_coarse_ns`).
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn ack(mut f: Frame) -> Frame {
    f.tcp_flags = 0x10;
    f
}

/// Two flows to VIP:80 that Maglev gives to different backends: (flow, other).
fn two_flows_on_different_backends(plan: &L4Plan) -> (Frame, Frame) {
    let a = Frame::tcp(CLIENT, 52000, VIP, 80);
    let b = (52001..53000u16)
        .map(|p| Frame::tcp(CLIENT, p, VIP, 80))
        .find(|b| predict(plan, "five", b) != predict(plan, "five", &a))
        .unwrap();
    (a, b)
}

/// Runs `other` once (the program writes its young entry) and returns that entry: the
/// exact value the program writes for a flow on `other`'s backend.
fn entry_of(h: &XdpHarness, other: &Frame) -> ConnEntry {
    assert_eq!(h.run(&other.bytes()).unwrap().verdict, TX);
    h.conn_get(true, &key(other)).unwrap()
}

#[test]
fn truncated_udp_to_a_vip_is_dropped_elsewhere_passed() {
    let Some((h, _)) = harness_with(4096) else {
        return;
    };
    let to_vip = Frame::udp(CLIENT, 40000, VIP, 53).bytes();
    let to_other = Frame::udp(CLIENT, 40000, OTHER, 53).bytes();
    let mut cases = Vec::new();
    // Every length from no UDP byte to 7 of the 8 header bytes.
    for cut in 0..8 {
        let v = to_vip[..14 + 20 + cut].to_vec();
        let o = to_other[..14 + 20 + cut].to_vec();
        cases.push(Case {
            what: "truncated UDP header to a VIP",
            output: v.clone(),
            input: v,
            verdict: DROP,
        });
        cases.push(Case {
            what: "truncated UDP header elsewhere",
            output: o.clone(),
            input: o,
            verdict: PASS,
        });
    }
    // A complete header with the payload cut short is forwarded: only the ports matter.
    let short_payload = to_vip[..14 + 20 + 8 + 2].to_vec();
    cases.push(Case {
        what: "UDP header complete, payload cut",
        output: forwarded(
            &short_payload,
            predict(&base_plan(), "five", &Frame::udp(CLIENT, 40000, VIP, 53)),
        ),
        input: short_payload,
        verdict: TX,
    });
    check(&h, &cases);
    assert_eq!(h.reason("drop_short_l4").unwrap(), 8);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 8);
    assert_eq!(h.reason("conn_young_insert").unwrap(), 1);
}

#[test]
fn icmp_errors_with_bad_inner_headers_pass_untouched() {
    let Some((h, _)) = harness_with(4096) else {
        return;
    };
    let router = [10, 0, 0, 254];
    let reply = Frame::tcp(VIP, 80, CLIENT, 48000).bytes();
    let good = icmp_frag_needed(router, VIP, &reply, 1400);
    // Offsets: ICMP at 34, the quoted IPv4 header at 42, its ports at 62.
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ICMP header truncated", good[..34 + 4].to_vec()),
        ("quoted IPv4 header truncated", good[..42 + 10].to_vec()),
        ("quoted ports missing", good[..62 + 2].to_vec()),
        ("quoted IPv4 version 6", edit(&|v| v[42] = 0x65)),
        ("quoted IHL 4", edit(&|v| v[42] = 0x44)),
        (
            "quoted IHL 15, options past the quote",
            edit(&|v| v[42] = 0x4f),
        ),
        (
            "quoted source is not the outer destination",
            edit(&|v| v[54..58].copy_from_slice(&OTHER)),
        ),
        ("quoted protocol ICMP", edit(&|v| v[51] = 1)),
        ("type 3 code 3 (port unreachable)", edit(&|v| v[35] = 3)),
        ("fragmented ICMP", edit(&|v| v[20] = 0x20)),
    ];
    let n = cases.len() as u64;
    let cases: Vec<Case> = cases
        .into_iter()
        .map(|(what, f)| Case {
            what,
            output: f.clone(),
            input: f,
            verdict: PASS,
        })
        .collect();
    check(&h, &cases);
    assert_eq!(h.reason("pass_not_tcp_udp").unwrap(), n);
    assert_eq!(h.reason("seen_icmp_to_backend").unwrap(), 0);
    assert_eq!(h.reason("tx").unwrap(), 0);
    // The well-formed one is forwarded (it shares the builders above).
    assert_eq!(h.run(&good).unwrap().verdict, TX);
}

#[test]
fn a_non_vip_packet_never_touches_the_connection_tables() {
    // A usable entry is planted in both tables for a flow to a non-VIP address. The old
    // order (connection table first) forwarded such a packet to the entry's backend and
    // refreshed the entry; with the VIP-address check first it passes, and the entry is
    // neither followed nor refreshed.
    let Some((h, plan)) = harness_with(4096) else {
        return;
    };
    let (_, other) = two_flows_on_different_backends(&plan);
    let mut value = entry_of(&h, &other);
    let stale_time = now_ns() - 5_000_000_000; // a hit would refresh it
    value.last_seen_ns = stale_time;
    let non_vip = ack(Frame::tcp(CLIENT, 40000, OTHER, 80));
    for young in [false, true] {
        h.conn_insert(young, &key(&non_vip), value).unwrap();
    }
    let hits_before = h.counters().unwrap().vip(0).unwrap().conn_hits;
    check(
        &h,
        &[Case {
            what: "non-VIP packet with a planted entry",
            output: non_vip.bytes(),
            input: non_vip.bytes(),
            verdict: PASS,
        }],
    );
    for young in [false, true] {
        let e = h.conn_get(young, &key(&non_vip)).unwrap();
        assert_eq!(e.last_seen_ns, stale_time, "the entry was touched");
    }
    assert_eq!(h.counters().unwrap().vip(0).unwrap().conn_hits, hits_before);
    assert_eq!(h.reason("pass_not_vip").unwrap(), 1);
    // Plenty of non-VIP traffic leaves both tables as they were (two planted + one young).
    for p in 0..1000u16 {
        h.run(&Frame::udp(CLIENT, p, OTHER, 53).bytes()).unwrap();
    }
    assert_eq!(h.conn_entries(false).unwrap(), 1);
    assert_eq!(h.conn_entries(true).unwrap(), 2);
}

#[test]
fn an_idle_expired_entry_is_hashed_again_and_removed() {
    let Some((h, plan)) = harness_with(4096) else {
        return;
    };
    let (flow, other) = two_flows_on_different_backends(&plan);
    let flow = ack(flow);
    let mut value = entry_of(&h, &other);
    let other_mac = predict(&plan, "five", &other);

    // Idle 599 s of the service's 600: still followed (to the planted backend).
    value.last_seen_ns = now_ns() - 599_000_000_000;
    h.conn_insert(false, &key(&flow), value).unwrap();
    // Idle 601 s: expired, hashed again, and the stale entry removed.
    check(
        &h,
        &[Case {
            what: "entry idle 599 s",
            output: forwarded(&flow.bytes(), other_mac),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
    value.last_seen_ns = now_ns() - 601_000_000_000;
    h.conn_insert(false, &key(&flow), value).unwrap();
    check(
        &h,
        &[Case {
            what: "entry idle 601 s",
            output: forwarded(&flow.bytes(), predict(&plan, "five", &flow)),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
    assert!(
        h.conn_get(false, &key(&flow)).is_none(),
        "expired entry kept"
    );
    // The flow starts again as a young flow on its Maglev backend.
    assert_eq!(h.reason("conn_miss_mid_flow").unwrap(), 1);
}

#[test]
fn the_evict_flag_moves_established_flows_at_once() {
    let Some((mut h, plan)) = harness_with(4096) else {
        return;
    };
    let flow = ack(Frame::tcp(CLIENT, 54000, VIP, 80));
    let owner = predict(&plan, "five", &flow);
    // Established: the program's own young entry, copied into CONNS.
    let value = entry_of(&h, &flow);
    h.conn_insert(false, &key(&flow), value).unwrap();
    let drained = draining(&plan, owner);
    h.apply(&drained).unwrap();
    check(
        &h,
        &[Case {
            what: "draining backend keeps the flow",
            output: forwarded(&flow.bytes(), owner),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
    let mut evicted = drained.clone();
    for b in &mut evicted.services[0].backends {
        if b.mac == Some(owner) {
            b.evict = true;
        }
    }
    h.apply(&evicted).unwrap();
    check(
        &h,
        &[Case {
            what: "EVICT: the flow leaves at once",
            output: forwarded(&flow.bytes(), predict(&evicted, "five", &flow)),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
    assert_ne!(predict(&evicted, "five", &flow), owner);
}

#[test]
fn a_reused_slot_does_not_inherit_the_flows_of_its_previous_backend() {
    let Some((mut h, plan)) = harness_with(4096) else {
        return;
    };
    // A flow whose backend X will be replaced by b7 in X's slot, and which Maglev then
    // sends elsewhere than b7: following the stale entry would reach b7.
    let replaced = |x: [u8; 6]| {
        let mut p = plan.clone();
        let i = p.services[0]
            .backends
            .iter()
            .position(|b| b.mac == Some(x))
            .unwrap();
        p.services[0].backends[i] = backend(7);
        p
    };
    let flow = (55000..56000u16)
        .map(|p| ack(Frame::tcp(CLIENT, p, VIP, 80)))
        .find(|f| {
            let x = predict(&plan, "five", f);
            predict(&replaced(x), "five", f) != mac(7)
        })
        .unwrap();
    let x = predict(&plan, "five", &flow);
    let before = h.apply(&plan).unwrap();
    assert_eq!(h.run(&flow.bytes()).unwrap().frame[0..6], x);
    let x_name = format!("b{}", x[5]);
    let slot = before.backend_slots[&lb_userspace::ids::BackendKey::new("five", x_name.clone())];
    let mut without = plan.clone();
    without.services[0].backends.retain(|b| b.mac != Some(x));
    h.apply(&without).unwrap();
    let after = h.apply(&replaced(x)).unwrap();
    assert_eq!(
        after.backend_slots[&lb_userspace::ids::BackendKey::new("five", "b7")],
        slot,
        "b7 did not reuse the freed slot"
    );
    check(
        &h,
        &[Case {
            what: "flow of the slot's previous backend",
            output: forwarded(&flow.bytes(), predict(&replaced(x), "five", &flow)),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
}

#[test]
fn a_young_entry_whose_slot_is_taken_is_counted_and_hashed_again() {
    // Young tables are two-way set-associative: the second new flow of a set takes its free
    // slot, the third takes the least recently refreshed one, the first flow's
    // (`conn_young_replaced`); the first flow's next packet finds no entry, is counted as a
    // mid-flow miss and hashed again (same backend while the Maglev table is unchanged).
    let Some((h, plan)) = harness_with(1024) else {
        return;
    };
    let first = Frame::tcp(CLIENT, 57000, VIP, 80);
    assert_eq!(h.run(&first.bytes()).unwrap().verdict, TX);
    let takers: Vec<Frame> = (0..1_000_000u32)
        .map(|i| {
            Frame::tcp(
                [10, 7, (i >> 8) as u8, i as u8],
                1000 + (i >> 16) as u16,
                VIP,
                80,
            )
        })
        .filter(|f| young_set(f, 1024) == young_set(&first, 1024))
        .take(2)
        .collect();
    assert_eq!(h.run(&takers[0].bytes()).unwrap().verdict, TX);
    assert!(h.conn_get(true, &key(&first)).is_some());
    assert_eq!(h.reason("conn_young_replaced").unwrap(), 0);
    assert_eq!(h.run(&takers[1].bytes()).unwrap().verdict, TX);
    assert!(h.conn_get(true, &key(&first)).is_none());
    assert!(h.conn_get(true, &key(&takers[0])).is_some());
    assert!(h.conn_get(true, &key(&takers[1])).is_some());
    assert_eq!(h.reason("conn_young_replaced").unwrap(), 1);
    let next = ack(first);
    check(
        &h,
        &[Case {
            what: "packet of a flow whose young slot was taken",
            output: forwarded(&next.bytes(), predict(&plan, "five", &next)),
            input: next.bytes(),
            verdict: TX,
        }],
    );
    assert_eq!(h.reason("conn_miss_mid_flow").unwrap(), 1);
    // It took a slot back (one of the takers' next packets is the one hashed again now).
    assert_eq!(h.reason("conn_young_replaced").unwrap(), 2);
    assert_eq!(h.reason("conn_insert_failed").unwrap(), 0);
}

#[test]
fn inconsistent_maps_abort_and_count() {
    // No packet reaches these branches while the programmer keeps the maps consistent; the
    // maps are made inconsistent on purpose to show the verdict (XDP_ABORTED, frame
    // untouched, `abort_internal` counted).
    let Some((h, _)) = harness_with(4096) else {
        return;
    };
    let mut vips: HashMap<MapData, VipKey, VipMeta> =
        open_pinned(&h.pin_dir, names::MAP_VIPS).unwrap();
    let rule = |port: u16| VipKey {
        addr: pad(VIP),
        port_be: port.to_be(),
        proto: 6,
        family: 4,
    };
    // A rule naming a service id beyond the SERVICES array, and one naming a VIP id beyond
    // the VIP_STATS array (VIP already has specific-port rules, so its address is known).
    let bad_service = VipMeta {
        service: 99,
        vip_id: 0,
        generation: 1,
    };
    let bad_vip_id = VipMeta {
        service: 0,
        vip_id: lb_common::limits::MAX_VIPS + 1,
        generation: 1,
    };
    vips.insert(rule(7001), bad_service, 0).unwrap();
    vips.insert(rule(7002), bad_vip_id, 0).unwrap();
    let f1 = Frame::tcp(CLIENT, 40000, VIP, 7001).bytes();
    let f2 = Frame::tcp(CLIENT, 40000, VIP, 7002).bytes();
    check(
        &h,
        &[
            Case {
                what: "rule with a service id out of range",
                output: f1.clone(),
                input: f1,
                verdict: ABORTED,
            },
            Case {
                what: "rule with a VIP id out of range",
                output: f2.clone(),
                input: f2,
                verdict: ABORTED,
            },
        ],
    );
    // SETTINGS with a zero ring size (never written by the loader).
    let mut settings: Array<MapData, Settings> =
        open_pinned(&h.pin_dir, names::MAP_SETTINGS).unwrap();
    let good = settings.get(&0, 0).unwrap();
    settings
        .set(
            0,
            Settings {
                ring_size: 0,
                ..good
            },
            0,
        )
        .unwrap();
    let f3 = Frame::tcp(CLIENT, 40003, VIP, 80).bytes();
    check(
        &h,
        &[Case {
            what: "ring size 0",
            output: f3.clone(),
            input: f3,
            verdict: ABORTED,
        }],
    );
    assert_eq!(h.reason("abort_internal").unwrap(), 3);
    assert_eq!(h.reason("tx").unwrap(), 0);
}

#[test]
fn a_flow_evicted_from_a_full_connection_table_is_counted_and_hashed_again() {
    // LRU exhaustion of CONNS itself: more flows promoted than it holds. Batches of flows
    // with distinct young slots (so none takes another's), each promoted a second after
    // its SYNs.
    if !root_or_skip("xdp fixtures") {
        return;
    }
    pin_to_cpu0();
    let mut h = XdpHarness::with_conn_table(RING, 1024, 10_000_000).expect("load");
    let plan = base_plan();
    h.apply(&plan).unwrap();
    let flow = |i: u32| ack(Frame::tcp([10, 8, (i >> 8) as u8, i as u8], 2000, VIP, 80));
    const BATCH: usize = 450;
    let mut next = 0u32;
    let mut all = Vec::new();
    for _ in 0..3 {
        let batch = distinct_young_sets(next, BATCH, 1024, flow);
        next = batch[BATCH - 1] + 1;
        for &i in &batch {
            let mut syn = flow(i);
            syn.tcp_flags = 0x02;
            assert_eq!(h.run(&syn.bytes()).unwrap().verdict, TX);
        }
        // Young entries must be a second old on the kernel's clock (time passing, not a
        // wait for another thread).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        for &i in &batch {
            assert_eq!(h.run(&flow(i).bytes()).unwrap().verdict, TX);
        }
        all.extend(batch);
    }
    assert_eq!(h.reason("conn_promoted").unwrap(), 3 * BATCH as u64);
    assert!(h.conn_entries(false).unwrap() <= 1024);
    let gone = all
        .into_iter()
        .find(|i| h.conn_get(false, &key(&flow(*i))).is_none())
        .expect("a 1024-entry table kept 1350 flows");
    let f = flow(gone);
    check(
        &h,
        &[Case {
            what: "packet of a flow evicted from CONNS",
            output: forwarded(&f.bytes(), predict(&plan, "five", &f)),
            input: f.bytes(),
            verdict: TX,
        }],
    );
    assert_eq!(h.reason("conn_miss_mid_flow").unwrap(), 1);
    // It starts again as a young flow.
    assert!(h.conn_get(true, &key(&f)).is_some());
}

/// Runs this test thread on CPU 0 only (one per-CPU promotion window counts its promotions).
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; the call affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn mid_flow_misses_count_only_packets_without_any_entry() {
    // PER_SESSION: a new connection of a known session finds the session's entry, so its
    // ACKs are no misses; an ACK from a client with no session is one.
    if !root_or_skip("xdp fixtures") {
        return;
    }
    let mut h = XdpHarness::with_conn_table(RING, 4096, 5000).expect("load");
    let plan = L4Plan {
        services: vec![service(
            "sess",
            lb_common::hash_mode::CLIENT_IP,
            lb_common::service_flags::PER_SESSION,
            vec![backend(1), backend(2), backend(3)],
        )],
        vips: vec![vip("s", VIP, 0, 6, "sess")],
    };
    h.apply(&plan).unwrap();
    let syn = Frame::tcp(CLIENT, 47000, VIP, 80);
    let owner = predict(&plan, "sess", &syn);
    assert_eq!(h.run(&syn.bytes()).unwrap().frame[0..6], owner);
    let same_session = ack(Frame::tcp(CLIENT, 47001, VIP, 443));
    let stranger = ack(Frame::tcp([10, 0, 4, 4], 47000, VIP, 80));
    check(
        &h,
        &[
            Case {
                what: "ACK of a new connection in a known session",
                output: forwarded(&same_session.bytes(), owner),
                input: same_session.bytes(),
                verdict: TX,
            },
            Case {
                what: "ACK with no session",
                output: forwarded(&stranger.bytes(), predict(&plan, "sess", &stranger)),
                input: stranger.bytes(),
                verdict: TX,
            },
        ],
    );
    assert_eq!(h.reason("conn_miss_mid_flow").unwrap(), 1);
}

/// An upgrade from a build that kept IPv4 flows in the family-neutral `CONNS` (44-byte
/// keys): the loader's `move_ipv4_entries` moves them into `CONNS_V4`, where the program
/// looks, so an established flow keeps its backend across the upgrade.
#[test]
fn an_upgrade_moves_ipv4_flows_into_the_ipv4_tables() {
    let Some((h, plan)) = harness_with(4096) else {
        return;
    };
    let (flow, other) = two_flows_on_different_backends(&plan);
    let flow = ack(flow);
    let value = entry_of(&h, &other);
    let mut old: HashMap<MapData, FlowKey, ConnEntry> =
        open_pinned(&h.pin_dir, names::MAP_CONNS).unwrap();
    old.insert(key(&flow), value, 0).unwrap();
    assert_eq!(
        h.conn_get(false, &key(&flow)),
        None,
        "not where the program looks"
    );
    let moved = lb_userspace::dataplane::conn_tables::move_ipv4_entries(&h.pin_dir).unwrap();
    assert_eq!(moved, 1);
    assert!(old.get(&key(&flow), 0).is_err(), "left in the old table");
    assert_eq!(h.conn_get(false, &key(&flow)), Some(value));
    check(
        &h,
        &[Case {
            what: "established flow after the move, on its planted backend",
            output: forwarded(&flow.bytes(), predict(&plan, "five", &other)),
            input: flow.bytes(),
            verdict: TX,
        }],
    );
    assert_eq!(
        lb_userspace::dataplane::conn_tables::move_ipv4_entries(&h.pin_dir).unwrap(),
        0,
        "a second start moves nothing"
    );
}
