//! L4 (XDP) dataplane metrics: the agent hands in a closure that reads its pinned per-CPU
//! maps and returns a [`DataplaneCounters`] snapshot; it runs at every scrape.

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use std::fmt;
use tracing::warn;

use super::{
    encode::{counters, gauges, Labels},
    SourceError,
};

/// Counters of one VIP (a forwarding rule's address), summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipCounters {
    /// Forwarding rule name.
    pub rule: String,
    /// The VIP as the agent names it, e.g. `10.0.0.10:80/TCP` (a label value).
    pub vip: String,
    pub packets: u64,
    pub bytes: u64,
    /// Flows assigned a backend from the Maglev table.
    pub new_flows: u64,
    pub conn_hits: u64,
    pub conn_misses: u64,
}

/// Counters of one L4 backend, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendCounters {
    pub service: String,
    /// The backend's display name (same as the health `BackendKey`).
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
    /// Packets per verdict reason (`lb_common::Reason::name()`, count).
    pub reasons: Vec<(String, u64)>,
    /// Maglev tables rebuilt since the agent started.
    pub maglev_rebuilds: u64,
    /// The maps' contents are unknown (a failed change whose rollback failed too).
    pub state_unknown: bool,
}

pub(super) type Source = Box<dyn Fn() -> Result<DataplaneCounters, SourceError> + Send + Sync>;

pub(super) struct DataplaneCollector(pub(super) Source);

impl fmt::Debug for DataplaneCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

fn vip(v: &VipCounters) -> Labels<'_> {
    vec![("rule", v.rule.as_str()), ("vip", v.vip.as_str())]
}

fn backend(b: &BackendCounters) -> Labels<'_> {
    vec![
        ("service", b.service.as_str()),
        ("backend", b.backend.as_str()),
    ]
}

type VipField = fn(&VipCounters) -> u64;
const VIP_FIELDS: [(&str, &str, VipField); 5] = [
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
        "Packets whose flow was in the connection table.",
        |v| v.conn_hits,
    ),
    (
        "lb_vip_conn_table_misses",
        "Packets whose flow was not in the connection table.",
        |v| v.conn_misses,
    ),
];

type BackendField = fn(&BackendCounters) -> u64;
const BACKEND_FIELDS: [(&str, &str, BackendField); 3] = [
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
        gauges(
            &mut enc,
            "lb_dataplane_state_unknown",
            "1 while a failed change whose rollback also failed leaves the maps partly written (until the next reconcile rewrites them).",
            [(Vec::new(), i64::from(c.state_unknown))],
        )?;
        for (name, help, get) in VIP_FIELDS {
            counters(
                &mut enc,
                name,
                help,
                c.vips.iter().map(|v| (vip(v), get(v))),
            )?;
        }
        for (name, help, get) in BACKEND_FIELDS {
            counters(
                &mut enc,
                name,
                help,
                c.backends.iter().map(|b| (backend(b), get(b))),
            )?;
        }
        counters(
            &mut enc,
            "lb_dataplane_packets",
            "Packets by XDP verdict reason; seen_* and conn_* count packets that caused an event (IP options, ICMP to a backend, connection-table inserts, promotions, misses).",
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
