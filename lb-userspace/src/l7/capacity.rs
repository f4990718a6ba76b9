//! Balancing modes (SEMANTICS.md; Google Cloud's `balancingMode`): a backend's target
//! capacity, and whether it is full right now.
//!
//! - RATE with `max_rate_per_endpoint`: a backend is full while it receives at least that
//!   many requests per second (× its capacity scaler). Without `max_rate_per_endpoint`,
//!   RATE has no target and only weights count (the behaviour without a balancing mode).
//! - UTILIZATION: a backend's utilization is its requests in flight divided by
//!   `max_connections_per_endpoint` (its in-flight capacity); it is full at
//!   `max_utilization` (0.8 by default) × its capacity scaler. `max_rate_per_endpoint`
//!   may be set too, as a second target (Google Cloud allows both).
//!
//! A backend is full when one more request would take it above a target. A full backend is
//! skipped while another eligible backend has room. When every eligible
//! backend is full the requests are still served, spread by weight as without targets:
//! Google Cloud's "the target maximum RPS can be exceeded if all backends are at or above
//! capacity".

use crate::config::{BackendConfig, BackendService, BalancingMode};
use std::sync::atomic::{AtomicU64, Ordering};

/// Requests per second of one backend, as a sliding-window estimate over the current and
/// the previous whole second (the previous second's count weighted by how much of it is
/// still inside the last 1000 ms). Two atomics, no lock, no allocation.
#[derive(Debug, Default)]
pub struct RateMeter {
    /// `second << 32 | count` of the current second.
    current: AtomicU64,
    /// Count of the second before `current`'s (0 when that second saw nothing).
    previous: AtomicU64,
}

impl RateMeter {
    /// Counts one request at `now_ms`.
    pub fn record(&self, now_ms: u64) {
        let sec = now_ms / 1000;
        let mut cur = self.current.load(Ordering::Relaxed);
        loop {
            let (s, c) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s == sec {
                (s << 32) | (c + 1).min(0xffff_ffff)
            } else {
                (sec << 32) | 1
            };
            match self.current.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if s != sec {
                        let prev = if s + 1 == sec { c } else { 0 };
                        self.previous.store(prev, Ordering::Relaxed);
                    }
                    return;
                }
                Err(seen) => cur = seen,
            }
        }
    }

    /// Requests in the 1000 ms before `now_ms` (estimated).
    pub fn rate(&self, now_ms: u64) -> f64 {
        let sec = now_ms / 1000;
        let cur = self.current.load(Ordering::Relaxed);
        let (s, c) = (cur >> 32, (cur & 0xffff_ffff) as f64);
        let left_of_previous = 1.0 - (now_ms % 1000) as f64 / 1000.0;
        if s == sec {
            self.previous.load(Ordering::Relaxed) as f64 * left_of_previous + c
        } else if s + 1 == sec {
            c * left_of_previous
        } else {
            0.0
        }
    }
}

/// Targets of one backend service's backends, by backend index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capacity {
    /// Backend names, in the order of the vectors below.
    pub names: Vec<String>,
    /// Requests per second each backend may take before it is full.
    pub max_rate: Option<Vec<f64>>,
    /// Requests in flight each backend may hold before it is full.
    pub max_in_flight: Option<Vec<f64>>,
}

impl Capacity {
    /// The targets a service's balancing mode sets; `None` when it sets none (weights only).
    pub fn of(bs: &BackendService) -> Option<Capacity> {
        let scaled = |per_endpoint: f64| -> Vec<f64> {
            bs.backends
                .iter()
                .map(|b: &BackendConfig| per_endpoint * b.capacity_scaler)
                .collect()
        };
        let mode = bs.balancing_mode.unwrap_or(BalancingMode::Rate);
        let max_rate = bs.max_rate_per_endpoint.map(scaled);
        let max_in_flight = match (mode, bs.max_connections_per_endpoint) {
            (BalancingMode::Utilization, Some(c)) => {
                Some(scaled(c as f64 * bs.max_utilization.unwrap_or(0.8)))
            }
            _ => None,
        };
        (max_rate.is_some() || max_in_flight.is_some()).then_some(Capacity {
            names: bs.backends.iter().map(|b| b.display_name()).collect(),
            max_rate,
            max_in_flight,
        })
    }

