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
    /// Percent chance that a detected outlier is really ejected (100 by default).
    pub enforcing_percent: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

impl From<&OutlierDetection> for OutlierPolicy {
    fn from(o: &OutlierDetection) -> Self {
        OutlierPolicy {
            consecutive_gateway_failure: o.consecutive_gateway_failure.max(1),
            enforcing_percent: o.enforcing_consecutive_gateway_failure.min(100),
            base_ejection: Duration::from_secs_f64(o.base_ejection_time_sec.max(0.0)),
            max_ejection_percent: o.max_ejection_percent.min(100),
        }
    }
}

/// Per-backend detector state.
#[derive(Debug, Default)]
pub struct OutlierState {
    consecutive_gateway: AtomicU32,
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

    /// Records one attempt. `gateway_failure`: 502/503/504, connect failure, reset or
    /// timeout. `ejected_now` counts the service's backends ejected at this moment and
    /// `total` its backends, for the max-ejection cap. Returns `true` when this call ejected
    /// the backend.
    pub fn record(
        &self,
        policy: &OutlierPolicy,
        gateway_failure: bool,
        now_ms: u64,
        ejected_now: usize,
        total: usize,
        roll_percent: u32,
    ) -> bool {
        if !gateway_failure {
            self.consecutive_gateway.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.consecutive_gateway_failure || self.is_ejected(now_ms) {
            return false;
        }
        // Envoy caps ejections at max_ejection_percent of the hosts, so a service-wide
        // outage does not eject every backend (that would turn errors into 503s).
        let cap = total * policy.max_ejection_percent as usize / 100;
        if ejected_now >= cap || roll_percent >= policy.enforcing_percent {
            return false;
        }
        let count = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = policy.base_ejection.as_millis() as u64 * count as u64;
        self.ejected_until_ms
            .store(now_ms + duration, Ordering::Relaxed);
        self.consecutive_gateway.store(0, Ordering::Relaxed);
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
    }

    #[test]
    fn three_consecutive_failures_eject_for_base_times_count() {
        let p = policy();
        let s = OutlierState::default();
        assert!(!s.record(&p, true, 1000, 0, 4, 0));
        assert!(!s.record(&p, true, 1000, 0, 4, 0));
        assert!(s.record(&p, true, 1000, 0, 4, 0));
        assert!(s.is_ejected(1000 + 29_999));
        assert!(!s.is_ejected(1000 + 30_000));
        // Second ejection lasts twice as long.
        for _ in 0..3 {
            s.record(&p, true, 40_000, 0, 4, 0);
        }
        assert!(s.is_ejected(40_000 + 59_999));
        assert!(!s.is_ejected(40_000 + 60_000));
        assert_eq!(s.ejections(), 2);
    }

    #[test]
    fn a_success_resets_the_count() {
        let p = policy();
        let s = OutlierState::default();
        s.record(&p, true, 1, 0, 4, 0);
        s.record(&p, true, 1, 0, 4, 0);
        s.record(&p, false, 1, 0, 4, 0);
        assert!(!s.record(&p, true, 1, 0, 4, 0));
        assert!(!s.is_ejected(2));
    }

    #[test]
    fn at_most_half_ejected_and_enforcement_roll() {
        let p = policy();
        let s = OutlierState::default();
        for _ in 0..5 {
            assert!(!s.record(&p, true, 1, 2, 4, 0), "2 of 4 already ejected");
        }
        let one = OutlierState::default();
        for _ in 0..5 {
            assert!(
                !one.record(&p, true, 1, 0, 1, 0),
                "50% of one backend is zero"
            );
        }
        let mut weak = p;
        weak.enforcing_percent = 0;
        let s = OutlierState::default();
        for _ in 0..5 {
            assert!(!s.record(&weak, true, 1, 0, 4, 0), "not enforced");
        }
    }
}
