//! Health checking shared by both tiers. Probes produce results; the [`HealthChecker`] folds
//! them into a [`HealthSnapshot`] that the L4 reconciler and the L7 router both read. Probes
//! never write maps or routers directly.
//!
//! Contract used by other modules (keep stable):
//! - [`BackendKey`] names a backend: (backend service name, backend display name);
//! - [`HealthSnapshot::is_healthy`] is `true` for a backend with no verdict yet or with no
//!   health check configured (a starting agent does not pull everything out of rotation);
//! - the checker publishes snapshots through a `tokio::sync::watch` channel of
//!   `Arc<HealthSnapshot>` ([`HealthChecker::subscribe`]); readers call `borrow()` per
//!   request/reconcile.
//!
//! Parts: [`state`] is the pure per-backend state machine, [`probe`] runs one probe,
//! [`checker`] schedules probes (one task per backend) and publishes snapshots.
//!
//! Use from the agent (inside the tokio runtime):
//! ```text
//! let mut checker = HealthChecker::start(&cfg);      // or with_sender(tx) + update(&cfg)
//! let mut health_rx = checker.subscribe();           // watch::Receiver<Arc<HealthSnapshot>>
//! metrics.register_health(checker.reader());         // HealthReader: Clone + Send + Sync
//! loop { select! {
//!     Ok(()) = health_rx.changed() => reconcile(&health_rx.borrow_and_update()),
//!     reload => checker.update(&new_cfg),            // keeps unchanged targets' state
//! } }
//! checker.shutdown();                                // or drop it
//! ```
//! Admin `status`: [`HealthReader::status`] (serde-serializable [`BackendStatus`]).
//! Do not hold a `borrow()` of the snapshot across an `.await`: it blocks publishing.

pub mod checker;
pub mod probe;
pub mod state;

pub use checker::{BackendStatus, HealthChecker, HealthReader};

use std::collections::BTreeMap;

/// (backend service name, backend display name).
pub use crate::ids::BackendKey;

/// Health verdict of one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// Health of every checked backend at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub backends: BTreeMap<BackendKey, Health>,
}

impl HealthSnapshot {
    /// `true` unless the checker has declared the backend unhealthy.
    pub fn is_healthy(&self, service: &str, backend: &str) -> bool {
        self.backends
            .get(&BackendKey::new(service, backend))
            .is_none_or(|h| *h == Health::Healthy)
    }

    /// The verdict, `None` before the first one.
    pub fn get(&self, service: &str, backend: &str) -> Option<Health> {
        self.backends
            .get(&BackendKey::new(service, backend))
            .copied()
    }
}
