//! `cargo xtask bench-l7`: lb's L7 proxy against nginx and HAProxy as reverse proxies to
//! the same fast backend (nginx answering a small static body), on loopback, in one run.
//!
//! Fairness: every proxy gets the same CPU (`taskset -c <proxy-cpu>`, one core, so nginx
//! runs one worker, HAProxy one thread and lb's runtime one worker), the load generator and
//! the backend share the other core, and every proxy keeps pooled keep-alive connections to
//! the backend. HTTP/1.1 load comes from wrk (requests/s and p99 from `--latency`);
//! HTTP/2 (cleartext, prior knowledge) from h2load (requests/s and mean latency; h2load
//! prints no percentiles). Configurations go to a temporary folder; the servers run in the
//! foreground as child processes and are killed afterwards, also on errors.

use anyhow::{bail, Context, Result};
use std::{
    fmt::Write as _,
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Options of the benchmark.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Concurrent connections (wrk -c, h2load -c).
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// Concurrent streams per HTTP/2 connection (h2load -m).
    #[arg(long, default_value_t = 10)]
    pub streams: u32,
    /// CPU list the proxies are pinned to.
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPU list of the backend and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// Rounds per proxy (interleaved; medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Skip the HTTP/2 (h2load) measurements.
    #[arg(long)]
    pub no_h2: bool,
    /// Benchmark this lb binary instead of building one (e.g. to compare two builds).
    #[arg(long)]
    pub lb_bin: Option<PathBuf>,
}

const BACKEND_PORT: u16 = 18080;
/// (name, HTTP/1.1 port, HTTP/2 cleartext port).
const PROXIES: [(&str, u16, u16); 3] = [
    ("lb", 18081, 18081),
    ("nginx", 18082, 18092),
    ("haproxy", 18083, 18093),
];

/// Kills its child on drop, so no server outlives the run.
struct Server(Child);

