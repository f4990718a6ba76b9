//! Idle HTTP/1.1 connections hold only their socket. hyper's HTTP/1.1 connection keeps an
//! 8 KiB read buffer, an 8 KiB write buffer and a boxed slot for the service's future for
//! as long as it lives, which made an idle keep-alive connection cost about 30 KB. So a
//! plain-text HTTP/1.1 connection is served in rounds: hyper serves requests until it is
//! idle between requests ([`super::idle::Activity::idle_between_requests`]) and has been
//! quiet for [`PARK_AFTER`] (so a busy keep-alive connection is not rebuilt for every
//! request, which cost 1–2 µs of CPU per request in the profile), then its state
//! is taken apart (`into_parts`: the socket and any bytes hyper read ahead, which are given
//! back to the next round) and the connection leaves its task: its worker's lot holds the
//! socket and the connection's bookkeeping until bytes arrive or its deadline passes
//! ([`super::parked`]); the next bytes start a new round in a new task, which first waits
//! ([`Parked`]) until tokio's I/O driver, with which the socket is registered anew, sees it
//! readable. The watchdog's deadlines hold in both states (the activity outlives the
//! rounds; the lot keeps the deadline of a parked connection).
//!
//! TLS and HTTP/2 connections are served as one round (their protocol state cannot be
//! rebuilt), see `listener.rs`.

use super::{body::ProxyBody, framing::Observed, idle::Responding};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::io::AsyncRead;

/// How long an idle HTTP/1.1 connection stays quiet before it is parked.
pub const PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(20);

/// How a round of hyper ended.
pub enum Round<C, T> {
    /// The connection ended (closed, upgraded or failed).
    Done(T),
    /// hyper is idle between requests: the connection, to be taken apart.
    Idle(Box<C>),
}

/// Drives a hyper HTTP/1.1 connection until it ends or is idle between requests.
pub struct UntilIdle<C> {
    conn: Option<Box<C>>,
    activity: std::sync::Arc<super::idle::Activity>,
    /// Wakes the round when the quiet period may be over (made once per round).
    quiet: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<C> UntilIdle<C> {
    pub fn new(conn: C, activity: std::sync::Arc<super::idle::Activity>) -> UntilIdle<C> {
        UntilIdle {
            conn: Some(Box::new(conn)),
            activity,
            quiet: None,
        }
    }

    /// The connection, while this round runs.
    pub fn conn(self: Pin<&mut Self>) -> Option<Pin<&mut C>>
    where
        C: Unpin,
    {
        self.get_mut().conn.as_deref_mut().map(Pin::new)
    }
}

impl<C: Future + Unpin> Future for UntilIdle<C> {
    type Output = Round<C, C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_deref_mut() else {
            return Poll::Pending; // taken apart already; not polled again
        };
        if let Poll::Ready(r) = Pin::new(conn).poll(cx) {
            return Poll::Ready(Round::Done(r));
        }
        if !this.activity.idle_between_requests() {
            return Poll::Pending; // a timer still armed finds the connection busy, below
        }
        // The quiet timer is re-armed only when it fires before the quiet period is over,
        // not each time the connection goes idle (which is once per request on a busy one).
        let quiet = this.quiet.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(
                this.activity.quiet_since() + PARK_AFTER,
            ))
        });
        loop {
            if quiet.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = this.activity.quiet_since() + PARK_AFTER;
            if due <= tokio::time::Instant::now() {
                break;
            }
            quiet.as_mut().reset(due);
        }
        match this.conn.take() {
            Some(c) => Poll::Ready(Round::Idle(c)),
            None => Poll::Pending,
        }
    }
}

/// How a parked connection's wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Wake {
    /// Bytes (or the end of the stream) arrived: start a round.
    Readable,
    /// The watchdog closes the connection (keep-alive timeout).
    Close,
}

/// Waits for a parked connection's socket to become readable.
pub struct Parked<'a> {
    stream: &'a tokio::net::TcpStream,
    close: bool,
}

impl<'a> Parked<'a> {
    pub fn new(stream: &'a tokio::net::TcpStream) -> Parked<'a> {
        Parked {
            stream,
            close: false,
        }
    }

    /// The watchdog's graceful end: an idle HTTP/1.1 connection is simply closed.
    pub fn close(self: Pin<&mut Self>) {
        self.get_mut().close = true;
    }
}

impl Future for Parked<'_> {
    type Output = Wake;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wake> {
        if self.close {
            return Poll::Ready(Wake::Close);
        }
        match self.stream.poll_read_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Wake::Readable),
            Poll::Ready(Err(_)) => Poll::Ready(Wake::Close),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How much of a new connection's first bytes are read at once: hyper's first read size
/// (its read buffer starts at 8 KiB), so a request head that fits is read in one call.
const FIRST_READ: usize = 8192;

/// Waits for a new connection's first bytes and reads them (through the observing wrapper,
/// so the framing checks see them); the caller gives them back to the connection
/// (`Observed::rewind`) for hyper to read. One read instead of a peek at the HTTP/2
/// preface and hyper's own read: a system call less per connection. The buffer is made
/// only once the socket is readable, so a connection that sends nothing holds none.
/// `None` when the watchdog closes the connection.
pub struct FirstBytes<'a> {
    io: &'a mut Observed<tokio::net::TcpStream>,
    close: bool,
}

impl<'a> FirstBytes<'a> {
    pub fn new(io: &'a mut Observed<tokio::net::TcpStream>) -> FirstBytes<'a> {
        FirstBytes { io, close: false }
    }

    pub fn close(self: Pin<&mut Self>) {
        self.get_mut().close = true;
    }
}

impl Future for FirstBytes<'_> {
    /// The bytes read (empty at the end of the stream or on an error).
    type Output = Option<Bytes>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.close {
            return Poll::Ready(None);
        }
        match this.io.get_ref().poll_read_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Some(Bytes::new())),
            Poll::Pending => return Poll::Pending,
        }
        let mut buf = Vec::with_capacity(FIRST_READ);
        let mut read = tokio::io::ReadBuf::uninit(buf.spare_capacity_mut());
        match Pin::new(&mut *this.io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                // SAFETY: `ReadBuf` guarantees its first `filled` bytes are initialized,
                // and they are the vector's first `n` bytes.
                unsafe { buf.set_len(n) };
                Poll::Ready(Some(Bytes::from(buf)))
            }
            Poll::Ready(Err(_)) => Poll::Ready(Some(Bytes::new())),
            // Readiness was stale: the read registered for the next one.
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A response body that counts as "being sent" until hyper drops it, so a connection is
/// never parked in the middle of a response.
pub struct Tracked {
    inner: ProxyBody,
    _sending: Responding,
}

impl Tracked {
    pub fn new(inner: ProxyBody, sending: Responding) -> Tracked {
        Tracked {
            inner,
            _sending: sending,
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
