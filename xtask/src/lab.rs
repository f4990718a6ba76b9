//! `cargo xtask lab`: the prime-number lab (GSP041) for a person: builds `lb` and the lab
//! runner, then runs `lb-lab` (tests/src/bin/lb-lab.rs): the broken backend leaving
//! rotation, the 10x10 table of primes, and the frontend on 127.0.0.1:8080 until Ctrl-C.

use crate::bootstrap::{self, cargo};
use anyhow::Result;

pub fn run() -> Result<()> {
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
    cargo(
        &["run", "--release", "-p", "lb-tests", "--bin", "lb-lab"],
        &[],
    )
}
