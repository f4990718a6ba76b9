//! Per-backend-service counters (requests, status classes, latency histogram) kept in
//! atomics on the request path, and the plain snapshot structs that `L7Handle::stats()`
//! returns for the metrics and admin code to render.
//!
//! Counters survive reloads: the runtime reuses a service's counters when the new
//! configuration still has a service of that name.

use serde::Serialize;
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
        if (100..600).contains(&status) {
            self.classes[(status / 100 - 1) as usize].fetch_add(1, Ordering::Relaxed);
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
