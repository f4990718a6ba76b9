//! The test command: bootstrap, formatting, lints for both targets, then every test
//! (pure, BPF_PROG_TEST_RUN fixtures, network-namespace and loopback integration tests).

use crate::bootstrap::{self, cargo};
use anyhow::Result;

pub fn run() -> Result<()> {
    bootstrap::run()?;
    // The package test (tests/tests/agent_service.rs) builds a .deb.
    crate::deb::ensure_cargo_deb()?;
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // The eBPF crate with its own target, as aya-build compiles it.
    cargo(
        &[
            "+nightly",
            "clippy",
            "-p",
            "lb-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    // Whole-system tests run the `lb` binary; build it first.
    cargo(&["build", "-p", "lb-userspace", "--bins"], &[])?;
    // Root-only tests fail rather than skip here.
    cargo(
        &[
            "test",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--",
            "--nocapture",
        ],
        &[("LB_REQUIRE_ROOT", "1")],
    )?;
    eprintln!("all checks and tests passed");
    Ok(())
}
