//! Per-packet cost of the XDP balancer from BPF_PROG_TEST_RUN, beside the floor: the
//! project's trivial `xdp_pass` program (which bumps one per-CPU counter).
//!
//! - Repeatable paths (pass, non-VIP, established flow) use one run with a large `repeat`:
//!   the kernel reruns the program on the same buffer and reports the mean. The established
//!   path rewrites only MACs, so every rerun takes the same path (a connection-table hit).
//! - A new flow cannot be repeated on one buffer (the first run creates the entry), so it is
//!   timed as many single runs with distinct source ports, compared by median against single
//!   runs of the floor; a single run carries ~45 ns of timer overhead on both sides.
//!
//! - Insert cost and contention: single runs of new flows (young-table inserts, per-CPU LRU
//!   lists) and of promotions (connection-table inserts, one shared LRU list), from one
//!   thread on CPU 0, then from two threads pinned to CPUs 0 and 1 at once.
//!
//! - IPv4 against IPv6 (and against an earlier build of the program when
//!   `LB_BENCH_BASELINE` names its object file): non-VIP, established and new-flow paths
//!   measured round by round in turn, beside the floor, so all share one machine state.
//!
//! - The backend-side decapsulation program (`lb decap`): `bench_decap`
//!   (`LB_BENCH_ONLY=decap` runs only that section).
//!
//! - `LB_BENCH_ONLY=established` / `=new`: the established path (repeated) or new flows
//!   (single runs) alone for about three seconds, to profile them (`perf record -a` around
//!   the bench: the JIT's symbols name the program).
//!
//! Run with `cargo xtask bench-xdp` (root).

#[path = "../bench_decap.rs"]
mod bench_decap;

use anyhow::Result;
use lb_tests::{
    packet::{Frame, Frame6},
    xdp::XdpHarness,
};
use lb_userspace::dataplane::plan::{L4Backend, L4Plan, L4Service, L4Vip};
use std::net::Ipv6Addr;

const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x64];
const OTHER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc8];

const REPEAT: u32 = 2_000_000;
const ROUNDS: usize = 7;
const SINGLE_RUNS: u16 = 20_000;
/// `LB_BENCH_QUICK=1`: fewer rounds and no single runs, for trying ideas quickly.
fn quick() -> bool {
    std::env::var("LB_BENCH_QUICK").as_deref() == Ok("1")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The bench plan: one TCP VIP (10.0.0.100:80) over three backends.
fn plan() -> L4Plan {
    let backends: Vec<L4Backend> = (1..=3u8)
        .map(|i| L4Backend {
            name: format!("b{i}"),
            addr: [10, 0, 0, 10 + i].into(),
            mac: Some([2, 0, 0, 0, 0x0b, i]),
            src: None,
            weight: 1,
            in_table: true,
            healthy: true,
            draining: false,
            evict: false,
            failover: false,
        })
        .collect();
    let service = |name: &str, backends| L4Service {
        name: name.into(),
        hash_mode: 0,
        flags: 1,
        idle_timeout_s: 600,
        forwarding: 0,
        gue_port: 0,
        backends,
    };
    let vip = |port, service: &str| L4Vip {
        name: format!("vip{port}"),
        addr: [10, 0, 0, 100].into(),
        port,
        proto: 6,
        service: service.into(),
    };
    // Port 81 fronts a service without backends: its packets go through the VIP-rule and
    // Maglev lookups and are dropped before any insert (the new-flow breakdown below).
    // The IPv6 twin of "bench": fd00::64 port 80 over fd00::11..13 (the IPv4 backends'
    // other fields, so a new field needs no second edit here).
    let backends6 = backends
        .iter()
        .zip(1..=3u8)
        .map(|(b, i)| L4Backend {
            name: format!("b6-{i}"),
            addr: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10 + i as u16).into(),
            mac: Some([2, 0, 0, 0, 0x0b, 0x60 + i]),
            src: None,
            ..b.clone()
        })
        .collect();
    let vip6 = L4Vip {
        name: "vip6".into(),
        addr: Ipv6Addr::from(VIP6).into(),
        port: 80,
        proto: 6,
        service: "bench6".into(),
    };
    L4Plan {
        services: vec![
            service("bench", backends),
            service("none", vec![]),
            service("bench6", backends6),
        ],
        vips: vec![vip(80, "bench"), vip(81, "none"), vip6],
    }
}

