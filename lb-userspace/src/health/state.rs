//! The health state machine of one backend, without I/O: probe results in, transitions out.
//!
//! Google Cloud's semantics (SEMANTICS.md, "Health checks"): a backend becomes healthy after
//! `healthy_threshold` consecutive successful probes and unhealthy after `unhealthy_threshold`
//! consecutive failures; a result of the opposite kind resets the other streak.
//!
//! A new backend starts *unknown* (`health == None`): its first verdict comes after a full
//! threshold of probes of one kind. Unknown is not reported in the [`HealthSnapshot`] at
//! all, so by the contract of `health::mod` it counts as healthy for rotation: a restarting
//! agent keeps serving from every backend instead of dropping everything until probes pass.
//! A backend that is really down leaves rotation after `unhealthy_threshold` failures, as it
//! would from the healthy state.
//!
//! [`HealthSnapshot`]: super::HealthSnapshot

use super::Health;

/// A change of verdict, reported once when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The verdict before (`None`: unknown, no verdict yet).
    pub from: Option<Health>,
    pub to: Health,
    /// Length of the streak that caused it (equals the threshold crossed).
    pub streak: u32,
}

/// Consecutive-result counters and the current verdict of one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    health: Option<Health>,
    successes: u32,
    failures: u32,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

impl HealthState {
    /// A backend with no verdict yet. Thresholds below 1 are treated as 1 (config
    /// validation already refuses them; this keeps the machine total).
    pub fn new(healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthState {
            health: None,
            successes: 0,
            failures: 0,
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
        }
    }

    /// The current verdict, `None` while unknown.
    pub fn health(&self) -> Option<Health> {
        self.health
    }

    /// Successful probes in a row (0 after a failure).
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// Failed probes in a row (0 after a success).
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Folds one probe result in; returns the transition if the verdict changed.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        // Saturating: a backend up for years must not wrap its streak back to 0.
        let (streak, threshold, target) = if success {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes, self.healthy_threshold, Health::Healthy)
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            (self.failures, self.unhealthy_threshold, Health::Unhealthy)
        };
        if streak >= threshold && self.health != Some(target) {
            let from = self.health.replace(target);
            return Some(Transition {
                from,
                to: target,
                streak,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn feed(s: &mut HealthState, results: &[bool]) -> Vec<Option<Transition>> {
        results.iter().map(|r| s.record(*r)).collect()
    }

    #[test]
    fn starts_unknown() {
        let s = HealthState::new(2, 3);
        assert_eq!(s.health(), None);
        assert_eq!(
            (s.consecutive_successes(), s.consecutive_failures()),
            (0, 0)
        );
    }

    #[test]
    fn first_verdict_healthy_after_threshold() {
        let mut s = HealthState::new(2, 3);
        assert_eq!(s.record(true), None);
        assert_eq!(s.health(), None);
        assert_eq!(
            s.record(true),
            Some(Transition {
                from: None,
                to: Healthy,
                streak: 2
            })
        );
        // Further successes report nothing.
        assert_eq!(s.record(true), None);
        assert_eq!(s.consecutive_successes(), 3);
    }

    #[test]
    fn first_verdict_unhealthy_after_threshold() {
        let mut s = HealthState::new(2, 3);
        let t = feed(&mut s, &[false, false, false]);
        assert_eq!(t[..2], [None, None]);
        assert_eq!(
            t[2],
            Some(Transition {
                from: None,
                to: Unhealthy,
                streak: 3
            })
        );
    }

    #[test]
    fn healthy_to_unhealthy_and_back() {
        let mut s = HealthState::new(2, 2);
        feed(&mut s, &[true, true]);
        assert_eq!(s.health(), Some(Healthy));
        assert_eq!(s.record(false), None);
        let t = s
            .record(false)
            .expect("second failure crosses the threshold");
        assert_eq!((t.from, t.to), (Some(Healthy), Unhealthy));
        assert_eq!(s.record(true), None);
        let t = s
            .record(true)
            .expect("second success crosses the threshold");
        assert_eq!((t.from, t.to), (Some(Unhealthy), Healthy));
    }

    #[test]
    fn opposite_result_resets_streak() {
        let mut s = HealthState::new(3, 3);
        feed(&mut s, &[true, true, true]);
        // Two failures, one success, two failures: never three in a row.
        let t = feed(&mut s, &[false, false, true, false, false]);
        assert!(t.iter().all(Option::is_none), "{t:?}");
        assert_eq!(s.health(), Some(Healthy));
        assert_eq!(s.consecutive_failures(), 2);
        assert_eq!(s.consecutive_successes(), 0);
        assert!(s.record(false).is_some());
    }

    #[test]
    fn flapping_backend_never_changes_verdict() {
        let mut s = HealthState::new(2, 2);
        feed(&mut s, &[false, false]);
        assert_eq!(s.health(), Some(Unhealthy));
        let flaps: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
        assert!(feed(&mut s, &flaps).iter().all(Option::is_none));
        assert_eq!(s.health(), Some(Unhealthy));
    }

    #[test]
    fn threshold_one_reacts_to_every_change() {
        let mut s = HealthState::new(1, 1);
        let t = feed(&mut s, &[true, false, true, true, false]);
        let to: Vec<Option<Health>> = t.iter().map(|t| t.map(|t| t.to)).collect();
        assert_eq!(
            to,
            [
                Some(Healthy),
                Some(Unhealthy),
                Some(Healthy),
                None,
                Some(Unhealthy)
            ]
        );
    }

    #[test]
    fn zero_threshold_is_treated_as_one() {
        let mut s = HealthState::new(0, 0);
        assert_eq!(s.record(false).map(|t| t.to), Some(Unhealthy));
    }
}
