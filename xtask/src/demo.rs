//! The demo: builds `lb` and the test backend, then runs `lb-demo` (tests/src/bin), which
//! sets up a client, the balancer and three backends in network namespaces, runs `lb` with
//! the embedded default configuration, shows connections landing on all three backends,
//! and removes everything it created (also on Ctrl-C).

use crate::bootstrap::{self, cargo};
use anyhow::Result;

pub fn run() -> Result<()> {
    run_bin("lb-demo")
}

/// `cargo xtask demo-ha`: `lb-demo-ha`, two balancers behind a BIRD router with ECMP.
pub fn run_ha() -> Result<()> {
    run_bin("lb-demo-ha")
}

fn run_bin(bin: &str) -> Result<()> {
    bootstrap::run()?;
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "lb-userspace",
            "-p",
            "lb-tests",
            "--bins",
        ],
        &[],
    )?;
    cargo(&["run", "--release", "-p", "lb-tests", "--bin", bin], &[])
}
