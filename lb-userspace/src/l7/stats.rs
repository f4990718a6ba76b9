//! Per-backend-service counters (requests, status classes, latency histogram) kept in
//! atomics on the request path, and the plain snapshot structs that `L7Handle::stats()`
//! returns for the metrics and admin code to render.
//!
//! Counters survive reloads: the runtime reuses a service's counters when the new
//! configuration still has a service of that name.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets in seconds (Prometheus `le`); the last bucket is +Inf.
pub const LATENCY_BOUNDS_SEC: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one backend service.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    requests: AtomicU64,
    /// Responses by class: index 0 = 1xx … 4 = 5xx.
    classes: [AtomicU64; 5],
    /// Non-cumulative bucket counts; the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_SEC.len() + 1],
    latency_sum_us: AtomicU64,
    retries: AtomicU64,
}

impl ServiceCounters {
    /// Counts one request handed to this service, with the status the client got and the
    /// time from receiving the request to the response headers.
    pub fn record(&self, status: u16, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = class_of(status) {
            self.classes[c].fetch_add(1, Ordering::Relaxed);
        }
        let secs = latency.as_secs_f64();
        let i = LATENCY_BOUNDS_SEC
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS_SEC.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn record_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, [u64; 5], Histogram, u64) {
        let classes = std::array::from_fn(|i| self.classes[i].load(Ordering::Relaxed));
        let mut cumulative = 0;
        let buckets = self
            .buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        (
            self.requests.load(Ordering::Relaxed),
            classes,
            Histogram {
                bounds_sec: LATENCY_BOUNDS_SEC.to_vec(),
                cumulative_counts: buckets,
                sum_sec: self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
            },
            self.retries.load(Ordering::Relaxed),
        )
    }
}

/// The response class index of a status: 0 = 1xx … 4 = 5xx.
pub fn class_of(status: u16) -> Option<usize> {
    (100..600)
        .contains(&status)
        .then(|| (status / 100 - 1) as usize)
}

/// Why the proxy answered a request itself instead of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 400: framing or another illegal request caught by the edge checks.
    BadRequest,
    /// 400 from hyper's parser (the request never reached the proxy's handler).
    Malformed,
    /// 414.
    UriTooLong,
    /// 431 from hyper's parser.
    HeadersTooLarge,
    /// The request head did not arrive within the header read timeout (hyper answers 408).
    HeaderTimeout,
    /// 404: no URL-map rule matched.
    NoRoute,
    /// 503: no healthy (eligible) backend.
    NoBackend,
    /// 504: the backend did not answer in time.
    BackendTimeout,
    /// 502: the backend could not be reached or reset the connection.
    BackendUnreachable,
    /// Anything else the proxy answered itself (500, a listener without a proxy).
    Internal,
}

impl Refused {
    pub const ALL: [Refused; 10] = [
        Refused::BadRequest,
        Refused::Malformed,
        Refused::UriTooLong,
        Refused::HeadersTooLarge,
        Refused::HeaderTimeout,
        Refused::NoRoute,
        Refused::NoBackend,
        Refused::BackendTimeout,
        Refused::BackendUnreachable,
        Refused::Internal,
    ];

    /// The metric label and the access log's `status_details`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::BadRequest => "bad_request",
            Refused::Malformed => "malformed",
            Refused::UriTooLong => "uri_too_long",
            Refused::HeadersTooLarge => "headers_too_large",
            Refused::HeaderTimeout => "header_timeout",
            Refused::NoRoute => "no_route",
            Refused::NoBackend => "no_backend",
            Refused::BackendTimeout => "backend_timeout",
            Refused::BackendUnreachable => "backend_unreachable",
            Refused::Internal => "internal",
        }
    }

    /// The reason of a local response with this status.
    pub fn of_status(status: u16) -> Refused {
        match status {
            400 => Refused::BadRequest,
            404 => Refused::NoRoute,
            408 => Refused::HeaderTimeout,
            414 => Refused::UriTooLong,
            431 => Refused::HeadersTooLarge,
            502 => Refused::BackendUnreachable,
            503 => Refused::NoBackend,
            504 => Refused::BackendTimeout,
            _ => Refused::Internal,
        }
    }

    /// What a connection error of hyper's server says about a refused request, if anything.
    pub fn of_connection_error(e: &(dyn std::error::Error + 'static)) -> Option<Refused> {
        let h = e.downcast_ref::<hyper::Error>()?;
        if h.is_parse_too_large() {
            Some(Refused::HeadersTooLarge)
        } else if h.is_parse() {
            Some(Refused::Malformed)
        } else if h.is_timeout() {
            Some(Refused::HeaderTimeout)
        } else {
            None
        }
    }
}

