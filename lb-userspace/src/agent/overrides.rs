//! Admin overrides of backends (drain, maintenance, forced health) and the timing rules
//! that turn them into a [`BackendState`]. Pure: time is passed in, so the drain timeout is
//! tested without sleeping.
//!
//! Semantics (SEMANTICS.md, "Admin interface", and Google Cloud's connection draining):
//! - drain: the backend leaves the Maglev table at once (no new flows); flows it already
//!   has stay until the service's `connection_draining_timeout_sec` has passed since the
//!   drain started, then they are evicted (hashed again to the remaining backends);
//! - maintenance: out of the table and evicted at once;
//! - forced health up/down replaces the checker's verdict until set back to auto.
//!
//! Weight changes are not overrides: `set-weight` edits the configuration, so it goes
//! through the file's own validation and a reload returns to the file's weight (as HAProxy's
//! runtime `set weight` does).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::health::HealthSnapshot;
use crate::model::BackendState;

/// Overrides are kept per backend.
pub type Key = crate::ids::BackendKey;

/// What the admin has said about one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Override {
    /// Set while draining: when the drain started.
    pub drain_started: Option<Instant>,
    pub maintenance: bool,
    /// `Some(true)`/`Some(false)`: health forced up/down; `None`: the checker decides.
    pub forced: Option<bool>,
}

impl Override {
    fn is_empty(&self) -> bool {
        *self == Override::default()
    }
}

/// Every override, by backend, and the node's own drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub by_backend: BTreeMap<Key, Override>,
    /// `lb node drain`: this balancer withdraws every announcement (its routers stop sending
    /// it traffic) while its dataplane keeps forwarding what still arrives.
    pub node_drained: bool,
}

impl Overrides {
    pub fn get(&self, service: &str, backend: &str) -> Override {
        self.by_backend
            .get(&Key::new(service, backend))
            .copied()
            .unwrap_or_default()
    }

    /// Changes one backend's override; an override back at its default is forgotten.
    pub fn update(&mut self, service: &str, backend: &str, f: impl FnOnce(&mut Override)) {
        let key = Key::new(service, backend);
        let mut o = self.by_backend.get(&key).copied().unwrap_or_default();
        f(&mut o);
        if o.is_empty() {
            self.by_backend.remove(&key);
        } else {
            self.by_backend.insert(key, o);
        }
    }

    /// Forgets overrides of backends that no longer exist (after a reload or a removal), so
    /// a backend added again later under the same name starts clean.
    pub fn retain(&mut self, exists: impl Fn(&str, &str) -> bool) {
        self.by_backend
            .retain(|k, _| exists(&k.service, &k.backend));
    }
}

/// The state the model sees for one backend at `now`.
pub fn backend_state(
    ov: Override,
    health: &HealthSnapshot,
    service: &str,
    backend: &str,
    drain_timeout: Duration,
    now: Instant,
) -> BackendState {
    let health = health
        .get(service, backend)
        .map(|h| h == crate::health::Health::Healthy);
    let drain_over = ov
        .drain_started
        .is_some_and(|t| now.saturating_duration_since(t) >= drain_timeout);
    BackendState {
        health,
        forced: ov.forced,
        draining: ov.drain_started.is_some() || ov.maintenance,
        evict: ov.maintenance || drain_over,
        weight: None,
    }
}

/// When a drain still in progress will end (so the agent knows when to reconcile next).
pub fn drain_deadline(ov: Override, drain_timeout: Duration) -> Option<Instant> {
    if ov.maintenance {
        return None;
    }
    ov.drain_started.map(|t| t + drain_timeout)
}

/// How a backend appears to an operator, most important first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Maintenance,
    /// Draining, existing flows still served.
    Draining,
    /// Drain timeout over: no flows at all.
    Drained,
    Ready,
}

