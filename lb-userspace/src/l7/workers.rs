//! Thread per core for client connections: with more than one CPU, `lb run` starts one
//! L7 worker thread per CPU it may use, each running its own current-thread tokio runtime
//! and accepting on its own socket of every listener (SO_REUSEPORT, `listener::spawn`; the
//! kernel spreads new connections evenly); a connection is served for its whole life by
//! the worker that accepted it, like nginx's worker processes and HAProxy's threads.
//!
//! Why not tokio's work-stealing runtime: a request crosses two tasks (the client
//! connection's and the backend connection's), and on a multi-thread runtime they wake each
//! other across threads (a futex wake and a cache miss per hop); `cargo xtask bench-l7
//! --proxy-cpus 0-1` measured lb at half HAProxy's requests/s that way. On a worker, a
//! connection, the tasks it spawns (HTTP/2 streams, WebSocket tunnels) and the backend
//! connections it opens share one thread and one I/O driver, and the HTTP/1.1 backend pool
//! is kept per worker ([`id`], `client::H1Pool`), so a request never leaves its thread.
//!
//! The agent itself (admin socket, health checks, reloads) stays on the runtime of
//! [`super::runtime`]. Without workers (one CPU, or the library used from tests on their
//! own runtime) listeners accept and serve on the current runtime.

use std::{cell::Cell, sync::OnceLock};
use tokio::runtime::Handle;

/// The workers' runtimes, set once by [`start`].
static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();

thread_local! {
    /// 1-based index of the worker running on this thread; 0 elsewhere.
    static ID: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is (1..=n), or 0 on any other thread: keys per-worker state.
pub fn id() -> usize {
    ID.with(Cell::get)
}

/// Starts `n` worker threads (none when `n` < 2: one CPU gains nothing from a hand-off).
/// Called once, by [`super::runtime`]; later calls change nothing.
pub fn start(n: usize) -> std::io::Result<()> {
    if n < 2 || WORKERS.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(n);
    for i in 1..=n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("lb-l7-{i}"))
            .spawn(move || {
                ID.with(|id| id.set(i));
                // Runs the tasks handed to it until the process ends.
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = WORKERS.set(handles);
    Ok(())
}

/// The workers' runtimes; `None` without workers.
pub fn handles() -> Option<&'static [Handle]> {
    WORKERS.get().map(Vec::as_slice).filter(|w| !w.is_empty())
}

/// Aborts a task when dropped: a listener's task owns its workers' accept loops with these.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
