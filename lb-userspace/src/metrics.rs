//! Prometheus metrics: one registry for the whole agent, served at `/metrics` on
//! `admin.metrics_listen` (off when absent).
//!
//! Values that already live elsewhere (health status, the XDP per-CPU counters) are not
//! copied into prometheus-client counters: collectors read them at scrape time, so there
//! is a single source of truth and removed backends vanish from the output with no cleanup.
//! - health: [`Metrics::register_health`] with the checker's [`HealthReader`];
//! - L4 dataplane: [`Metrics::register_dataplane`] with a closure returning a
//!   [`DataplaneCounters`] snapshot (the agent reads its pinned maps in it);
//! - L7 and anything else: [`Metrics::register_collector`] for scrape-time collectors, or
//!   [`Metrics::with_registry`] to register ordinary prometheus-client metrics.
//!
//! The registry has no prefix: every metric name is written in full and starts with `lb_`.
//! The output is the OpenMetrics text format (prometheus-client's encoder), which
//! Prometheus reads; counters get the `_total` suffix from the encoder.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming, header::CONTENT_TYPE, server::conn::http1, service::service_fn, Method,
    Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet},
    metrics::{exemplar::Exemplar, MetricType},
    registry::Registry,
};
use std::{
    collections::HashMap,
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{debug, warn};

use crate::health::{Health, HealthReader};

/// The OpenMetrics content type prometheus-client's text encoder produces.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper that has not sent its request head by then is cut off (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of one VIP (a forwarding rule's address), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Forwarding rule name.
    pub rule: String,
    /// VIP as `address:port/PROTO` (or however the agent names it; used as a label).
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub conn_hits: u64,
    pub conn_misses: u64,
}

/// Counters of one L4 backend, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub service: String,
    pub backend: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// What the XDP dataplane has counted, as read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataplaneCounters {
    pub vips: Vec<VipCounters>,
    pub backends: Vec<BackendCounters>,
    /// Packets per verdict reason (`lb_common::Reason::name()`).
    pub reasons: Vec<(String, u64)>,
    /// Maglev tables rebuilt since the agent started.
    pub maglev_rebuilds: u64,
}

/// Error of a dataplane read, shown in the agent's log; the scrape then reports
/// `lb_dataplane_up 0` instead of stale or partial counters.
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
        // Registration and encoding do not leave the registry half-changed on panic.
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
    /// and a probe-latency histogram.
    pub fn register_health(&self, reader: HealthReader) {
        self.register_collector(Box::new(HealthCollector(reader)));
    }

    /// Publishes L4 counters read by `source` at every scrape. Call once; a second call
    /// adds a second source (and duplicate metric names), so the agent keeps one.
    pub fn register_dataplane<F>(&self, source: F)
    where
        F: Fn() -> Result<DataplaneCounters, SourceError> + Send + Sync + 'static,
    {
        self.register_collector(Box::new(DataplaneCollector(Box::new(source))));
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

// ---- encoding helpers ----

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// One metric family: descriptor, then one sample per row.
fn family<'r, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels<'r>, V)>,
    mut sample: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, &V) -> fmt::Result,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in rows {
        if labels.is_empty() {
            // An empty label set would render as `name{} v`; write `name v` instead.
            sample(&mut m, &v)?;
        } else {
            sample(&mut m.encode_family(&labels)?, &v)?;
        }
    }
    Ok(())
}

fn counters<'r>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'r>, u64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Counter, rows, |f, v| {
        f.encode_counter::<NoLabelSet, u64, u64>(v, None)
    })
}

fn gauges<'r>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Labels<'r>, i64)>,
) -> fmt::Result {
    family(enc, name, help, MetricType::Gauge, rows, |f, v| {
        f.encode_gauge(v)
    })
}

fn no_exemplars() -> Option<&'static HashMap<usize, Exemplar<NoLabelSet, f64>>> {
    None
}

// ---- health ----

struct HealthCollector(HealthReader);

impl fmt::Debug for HealthCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HealthCollector")
    }
}

impl Collector for HealthCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let status = self.0.status();
        fn who(s: &crate::health::BackendStatus) -> Labels<'_> {
            vec![
                ("service", s.service.as_str()),
                ("backend", s.backend.as_str()),
            ]
        }
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
        family(
            &mut enc,
            "lb_health_probe_duration_seconds",
            "Time a probe took (connect to verdict, capped by the check's timeout).",
            MetricType::Histogram,
            status.iter().map(|s| (who(s), &s.latency)),
            |f, h| f.encode_histogram(h.sum_seconds, h.count, &h.buckets, no_exemplars()),
        )
    }
}

// ---- L4 dataplane ----

type Source = Box<dyn Fn() -> Result<DataplaneCounters, SourceError> + Send + Sync>;

struct DataplaneCollector(Source);

impl fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

