//! The connection table under a flood, through BPF_PROG_TEST_RUN (README: "Connection table
//! under a flood"). With `conn_table_size = 1024`, an established flow whose backend is then
//! draining must keep reaching that backend through floods of spoofed flows, and
//! legitimate new flows arriving during the flood must still be forwarded.

use lb_tests::{packet::Frame, root_or_skip, xdp::XdpHarness, xdp_cases::*};
use lb_userspace::dataplane::plan::L4Plan;

const TABLE: u32 = 1024;
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;

fn spoofed(i: u32, flags: u8) -> Vec<u8> {
    spoofed_frame(i, flags).bytes()
}

fn spoofed_frame(i: u32, flags: u8) -> Frame {
    let src = [10, 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8];
    let mut f = Frame::tcp(src, 1024 + (i % 60000) as u16, VIP, 80);
    f.tcp_flags = flags;
    f
}

/// Loads the program with a 1024-entry table, makes one flow established (promoted into
/// `CONNS`) and drains its backend. Returns the harness, the drained plan, the flow's ACK
/// frame and its backend's MAC.
fn established_on_draining_backend(
    promotions_per_sec: u32,
) -> (XdpHarness, L4Plan, Vec<u8>, [u8; 6]) {
    let mut h = XdpHarness::with_conn_table(RING, TABLE, promotions_per_sec).expect("load");
    let plan = base_plan();
    h.apply(&plan).expect("program maps");
    let syn = Frame::tcp(CLIENT, 45000, VIP, 80);
    let mut ack = syn.clone();
    ack.tcp_flags = ACK;
    let r = h.run(&syn.bytes()).unwrap();
    assert_eq!(r.verdict, TX);
    let owner: [u8; 6] = r.frame[0..6].try_into().unwrap();
    h.promote(&ack.bytes()).expect("promotion");
    assert_eq!(h.conn_entries(false).unwrap(), 1, "the flow is in CONNS");
    let drained = draining(&plan, owner);
    h.apply(&drained).unwrap();
    (h, drained, ack.bytes(), owner)
}

fn assert_reaches(h: &XdpHarness, frame: &[u8], owner: [u8; 6], when: &str) {
    let r = h.run(frame).unwrap();
    assert_eq!(
        (r.verdict, r.frame),
        (TX, forwarded(frame, owner)),
        "{when}: the established flow left its draining backend"
    );
}

/// A legitimate new flow during the flood: forwarded where Maglev says, never to the
/// draining backend.
fn assert_new_flow_forwarded(h: &XdpHarness, plan: &L4Plan, n: u32, owner: [u8; 6]) {
    let f = Frame::tcp([10, 0, 9, (n % 250) as u8 + 1], 20000 + n as u16, VIP, 80);
    let r = h.run(&f.bytes()).unwrap();
    assert_eq!(r.verdict, TX, "legitimate new flow {n} not forwarded");
    assert_eq!(r.frame, forwarded(&f.bytes(), predict(plan, "five", &f)));
    assert_ne!(&r.frame[0..6], &owner[..]);
}

fn counters(h: &XdpHarness) -> Vec<(&'static str, u64)> {
    h.counters()
        .unwrap()
        .reasons()
        .unwrap()
        .into_iter()
        .filter(|(n, _)| n.starts_with("conn_") || *n == "tx")
        .collect()
}

#[test]
fn established_flow_survives_syn_ack_pairs_and_syn_floods() {
    if !root_or_skip("xdp flood") {
        return;
    }
    let (h, plan, flow, owner) =
        established_on_draining_backend(lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC);
    let mut legit = 0;
    // 20,000 spoofed sources, each a SYN then an ACK (what evicted the flow from the old
    // single table: the ACK marks the new entry referenced, so it outlives ours).
    for i in 0..20_000u32 {
        assert_eq!(h.run(&spoofed(i, SYN)).unwrap().verdict, TX);
        assert_eq!(h.run(&spoofed(i, ACK)).unwrap().verdict, TX);
        if i % 1000 == 0 {
            assert_new_flow_forwarded(&h, &plan, legit, owner);
            legit += 1;
        }
    }
    assert_reaches(&h, &flow, owner, "after 20,000 SYN+ACK pairs");
    let after_pairs = counters(&h);
    // 200,000 single SYNs from further sources.
    for i in 20_000..220_000u32 {
        assert_eq!(h.run(&spoofed(i, SYN)).unwrap().verdict, TX);
        if i % 10_000 == 0 {
            assert_new_flow_forwarded(&h, &plan, legit, owner);
            legit += 1;
        }
    }
    assert_reaches(&h, &flow, owner, "after 200,000 SYNs");
    let after_syns = counters(&h);
    eprintln!("after the SYN+ACK pairs: {after_pairs:?}\nafter the SYNs: {after_syns:?}");
    let get = |c: &[(&str, u64)], n: &str| c.iter().find(|(k, _)| *k == n).unwrap().1;
    // Every spoofed and legitimate flow got a young entry; none was promoted (its packets
    // came back to back), so CONNS still holds the one established flow.
    assert_eq!(
        get(&after_syns, "conn_young_insert"),
        1 + 220_000 + legit as u64
    );
    assert_eq!(get(&after_syns, "conn_promoted"), 1);
    assert_eq!(get(&after_syns, "conn_promotion_skipped"), 0);
    assert_eq!(get(&after_syns, "conn_insert_failed"), 0);
    assert_eq!(h.conn_entries(false).unwrap(), 1);
    assert!(h.conn_entries(true).unwrap() <= TABLE as usize);
}

#[test]
fn flows_that_wait_to_be_promoted_are_held_to_the_promotion_rate() {
    // The attack the young table alone does not stop: every spoofed source sends a SYN,
    // waits a second, then an ACK, so each lives long enough to be promoted. The promotion
    // rate limit (200 per second per CPU here) keeps the promoted ones below the table size.
    if !root_or_skip("xdp flood") {
        return;
    }
    pin_to_cpu0();
    let (h, plan, flow, owner) = established_on_draining_backend(200);
    // Sources with distinct young sets (a source whose set later ones took over would be
    // hashed again, not promoted), so every ACK finds its entry.
    const N: usize = 400;
    let sources = distinct_young_sets(0, N, TABLE, |i| spoofed_frame(i, SYN));
    for &i in &sources {
        assert_eq!(h.run(&spoofed(i, SYN)).unwrap().verdict, TX);
    }
    // The young entries must be a second old on the kernel's clock: this waits for time to
    // pass, not for another thread.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    for &i in &sources {
        assert_eq!(h.run(&spoofed(i, ACK)).unwrap().verdict, TX);
    }
    assert_new_flow_forwarded(&h, &plan, 0, owner);
    assert_reaches(&h, &flow, owner, "after 400 delayed-ACK sources");
    let promoted = h.reason("conn_promoted").unwrap();
    let skipped = h.reason("conn_promotion_skipped").unwrap();
    let missed = h.reason("conn_miss_mid_flow").unwrap();
    eprintln!("promoted {promoted}, skipped {skipped}, mid-flow misses {missed}");
    // On one CPU, within one second: 200 promoted (plus the established flow), the other
    // 200 refused and still forwarded by their young entries.
    assert_eq!(missed, 0);
    assert_eq!((promoted, skipped), (201, 200));
    assert_eq!(h.conn_entries(false).unwrap(), 201);
}

/// Runs this test thread on CPU 0 only, so one per-CPU rate window counts every promotion.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity(0, ...) act
    // on this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}
