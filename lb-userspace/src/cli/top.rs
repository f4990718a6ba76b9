//! `lb top`: a live view of the agent, redrawn every interval: VIPs with packet, byte and
//! new-flow rates, backends with health, state and packet/new-flow/request rates. Rates are
//! the difference of two samples of the admin socket's counters (which the agent reads from
//! the pinned maps and the L7 proxy). On a terminal each frame replaces the last; otherwise
//! (a pipe, a file) frames follow each other, so `lb top --iterations 3 > file` works.

use anyhow::{bail, Result};
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    path::Path,
    time::{Duration, Instant},
};

use super::{client, table::render};
use crate::admin::protocol::{BackendInfo, ListWhat, RuleInfo, Verb};

/// One reading of the agent's counters.
pub struct Sample {
    at: Instant,
    rules: Vec<RuleInfo>,
    backends: Vec<BackendInfo>,
}

fn list<T: serde::de::DeserializeOwned>(socket: &Path, what: ListWhat) -> Result<Vec<T>> {
    let resp = client::call(socket, &Verb::List { what })?;
    match (resp.ok, resp.result, resp.error) {
        (true, Some(v), _) => Ok(serde_json::from_value(v)?),
        (_, _, Some(e)) => bail!("the agent refused: {e}"),
        _ => bail!("the agent sent no result"),
    }
}

pub fn sample(socket: &Path) -> Result<Sample> {
    Ok(Sample {
        at: Instant::now(),
        rules: list(socket, ListWhat::Rules)?,
        backends: list(socket, ListWhat::Backends)?,
    })
}

/// Per second, of a counter between two samples (0 when it went back: a restart).
fn rate(prev: Option<u64>, cur: u64, secs: f64) -> f64 {
    match prev {
        Some(p) if cur >= p && secs > 0.0 => (cur - p) as f64 / secs,
        _ => 0.0,
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.1}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// One frame: the rates from `prev` to `cur` (all zero on the first frame).
pub fn frame(prev: Option<&Sample>, cur: &Sample) -> String {
    let secs = prev.map_or(0.0, |p| cur.at.duration_since(p.at).as_secs_f64());
    let prev_rules: BTreeMap<&str, &RuleInfo> = prev
        .map(|p| p.rules.iter().map(|r| (r.name.as_str(), r)).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = cur
        .rules
        .iter()
        .map(|r| {
            let p = prev_rules.get(r.name.as_str());
            vec![
                r.name.clone(),
                format!("{}:{}/{}", r.address, r.ports, r.protocol),
                r.backend_service
                    .clone()
                    .or(r.target.clone())
                    .unwrap_or_default(),
                fmt_rate(rate(p.map(|p| p.packets), r.packets, secs)),
                fmt_rate(rate(p.map(|p| p.bytes), r.bytes, secs) * 8.0),
                fmt_rate(rate(p.map(|p| p.new_flows), r.new_flows, secs)),
                fmt_rate(rate(p.map(|p| p.no_backend), r.no_backend, secs)),
            ]
        })
        .collect();
    let mut out = render(
        &[
            "RULE",
            "VIP",
            "SERVICE",
            "PKT/S",
            "BIT/S",
            "NEW/S",
            "NO-BACKEND/S",
        ],
        &rows,
    );
    out.push('\n');
    let key = |b: &BackendInfo| (b.service.clone(), b.name.clone());
    let prev_backends: BTreeMap<(String, String), &BackendInfo> = prev
        .map(|p| p.backends.iter().map(|b| (key(b), b)).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = cur
        .backends
        .iter()
        .map(|b| {
            let p = prev_backends.get(&key(b));
            let req = b.l7.as_ref().map(|l| {
                let before = p.and_then(|p| p.l7.as_ref()).map(|l| l.requests);
                fmt_rate(rate(before, l.requests, secs))
            });
            vec![
                format!("{}/{}", b.service, b.name),
                b.address.to_string(),
                match &b.forced {
                    Some(f) => format!("{} (forced {f})", b.health),
                    None => b.health.clone(),
                },
                b.state.clone(),
                if b.in_table { "yes" } else { "no" }.into(),
                fmt_rate(rate(p.map(|p| p.packets), b.packets, secs)),
                fmt_rate(rate(p.map(|p| p.new_flows), b.new_flows, secs)),
                req.unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    out += &render(
        &[
            "BACKEND", "ADDRESS", "HEALTH", "STATE", "IN-TABLE", "PKT/S", "NEW/S", "REQ/S",
        ],
        &rows,
    );
    out
}

/// Redraws every `interval` until Ctrl-C, or `iterations` frames.
pub fn run(socket: &Path, interval: Duration, iterations: Option<u32>) -> Result<()> {
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<Sample> = None;
    let mut shown = 0u32;
    loop {
        let cur = sample(socket)?;
        let body = frame(prev.as_ref(), &cur);
        let mut out = std::io::stdout().lock();
        if tty {
            // Home and clear: each frame replaces the previous one.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        writeln!(
            out,
            "lb top: every {:.1} s, rates over the last interval (Ctrl-C to quit)\n\n{body}",
            interval.as_secs_f64()
        )?;
        out.flush()?;
        drop(out);
        prev = Some(cur);
        shown += 1;
        if iterations.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_per_second() {
        assert_eq!(rate(Some(100), 300, 2.0), 100.0);
        assert_eq!(rate(None, 300, 2.0), 0.0);
        assert_eq!(rate(Some(300), 100, 2.0), 0.0, "a restarted counter");
        assert_eq!(fmt_rate(1500.0), "1.5k");
        assert_eq!(fmt_rate(2_500_000.0), "2.5M");
        assert_eq!(fmt_rate(7.0), "7");
    }
}
