//! The life of a client connection, timed by one watchdog per connection:
//!
//! - **first request**: a new connection must finish its TLS handshake and get its first
//!   request to the service (for HTTP/2: preface, settings and the first HEADERS) within
//!   `l7.first_request_timeout_sec` (10 s), or it is closed. hyper's own header timer starts
//!   only once hyper reads a head, and hyper-util's protocol sniffing waits for bytes
//!   forever, so a silent connection would otherwise stay open for good.
//! - **request head**: once the first byte of an HTTP/1.1 head has arrived, the head must be
//!   complete within `l7.header_read_timeout_sec` (30 s); [`super::framing`] follows message
//!   boundaries and reports when a head starts and ends.
//! - **keep-alive**: a connection with no request open and no bytes either way for the
//!   target proxy's `http_keep_alive_timeout_sec` (600 s) is closed: HTTP/1.1 at once,
//!   HTTP/2 with GOAWAY (hyper's graceful shutdown), which hyper does not do by itself.
//!
//! The request path only touches atomics and never wakes the watchdog: the watchdog sleeps
//! until the earliest deadline, but never longer than the shortest of the head and
//! keep-alive timeouts. A deadline that starts later (a head's, or the keep-alive's once the
//! last open request ends) lies at least that long after the moment it starts, so the
//! watchdog looks again before it is due and then sleeps until it exactly. (Waking it for
//! every head and every request's end re-armed its timer twice per request.)

use super::limits::Permit;
use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;

/// Timeouts of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_request: Duration,
    pub header_read: Duration,
    pub keep_alive: Duration,
}

/// How long a connection told to go away (GOAWAY) may take to finish its streams.
const GRACE: Duration = Duration::from_secs(30);

/// What one connection has been doing, in milliseconds since it was accepted (+1, so 0
/// means "never").
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_io: AtomicU64,
    head_started: AtomicU64,
    open: AtomicU32,
    requests: AtomicU64,
    /// Responses whose body hyper has not finished sending (see [`Responding`]).
    responding: AtomicU32,
    /// The last read of the socket found nothing to read (so hyper waits for bytes).
    read_blocked: AtomicBool,
    /// The last write or flush could not finish (so hyper still holds bytes to send).
    write_blocked: AtomicBool,
    /// The HTTP/1.1 byte stream is between two messages ([`super::framing`] follows it).
    between_messages: AtomicBool,
    /// The connection's place under the connection caps, held as long as the connection's
    /// I/O lives (an upgraded WebSocket outlives hyper's connection; its I/O keeps this).
    _permit: Option<Permit>,
}

/// Why the watchdog ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    FirstRequest,
    Head,
    Idle,
}

impl Activity {
    pub fn new() -> Activity {
        Activity::holding(None)
    }

    /// A connection's activity, holding its permit until the last reference goes.
    pub fn holding(permit: Option<Permit>) -> Activity {
        Activity {
            _permit: permit,
            start: Instant::now(),
            last_io: AtomicU64::new(1),
            head_started: AtomicU64::new(0),
            open: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            responding: AtomicU32::new(0),
            read_blocked: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
            between_messages: AtomicBool::new(true),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64 + 1
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms.saturating_sub(1))
    }

