//! Prometheus metrics: one registry for the whole agent, served at `/metrics` on
//! `admin.metrics_listen` (off when absent).
//!
//! Values that already live elsewhere (health status, the XDP per-CPU counters, the L7
//! atomics) are not copied into prometheus-client metrics: collectors read them at scrape
//! time, so there is one source of truth and removed backends vanish from the output with
//! no cleanup.
//! - health: [`Metrics::register_health`] with the checker's [`HealthReader`];
//! - L4 dataplane: [`Metrics::register_dataplane`] with a closure returning a
//!   [`DataplaneCounters`] snapshot (the agent reads its pinned maps in it);
//! - L7: [`Metrics::register_l7`] with a closure returning [`L7Counters`];
//! - anything else: [`Metrics::register_collector`] for scrape-time collectors, or
//!   [`Metrics::with_registry`] for ordinary prometheus-client metrics.
//!
//! The registry has no prefix: every metric name is written in full and starts with `lb_`.
//! The output is the OpenMetrics text format (prometheus-client's encoder), which
//! Prometheus reads; the encoder adds `_total` to counter names.

mod announce;
mod dataplane;
mod encode;
mod health;
mod l7;
mod server;

pub use dataplane::{BackendCounters, DataplaneCounters, VipCounters};
pub use encode::HistogramCounts;
pub use l7::{L7BackendCounters, L7Counters, L7ServiceCounters};
pub use server::{serve, serve_from_config, MetricsServer, CONTENT_TYPE_OPENMETRICS};

use prometheus_client::{collector::Collector, registry::Registry};
use std::{
    fmt,
    net::SocketAddr,
    sync::{Mutex, MutexGuard},
};
use tracing::warn;

use crate::health::HealthReader;

/// Error of a scrape-time read (dataplane maps, L7 stats), shown in the agent's log.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// `admin.metrics_listen` is not `address:port`.
    #[error("admin.metrics_listen {0:?} is not an address:port such as 127.0.0.1:9100")]
    BadAddress(String),
    /// Binding the listen address failed (in use, no permission, address not local).
    #[error("cannot listen on {addr} for metrics: {source}; choose another admin.metrics_listen")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The agent's metrics registry; share it as `Arc<Metrics>`.
#[derive(Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Registration and encoding never leave the registry half-changed on panic.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers ordinary prometheus-client metrics (counters, families, histograms).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry())
    }

    /// Registers a collector called at every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry().register_collector(collector);
    }

    /// Publishes the health checker's state: per-backend health, probe counts by result
    /// and a probe-latency histogram. Register once per checker.
    pub fn register_health(&self, reader: HealthReader) {
        self.register_collector(Box::new(health::HealthCollector(reader)));
    }

    /// Publishes L4 counters read by `source` at every scrape. Register once: a second
    /// source would repeat the metric names.
    pub fn register_dataplane<F>(&self, source: F)
    where
        F: Fn() -> Result<DataplaneCounters, SourceError> + Send + Sync + 'static,
    {
        self.register_collector(Box::new(dataplane::DataplaneCollector(Box::new(source))));
    }

    /// Publishes L7 counters read by `source` at every scrape. Register once.
    pub fn register_l7<F>(&self, source: F)
    where
        F: Fn() -> Result<L7Counters, SourceError> + Send + Sync + 'static,
    {
        self.register_collector(Box::new(l7::L7Collector(Box::new(source))));
    }

    /// Publishes the VIP announcements (state per rule, node drain, daemon in step).
    pub fn register_announce(
        &self,
        status: std::sync::Arc<std::sync::Mutex<crate::model::announce::AnnounceStatus>>,
    ) {
        self.register_collector(Box::new(announce::AnnounceCollector(status)));
    }

    /// The text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry()) {
            // Only a collector's own formatting failure gets here; report what we have.
            warn!(error = %e, "encoding metrics failed; the scrape is incomplete");
        }
        out
    }
}

#[cfg(test)]
mod tests;
