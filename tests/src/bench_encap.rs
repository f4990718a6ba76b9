//! The encapsulating paths of `cargo xtask bench-xdp`: an established TCP flow forwarded by
//! L2 DSR, IPIP and GUE, beside the floor, in one run. They move the frame's start
//! (`bpf_xdp_adjust_head`), so the kernel's `repeat` would rerun them on the grown frame:
//! every row is the median of single runs (TOOLCHAIN.md), which carry ~45 ns of timer
//! overhead on every side, interleaved so all rows share the machine's state.

use crate::{
    fib::{FibNs, BACKEND, SRC},
    packet::Frame,
};
use anyhow::Result;
use lb_common::encap;
use lb_userspace::dataplane::plan::{L4Backend, L4Plan, L4Service, L4Vip};
use std::net::Ipv4Addr;

fn service(name: &str, forwarding: u32, backend: L4Backend) -> L4Service {
    L4Service {
        name: name.into(),
        hash_mode: 0,
        flags: 1,
        idle_timeout_s: 600,
        forwarding,
        gue_port: if forwarding == encap::forwarding::GUE {
            encap::GUE_DEFAULT_PORT
        } else {
            0
        },
        backends: vec![backend],
    }
}

/// VIP 10.0.0.100: port 80 by L2 DSR, 82 by IPIP, 83 by GUE, one backend each.
fn plan() -> L4Plan {
    let l2 = L4Backend {
        name: "l2".into(),
        addr: Ipv4Addr::new(10, 0, 0, 11).into(),
        mac: Some([2, 0, 0, 0, 0x0b, 1]),
        src: None,
        weight: 1,
        in_table: true,
        healthy: true,
        draining: false,
        evict: false,
        failover: false,
    };
    let routed = L4Backend {
        name: "routed".into(),
        addr: Ipv4Addr::from(BACKEND).into(),
        mac: Some([0; 6]),
        src: Some(Ipv4Addr::from(SRC).into()),
        ..l2.clone()
    };
    let vip = |port, service: &str| L4Vip {
        name: format!("vip{port}"),
        addr: [10, 0, 0, 100].into(),
        port,
        proto: 6,
        service: service.into(),
    };
    L4Plan {
        services: vec![
            service("l2", encap::forwarding::L2_DSR, l2),
            service("ipip", encap::forwarding::IPIP, routed.clone()),
            service("gue", encap::forwarding::GUE, routed),
        ],
        vips: vec![vip(80, "l2"), vip(82, "ipip"), vip(83, "gue")],
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Medians of `runs` single runs: floor, L2 DSR, IPIP, GUE (established flows).
pub fn measure(runs: usize) -> Result<[f64; 4]> {
    let ns = FibNs::new()?;
    ns.run(plan(), move |h, ifindex| -> Result<[f64; 4]> {
        let frame = |port| {
            let mut f = Frame::tcp([10, 1, 0, 1], 40000, [10, 0, 0, 100], port);
            f.tcp_flags = 0x10;
            f.payload = vec![0; 64];
            f.bytes()
        };
        let frames = [frame(80), frame(82), frame(83)];
        for f in &frames {
            // The first packet creates the flow's entry; the timed ones find it.
            anyhow::ensure!(h.run_on(f, ifindex, 1)?.verdict == 3, "not forwarded");
            h.promote_on(f, Some(ifindex))?;
        }
        let mut rows: [Vec<f64>; 4] = Default::default();
        for _ in 0..runs {
            rows[0].push(h.run_pass(&frames[0], 1)?.duration_ns as f64);
            for (i, f) in frames.iter().enumerate() {
                let r = h.run_on(f, ifindex, 1)?;
                anyhow::ensure!(r.verdict == 3, "not forwarded");
                rows[i + 1].push(r.duration_ns as f64);
            }
        }
        Ok(rows.map(median))
    })
}

/// Prints the encapsulation table.
pub fn run(runs: usize) -> Result<()> {
    let [floor, l2, ipip, gue] = measure(runs)?;
    println!("Encapsulated forwarding, established TCP flow (median of {runs} single runs each, interleaved):");
    println!("  {:<28} {:>8.1} ns", "trivial xdp_pass (floor)", floor);
    println!(
        "  {:<28} {:>8.1} ns   {:>+7.1} ns over floor",
        "L2 DSR",
        l2,
        l2 - floor
    );
    for (name, v) in [("IPIP", ipip), ("GUE", gue)] {
        println!(
            "  {name:<28} {v:>8.1} ns   {:>+7.1} ns over floor   {:.2}x L2 DSR ({:.2}x over the floor)",
            v - floor,
            v / l2,
            (v - floor) / (l2 - floor)
        );
    }
    Ok(())
}
