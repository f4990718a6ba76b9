//! `lb run --xdp-log`: the XDP program's aya-log records (rare verdicts, see
//! `lb-ebpf/src/diag.rs`) read from their ring buffer whenever it is readable and written to
//! the agent's log (aya-log emits `log` records, which the tracing subscriber receives).

use anyhow::{Context, Result};
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use tracing::warn;

/// Takes the program's log ring buffer and forwards its records until the agent exits.
pub fn forward(ebpf: &mut aya::Ebpf) -> Result<()> {
    let logger = EbpfLogger::init(ebpf).context("reading the XDP program's logs")?;
    // SAFETY: the logger owns its ring buffer's fd, which stays open and the same for as
    // long as the logger lives, and the `AsyncFd` owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the XDP program's log ring buffer: {e}"))?;
    tokio::spawn(async move {
        loop {
            match fd.readable_mut().await {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!(error = %e, "XDP log ring buffer unreadable; XDP logs stop");
                    return;
                }
            }
        }
    });
    Ok(())
}