impl Collector for DataplaneCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let c = match (self.0)() {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "reading dataplane counters for metrics failed");
                None
            }
        };
        gauges(
            &mut enc,
            "lb_dataplane_up",
            "1 if the dataplane counters could be read at this scrape.",
            [(Vec::new(), i64::from(c.is_some()))],
        )?;
        let Some(c) = c else { return Ok(()) };
        fn vip(v: &VipCounters) -> Labels<'_> {
            vec![("rule", v.rule.as_str()), ("vip", v.vip.as_str())]
        }
        fn be(b: &BackendCounters) -> Labels<'_> {
            vec![
                ("service", b.service.as_str()),
                ("backend", b.backend.as_str()),
            ]
        }
        type VipField = fn(&VipCounters) -> u64;
        let vip_fields: [(&str, &str, VipField); 5] = [
            ("lb_vip_packets", "Packets received for the VIP.", |v| {
                v.packets
            }),
            ("lb_vip_bytes", "Bytes received for the VIP.", |v| v.bytes),
            (
                "lb_vip_new_flows",
                "Flows assigned a backend from the Maglev table.",
                |v| v.new_flows,
            ),
            (
                "lb_vip_conn_table_hits",
                "Packets whose flow was found in the connection table.",
                |v| v.conn_hits,
            ),
            (
                "lb_vip_conn_table_misses",
                "Packets whose flow was not in the connection table.",
                |v| v.conn_misses,
            ),
        ];
        for (name, help, get) in vip_fields {
            counters(
                &mut enc,
                name,
                help,
                c.vips.iter().map(|v| (vip(v), get(v))),
            )?;
        }
        type BackendField = fn(&BackendCounters) -> u64;
        let backend_fields: [(&str, &str, BackendField); 3] = [
            (
                "lb_backend_packets",
                "Packets forwarded to the backend.",
                |b| b.packets,
            ),
            ("lb_backend_bytes", "Bytes forwarded to the backend.", |b| {
                b.bytes
            }),
            (
                "lb_backend_new_flows",
                "New flows assigned to the backend.",
                |b| b.new_flows,
            ),
        ];
        for (name, help, get) in backend_fields {
            counters(
                &mut enc,
                name,
                help,
                c.backends.iter().map(|b| (be(b), get(b))),
            )?;
        }
        counters(
            &mut enc,
            "lb_dataplane_packets",
            "Packets by XDP verdict reason.",
            c.reasons
                .iter()
                .map(|(r, n)| (vec![("reason", r.as_str())], *n)),
        )?;
        counters(
            &mut enc,
            "lb_maglev_table_rebuilds",
            "Maglev lookup tables rebuilt.",
            [(Vec::new(), c.maglev_rebuilds)],
        )
    }
}

// Compile-time check that the label type works with the encoder.
const _: fn() = || {
    fn is_label_set<T: EncodeLabelSet>() {}
    is_label_set::<Labels<'static>>();
};

// ---- HTTP endpoint ----

/// The running `/metrics` server; dropping it stops the server.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; in-flight scrapes are cut.
    pub fn shutdown(self) {}
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the endpoint on `admin.metrics_listen` if set.
pub async fn serve_from_config(
    cfg: &crate::config::Config,
    metrics: Arc<Metrics>,
) -> Result<Option<MetricsServer>, MetricsError> {
    match &cfg.admin.metrics_listen {
        None => Ok(None),
        Some(a) => {
            let addr: SocketAddr = a.parse().map_err(|_| MetricsError::BadAddress(a.clone()))?;
            serve(addr, metrics).await.map(Some)
        }
    }
}

/// Binds `addr` and serves `GET /metrics` (HTTP/1.1) until the returned server is dropped.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<MetricsServer, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let task = tokio::spawn(accept_loop(listener, metrics));
    Ok(MetricsServer { local_addr, task })
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    // Connection tasks are owned by this set, so aborting the server also ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and the like: back off briefly rather than spin.
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| {
                        let metrics = metrics.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&metrics, req)) }
                    });
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        debug!(%peer, error = %e, "metrics connection ended with an error");
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn handle(metrics: &Metrics, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            reply(StatusCode::OK, CONTENT_TYPE_OPENMETRICS, metrics.render())
        }
        (_, "/metrics") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "metrics are at /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DataplaneCounters {
        DataplaneCounters {
            vips: vec![VipCounters {
                rule: "web".into(),
                vip: "10.0.0.10:80/TCP".into(),
                packets: 7,
                bytes: 700,
                new_flows: 2,
                conn_hits: 5,
                conn_misses: 2,
            }],
            backends: vec![BackendCounters {
                service: "svc".into(),
                backend: "10.0.0.2".into(),
                packets: 4,
                bytes: 400,
                new_flows: 1,
            }],
            reasons: vec![("tx".into(), 9), ("pass_not_vip".into(), 3)],
            maglev_rebuilds: 1,
        }
    }

    #[test]
    fn dataplane_counters_render() {
        let m = Metrics::new();
        m.register_dataplane(|| Ok(sample()));
        let text = m.render();
        for line in [
            "lb_dataplane_up 1",
            r#"lb_vip_packets_total{rule="web",vip="10.0.0.10:80/TCP"} 7"#,
            r#"lb_vip_conn_table_misses_total{rule="web",vip="10.0.0.10:80/TCP"} 2"#,
            r#"lb_backend_bytes_total{service="svc",backend="10.0.0.2"} 400"#,
            r#"lb_dataplane_packets_total{reason="tx"} 9"#,
            "lb_maglev_table_rebuilds_total 1",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn failing_source_reports_down() {
        let m = Metrics::new();
        m.register_dataplane(|| Err("maps not pinned".into()));
        let text = m.render();
        assert!(text.contains("lb_dataplane_up 0"), "{text}");
        assert!(!text.contains("lb_vip_packets_total{"), "{text}");
    }
}