impl Drop for Server {
    /// SIGTERM first: an nginx master killed with SIGKILL leaves its workers running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug, Clone, Default)]
struct Figures {
    rps: f64,
    /// p99 (wrk) or mean (h2load) latency in milliseconds.
    latency_ms: f64,
    errors: String,
}

pub fn run(o: Options) -> Result<()> {
    for tool in ["wrk", "h2load", "taskset", "haproxy", "/usr/sbin/nginx"] {
        if which(tool).is_none() {
            bail!("{tool} is not installed (apt-get install wrk nghttp2-client nginx haproxy util-linux)");
        }
    }
    let dir = std::env::temp_dir().join(format!("lb-bench-l7-{}", std::process::id()));
    if let Some(lb) = &o.lb_bin {
        std::fs::create_dir_all(&dir)?;
        let result = bench(&o, lb, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    }
    let root = workspace_root();
    println!("building lb (profile release-lb: release + fat LTO)...");
    let st = Command::new("cargo")
        .args([
            "build",
            "--profile",
            "release-lb",
            "-p",
            "lb-userspace",
            "--bin",
            "lb",
        ])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        bail!("cargo build --profile release-lb failed");
    }
    let lb = root.join("target/release-lb/lb");
    std::fs::create_dir_all(&dir)?;
    let result = bench(&o, &lb, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(o: &Options, lb: &Path, dir: &Path) -> Result<()> {
    let nginx_conf = |name: &str, body: &str| -> Result<PathBuf> {
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        let text = format!(
            "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n{body}\n}}\n",
            d = d.display()
        );
        let path = d.join("nginx.conf");
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let backend_conf = nginx_conf(
        "backend",
        &format!("server {{ listen 127.0.0.1:{BACKEND_PORT}; location / {{ return 200 \"hello from the backend\\n\"; }} }}"),
    )?;
    let proxy_conf = nginx_conf(
        "nginx-proxy",
        &format!(
            "upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; keepalive_requests 1000000; }}\n\
             server {{ listen 127.0.0.1:{p1}; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
             server {{ listen 127.0.0.1:{p2} http2; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            p1 = PROXIES[1].1,
            p2 = PROXIES[1].2
        ),
    )?;
    let haproxy_conf = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n\
             frontend h1\n  bind 127.0.0.1:{p1}\n  default_backend be\nfrontend h2\n  bind 127.0.0.1:{p2} proto h2\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{BACKEND_PORT}\n",
            p1 = PROXIES[2].1,
            p2 = PROXIES[2].2
        ),
    )?;
    let lb_conf = dir.join("lb.toml");
    std::fs::write(
        &lb_conf,
        format!(
            "[admin]\nsocket = \"{sock}\"\n\n[forwarding_rules.bench]\nip_address = \"127.0.0.1\"\nports = [{p}]\ntarget = \"bench\"\n\n\
             [target_http_proxies.bench]\nurl_map = \"bench\"\n\n[url_maps.bench]\ndefault_service = \"be\"\n\n\
             [backend_services.be]\nprotocol = \"HTTP\"\n\n[[backend_services.be.backends]]\naddress = \"127.0.0.1\"\nport = {BACKEND_PORT}\n",
            p = PROXIES[0].1,
            sock = dir.join("admin.sock").display()
        ),
    )?;

    let pin = |cpus: &str, program: &Path, args: &[&str]| -> Result<Child> {
        Command::new("taskset")
            .arg("-c")
            .arg(cpus)
            .arg(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .spawn()
            .with_context(|| format!("starting {}", program.display()))
    };
    let nginx = Path::new("/usr/sbin/nginx");
    let haproxy = which("haproxy").context("haproxy")?;
    let _backend = Server(pin(
        &o.load_cpus,
        nginx,
        &["-c", &backend_conf.display().to_string()],
    )?);
    wait_port(BACKEND_PORT)?;
    let mut servers = vec![
        Server(pin(
            &o.proxy_cpus,
            lb,
            &["run", "--config", &lb_conf.display().to_string()],
        )?),
        Server(pin(
            &o.proxy_cpus,
            nginx,
            &["-c", &proxy_conf.display().to_string()],
        )?),
        Server(pin(
            &o.proxy_cpus,
            &haproxy,
            &["-db", "-f", &haproxy_conf.display().to_string()],
        )?),
    ];
    for (name, p1, p2) in PROXIES {
        wait_port(p1).with_context(|| format!("{name} did not start listening"))?;
        wait_port(p2).with_context(|| format!("{name} did not start listening"))?;
    }

    // Rounds interleave the proxies so a burst of load from elsewhere on the machine hits
    // them alike; each figure reported is the median over the rounds.
    let mut h1: Vec<Vec<Figures>> = vec![Vec::new(); PROXIES.len()];
    let mut h2: Vec<Vec<Figures>> = vec![Vec::new(); PROXIES.len()];
    for (_, p1, _) in PROXIES {
        // Warm-up: pools filled, caches hot.
        wrk(o, &format!("http://127.0.0.1:{p1}/"), 2)?;
    }
    for round in 1..=o.rounds {
        for (i, (name, p1, p2)) in PROXIES.iter().enumerate() {
            let f = wrk(o, &format!("http://127.0.0.1:{p1}/"), o.duration)?;
            println!(
                "round {round} {name:<8} HTTP/1.1  {:>10.0} req/s   p99 {:>7.2} ms {}",
                f.rps, f.latency_ms, f.errors
            );
            h1[i].push(f);
            if !o.no_h2 {
                let f = h2load(o, &format!("http://127.0.0.1:{p2}/"))?;
                println!(
                    "round {round} {name:<8} HTTP/2    {:>10.0} req/s   mean {:>6.2} ms {}",
                    f.rps, f.latency_ms, f.errors
                );
                h2[i].push(f);
            }
        }
    }
    let median = |runs: &[Figures]| -> Figures {
        let mid = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        Figures {
            rps: mid(runs.iter().map(|f| f.rps).collect()),
            latency_ms: mid(runs.iter().map(|f| f.latency_ms).collect()),
            errors: runs
                .iter()
                .map(|f| f.errors.as_str())
                .collect::<Vec<_>>()
                .join(""),
        }
    };
    let h1: Vec<(&str, Figures)> = PROXIES
        .iter()
        .zip(&h1)
        .map(|(p, r)| (p.0, median(r)))
        .collect();
    let h2: Vec<(&str, Figures)> = PROXIES
        .iter()
        .zip(&h2)
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| (p.0, median(r)))
        .collect();
    servers.clear();
    println!("\n{}", report(o, &h1, &h2));
    Ok(())
}

fn report(o: &Options, h1: &[(&str, Figures)], h2: &[(&str, Figures)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== bench-l7: median of {} rounds of {} s, {} connections, proxies on CPU {}, backend+load on CPU {} ==",
        o.rounds, o.duration, o.connections, o.proxy_cpus, o.load_cpus
    );
    for (title, rows, lat) in [
        ("HTTP/1.1 (wrk)", h1, "p99"),
        ("HTTP/2 h2c (h2load)", h2, "mean"),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}");
        let lb = &rows[0].1;
        for (name, f) in rows {
            let _ = writeln!(
                out,
                "  {name:<8} {:>10.0} req/s  {lat} {:>7.2} ms   lb/{name}: req/s x{:.2}, {lat} x{:.2}",
                f.rps,
                f.latency_ms,
                lb.rps / f.rps.max(1e-9),
                lb.latency_ms / f.latency_ms.max(1e-9)
            );
        }
    }
    out
}

fn wrk(o: &Options, url: &str, secs: u32) -> Result<Figures> {
    let out = Command::new("taskset")
        .args(["-c", &o.load_cpus, "wrk", "-t1", "--latency"])
        .arg(format!("-c{}", o.connections))
        .arg(format!("-d{secs}s"))
        .arg(url)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures::default();
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            f.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("99%") {
            f.latency_ms = duration_ms(v.trim()).unwrap_or(f64::NAN);
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

fn h2load(o: &Options, url: &str) -> Result<Figures> {
    let out = Command::new("taskset")
        .args(["-c", &o.load_cpus, "h2load", "-t1"])
        .arg(format!("-c{}", o.connections))
        .arg(format!("-m{}", o.streams))
        .arg(format!("-D{}", o.duration))
        .arg(url)
        .output()
        .context("running h2load")?;
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
        } else if let Some(v) = t.strip_prefix("time for request:") {
            // "min max mean sd +/- sd"
            f.latency_ms = v
                .split_whitespace()
                .nth(2)
                .and_then(duration_ms)
                .unwrap_or(f64::NAN);
        } else if t.starts_with("requests:") && !t.contains(" 0 failed") {
            f.errors.push_str(t);
        }
    }
    if f.rps == 0.0 {
        bail!("h2load printed no req/s for {url}:\n{text}");
    }
    Ok(f)
}

/// "1.23ms", "850.00us", "1.02s" → milliseconds.
fn duration_ms(s: &str) -> Option<f64> {
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

fn wait_port(port: u16) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 30 s")
}

fn which(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Path::new(tool).exists().then(|| PathBuf::from(tool));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
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
}
