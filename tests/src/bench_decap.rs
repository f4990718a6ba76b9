//! The decapsulation program's rows of `cargo xtask bench-xdp` (included by
//! `lb-xdp-bench` with `#[path]`; kept apart so the balancer's rows evolve separately).
//!
//! Decapsulation rewrites the buffer (the second run on one buffer would see the inner
//! packet), so it is timed as many single runs (`repeat` = 1), compared by median against
//! single runs of the floor (`xdp_pass`) taken in the same loop; each single run carries the
//! same ~45 ns of timer overhead. Ordinary traffic through the program (passed untouched)
//! is repeatable and is timed like the balancer's non-VIP row.

use anyhow::Result;
use lb_common::encap::GUE_DEFAULT_PORT;
use lb_tests::{
    decap::{encap_frame, DecapHarness, Encap},
    packet::{Frame, Frame6},
    xdp::XdpHarness,
};
use std::net::IpAddr;

const US4: [u8; 4] = [192, 168, 7, 11];
const US6: [u8; 16] = [0xfd, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const LB4: [u8; 4] = [192, 168, 5, 2];
const LB6: [u8; 16] = [0xfd, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs this section unless `LB_BENCH_ONLY` names another one; true when it names this
/// one (the caller stops there).
pub fn section(quick: bool) -> Result<bool> {
    let only = std::env::var("LB_BENCH_ONLY").ok();
    if only.as_deref().is_some_and(|o| o != "decap") {
        return Ok(false);
    }
    anyhow::ensure!(
        lb_tests::is_root(),
        "the benchmark loads BPF programs: run as root"
    );
    rows(quick)?;
    Ok(only.is_some())
}

/// Prints the decap rows; `quick` (LB_BENCH_QUICK=1) takes fewer runs.
fn rows(quick: bool) -> Result<()> {
    let floor_h = XdpHarness::new(251)?;
    let h = DecapHarness::new(&[IpAddr::from(US4), IpAddr::from(US6)], GUE_DEFAULT_PORT)?;
    let gue = Encap::Gue {
        sport: 50_123,
        dport: GUE_DEFAULT_PORT,
    };
    let inner4 = Frame::tcp([10, 9, 0, 1], 40000, [10, 9, 0, 100], 80).bytes()[14..].to_vec();
    let inner6 = Frame6::tcp(
        [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        40000,
        {
            let mut v = [0u8; 16];
            v[0] = 0xfd;
            v[15] = 0x64;
            v
        },
        80,
    )
    .packet();
    let (lb4, us4, lb6, us6) = (
        IpAddr::from(LB4),
        IpAddr::from(US4),
        IpAddr::from(LB6),
        IpAddr::from(US6),
    );
    let frames = [
        ("IPIP 4in4", encap_frame(Encap::Ipip, lb4, us4, &inner4)),
        ("GUE over IPv4", encap_frame(gue, lb4, us4, &inner4)),
        ("IPIP 6in6", encap_frame(Encap::Ipip, lb6, us6, &inner6)),
        ("GUE over IPv6", encap_frame(gue, lb6, us6, &inner6)),
    ];
    let plain = Frame::tcp(LB4, 40000, US4, 22).bytes();
    let runs = if quick { 2_000 } else { 20_000 };
    let (mut floor1, mut decap1) = (Vec::new(), vec![Vec::new(); frames.len()]);
    for i in 0..runs {
        floor1.push(floor_h.run_pass(&plain, 1)?.duration_ns as f64);
        // Start at a different frame each time, so none always runs right after the floor.
        for k in (0..frames.len()).map(|k| (k + i) % frames.len()) {
            let r = h.run(&frames[k].1)?;
            anyhow::ensure!(r.verdict == 2, "{}: not decapsulated", frames[k].0);
            decap1[k].push(r.duration_ns as f64);
        }
    }
    let rounds = if quick { 3 } else { 7 };
    let repeat = 2_000_000;
    let (mut floor_r, mut plain_r) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor_r.push(floor_h.run_pass(&plain, repeat)?.duration_ns as f64);
        plain_r.push(h.run_repeat(&plain, repeat)?.duration_ns as f64);
    }
    let fs = median(floor1);
    println!("lb decap (backend side), single runs (repeat 1), median of {runs}, timer overhead included on both sides:");
    println!("  {:<34} {fs:>8.1} ns", "trivial xdp_pass (floor)");
    for (k, (name, _)) in frames.iter().enumerate() {
        let d = median(decap1[k].clone());
        println!(
            "  {:<34} {d:>8.1} ns   {:>5.2}x floor {:>+7.1} ns over floor",
            format!("decap, {name}"),
            d / fs,
            d - fs
        );
    }
    let (fr, pr) = (median(floor_r), median(plain_r));
    println!(
        "lb decap, ordinary traffic passed untouched (repeat {repeat}, median of {rounds} rounds):"
    );
    println!("  {:<34} {fr:>8.1} ns", "trivial xdp_pass (floor)");
    println!(
        "  {:<34} {pr:>8.1} ns   {:>5.2}x floor",
        "decap, TCP to this host",
        pr / fr
    );
    Ok(())
}
