//! The request log: one line per request, text or JSON, with the fields of Google Cloud's
//! load-balancer request log (time, client, method, host, path, protocol, status, backend
//! service, backend, latency, request and response bytes, user agent). A retried request is
//! one line for the final response, with `attempts` (Google Cloud: "retried requests only
//! generate one log entry for the final response").
//!
//! Where lines go is global (`[logging] access_log = "off" | "stderr" | "/path"`,
//! `access_log_format = "text" | "json"`); which requests are logged is per backend
//! service (`log_config = { enable, sample_rate }`; absent = every request once the access
//! log is on). Requests that reach no backend service (refused at the edge, no route,
//! redirects) are always logged when the log is on.
//!
//! The request path never waits for the disk: lines go into a bounded channel drained by a
//! writer task, and a line that finds the channel full is dropped and counted
//! (`lb_l7_access_log_dropped_total`).

use super::L7Error;
use crate::config::{AccessLogFormat, Logging};
use serde::Serialize;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    sync::mpsc,
};

/// Lines waiting for the writer; beyond this, lines are dropped (and counted).
pub const QUEUE: usize = 16 * 1024;

/// One request as logged. Field names follow Google Cloud's `httpRequest` in snake_case.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// When the request arrived (RFC 3339, UTC).
    pub time: String,
    pub remote_ip: String,
    pub server_ip: String,
    /// The target proxy of the listener.
    pub proxy: String,
    pub request_method: String,
    pub host: String,
    /// Path and query as the client sent them.
    pub request_url: String,
    /// `HTTP/1.1`, `HTTP/2.0`, ...
    pub protocol: &'static str,
    pub status: u16,
    /// Backend service, when the request reached one.
    pub backend_service: Option<String>,
    /// Backend that gave the final response, when one did.
    pub backend: Option<String>,
    /// Attempts sent to backends (1 + retries; 0 when no backend was tried).
    pub attempts: u32,
    /// Why the proxy answered itself (e.g. `no_backend`, `uri_too_long`), when it did.
    pub status_details: Option<&'static str>,
    /// Request body bytes received from the client.
    pub request_size: u64,
    /// Response body bytes sent to the client.
    pub response_size: u64,
    /// Arrival to the last response byte, in seconds.
    pub latency_sec: f64,
    pub user_agent: Option<String>,
}

impl Entry {
    /// The entry as one line (without the newline).
    pub fn line(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            AccessLogFormat::Text => {
                let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                format!(
                    "{} {} {} {:?} {} {} {} {} service={} backend={} attempts={} details={} req_bytes={} resp_bytes={} latency={:.6} proxy={} ua={:?}",
                    self.time,
                    self.remote_ip,
                    self.request_method,
                    self.request_url,
                    self.protocol,
                    self.status,
                    self.host,
                    self.server_ip,
                    opt(&self.backend_service),
                    opt(&self.backend),
                    self.attempts,
                    self.status_details.unwrap_or("-"),
                    self.request_size,
                    self.response_size,
                    self.latency_sec,
                    self.proxy,
                    self.user_agent.as_deref().unwrap_or("-"),
                )
            }
        }
    }
}

