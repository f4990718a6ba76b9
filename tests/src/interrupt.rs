//! Ctrl-C for the demo and the lab: the handler only raises a flag; the program checks it
//! between steps and returns, so its guards remove everything it created.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into the flag.
pub fn install() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// An error once a signal arrived, so `?` unwinds to the guards.
pub fn check() -> anyhow::Result<()> {
    if stopping() {
        anyhow::bail!("interrupted: cleaning up");
    }
    Ok(())
}
