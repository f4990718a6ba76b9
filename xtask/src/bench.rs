//! Benchmarks. The XDP benchmark runs in the `lb-tests` crate (it needs the embedded eBPF
//! object, which xtask must not depend on: xtask has to build before bpf-linker exists).

use crate::bootstrap::{self, cargo};
use anyhow::Result;

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