    /// Bytes were read or written.
    pub fn touch(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The first byte of an HTTP/1.1 request head arrived.
    pub fn head_started(&self) {
        if self.head_started.load(Ordering::Relaxed) == 0 {
            self.head_started.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The head is complete (or no longer followed).
    pub fn head_done(&self) {
        self.head_started.store(0, Ordering::Relaxed);
    }

    /// A request reached the service; the returned guard ends it.
    pub fn request(&self) -> RequestGuard<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self)
    }

    /// A response was handed to hyper; the returned guard goes with its body, which hyper
    /// drops once the body is sent (or the connection ends).
    pub fn responding(self: &Arc<Self>) -> Responding {
        self.responding.fetch_add(1, Ordering::Relaxed);
        Responding(self.clone())
    }

    /// The outcome of a read of the socket: `blocked` when nothing was there.
    pub fn read_done(&self, blocked: bool) {
        self.read_blocked.store(blocked, Ordering::Relaxed);
    }

    /// The outcome of a write or flush: `blocked` when the socket took not everything.
    pub fn write_done(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Whether the byte stream is between messages (no head or body part in progress).
    pub fn set_between_messages(&self, between: bool) {
        self.between_messages.store(between, Ordering::Relaxed);
    }

    /// Whether an HTTP/1.1 connection whose hyper future just returned `Pending` is idle:
    /// waiting for the first byte of a next request, with no request in the service, no
    /// response body being sent, nothing left to write and no message half read. Its
    /// hyper state can then be taken apart and rebuilt when bytes arrive
    /// ([`super::park`]).
    pub fn idle_between_requests(&self) -> bool {
        self.read_blocked.load(Ordering::Relaxed)
            && !self.write_blocked.load(Ordering::Relaxed)
            && self.between_messages.load(Ordering::Relaxed)
            && self.head_started.load(Ordering::Relaxed) == 0
            && self.open.load(Ordering::Acquire) == 0
            && self.responding.load(Ordering::Relaxed) == 0
    }

    /// When bytes last moved either way (the start of the quiet period).
    pub fn quiet_since(&self) -> Instant {
        self.at(self.last_io.load(Ordering::Relaxed))
    }

    /// When a connection parked now is to be closed (see [`super::parked`]): its earliest
    /// deadline, which no longer moves while it is parked (no bytes move, no request is
    /// open). Whatever the deadline was for, a parked HTTP/1.1 connection is then closed,
    /// as [`drive`] closes it (its graceful end closes an idle HTTP/1.1 connection at once).
    pub fn parked_deadline(&self, t: &Timeouts) -> Instant {
        self.next_deadline(t)
            .map(|(at, _)| at)
            .unwrap_or_else(|| Instant::now() + t.keep_alive)
    }

    /// The earliest deadline now, and what it is for.
    fn next_deadline(&self, t: &Timeouts) -> Option<(Instant, Expired)> {
        let mut best: Option<(Instant, Expired)> = None;
        let mut consider = |at: Instant, why| {
            if best.is_none_or(|(b, _)| at < b) {
                best = Some((at, why));
            }
        };
        if self.requests.load(Ordering::Relaxed) == 0 {
            consider(self.start + t.first_request, Expired::FirstRequest);
        }
        let head = self.head_started.load(Ordering::Relaxed);
        if head != 0 {
            consider(self.at(head) + t.header_read, Expired::Head);
        }
        if self.open.load(Ordering::Acquire) == 0 {
            consider(
                self.at(self.last_io.load(Ordering::Relaxed)) + t.keep_alive,
                Expired::Idle,
            );
        }
        best
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// An open request of a connection.
pub struct RequestGuard<'a>(&'a Activity);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        // Touched first: the keep-alive deadline starts no earlier than the end of the last
        // open request (see the module on why the watchdog is not woken).
        self.0.touch();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body being sent (see [`Activity::responding`]).
#[derive(Debug)]
pub struct Responding(Arc<Activity>);

impl Drop for Responding {
    fn drop(&mut self) {
        self.0.responding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Drives `conn` (a hyper connection) under the watchdog. Returns the connection's result,
/// or `Err(why)` when the watchdog closed it. `graceful` starts hyper's graceful shutdown
/// (GOAWAY for HTTP/2, close when idle for HTTP/1.1).
pub async fn drive<F, T>(
    conn: F,
    activity: &Activity,
    t: Timeouts,
    mut graceful: impl FnMut(Pin<&mut F>),
) -> Result<T, Expired>
where
    F: Future<Output = T>,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing: Option<Instant> = None;
    // See the module: no deadline can start and fall due within `recheck` unseen.
    let recheck = t.header_read.min(t.keep_alive);
    let sleep = tokio::time::sleep_until(Instant::now() + recheck);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        let now = Instant::now();
        let at = match closing {
            Some(at) => at + GRACE,
            None => match activity.next_deadline(&t) {
                Some((at, _)) => at.min(now + recheck),
                None => now + recheck,
            },
        };
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        tokio::select! {
            biased;
            r = conn.as_mut() => return Ok(r),
            _ = sleep.as_mut() => {}
        }
        if let Some(at) = closing {
            if at + GRACE <= Instant::now() {
                return Err(Expired::Idle);
            }
            continue;
        }
        // Re-read: activity since the sleep began may have moved the deadline.
        match activity.next_deadline(&t) {
            Some((at, why)) if at <= Instant::now() => {
                if why != Expired::Idle || activity.requests.load(Ordering::Relaxed) == 0 {
                    return Err(why);
                }
                graceful(conn.as_mut());
                closing = Some(Instant::now());
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(first: u64, head: u64, idle: u64) -> Timeouts {
        Timeouts {
            first_request: Duration::from_millis(first),
            header_read: Duration::from_millis(head),
            keep_alive: Duration::from_millis(idle),
        }
    }

    #[tokio::test]
    async fn a_silent_connection_ends_at_the_first_request_deadline() {
        let a = Activity::new();
        let r = drive(std::future::pending::<()>(), &a, t(100, 1000, 1000), |_| {}).await;
        assert_eq!(r, Err(Expired::FirstRequest));
        assert!(a.start.elapsed() >= Duration::from_millis(100));
        assert!(a.start.elapsed() < Duration::from_millis(200));
    }

    #[tokio::test]
    async fn open_requests_hold_the_connection_and_idleness_shuts_it_gracefully() {
        let a = Activity::new();
        let g = a.request();
        let goaway = tokio::sync::Notify::new();
        let conn = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(g); // the request ends after 5 keep-alive periods
            goaway.notified().await; // the connection finishes once told to go away
        };
        let r = drive(conn, &a, t(100, 1000, 100), |_| goaway.notify_one()).await;
        assert_eq!(
            r,
            Ok(()),
            "GOAWAY after idleness, then the connection ended"
        );
        assert!(a.start.elapsed() >= Duration::from_millis(600));
        assert!(a.start.elapsed() < Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_started_head_must_finish_in_time() {
        let a = Activity::new();
        drop(a.request());
        let conn = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            a.head_started();
            std::future::pending::<()>().await
        };
        let r = drive(conn, &a, t(100, 200, 10_000), |_| {}).await;
        assert_eq!(r, Err(Expired::Head));
    }
}
