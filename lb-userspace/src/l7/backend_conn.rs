//! A plain HTTP/1.1 backend connection driven by the task that uses it.
//!
//! hyper's client splits a connection into a `SendRequest` handle and a `Connection` future
//! that does the I/O. Run as a task of its own, every request crosses from the client
//! connection's task to the backend connection's task through a channel and back through a
//! oneshot: two wake-ups and two task polls per exchange (tokio was lb's top user-space cost
//! in `cargo xtask profile-l7`). Instead, the task serving the request polls the connection
//! future itself while the request is in flight ([`drive`]) and while the response body
//! streams ([`Driver::poll`] from the body), so an exchange is one task woken by the
//! backend socket. An idle pooled connection is not polled by anyone: it is polled once
//! before reuse (a backend's close is seen then, and the request goes to another
//! connection, as before) and, without a waker, by the pool's reaper every second (so a
//! closed connection does not wait for reuse to free its descriptor). A connection that
//! must go on without its user (an upgrade to complete, a request body still uploading
//! when the response has ended) gets a task of its own again ([`Driver::spawn`]).

use super::{backend_count::OpenGuard, body::UpstreamBody};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::{
    future::Future,
    pin::{pin, Pin},
    task::{Context, Poll, Waker},
};
use tokio::net::TcpStream;

/// hyper's upgradeable connection future (its type is not nameable outside hyper).
type Conn = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// hyper's connection future of one backend connection (boxed: it is moved in and out of
/// the pool and the response body, and its size would be copied with them) and its place
/// in the descriptor budget.
pub struct Driver {
    conn: Conn,
    _open: OpenGuard,
}

impl Driver {
    pub fn new(
        conn: http1::Connection<TokioIo<TcpStream>, UpstreamBody>,
        open: OpenGuard,
    ) -> Driver {
        Driver {
            conn: Box::pin(conn.with_upgrades()),
            _open: open,
        }
    }

    /// Does the connection's pending I/O; `Ready` once it has ended (closed by either side,
    /// failed, or handed to an upgrade), after which it must be dropped: that closes the
    /// handle and fails whatever request was still waiting on it.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.conn.as_mut().poll(cx) {
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "backend connection ended with an error");
                Poll::Ready(())
            }
            Poll::Ready(Ok(())) => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Polls once with no one to wake (the pool's checks): whether the connection is alive.
    pub fn poll_quietly(&mut self) -> bool {
        self.poll(&mut Context::from_waker(Waker::noop()))
            .is_pending()
    }

    /// Hands the connection to a task of its own, which runs it to its end.
    pub fn spawn(self) {
        tokio::spawn(async move {
            let mut d = self;
            std::future::poll_fn(|cx| d.poll(cx)).await;
        });
    }
}

/// Runs `fut` (a request on the connection's `SendRequest`) while polling `conn`, the
/// connection it waits on, from this task. `conn` is `None` when the connection has its
/// own task or has ended; it is set to `None` when the connection ends here.
///
/// `fut` is polled without a waker while this function owns the connection: everything it
/// waits for (the dispatcher's readiness, the response's oneshot) is done by polling
/// `conn`, after which `fut` is polled again, so a wake-up from it would only poll this
/// task once more for nothing. `unconstrained` keeps tokio's cooperative budget from
/// making `fut` pending with only that lost waker to wake.
pub async fn drive<F: Future>(conn: &mut Option<Driver>, fut: F) -> F::Output {
    let mut fut = pin!(tokio::task::unconstrained(fut));
    std::future::poll_fn(|cx| {
        let mut quiet = Context::from_waker(Waker::noop());
        let Some(d) = conn.as_mut() else {
            return fut.as_mut().poll(cx);
        };
        if let Poll::Ready(v) = fut.as_mut().poll(&mut quiet) {
            return Poll::Ready(v);
        }
        if d.poll(cx).is_ready() {
            *conn = None;
            return fut.as_mut().poll(cx);
        }
        fut.as_mut().poll(&mut quiet)
    })
    .await
}