/// RFC 3339 in UTC with microseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// An open request log.
#[derive(Debug)]
pub struct AccessLog {
    pub settings: Logging,
    tx: mpsc::Sender<String>,
    /// Lines dropped because the writer fell behind (shared by every log of one L7 tier).
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the destination and starts its writer; `None` when the log is off. Must run
    /// inside a tokio runtime.
    pub fn open(settings: &Logging, dropped: Arc<AtomicU64>) -> Result<Option<AccessLog>, L7Error> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match settings.access_log.as_str() {
            "off" => return Ok(None),
            "stderr" => Box::new(tokio::io::stderr()),
            path => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| L7Error::Config {
                        place: "logging.access_log".into(),
                        message: format!("cannot open {path}: {e}"),
                    })?;
                Box::new(tokio::fs::File::from_std(f))
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Ok(Some(AccessLog {
            settings: settings.clone(),
            tx,
            dropped,
        }))
    }

    /// Queues one entry; never waits.
    pub fn write(&self, e: &Entry) {
        let mut line = e.line(self.settings.access_log_format);
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The writer: every queued line, flushed whenever the queue is empty. Ends when the log is
/// replaced or the tier stops (every sender gone) after writing what was queued.
async fn write_lines(mut rx: mpsc::Receiver<String>, out: Box<dyn AsyncWrite + Send + Unpin>) {
    let mut out = tokio::io::BufWriter::new(out);
    while let Some(line) = rx.recv().await {
        let mut ok = out.write_all(line.as_bytes()).await.is_ok();
        while let Ok(more) = rx.try_recv() {
            ok &= out.write_all(more.as_bytes()).await.is_ok();
        }
        ok &= out.flush().await.is_ok();
        if !ok {
            tracing::warn!("writing the access log failed; lines are lost until it works again");
        }
    }
}

/// A request's log entry while its response body is still being sent: counts the body's
/// bytes and writes the entry when dropped (body finished, failed or abandoned), so the
/// latency and size cover the whole response.
#[derive(Debug)]
pub struct Pending {
    pub entry: Entry,
    pub log: Arc<AccessLog>,
    pub start: Instant,
    pub request_bytes: Option<Arc<AtomicU64>>,
}

impl Pending {
    pub fn add_response_bytes(&mut self, n: usize) {
        self.entry.response_size += n as u64;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.entry.latency_sec = self.start.elapsed().as_secs_f64();
        if let Some(r) = &self.request_bytes {
            self.entry.request_size = r.load(Ordering::Relaxed);
        }
        self.log.write(&self.entry);
    }
}

/// Whether to log one request of a service with this sampling rate.
pub fn sampled(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && fastrand::f64() < rate)
}

/// A service's sampling rate: `log_config` absent → every request.
pub fn sample_rate(lc: Option<&crate::config::LogConfig>) -> f64 {
    match lc {
        None => 1.0,
        Some(c) if c.enable => c.sample_rate,
        Some(_) => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry() -> Entry {
        Entry {
            time: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500)),
            remote_ip: "10.0.0.1".into(),
            server_ip: "10.0.0.100".into(),
            proxy: "p".into(),
            request_method: "GET".into(),
            host: "a.test".into(),
            request_url: "/x?y=1".into(),
            protocol: "HTTP/1.1",
            status: 200,
            backend_service: Some("web".into()),
            backend: Some("b1".into()),
            attempts: 2,
            status_details: None,
            request_size: 0,
            response_size: 12,
            latency_sec: 0.25,
            user_agent: Some("curl/8".into()),
        }
    }

    #[test]
    fn json_and_text_lines() {
        let e = entry();
        assert_eq!(e.time, "1970-01-01T00:00:01.5Z");
        let v: serde_json::Value = serde_json::from_str(&e.line(AccessLogFormat::Json)).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["backend"], "b1");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["request_url"], "/x?y=1");
        let t = e.line(AccessLogFormat::Text);
        assert!(
            t.starts_with("1970-01-01T00:00:01.5Z 10.0.0.1 GET \"/x?y=1\" HTTP/1.1 200 a.test"),
            "{t}"
        );
        assert!(t.contains("service=web backend=b1 attempts=2"), "{t}");
    }

    #[test]
    fn sampling() {
        assert_eq!(sample_rate(None), 1.0);
        let off = crate::config::LogConfig {
            enable: false,
            sample_rate: 1.0,
        };
        assert_eq!(sample_rate(Some(&off)), 0.0);
        assert!(sampled(1.0));
        assert!(!sampled(0.0));
        let n = (0..10_000).filter(|_| sampled(0.25)).count();
        assert!((2_000..3_000).contains(&n), "{n}");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(1);
        let log = AccessLog {
            settings: Logging::default(),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        for _ in 0..3 {
            log.write(&entry());
        }
        assert_eq!(log.dropped.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn lines_reach_the_file() {
        let path = std::env::temp_dir().join(format!("lb-access-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let settings = Logging {
            access_log: path.display().to_string(),
            access_log_format: AccessLogFormat::Json,
        };
        let log = AccessLog::open(&settings, Arc::default()).unwrap().unwrap();
        for _ in 0..3 {
            log.write(&entry());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let lines = loop {
            let n = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .lines()
                .count();
            if n >= 3 || Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(lines, 3);
        let _ = std::fs::remove_file(&path);
        assert!(
            AccessLog::open(
                &Logging {
                    access_log: "/nonexistent-dir/x.log".into(),
                    ..settings
                },
                Arc::default()
            )
            .is_err(),
            "an unwritable destination is an error"
        );
    }
}
