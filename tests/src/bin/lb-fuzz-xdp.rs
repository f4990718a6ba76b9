//! `cargo xtask fuzz-xdp [N] [--seed S]`: N generated and mutated frames (default
//! 1,000,000) plus every truncation of N/200 more through the balancer with
//! BPF_PROG_TEST_RUN, each checked by the oracle of `lb_tests::fuzz` (root). Prints the
//! verdicts and the rate; exits non-zero with the offending frame on the first failure.

use anyhow::{Context, Result};
use lb_tests::{
    fuzz::{self, Fuzzer},
    xdp::XdpHarness,
    xdp_cases::RING,
};
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut n: u64 = 1_000_000;
    let mut seed: u64 = 0x5eed;
    while let Some(a) = args.next() {
        if a == "--seed" {
            seed = args.next().context("--seed needs a value")?.parse()?;
        } else {
            n = a.parse().with_context(|| format!("{a}: a frame count"))?;
        }
    }
    let mut h = XdpHarness::with_services(RING, fuzz::SERVICES)?;
    let plan = fuzz::plan();
    h.apply(&plan)?;
    let start = Instant::now();
    let t = Fuzzer::new(&h, &plan)?.run(seed, n, n / 200)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{t:#?}");
    println!(
        "fuzz-xdp: {} frames (seed {seed}) in {secs:.1} s ({:.0} frames/s): every one met the oracle",
        t.frames,
        t.frames as f64 / secs
    );
    Ok(())
}
