//! VIP announcement metrics, read from the announcer's shared status at scrape time.

use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};
use std::{
    fmt,
    sync::{Arc, Mutex},
};

use super::encode::{counters, gauges};
use crate::model::announce::{AnnounceStatus, Withdrawn};

pub(super) struct AnnounceCollector(pub(super) Arc<Mutex<AnnounceStatus>>);

impl fmt::Debug for AnnounceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnnounceCollector")
    }
}

/// The state label of a rule: `announced` or the reason it is not.
fn state(w: Option<Withdrawn>) -> &'static str {
    match w {
        None => "announced",
        Some(Withdrawn::NodeDrained) => "node_drained",
        Some(Withdrawn::NoUsableBackend) => "no_usable_backend",
        Some(Withdrawn::OptedOut) => "opted_out",
    }
}

const STATES: [&str; 4] = [
    "announced",
    "node_drained",
    "no_usable_backend",
    "opted_out",
];

impl Collector for AnnounceCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let st = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let prefixes: Vec<String> = st.rules.iter().map(|r| r.prefix()).collect();
        // State-set style: one series per state, 1 for the current one.
        gauges(
            &mut enc,
            "lb_announce_rule_state",
            "Whether an L4 rule's VIP is announced, or why not (1 for the current state).",
            st.rules.iter().zip(&prefixes).flat_map(|(r, p)| {
                let cur = state(r.withdrawn);
                STATES.into_iter().map(move |s| {
                    (
                        vec![
                            ("rule", r.rule.as_str()),
                            ("prefix", p.as_str()),
                            ("state", s),
                        ],
                        i64::from(s == cur),
                    )
                })
            }),
        )?;
        gauges(
            &mut enc,
            "lb_announce_node_drained",
            "1 while `lb node drain` withdraws every announcement.",
            [(vec![], i64::from(st.node_drained))],
        )?;
        gauges(
            &mut enc,
            "lb_announce_in_sync",
            "1 when the routing daemon was configured with exactly the desired prefixes.",
            [(vec![], i64::from(st.in_sync))],
        )?;
        gauges(
            &mut enc,
            "lb_announce_prefixes",
            "Prefixes the routing daemon was last configured to announce.",
            [(vec![], st.configured.map_or(0, |c| c.len() as i64))],
        )?;
        counters(
            &mut enc,
            "lb_announce_configure_errors",
            "Failed attempts to write the include file or reconfigure the daemon.",
            [(vec![], st.configure_errors)],
        )
    }
}
