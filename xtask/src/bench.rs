//! Benchmarks. The XDP benchmark runs in the `lb-tests` crate (it needs the embedded eBPF
//! object, which xtask must not depend on: xtask has to build before bpf-linker exists).

use crate::bootstrap::{self, cargo};
use anyhow::Result;

/// `cargo xtask fuzz-xdp [N] [--seed S]` (the fuzzer lives in lb-tests for the same reason).
pub fn fuzz_xdp(args: &[String]) -> Result<()> {
    bootstrap::run()?;
    let mut a = vec![
        "run",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "lb-fuzz-xdp",
        "--",
    ];
    a.extend(args.iter().map(String::as_str));
    cargo(&a, &[])
}

pub fn xdp() -> Result<()> {
    bootstrap::run()?;
    cargo(
        &[
            "run",
            "--release",
            "-p",
            "lb-tests",
            "--bin",
            "lb-xdp-bench",
        ],
        &[],
    )
}
