//! `lb run` serving L7 only (no `dataplane.interfaces`) on loopback, with the in-process
//! test backends of `l7_support`: the agent, plain HTTP/1.1 requests over fresh connections,
//! and `/metrics` scrapes. Every wait has a deadline; the guard stops the agent.

#![allow(dead_code)]

use lb_tests::lbrun::LocalRun;
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

/// A running `lb run` with its folder (config, admin socket, log).
pub struct LbRun {
    pub dir: PathBuf,
    pub metrics_port: u16,
    run: LocalRun,
}

impl LbRun {
    /// Writes `config` (`{SOCK}`, `{METRICS}` and `{DIR}` replaced) and starts `lb run`;
    /// returns once `ready_port` answers an HTTP request.
    pub fn start(config: &str, ready_port: u16) -> LbRun {
        let metrics_port = super::support::free_port();
        let run = LocalRun::start(
            "lbl7agent-",
            |dir| {
                config
                    .replace("{SOCK}", &dir.join("admin.sock").display().to_string())
                    .replace("{METRICS}", &format!("127.0.0.1:{metrics_port}"))
                    .replace("{DIR}", &dir.display().to_string())
            },
            None,
        );
        let run = LbRun {
            dir: run.dir.clone(),
            metrics_port,
            run,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(ready_port, "/", &[]).is_err() {
            assert!(
                Instant::now() < deadline,
                "lb run never answered on {ready_port}; log:\n{}",
                run.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        run
    }

    pub fn log(&self) -> String {
        self.run.log()
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> String {
        let (status, _, body) = get(self.metrics_port, "/metrics", &[]).expect("metrics answer");
        assert_eq!(status, 200);
        body
    }

    /// `lb <args>` against this agent's socket.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        self.run.cli(args)
    }
}

/// GET over a fresh connection with extra headers; (status, X-Backend, body).
pub fn get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, String)> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    // One write of the whole head; a proxy that refuses an oversized head may close before
    // it is all sent (EPIPE here), and its answer is still there to read.
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: test.example\r\nUser-Agent: lb-test\r\n{extra}Connection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(head.as_bytes()) {
        if !matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return Err(e);
        }
    }
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        // A reset after the answer arrived (the refused head was not read to its end).
        if raw.is_empty() || e.kind() != std::io::ErrorKind::ConnectionReset {
            return Err(e);
        }
    }
    let out = String::from_utf8_lossy(&raw).into_owned();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {out:?}")))?;
    let backend = out
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-backend")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Ok((status, backend, body))
}

/// The backends that answered `n` sequential requests.
pub fn sequence(port: u16, n: usize, headers: &[(&str, &str)]) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (status, b, _) = get(port, "/", headers).expect("request");
            assert_eq!(status, 200);
            b
        })
        .collect()
}

/// One L7 listener, URL map, proxy and service named `<name>`; `service` holds the
/// service's extra lines and backend entries.
pub fn site(name: &str, port: u16, service: &str) -> String {
    format!(
        r#"
[forwarding_rules.{name}]
ip_address = "127.0.0.1"
ports = [{port}]
target = "{name}"

[target_http_proxies.{name}]
url_map = "{name}"

[url_maps.{name}]
default_service = "{name}"

[backend_services.{name}]
protocol = "HTTP"
{service}
"#
    )
}

/// A backend entry of an inline `backends = [...]` list.
pub fn entry(b: &super::support::TestBackend, extra: &str) -> String {
    format!(
        "{{ name = \"{}\", address = \"127.0.0.1\", port = {}{extra} }}",
        b.name,
        b.addr.port()
    )
}
