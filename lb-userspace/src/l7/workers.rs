//! Thread per core for client connections: with more than one CPU, `lb run` starts one
//! L7 worker thread per CPU it may use, each running its own current-thread tokio runtime,
//! and every accepted connection is handed to one of them (round robin) for its whole life,
//! like nginx's worker processes and HAProxy's threads.
//!
//! Why not tokio's work-stealing runtime: a request crosses two tasks (the client
//! connection's and the backend connection's), and on a multi-thread runtime they wake each
//! other across threads (a futex wake and a cache miss per hop); `cargo xtask bench-l7
//! --proxy-cpus 0-1` measured lb at half HAProxy's requests/s that way. On a worker, a
//! connection, the tasks it spawns (HTTP/2 streams, WebSocket tunnels) and the backend
//! connections it opens share one thread and one I/O driver, and the HTTP/1.1 backend pool
//! is kept per worker ([`id`], `client::H1Pool`), so a request never leaves its thread.
//!
//! The agent itself (admin socket, health checks, reloads, accept loops) stays on the
//! runtime of [`super::runtime`]. Without workers (one CPU, or the library used from tests
//! on their own runtime) connections are spawned on the current runtime as before.

use std::{
    cell::Cell,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        OnceLock,
    },
};
use tokio::runtime::Handle;

/// The workers' runtimes, set once by [`start`].
static WORKERS: OnceLock<Vec<Handle>> = OnceLock::new();
/// Round-robin position of the next connection.
static NEXT: AtomicUsize = AtomicUsize::new(0);

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

/// Serves an accepted connection on the next worker, or on the current runtime when there
/// are no workers. The socket moves to the worker's I/O driver, so its readiness events are
/// handled on the thread that serves it.
pub fn spawn_connection<F, Fut>(stream: tokio::net::TcpStream, serve: F)
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(workers) = WORKERS.get().filter(|w| !w.is_empty()) else {
        tokio::spawn(serve(stream));
        return;
    };
    let worker = &workers[NEXT.fetch_add(1, Ordering::Relaxed) % workers.len()];
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "handing a connection to a worker failed");
            return;
        }
    };
    worker.spawn(async move {
        match tokio::net::TcpStream::from_std(std_stream) {
            Ok(stream) => serve(stream).await,
            Err(e) => tracing::debug!(error = %e, "registering a connection on a worker failed"),
        }
    });
}