    /// The same targets in the order of `names` (a selector's backends), so the two never
    /// disagree whatever subset or order the selector holds; a name without a target is
    /// never full.
    pub fn aligned<'a>(&self, names: impl Iterator<Item = &'a str>) -> Capacity {
        let names: Vec<String> = names.map(str::to_string).collect();
        let pick = |v: &Vec<f64>| -> Vec<f64> {
            names
                .iter()
                .map(|n| {
                    self.names
                        .iter()
                        .position(|m| m == n)
                        .and_then(|i| v.get(i).copied())
                        .unwrap_or(f64::INFINITY)
                })
                .collect()
        };
        Capacity {
            max_rate: self.max_rate.as_ref().map(pick),
            max_in_flight: self.max_in_flight.as_ref().map(pick),
            names,
        }
    }

    /// Whether backend `i` is full: one more request would take it above a target, with
    /// `rate` its requests per second and `in_flight` its requests in progress. (So a
    /// backend takes at most the target's whole number of requests, and the rate estimate,
    /// which dips right after a second boundary, does not let a burst through.)
    pub fn full(&self, i: usize, rate: impl FnOnce() -> f64, in_flight: u64) -> bool {
        let limit = |m: &Option<Vec<f64>>| m.as_ref().and_then(|m| m.get(i).copied());
        if let Some(m) = limit(&self.max_in_flight) {
            if in_flight as f64 + 1.0 > m {
                return true;
            }
        }
        match limit(&self.max_rate) {
            Some(m) => rate() + 1.0 > m,
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_over_a_sliding_second() {
        let m = RateMeter::default();
        for _ in 0..10 {
            m.record(5_000);
        }
        assert_eq!(m.rate(5_999), 10.0);
        // Half of the previous second is still inside the window.
        assert!((m.rate(6_500) - 5.0).abs() < 1e-9);
        m.record(6_500);
        assert!((m.rate(6_500) - 6.0).abs() < 1e-9);
        assert_eq!(m.rate(8_000), 0.0, "two seconds later nothing counts");
        m.record(9_000);
        assert_eq!(
            m.rate(9_000),
            1.0,
            "a gap of several seconds forgets the old count"
        );
    }

    fn service(extra: &str) -> BackendService {
        toml::from_str(&format!(
            "protocol = \"HTTP\"\n{extra}\nbackends = [{{ address = \"10.0.0.1\", port = 1 }}, {{ address = \"10.0.0.2\", port = 1, capacity_scaler = 0.5 }}]"
        ))
        .unwrap()
    }

    #[test]
    fn targets_follow_the_mode_and_the_scaler() {
        assert_eq!(Capacity::of(&service("")), None, "no target: weights only");
        assert_eq!(
            Capacity::of(&service("balancing_mode = \"RATE\"")),
            None,
            "RATE without a max rate: weights only"
        );
        let r = Capacity::of(&service("max_rate_per_endpoint = 10.0")).unwrap();
        assert_eq!(r.max_rate, Some(vec![10.0, 5.0]));
        assert_eq!(r.max_in_flight, None);
        let u = Capacity::of(&service(
            "balancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 10\nmax_utilization = 0.5",
        ))
        .unwrap();
        assert_eq!(u.max_in_flight, Some(vec![5.0, 2.5]));
        assert!(!u.full(0, || 1e9, 4), "a 5th request fits 5");
        assert!(u.full(0, || 0.0, 5));
        assert!(!u.full(1, || 0.0, 1));
        assert!(u.full(1, || 0.0, 2), "a 3rd would exceed 2.5");
        assert!(r.full(1, || 4.5, 0));
        assert!(!r.full(0, || 9.0, 1000));
        assert!(r.full(0, || 9.1, 1000));
        assert!(
            !r.full(7, || 1e9, 1000),
            "out of range: never full, never a panic"
        );
        let swapped = r.aligned(["10.0.0.2:1", "new:1", "10.0.0.1:1"].into_iter());
        assert_eq!(swapped.max_rate, Some(vec![5.0, f64::INFINITY, 10.0]));
    }
}
