//! Health checker metrics, read from [`HealthReader::status`] at scrape time.

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use std::fmt;

use super::encode::{counters, gauges, histograms, HistogramCounts, Labels};
use crate::health::{BackendStatus, Health, HealthReader};

pub(super) struct HealthCollector(pub(super) HealthReader);

impl fmt::Debug for HealthCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HealthCollector")
    }
}

fn who(s: &BackendStatus) -> Labels<'_> {
    vec![
        ("service", s.service.as_str()),
        ("backend", s.backend.as_str()),
    ]
}

impl Collector for HealthCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let status = self.0.status();
        // State-set style: one series per state, 1 for the current one, so a dashboard
        // can tell "unknown" (no verdict yet, still in rotation) from both verdicts.
        gauges(
            &mut enc,
            "lb_health_backend_state",
            "Health state of a probed backend (1 for the current state).",
            status.iter().flat_map(|s| {
                let cur = match s.health {
                    None => "unknown",
                    Some(Health::Healthy) => "healthy",
                    Some(Health::Unhealthy) => "unhealthy",
                };
                ["healthy", "unhealthy", "unknown"]
                    .into_iter()
                    .map(move |st| {
                        let mut l = who(s);
                        l.push(("state", st));
                        (l, i64::from(st == cur))
                    })
            }),
        )?;
        gauges(
            &mut enc,
            "lb_health_backend_up",
            "1 if the backend is in rotation as far as health goes (healthy or no verdict yet).",
            status
                .iter()
                .map(|s| (who(s), i64::from(s.health != Some(Health::Unhealthy)))),
        )?;
        gauges(
            &mut enc,
            "lb_health_consecutive_failures",
            "Failed probes in a row.",
            status
                .iter()
                .map(|s| (who(s), i64::from(s.consecutive_failures))),
        )?;
        counters(
            &mut enc,
            "lb_health_probes",
            "Probes by result (success or the failure kind).",
            status.iter().flat_map(|s| {
                s.probes.iter().map(move |(result, n)| {
                    let mut l = who(s);
                    l.push(("result", result));
                    (l, *n)
                })
            }),
        )?;
        histograms(
            &mut enc,
            "lb_health_probe_duration_seconds",
            "Time a probe took (connect to verdict, capped by the check's timeout).",
            status.iter().map(|s| {
                let h = &s.latency;
                let counts = HistogramCounts {
                    buckets: h.buckets.clone(),
                    sum: h.sum_seconds,
                    count: h.count,
                };
                (who(s), counts)
            }),
        )
    }
}
