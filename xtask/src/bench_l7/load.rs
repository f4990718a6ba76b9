//! Load generators: wrk for HTTP/1.1 (requests/s, p50 and p99 from `--latency`) and h2load
//! for HTTP/2 (requests/s; p50 and p99 from its per-request log, `--log-file`).

use anyhow::{bail, Context, Result};
use std::{path::Path, process::Command};

/// Figures of one measurement.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: String,
}

/// One load run.
pub struct Load<'a> {
    pub cpus: &'a str,
    pub connections: u32,
    /// HTTP/2 streams per connection (h2load -m); unused by wrk.
    pub streams: u32,
    pub secs: u32,
    /// wrk threads / h2load threads.
    pub threads: u32,
    /// Extra request headers (e.g. `Connection: close` for a new connection per request).
    pub headers: &'a [&'a str],
}

pub fn wrk(l: &Load, url: &str) -> Result<Figures> {
    let mut c = Command::new("taskset");
    c.args(["-c", l.cpus, "wrk", "--latency"])
        .arg(format!("-t{}", l.threads.min(l.connections)))
        .arg(format!("-c{}", l.connections))
        .arg(format!("-d{}s", l.secs));
    for h in l.headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            f.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            f.p50_ms = duration_ms(v.trim()).unwrap_or(f64::NAN);
        } else if let Some(v) = t.strip_prefix("99%") {
            f.p99_ms = duration_ms(v.trim()).unwrap_or(f64::NAN);
        } else if t.starts_with("Non-2xx") || t.starts_with("Socket errors") {
            f.errors.push_str(t);
            f.errors.push(' ');
        }
    }
    if f.rps == 0.0 {
        bail!("wrk printed no Requests/sec for {url}:\n{text}");
    }
    Ok(f)
}

/// h2load over `url` (`http://` prior knowledge, or `https://` with ALPN h2). `log` is a
/// scratch file for the per-request log the percentiles come from.
pub fn h2load(l: &Load, url: &str, log: &Path) -> Result<Figures> {
    let mut c = Command::new("taskset");
    c.args(["-c", l.cpus, "h2load"])
        .arg(format!("-t{}", l.threads.min(l.connections)))
        .arg(format!("-c{}", l.connections))
        .arg(format!("-m{}", l.streams))
        .arg(format!("-D{}", l.secs))
        .arg("--log-file")
        .arg(log);
    for h in l.headers {
        c.args(["-H", h]);
    }
    let out = c.arg(url).output().context("running h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures::default();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("finished in") {
            // "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
            f.rps = t
                .split(',')
                .nth(1)
                .and_then(|s| s.trim().strip_suffix(" req/s"))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0.0);
        } else if t.starts_with("requests:") && !t.contains(" 0 failed") {
            f.errors.push_str(t);
        }
    }
    if f.rps == 0.0 {
        bail!("h2load printed no req/s for {url}:\n{text}");
    }
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    let (p50, p99) = log_percentiles(&log_text);
    f.p50_ms = p50;
    f.p99_ms = p99;
    let _ = std::fs::remove_file(log);
    Ok(f)
}

/// p50 and p99 in ms from h2load's log: "start-µs \t status \t duration-µs" per request.
fn log_percentiles(text: &str) -> (f64, f64) {
    let mut us: Vec<u64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    if us.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    us.sort_unstable();
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

/// "1.23ms", "850.00us", "1.02s" → milliseconds.
pub fn duration_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.trim().parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tool_durations() {
        assert_eq!(duration_ms("850.00us"), Some(0.85));
        assert_eq!(duration_ms("1.50ms"), Some(1.5));
        assert_eq!(duration_ms("2.00s"), Some(2000.0));
        assert_eq!(duration_ms("fast"), None);
    }

    #[test]
    fn percentiles_of_an_h2load_log() {
        let log: String = (1..=100)
            .map(|i| format!("{i}\t200\t{}\n", i * 1000))
            .collect();
        assert_eq!(log_percentiles(&log), (51.0, 100.0));
        assert!(log_percentiles("").0.is_nan());
    }
}
