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
//! Run with `cargo xtask bench-xdp` (root).

use anyhow::Result;
use lb_tests::{packet::Frame, xdp::XdpHarness};
use lb_userspace::dataplane::plan::{L4Backend, L4Plan, L4Service, L4Vip};

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

fn main() -> Result<()> {
    anyhow::ensure!(
        lb_tests::is_root(),
        "the benchmark loads BPF programs: run as root"
    );
    let mut h = XdpHarness::new(65537)?;
    let backends = (1..=3u8)
        .map(|i| L4Backend {
            name: format!("b{i}"),
            addr: [10, 0, 0, 10 + i].into(),
            mac: Some([2, 0, 0, 0, 0x0b, i]),
            weight: 1,
            in_table: true,
            healthy: true,
            draining: false,
            evict: false,
        })
        .collect();
    h.apply(&L4Plan {
        services: vec![L4Service {
            name: "bench".into(),
            hash_mode: 0,
            flags: 1,
            idle_timeout_s: 600,
            backends,
        }],
        vips: vec![L4Vip {
            name: "vip".into(),
            addr: [10, 0, 0, 100].into(),
            port: 80,
            proto: 6,
            service: "bench".into(),
        }],
    })?;
    let vip_frame = Frame::tcp([10, 0, 0, 1], 40000, [10, 0, 0, 100], 80).bytes();
    let other = Frame::tcp([10, 0, 0, 1], 40000, [10, 0, 0, 200], 80).bytes();
    assert_eq!(h.run(&vip_frame)?.verdict, 3, "VIP frame not forwarded");

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

    if quick() {
        println!("floor {floor} ns, non-VIP {non_vip} ns ({:.2}x), established {established} ns ({:.2}x)", non_vip / floor, established / floor);
        return Ok(());
    }
    let mut floor_single = Vec::new();
    let mut new_single = Vec::new();
    for port in 0..SINGLE_RUNS {
        let f = Frame::tcp(
            [10, 1, (port >> 8) as u8, port as u8],
            1024 + port,
            [10, 0, 0, 100],
            80,
        )
        .bytes();
        floor_single.push(h.run_pass(&f, 1)?.duration_ns as f64);
        let r = h.run(&f)?;
        assert_eq!(r.verdict, 3);
        new_single.push(r.duration_ns as f64);
    }
    let mut est_single = Vec::new();
    for _ in 0..SINGLE_RUNS {
        est_single.push(h.run(&vip_frame)?.duration_ns as f64);
    }
    let (fs, ns, es) = (median(floor_single), median(new_single), median(est_single));

    println!(
        "XDP per-packet cost, BPF_PROG_TEST_RUN, {} CPUs",
        std::thread::available_parallelism()?.get()
    );
    println!("repeat {REPEAT}, median of {ROUNDS} rounds:");
    println!(
        "  {:<34} {:>8.1} ns   {:>5.2}x floor",
        "trivial xdp_pass (floor)", floor, 1.0
    );
    println!(
        "  {:<34} {:>8.1} ns   {:>5.2}x floor",
        "balancer, non-VIP packet",
        non_vip,
        non_vip / floor
    );
    println!(
        "  {:<34} {:>8.1} ns   {:>5.2}x floor",
        "balancer, established flow",
        established,
        established / floor
    );
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
        "balancer, new flow",
        ns,
        ns - fs
    );
    Ok(())
}
