//! Outlier detection (SEMANTICS.md: consecutive gateway failures 3, enforced; interval 1 s;
//! base ejection time 30 s times the ejection count; at most 50% ejected), after Envoy's
//! `consecutive_gateway_failure` detector, which Google Cloud's `outlierDetection` maps to.
//!
//! State lives in atomics on each backend so the request path never locks. Ejections end
//! lazily: a backend is ejected while `now < ejected_until`, which is what a sweep every
//! `interval` would decide, to within one interval.

use crate::config::OutlierDetection;
use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

/// Milliseconds since the first call in this process: a cheap monotonic clock for atomics.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The compiled detector settings of one backend service.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierPolicy {
    pub consecutive_gateway_failure: u32,
    /// Percent chance that a detected gateway-failure outlier is really ejected (100).
    pub enforcing_percent: u32,
    /// Consecutive 5xx answers (and failures to get one) that detect an outlier (5).
    pub consecutive_errors: u32,
    /// Percent chance that a detected 5xx outlier is really ejected (0: detection only).
    pub enforcing_errors_percent: u32,
    /// Ejection analysis interval: an ejection ends at the first sweep (a multiple of the
    /// interval) after its ejection time has passed, as Envoy's sweeps return hosts.
    pub interval: Duration,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl From<&OutlierDetection> for OutlierPolicy {
    fn from(o: &OutlierDetection) -> Self {
        OutlierPolicy {
            consecutive_gateway_failure: o.consecutive_gateway_failure.max(1),
            enforcing_percent: o.enforcing_consecutive_gateway_failure.min(100),
            consecutive_errors: o.consecutive_errors.max(1),
            enforcing_errors_percent: o.enforcing_consecutive_errors.min(100),
            interval: crate::config::limits::duration(o.interval_sec),
            base_ejection: crate::config::limits::duration(o.base_ejection_time_sec),
            max_ejection_percent: o.max_ejection_percent.min(100),
        }
    }
}

/// How one attempt on a backend ended, for the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// An answer below 500.
    Success,
    /// A 5xx answer other than 502/503/504 (counts for `consecutive_errors` only).
    ServerError,
    /// 502/503/504, connect failure, reset or timeout (counts for both detectors).
    GatewayFailure,
}

/// Per-backend detector state.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_gateway: AtomicU32,
    consecutive_errors: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
}