/// The IPv6 twin of [`flow`].
fn flow6(i: u32, ack: bool) -> Vec<u8> {
    let mut src = [0xfd, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    src[12..].copy_from_slice(&i.to_be_bytes());
    let mut f = Frame6::tcp(src, 1024 + (i % 60000) as u16, VIP6, 80);
    if ack {
        f.tcp_flags = 0x10;
    }
    f.bytes()
}

/// A TCP frame to the VIP from a source numbered `i` (distinct 5-tuples for distinct `i`).
fn flow(i: u32, ack: bool) -> Vec<u8> {
    flow_frame(i, ack).bytes()
}

fn flow_frame(i: u32, ack: bool) -> Frame {
    let mut f = Frame::tcp(
        [10, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8],
        1024 + (i % 60000) as u16,
        [10, 0, 0, 100],
        80,
    );
    if ack {
        f.tcp_flags = 0x10;
    }
    f
}

/// Pins the calling thread to one CPU.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; the call affects this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Median single-run time of the balancer over `frames`, on each CPU of `cpus` at once
/// (one thread per CPU, each with its own half of the frames).
fn single_runs_on(h: &XdpHarness, frames: &[Vec<u8>], cpus: &[usize]) -> Result<f64> {
    let chunk = frames.len() / cpus.len();
    let times = std::thread::scope(|s| {
        let handles: Vec<_> = cpus
            .iter()
            .enumerate()
            .map(|(n, &cpu)| {
                let mine = &frames[n * chunk..(n + 1) * chunk];
                s.spawn(move || -> Result<Vec<f64>> {
                    pin(cpu);
                    let mut v = Vec::with_capacity(mine.len());
                    for f in mine {
                        let r = h.run(f)?;
                        anyhow::ensure!(r.verdict == 3, "not forwarded");
                        v.push(r.duration_ns as f64);
                    }
                    Ok(v)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|j| j.join().expect("bench thread"))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(median(times.concat()))
}

/// Insert cost of the two tables, alone and with both CPUs inserting: new flows (young table,
/// per-CPU LRU lists) and promotions (connection table, one shared LRU list, plus the
/// young entry's delete). A table large enough that nothing is evicted.
fn insert_costs() -> Result<[(f64, f64); 2]> {
    const N: u32 = 20_000;
    let h = XdpHarness::with_conn_table(65537, INSERT_TABLE, 10_000_000)?;
    let mut h = h;
    h.apply(&plan())?;
    let mut out = [(0.0, 0.0); 2];
    for (round, cpus) in [&[0usize][..], &[0, 1][..]].into_iter().enumerate() {
        // Sources with distinct young sets, so every ACK finds its flow young (a flow whose
        // slot later ones took would be hashed again, not promoted).
        let base = 100_000 * (round as u32 + 1);
        let sources =
            lb_tests::xdp_cases::distinct_young_sets(base, N as usize, INSERT_TABLE, |i| {
                flow_frame(i, false)
            });
        let syns: Vec<_> = sources.iter().map(|&i| flow(i, false)).collect();
        let acks: Vec<_> = sources.iter().map(|&i| flow(i, true)).collect();
        let started = std::time::Instant::now();
        let new_flow = single_runs_on(&h, &syns, cpus)?;
        // Promotion needs the entries to be a second old on the kernel clock.
        std::thread::sleep(
            std::time::Duration::from_millis(1100).saturating_sub(started.elapsed()),
        );
        let promoted_before = h.reason("conn_promoted")?;
        let promotion = single_runs_on(&h, &acks, cpus)?;
        anyhow::ensure!(
            h.reason("conn_promoted")? - promoted_before == N as u64,
            "not every ACK promoted its flow"
        );
        if round == 0 {
            out[0] = (new_flow, promotion);
        } else {
            out[1] = (new_flow, promotion);
        }
    }
    Ok(out)
}

/// `conn_table_size` of [`insert_costs`]: large enough that nothing is evicted.
const INSERT_TABLE: u32 = 262_144;

fn row(name: &str, ns: f64, floor: f64) {
    println!("  {name:<34} {ns:>8.1} ns   {:>5.2}x floor", ns / floor);
}

fn main() -> Result<()> {
    // The decapsulation program's section first (LB_BENCH_ONLY=decap: nothing else).
    if bench_decap::section(quick())? {
        return Ok(());
    }
    anyhow::ensure!(
        lb_tests::is_root(),
        "the benchmark loads BPF programs: run as root"
    );
    if std::env::var("LB_BENCH_ONLY").as_deref() == Ok("encap") {
        return lb_tests::bench_encap::run(SINGLE_RUNS as usize);
    }
    // Table as in the fixtures (4096, so the new-flow runs below fill it and evict), and a
    // promotion limit that never applies (the bench promotes on purpose).
    let mut h = XdpHarness::with_conn_table(65537, 4096, 10_000_000)?;
    h.apply(&plan())?;
    let vip_frame = flow(0, true);
    let other = Frame::tcp([10, 0, 0, 1], 40000, [10, 0, 0, 200], 80).bytes();
    assert_eq!(h.run(&vip_frame)?.verdict, 3, "VIP frame not forwarded");
    // Established = promoted into the connection table (a packet a second after the first).
    h.promote(&vip_frame)?;

    if std::env::var("LB_BENCH_ONLY").as_deref() == Ok("established") {
        // For `perf record -a`: only the established path, about three seconds of it.
        let started = std::time::Instant::now();
        let mut ns = Vec::new();
        while started.elapsed() < std::time::Duration::from_secs(3) {
            ns.push(h.run_repeat(&vip_frame, REPEAT)?.duration_ns as f64);
        }
        println!(
            "established flow, {} runs: median {} ns",
            ns.len(),
            median(ns)
        );
        return Ok(());
    }
    if std::env::var("LB_BENCH_ONLY").as_deref() == Ok("new") {
        // For `perf record -a`: new flows (single runs, each a fresh source into the full
        // 4096-entry young table) for about three seconds.
        let started = std::time::Instant::now();
        let (mut ns, mut i) = (Vec::new(), 2_000_000u32);
        while started.elapsed() < std::time::Duration::from_secs(3) {
            i += 1;
            ns.push(h.run(&flow(i, false))?.duration_ns as f64);
        }
        println!(
            "new flow, {} single runs: median {} ns",
            ns.len(),
            median(ns)
        );
        return Ok(());
    }
    let repeated = |f: &dyn Fn() -> Result<u32>| -> Result<f64> {
        let mut v = Vec::new();
        for _ in 0..if quick() { 3 } else { ROUNDS } {
            v.push(f()? as f64);
        }
        Ok(median(v))
    };
    let floor = repeated(&|| Ok(h.run_pass(&other, REPEAT)?.duration_ns))?;
    let non_vip = repeated(&|| Ok(h.run_repeat(&other, REPEAT)?.duration_ns))?;
    let established = repeated(&|| Ok(h.run_repeat(&vip_frame, REPEAT)?.duration_ns))?;
    // A young flow (first second): a fresh flow per round, repeated at once.
    let young_n = std::cell::Cell::new(1_000_000u32);
    let young = repeated(&|| {
        young_n.set(young_n.get() + 1);
        let f = flow(young_n.get(), true);
        h.run(&f)?;
        Ok(h.run_repeat(&f, REPEAT / 4)?.duration_ns)
    })?;

    if quick() {
        println!("floor {floor} ns, non-VIP {non_vip} ns ({:.2}x), established {established} ns ({:.2}x), young {young} ns", non_vip / floor, established / floor);
        families()?;
        return lb_tests::bench_encap::run(2000);
    }
    let mut floor_single = Vec::new();
    let mut new_single = Vec::new();
    // Where a new flow's time goes: the same lookups up to a missed VIP rule (port 82, no
    // rule: passed), up to the Maglev slot (port 81, no backend: dropped), then the insert.
    let (mut no_rule_single, mut no_backend_single) = (Vec::new(), Vec::new());
    for port in 0..SINGLE_RUNS {
        let at = |dport| {
            Frame::tcp(
                [10, 1, (port >> 8) as u8, port as u8],
                1024 + port,
                [10, 0, 0, 100],
                dport,
            )
            .bytes()
        };
        let f = at(80);
        floor_single.push(h.run_pass(&f, 1)?.duration_ns as f64);
        let r = h.run(&f)?;
        assert_eq!(r.verdict, 3);
        new_single.push(r.duration_ns as f64);
    }
    // A separate loop, so the new-flow runs above are timed exactly as before this
    // breakdown existed (fresh sources: 10.2.x.y).
    for port in 0..SINGLE_RUNS {
        let at = |dport| {
            Frame::tcp(
                [10, 2, (port >> 8) as u8, port as u8],
                1024 + port,
                [10, 0, 0, 100],
                dport,
            )
            .bytes()
        };
        let r = h.run(&at(82))?;
        assert_eq!(r.verdict, 2);
        no_rule_single.push(r.duration_ns as f64);
        let r = h.run(&at(81))?;
        assert_eq!(r.verdict, 1);
        no_backend_single.push(r.duration_ns as f64);
    }
    let (no_rule, no_backend) = (median(no_rule_single), median(no_backend_single));
    let mut est_single = Vec::new();
    for _ in 0..SINGLE_RUNS {
        est_single.push(h.run(&vip_frame)?.duration_ns as f64);
    }
    let (fs, ns, es) = (median(floor_single), median(new_single), median(est_single));
    let costs = insert_costs()?;

    println!(
        "XDP per-packet cost, BPF_PROG_TEST_RUN, {} CPUs",
        std::thread::available_parallelism()?.get()
    );
    println!("repeat {REPEAT}, median of {ROUNDS} rounds:");
    row("trivial xdp_pass (floor)", floor, floor);
    row("balancer, non-VIP packet", non_vip, floor);
    row("balancer, established flow", established, floor);
    row("balancer, young flow (first second)", young, floor);
    println!(
        "single runs (repeat 1), median of {SINGLE_RUNS}, timer overhead included on both sides:"
    );
    println!("  {:<34} {:>8.1} ns", "trivial xdp_pass (floor)", fs);
    println!(
        "  {:<34} {:>8.1} ns   {:>+7.1} ns over floor",
        "balancer, established flow",
        es,
        es - fs
    );
    println!(
        "  {:<34} {:>8.1} ns   {:>+7.1} ns over floor",
        "balancer, new flow (table full)",
        ns,
        ns - fs
    );
    println!(
        "  {:<34} {:>8.1} ns   {:>+7.1} ns over floor",
        "  of which: up to the VIP rule miss",
        no_rule,
        no_rule - fs
    );
    println!(
        "  {:<34} {:>8.1} ns   {:>+7.1} ns over floor",
        "  of which: up to the Maglev slot",
        no_backend,
        no_backend - fs
    );
    println!("insert cost, single runs, {INSERT_TABLE}-entry tables (nothing evicted), median:");
    println!(
        "  {:<34} {:>12} {:>16}",
        "", "CPU 0 alone", "CPUs 0+1 at once"
    );
    println!(
        "  {:<34} {:>9.1} ns {:>13.1} ns",
        "new flow: young slot write", costs[0].0, costs[1].0
    );
    println!(
        "  {:<34} {:>9.1} ns {:>13.1} ns",
        "promotion: CONNS insert (shared LRU)", costs[0].1, costs[1].1
    );
    families()?;
    lb_tests::bench_encap::run(SINGLE_RUNS as usize)
}

/// Frame `i` of a bench flow (ACK or SYN).
type FlowFn = fn(u32, bool) -> Vec<u8>;

/// A program under comparison: its harness and how its frames are made.
struct Subject {
    label: &'static str,
    h: XdpHarness,
    flow: FlowFn,
    other: Vec<u8>,
}

impl Subject {
    fn new(label: &'static str, h: XdpHarness, v6: bool) -> Result<Self> {
        let (flow, other): (FlowFn, Vec<u8>) = if v6 {
            (flow6, Frame6::tcp(VIP6, 40000, OTHER6, 80).bytes())
        } else {
            (
                flow,
                Frame::tcp([10, 0, 0, 1], 40000, [10, 0, 0, 200], 80).bytes(),
            )
        };
        let mut s = Subject {
            label,
            h,
            flow,
            other,
        };
        s.h.apply(&plan())?;
        s.establish()?;
        Ok(s)
    }

    /// Makes flow 0 established: its first packet, then its packets until `CONNS` holds it
    /// (promotion a second after the entry; read from the map, so any build of the program
    /// qualifies). At most 5 s.
    fn establish(&mut self) -> Result<()> {
        let f = (self.flow)(0, true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            anyhow::ensure!(
                self.h.run(&f)?.verdict == 3,
                "{}: not forwarded",
                self.label
            );
            if self.h.conn_entries(false)? > 0 {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        anyhow::bail!("{}: flow not established within 5 s", self.label)
    }
}

/// IPv4 and IPv6 paths of this build (and IPv4 of the baseline build, if given), measured
/// in turn within each round so that they share the machine's state.
fn families() -> Result<()> {
    let harness = || XdpHarness::with_conn_table(65537, 4096, 10_000_000);
    let mut subjects = vec![
        Subject::new("IPv4", harness()?, false)?,
        Subject::new("IPv6", harness()?, true)?,
    ];
    let baseline = std::env::var("LB_BENCH_BASELINE").ok();
    if let Some(path) = &baseline {
        let object = std::fs::read(path)?;
        let h = XdpHarness::with_object(65537, 4096, 10_000_000, 4, &object)?;
        subjects.push(Subject::new("IPv4, baseline", h, false)?);
    }
    let rounds = if quick() { 3 } else { ROUNDS };
    let n = subjects.len();
    let (mut floor, mut non_vip, mut est) = (Vec::new(), vec![Vec::new(); n], vec![Vec::new(); n]);
    // Rounds start at a different subject each time, so no program always runs first.
    let rounds = rounds.max(2 * n);
    for r in 0..rounds {
        floor.push(
            subjects[0]
                .h
                .run_pass(&subjects[0].other, REPEAT)?
                .duration_ns as f64,
        );
        for i in (0..n).map(|k| (k + r) % n) {
            let s = &subjects[i];
            non_vip[i].push(s.h.run_repeat(&s.other, REPEAT)?.duration_ns as f64);
            est[i].push(s.h.run_repeat(&(s.flow)(0, true), REPEAT)?.duration_ns as f64);
        }
    }
    let runs = if quick() { 2_000 } else { SINGLE_RUNS as u32 };
    let (mut floor1, mut new1) = (Vec::new(), vec![Vec::new(); n]);
    for i in 0..runs {
        floor1.push(subjects[0].h.run_pass(&subjects[0].other, 1)?.duration_ns as f64);
        for k in (0..n).map(|k| (k + i as usize) % n) {
            let s = &subjects[k];
            let r = s.h.run(&(s.flow)(2_000_000 + i, false))?;
            anyhow::ensure!(r.verdict == 3, "{}: new flow not forwarded", s.label);
            new1[k].push(r.duration_ns as f64);
        }
    }
    let (floor, floor1) = (median(floor), median(floor1));
    println!("IPv4 and IPv6 in the same run (repeat {REPEAT}, median of {rounds} rounds; new flows: median of {runs} single runs, 4096-entry young table):");
    println!(
        "  {:<16} {:>10} {:>8} {:>12} {:>8} {:>16}",
        "", "non-VIP", "x floor", "established", "x floor", "new flow over floor"
    );
    println!(
        "  {:<16} {floor:>7.1} ns {:>8} {:>12} {:>8}   (single run: {floor1:.1} ns)",
        "floor (xdp_pass)", "", "", ""
    );
    let mut rows = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let (nv, es) = (median(non_vip[i].clone()), median(est[i].clone()));
        let nf = median(new1[i].clone()) - floor1;
        println!(
            "  {:<16} {nv:>7.1} ns {:>7.2}x {es:>9.1} ns {:>7.2}x {nf:>13.1} ns",
            s.label,
            nv / floor,
            es / floor
        );
        rows.push((nv, es, nf));
    }
    println!(
        "  IPv6 / IPv4: non-VIP {:.2}x, established {:.2}x, new flow over the floor {:.2}x",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1,
        rows[1].2 / rows[0].2
    );
    if baseline.is_some() {
        println!(
            "  IPv4 now / baseline: non-VIP {:.2}x, established {:.2}x, new flow over the floor {:.2}x",
            rows[0].0 / rows[2].0,
            rows[0].1 / rows[2].1,
            rows[0].2 / rows[2].2
        );
    }
    Ok(())
}
