//! Runs scripts/bootstrap.sh (root): the one place that knows what a fresh machine lacks.

use anyhow::{bail, Result};
use std::{path::PathBuf, process::Command};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn run() -> Result<()> {
    let status = Command::new("bash")
        .arg(root().join("scripts/bootstrap.sh"))
        .status()?;
    if !status.success() {
        bail!("bootstrap failed");
    }
    Ok(())
}

/// Runs a command in the workspace root, failing with its description.
pub fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("+ cargo {}", args.join(" "));
    let mut c = Command::new("cargo");
    c.current_dir(root()).args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    if !c.status()?.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}