impl OutlierState {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Times this backend has been ejected.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Records one attempt. `ejected_now` counts the service's backends ejected at this
    /// moment and `total` its backends, for the max-ejection cap; `roll_percent` is a
    /// uniform draw in 0..100 for the enforcement percentages. Returns `true` when this
    /// call ejected the backend.
    pub fn record(
        &self,
        policy: &OutlierPolicy,
        attempt: Attempt,
        now_ms: u64,
        ejected_now: usize,
        total: usize,
        roll_percent: u32,
    ) -> bool {
        let gateway = match attempt {
            Attempt::Success => {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                self.consecutive_errors.store(0, Ordering::Relaxed);
                return false;
            }
            Attempt::ServerError => {
                self.consecutive_gateway.store(0, Ordering::Relaxed);
                0
            }
            Attempt::GatewayFailure => self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let errors = self.consecutive_errors.fetch_add(1, Ordering::Relaxed) + 1;
        let gateway_hit = gateway >= policy.consecutive_gateway_failure;
        let errors_hit = errors >= policy.consecutive_errors;
        if !(gateway_hit || errors_hit) || self.is_ejected(now_ms) {
            return false;
        }
        // A detection starts a new count whether or not it is enforced (Envoy).
        if gateway_hit {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
        }
        if errors_hit {
            self.consecutive_errors.store(0, Ordering::Relaxed);
        }
        let enforced = (gateway_hit && roll_percent < policy.enforcing_percent)
            || (errors_hit && roll_percent < policy.enforcing_errors_percent);
        // Envoy caps ejections at max_ejection_percent of the hosts, so a service-wide
        // outage does not eject every backend (that would turn errors into 503s).
        let cap = total * policy.max_ejection_percent as usize / 100;
        if ejected_now >= cap || !enforced {
            return false;
        }
        let count = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = (policy.base_ejection.as_millis() as u64).saturating_mul(count as u64);
        let until = now_ms.saturating_add(duration);
        let step = (policy.interval.as_millis() as u64).max(1);
        self.ejected_until_ms
            .store(until.div_ceil(step).saturating_mul(step), Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OutlierPolicy {
        OutlierPolicy::from(&OutlierDetection::default())
    }

    #[test]
    fn defaults_follow_semantics() {
        let p = policy();
        assert_eq!(p.consecutive_gateway_failure, 3);
        assert_eq!(p.enforcing_percent, 100);
        assert_eq!(p.base_ejection, Duration::from_secs(30));
        assert_eq!(p.max_ejection_percent, 50);
        assert_eq!(p.consecutive_errors, 5);
        assert_eq!(p.enforcing_errors_percent, 0);
        assert_eq!(p.interval, Duration::from_secs(1));
    }

    #[test]
    fn consecutive_errors_detect_and_enforce_by_percentage() {
        let mut p = policy();
        let s = OutlierState::default();
        for _ in 0..10 {
            assert!(
                !s.record(&p, Attempt::ServerError, 1000, 0, 4, 0),
                "detected but not enforced by default"
            );
        }
        p.enforcing_errors_percent = 100;
        let s = OutlierState::default();
        for _ in 0..4 {
            assert!(!s.record(&p, Attempt::ServerError, 1000, 0, 4, 0));
        }
        assert!(
            s.record(&p, Attempt::ServerError, 1000, 0, 4, 0),
            "5th 5xx ejects"
        );
        // A 500 between gateway failures resets the gateway count but not the error count.
        let s = OutlierState::default();
        s.record(&p, Attempt::GatewayFailure, 1, 0, 4, 0);
        s.record(&p, Attempt::ServerError, 1, 0, 4, 0);
        assert!(!s.record(&p, Attempt::GatewayFailure, 1, 0, 4, 0));
        p.enforcing_errors_percent = 50;
        let s = OutlierState::default();
        for _ in 0..5 {
            s.record(&p, Attempt::ServerError, 1, 0, 4, 50);
        }
        assert!(!s.is_ejected(2), "roll 50 is not below 50%");
    }

    #[test]
    fn ejections_end_at_an_interval_sweep() {
        let mut p = policy();
        p.interval = Duration::from_secs(7);
        let s = OutlierState::default();
        for _ in 0..3 {
            s.record(&p, Attempt::GatewayFailure, 1000, 0, 4, 0);
        }
        // 1 s + 30 s = 31 s, returned at the next 7 s sweep: 35 s.
        assert!(s.is_ejected(34_999));
        assert!(!s.is_ejected(35_000));
    }

    #[test]
    fn three_consecutive_failures_eject_for_base_times_count() {
        let p = policy();
        let s = OutlierState::default();
        assert!(!s.record(&p, Attempt::GatewayFailure, 1000, 0, 4, 0));
        assert!(!s.record(&p, Attempt::GatewayFailure, 1000, 0, 4, 0));
        assert!(s.record(&p, Attempt::GatewayFailure, 1000, 0, 4, 0));
        assert!(s.is_ejected(1000 + 29_999));
        assert!(!s.is_ejected(1000 + 30_000));
        // Second ejection lasts twice as long.
        for _ in 0..3 {
            s.record(&p, Attempt::GatewayFailure, 40_000, 0, 4, 0);
        }
        assert!(s.is_ejected(40_000 + 59_999));
        assert!(!s.is_ejected(40_000 + 60_000));
        assert_eq!(s.ejections(), 2);
    }

    #[test]
    fn a_success_resets_the_count() {
        let p = policy();
        let s = OutlierState::default();
        s.record(&p, Attempt::GatewayFailure, 1, 0, 4, 0);
        s.record(&p, Attempt::GatewayFailure, 1, 0, 4, 0);
        s.record(&p, Attempt::Success, 1, 0, 4, 0);
        assert!(!s.record(&p, Attempt::GatewayFailure, 1, 0, 4, 0));
        assert!(!s.is_ejected(2));
    }

    #[test]
    fn at_most_half_ejected_and_enforcement_roll() {
        let p = policy();
        let s = OutlierState::default();
        for _ in 0..5 {
            assert!(
                !s.record(&p, Attempt::GatewayFailure, 1, 2, 4, 0),
                "2 of 4 already ejected"
            );
        }
        let one = OutlierState::default();
        for _ in 0..5 {
            assert!(
                !one.record(&p, Attempt::GatewayFailure, 1, 0, 1, 0),
                "50% of one backend is zero"
            );
        }
        let mut weak = p;
        weak.enforcing_percent = 0;
        let s = OutlierState::default();
        for _ in 0..5 {
            assert!(
                !s.record(&weak, Attempt::GatewayFailure, 1, 0, 4, 0),
                "not enforced"
            );
        }
    }
}
