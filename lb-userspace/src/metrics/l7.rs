//! L7 proxy metrics, in the same style as the dataplane's: the L7 runtime hands in a
//! closure returning an [`L7Counters`] snapshot (a few lines from its own stats snapshot),
//! called at every scrape. These types do not depend on the L7 module, so either side can
//! change without breaking the other's build.

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use std::fmt;
use tracing::warn;

use super::{
    encode::{counters, gauges, histograms, HistogramCounts, Labels},
    SourceError,
};

/// Counters of one L7 backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L7BackendCounters {
    pub backend: String,
    pub requests: u64,
    pub in_flight: u64,
    /// Currently ejected by outlier detection.
    pub ejected: bool,
    pub ejections: u64,
    /// Final responses by class `[1xx, 2xx, 3xx, 4xx, 5xx]` given by this backend.
    pub responses_by_class: [u64; 5],
}

/// Counters of one L7 backend service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L7ServiceCounters {
    pub service: String,
    pub requests: u64,
    pub retries: u64,
    /// Responses by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses_by_class: [u64; 5],
    /// Request latency (see [`HistogramCounts::from_cumulative`] for Prometheus-shaped data).
    pub latency: HistogramCounts,
    pub backends: Vec<L7BackendCounters>,
}

/// What the L7 tier reports at one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct L7Counters {
    pub services: Vec<L7ServiceCounters>,
    /// Requests being proxied right now.
    pub in_flight: u64,
    /// Configuration generation (reloads + 1).
    pub generation: u64,
    /// Requests the proxy answered itself, by reason.
    pub refused: Vec<(String, u64)>,
    /// Client connections open now, and accepted since start.
    pub connections: u64,
    pub connections_total: u64,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: u64,
}

pub(super) type Source = Box<dyn Fn() -> Result<L7Counters, SourceError> + Send + Sync>;

pub(super) struct L7Collector(pub(super) Source);

impl fmt::Debug for L7Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("L7Collector")
    }
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn svc(s: &L7ServiceCounters) -> Labels<'_> {
    vec![("service", s.service.as_str())]
}

impl Collector for L7Collector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let c = match (self.0)() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reading L7 counters for metrics failed");
                return Ok(());
            }
        };
        gauges(
            &mut enc,
            "lb_l7_in_flight_requests",
            "Requests being proxied.",
            [(Vec::new(), i64::try_from(c.in_flight).unwrap_or(i64::MAX))],
        )?;
        gauges(
            &mut enc,
            "lb_l7_client_connections",
            "Client connections open now.",
            [(Vec::new(), i64::try_from(c.connections).unwrap_or(i64::MAX))],
        )?;
        counters(
            &mut enc,
            "lb_l7_client_connections_accepted",
            "Client connections accepted.",
            [(Vec::new(), c.connections_total)],
        )?;
        counters(
            &mut enc,
            "lb_l7_refused_requests",
            "Requests the proxy answered itself instead of a backend, by reason.",
            c.refused
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n)),
        )?;
        counters(
            &mut enc,
            "lb_l7_access_log_dropped",
            "Access-log lines dropped because the writer fell behind.",
            [(Vec::new(), c.access_log_dropped)],
        )?;
        gauges(
            &mut enc,
            "lb_l7_config_generation",
            "Configuration generation of the L7 tier (1 at start, +1 per reload).",
            [(Vec::new(), i64::try_from(c.generation).unwrap_or(i64::MAX))],
        )?;
        counters(
            &mut enc,
            "lb_l7_requests",
            "Requests handed to the backend service.",
            c.services.iter().map(|s| (svc(s), s.requests)),
        )?;
        counters(
            &mut enc,
            "lb_l7_retries",
            "Retried attempts.",
            c.services.iter().map(|s| (svc(s), s.retries)),
        )?;
        counters(
            &mut enc,
            "lb_l7_responses",
            "Responses sent to clients, by status class.",
            c.services.iter().flat_map(|s| {
                CLASSES
                    .iter()
                    .zip(s.responses_by_class)
                    .map(move |(class, n)| {
                        let mut l = svc(s);
                        l.push(("class", class));
                        (l, n)
                    })
            }),
        )?;
        histograms(
            &mut enc,
            "lb_l7_request_duration_seconds",
            "Time from receiving a request to sending the response headers.",
            c.services.iter().map(|s| (svc(s), s.latency.clone())),
        )?;
        let backends = || {
            c.services.iter().flat_map(|s| {
                s.backends.iter().map(move |b| {
                    let l = vec![
                        ("service", s.service.as_str()),
                        ("backend", b.backend.as_str()),
                    ];
                    (l, b)
                })
            })
        };
        counters(
            &mut enc,
            "lb_l7_backend_requests",
            "Requests sent to the backend (every attempt, retries included).",
            backends().map(|(l, b)| (l, b.requests)),
        )?;
        counters(
            &mut enc,
            "lb_l7_backend_responses",
            "Final responses given by the backend, by status class.",
            backends().flat_map(|(l, b)| {
                CLASSES
                    .iter()
                    .zip(b.responses_by_class)
                    .map(move |(class, n)| {
                        let mut l = l.clone();
                        l.push(("class", class));
                        (l, n)
                    })
            }),
        )?;
        gauges(
            &mut enc,
            "lb_l7_backend_in_flight_requests",
            "Requests in progress at the backend.",
            backends().map(|(l, b)| (l, i64::try_from(b.in_flight).unwrap_or(i64::MAX))),
        )?;
        gauges(
            &mut enc,
            "lb_l7_backend_ejected",
            "1 while outlier detection has ejected the backend.",
            backends().map(|(l, b)| (l, i64::from(b.ejected))),
        )?;
        counters(
            &mut enc,
            "lb_l7_backend_ejections",
            "Times outlier detection ejected the backend.",
            backends().map(|(l, b)| (l, b.ejections)),
        )
    }
}