pub fn admin_state(ov: Override, drain_timeout: Duration, now: Instant) -> AdminState {
    if ov.maintenance {
        AdminState::Maintenance
    } else if let Some(t) = ov.drain_started {
        if now.saturating_duration_since(t) >= drain_timeout {
            AdminState::Drained
        } else {
            AdminState::Draining
        }
    } else {
        AdminState::Ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    fn snap(h: Option<Health>) -> HealthSnapshot {
        let mut s = HealthSnapshot::default();
        if let Some(h) = h {
            s.backends.insert(crate::ids::BackendKey::new("s", "b"), h);
        }
        s
    }

    #[test]
    fn drain_keeps_flows_until_the_timeout_then_evicts() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let ov = Override {
            drain_started: Some(t0),
            ..Default::default()
        };
        let h = snap(None);
        let s = backend_state(ov, &h, "s", "b", timeout, t0);
        assert!(
            s.draining && !s.evict,
            "at the start: out of the table, flows kept"
        );
        let s = backend_state(ov, &h, "s", "b", timeout, t0 + Duration::from_millis(9_999));
        assert!(s.draining && !s.evict, "just before the timeout");
        let s = backend_state(ov, &h, "s", "b", timeout, t0 + timeout);
        assert!(s.draining && s.evict, "at the timeout: evicted");
        assert_eq!(drain_deadline(ov, timeout), Some(t0 + timeout));
        assert_eq!(admin_state(ov, timeout, t0), AdminState::Draining);
        assert_eq!(admin_state(ov, timeout, t0 + timeout), AdminState::Drained);
    }

    #[test]
    fn zero_drain_timeout_evicts_at_once() {
        let t0 = Instant::now();
        let ov = Override {
            drain_started: Some(t0),
            ..Default::default()
        };
        let s = backend_state(ov, &snap(None), "s", "b", Duration::ZERO, t0);
        assert!(s.draining && s.evict);
    }

    #[test]
    fn maintenance_is_out_and_evicted_at_once() {
        let t0 = Instant::now();
        let ov = Override {
            maintenance: true,
            ..Default::default()
        };
        let s = backend_state(ov, &snap(None), "s", "b", Duration::from_secs(300), t0);
        assert!(s.draining && s.evict);
        assert_eq!(drain_deadline(ov, Duration::from_secs(300)), None);
        assert_eq!(
            admin_state(ov, Duration::from_secs(300), t0),
            AdminState::Maintenance
        );
    }

    #[test]
    fn forced_health_wins_over_the_checker_and_auto_returns_to_it() {
        let t0 = Instant::now();
        let d = Duration::from_secs(1);
        let h = snap(Some(Health::Unhealthy));
        let mut ovs = Overrides::default();
        assert!(!backend_state(ovs.get("s", "b"), &h, "s", "b", d, t0).healthy());
        ovs.update("s", "b", |o| o.forced = Some(true));
        assert!(backend_state(ovs.get("s", "b"), &h, "s", "b", d, t0).healthy());
        ovs.update("s", "b", |o| o.forced = None);
        assert!(ovs.by_backend.is_empty(), "a default override is forgotten");
        let h = snap(Some(Health::Healthy));
        ovs.update("s", "b", |o| o.forced = Some(false));
        assert!(!backend_state(ovs.get("s", "b"), &h, "s", "b", d, t0).healthy());
    }

    #[test]
    fn unknown_health_counts_as_healthy() {
        let s = backend_state(
            Override::default(),
            &snap(None),
            "s",
            "b",
            Duration::ZERO,
            Instant::now(),
        );
        assert_eq!(s.health, None);
        assert!(s.healthy() && !s.draining && !s.evict);
    }

    #[test]
    fn retain_forgets_removed_backends() {
        let mut ovs = Overrides::default();
        ovs.update("s", "a", |o| o.maintenance = true);
        ovs.update("s", "b", |o| o.maintenance = true);
        ovs.retain(|_, b| b == "a");
        assert_eq!(ovs.by_backend.len(), 1);
        assert!(ovs.get("s", "a").maintenance);
    }
}
