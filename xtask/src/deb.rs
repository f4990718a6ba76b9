//! `cargo xtask deb`: the Debian package, built with cargo-deb (installed on first use, here
//! and by `cargo xtask test`, whose package test builds one). Steps: bootstrap (bpf-linker for the eBPF
//! object), a build with the shipped profile (`release-lb`: release + fat LTO, see the
//! workspace's Cargo.toml), shell completions (`lb completions <shell>`) and the manual
//! page (`lb manpage`) into target/release-lb/completions/, then `cargo deb --no-build
//! --profile release-lb`. What goes in the package is listed in lb-userspace/Cargo.toml,
//! `[package.metadata.deb]` (its `target/release/` paths follow `--profile`).

use crate::bootstrap::{cargo, root};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The build profile that is shipped (and that `cargo xtask bench-l7` measures).
pub const PROFILE: &str = "release-lb";

/// The packaging tool (installed with `--locked`: the dependency versions it was released with).
const CARGO_DEB: &str = "cargo-deb";

pub fn run() -> Result<()> {
    crate::bootstrap::run()?;
    ensure_cargo_deb()?;
    cargo(
        &[
            "build",
            "--profile",
            PROFILE,
            "-p",
            "lb-userspace",
            "--bins",
        ],
        &[],
    )?;
    let built = root().join("target").join(PROFILE);
    let out = built.join("completions");
    std::fs::create_dir_all(&out)?;
    for (shell, file) in [("bash", "lb.bash"), ("zsh", "_lb"), ("fish", "lb.fish")] {
        let o = Command::new(built.join("lb"))
            .args(["completions", shell])
            .output()
            .context("running lb completions")?;
        if !o.status.success() {
            bail!("lb completions {shell} failed");
        }
        std::fs::write(out.join(file), o.stdout)?;
    }
    let man = Command::new(built.join("lb"))
        .arg("manpage")
        .output()
        .context("running lb manpage")?;
    if !man.status.success() {
        bail!("lb manpage failed");
    }
    std::fs::write(out.join("lb.1"), man.stdout)?;
    cargo(
        &[
            "deb",
            "-p",
            "lb-userspace",
            "--no-build",
            "--profile",
            PROFILE,
        ],
        &[],
    )?;
    eprintln!("package: {}", root().join("target/debian").display());
    Ok(())
}

/// Installs cargo-deb when `cargo deb` is not there yet (idempotent, like bootstrap).
pub fn ensure_cargo_deb() -> Result<()> {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        cargo(&["install", "--locked", CARGO_DEB], &[])?;
    }
    Ok(())
}