/// Counters of the whole L7 tier (not per service).
#[derive(Debug, Default)]
pub struct TierCounters {
    refused: [AtomicU64; Refused::ALL.len()],
    /// Client connections open now.
    pub connections: AtomicU64,
    /// Client connections accepted since start.
    pub connections_total: AtomicU64,
    /// Access-log lines dropped because the writer fell behind.
    pub log_dropped: std::sync::Arc<AtomicU64>,
}

impl TierCounters {
    pub fn refused(&self, r: Refused) {
        self.refused[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused requests by reason label.
    /// A client connection was accepted (counted open until [`Self::connection_closed`]).
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn refused_snapshot(&self) -> Vec<(&'static str, u64)> {
        Refused::ALL
            .iter()
            .map(|r| (r.label(), self.refused[*r as usize].load(Ordering::Relaxed)))
            .collect()
    }
}

/// A latency histogram in Prometheus shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    pub bounds_sec: Vec<f64>,
    /// Cumulative counts, one per bound plus a final +Inf (which is the total count).
    pub cumulative_counts: Vec<u64>,
    pub sum_sec: f64,
}

/// One backend as `list`/`describe` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackendStats {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub capacity_scaler: f64,
    /// From the shared health snapshot.
    pub healthy: bool,
    /// Ejected by outlier detection right now.
    pub ejected: bool,
    pub ejections: u32,
    pub in_flight: u64,
    pub requests: u64,
    /// Requests that got a 5xx from the backend or no answer.
    pub errors: u64,
    /// Takes new requests (the agent's admission).
    pub serving: bool,
    /// Final responses by class `[1xx, 2xx, 3xx, 4xx, 5xx]` of requests this backend
    /// answered last (a retried request counts at the backend that gave the final answer).
    pub responses_by_class: [u64; 5],
}

/// One backend service's counters and backends.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceStats {
    pub name: String,
    pub protocol: String,
    pub locality_lb_policy: String,
    pub session_affinity: String,
    pub requests: u64,
    pub retries: u64,
    /// Responses by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses_by_class: [u64; 5],
    pub latency: Histogram,
    pub backends: Vec<BackendStats>,
}

/// Everything the L7 tier reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct L7Stats {
    /// Listening addresses with their target proxy.
    pub listeners: Vec<(String, String)>,
    pub services: Vec<ServiceStats>,
    /// Requests currently being proxied (all services).
    pub in_flight: u64,
    /// Configuration generation (1 at start, +1 per successful reload).
    pub generation: u64,
    /// Requests the proxy answered itself, by reason label.
    pub refused: Vec<(&'static str, u64)>,
    /// Client connections open now, and accepted since start.
    pub connections: u64,
    pub connections_total: u64,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: u64,
}

/// The metrics' view of a stats snapshot.
pub fn counters(s: &L7Stats) -> crate::metrics::L7Counters {
    use crate::metrics::{HistogramCounts, L7BackendCounters, L7Counters, L7ServiceCounters};
    L7Counters {
        services: s
            .services
            .iter()
            .map(|svc| L7ServiceCounters {
                service: svc.name.clone(),
                requests: svc.requests,
                retries: svc.retries,
                responses_by_class: svc.responses_by_class,
                latency: HistogramCounts::from_cumulative(
                    &svc.latency.bounds_sec,
                    &svc.latency.cumulative_counts,
                    svc.latency.sum_sec,
                ),
                backends: svc
                    .backends
                    .iter()
                    .map(|b| L7BackendCounters {
                        backend: b.name.clone(),
                        requests: b.requests,
                        in_flight: b.in_flight,
                        ejected: b.ejected,
                        ejections: b.ejections.into(),
                        responses_by_class: b.responses_by_class,
                    })
                    .collect(),
            })
            .collect(),
        in_flight: s.in_flight,
        generation: s.generation,
        refused: s.refused.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        connections: s.connections,
        connections_total: s.connections_total,
        access_log_dropped: s.access_log_dropped,
    }
}

/// One L7 listener as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct L7ListenerInfo {
    /// The forwarding rule's address and port.
    pub address: String,
    pub target_proxy: String,
    /// HTTPS (a target HTTPS proxy) or plain HTTP.
    pub tls: bool,
    /// The socket actually bound; none when the configured listener is not running (a
    /// refused change left the previous listeners in place).
    pub bound: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_buckets() {
        let c = ServiceCounters::default();
        c.record(200, Duration::from_micros(300));
        c.record(503, Duration::from_millis(30));
        c.record(204, Duration::from_secs(20));
        let (n, classes, h, _) = c.snapshot();
        assert_eq!(n, 3);
        assert_eq!(classes, [0, 2, 0, 0, 1]);
        assert_eq!(h.cumulative_counts[0], 1);
        assert_eq!(h.cumulative_counts[6], 2, "30 ms is in the 50 ms bucket");
        assert_eq!(*h.cumulative_counts.last().unwrap(), 3);
        assert!((h.sum_sec - 20.0303).abs() < 1e-6);
    }
}
