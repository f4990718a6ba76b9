//! Client-side limits of the L7 tier, for a proxy exposed to untrusted clients: connection
//! caps (per listener from `l7.max_connections_per_listener`, and for the whole tier from the
//! descriptor limit), timeouts of a connection's life (see [`super::idle`]) and the HTTP/2
//! settings hyper is given.
//!
//! Descriptors: `lb run` also health-checks, serves the admin socket and metrics and holds
//! BPF maps in the same process, and those must keep working when the L7 side is flooded.
//! At start the soft RLIMIT_NOFILE is raised to the hard limit; a reserve (1024, or half
//! the limit when it is small) is kept for everything else, and the rest is split evenly
//! between client connections and backend connections ([`super::backend_count`]), each
//! capped.

use crate::config::{limits::duration, Config};
use hyper_util::{
    rt::{TokioExecutor, TokioTimer},
    server::conn::auto,
};
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

/// Descriptors kept for everything that is not an L7 connection.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// h2's rapid-reset guard (CVE-2023-44487): streams the client opened and reset before the
/// server accepted them; beyond this many pending, h2 answers GOAWAY ENHANCE_YOUR_CALM.
pub const HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// h2's guard against a client provoking server-side resets (CVE-2025-8671, "MadeYouReset"):
/// after this many local error resets the connection is closed with GOAWAY.
pub const HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                r.rlim_cur = r.rlim_max;
            }
        }
    }
    r.rlim_cur
}

/// How many client connections (and as many backend connections) the tier may hold with
/// `nofile` descriptors.
pub fn connection_budget(nofile: u64) -> usize {
    let reserve = RESERVED_DESCRIPTORS.min(nofile / 2);
    (nofile.saturating_sub(reserve) / 2).max(1) as usize
}

/// Open-connection counters: one per listener and one for the whole tier.
#[derive(Debug)]
pub struct Budget {
    total: Arc<AtomicUsize>,
    max_total: usize,
}

/// One accepted client connection, counted while it lives.
#[derive(Debug)]
pub struct Permit {
    listener: Arc<AtomicUsize>,
    total: Arc<AtomicUsize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.listener.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Budget {
    pub fn new(max_total: usize) -> Budget {
        Budget {
            total: Arc::default(),
            max_total,
        }
    }

    /// The tier-wide cap.
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A permit for one more connection on a listener with `open` connections and a cap of
    /// `max`, or `None` when either cap is reached.
    pub fn admit(&self, open: &Arc<AtomicUsize>, max: usize) -> Option<Permit> {
        if !take(open, max) {
            return None;
        }
        if !take(&self.total, self.max_total) {
            open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Permit {
            listener: open.clone(),
            total: self.total.clone(),
        })
    }
}

/// The client-side settings of one configuration, swapped with it on reload (new
/// connections use the new ones).
#[derive(Debug)]
pub struct ClientSettings {
    pub first_request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_connections_per_listener: usize,
    /// Client keep-alive per target proxy (`http_keep_alive_timeout_sec`).
    keep_alive: HashMap<String, Duration>,
    /// hyper's server settings (HTTP/1.1 and HTTP/2), for connections whose protocol is
    /// found by hyper-util (HTTP/2 prior knowledge, TLS).
    pub server: auto::Builder<TokioExecutor>,
    /// The same HTTP/1.1 settings, for plain-text HTTP/1.1 connections served in rounds
    /// ([`super::park`]).
    pub http1: hyper::server::conn::http1::Builder,
}

/// The default client keep-alive (SEMANTICS: 600 s).
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(600);

impl ClientSettings {
    /// Settings from a validated configuration; `max_header_bytes` is the request-head limit.
    pub fn new(cfg: &Config, max_header_bytes: usize) -> ClientSettings {
        let l = &cfg.l7;
        let keep_alive = cfg
            .target_http_proxies
            .iter()
            .map(|(n, p)| (n.clone(), p.http_keep_alive_timeout_sec))
            .chain(
                cfg.target_https_proxies
                    .iter()
                    .map(|(n, p)| (n.clone(), p.http_keep_alive_timeout_sec)),
            )
            .map(|(n, s)| (n, Duration::from_secs(u64::from(s))))
            .collect();
        let mut server = auto::Builder::new(TokioExecutor::new());
        // hyper's own header timer also runs while a keep-alive connection waits for its
        // next request, so it would cut idle connections at 30 s; the connection watchdog
        // (`idle`) times heads and idleness separately instead.
        server
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_header_bytes.max(8192))
            .keep_alive(true);
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(max_header_bytes.max(8192))
            .max_header_size(max_header_bytes.max(8192))
            .keep_alive(true);
        server
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(l.http2_max_concurrent_streams)
            .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS);
        ClientSettings {
            first_request_timeout: duration(l.first_request_timeout_sec),
            header_read_timeout: duration(l.header_read_timeout_sec),
            max_connections_per_listener: l.max_connections_per_listener as usize,
            keep_alive,
            server,
            http1,
        }
    }

    /// The client keep-alive of a target proxy.
    pub fn keep_alive(&self, proxy: &str) -> Duration {
        self.keep_alive
            .get(proxy)
            .copied()
            .unwrap_or(DEFAULT_KEEP_ALIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reserves_descriptors_and_caps_both_levels() {
        assert_eq!(connection_budget(1_048_576), (1_048_576 - 1024) / 2);
        assert_eq!(connection_budget(1024), 256);
        let b = Budget::new(3);
        let l1 = Arc::new(AtomicUsize::new(0));
        let l2 = Arc::new(AtomicUsize::new(0));
        let p1 = b.admit(&l1, 2).unwrap();
        let _p2 = b.admit(&l1, 2).unwrap();
        assert!(b.admit(&l1, 2).is_none(), "listener cap");
        let _p3 = b.admit(&l2, 10).unwrap();
        assert!(b.admit(&l2, 10).is_none(), "tier cap");
        assert_eq!(
            l2.load(Ordering::Relaxed),
            1,
            "a refused permit is given back"
        );
        drop(p1);
        assert!(b.admit(&l2, 10).is_some());
    }

    #[test]
    fn raising_the_descriptor_limit_never_lowers_it() {
        let before = {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: reads into a struct we own.
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
            r.rlim_cur
        };
        assert!(raise_nofile() >= before);
    }
}
