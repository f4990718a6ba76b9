//! `cargo xtask bench-l7`: lb's L7 proxy against nginx and HAProxy as reverse proxies to
//! the same fast backend (nginx answering a static body), on loopback, in one run.
//!
//! Fairness: every proxy gets the same CPUs (`taskset -c <proxy-cpus>`; nginx runs one
//! worker per CPU, HAProxy one thread per CPU and lb's runtime one worker per CPU), the
//! load generator and the backend run on the other CPUs, and every proxy keeps pooled
//! keep-alive connections to the backend. Each case runs the three proxies one after the
//! other, round after round (interleaved, so a burst of load from elsewhere on the machine
//! hits them alike), and reports medians. HTTP/1.1 load comes from wrk, HTTP/2 from h2load;
//! p50 and p99 come from wrk's `--latency` and h2load's per-request log.
//!
//! The `idle` case measures resident memory per idle client connection instead
//! ([`idle`]).

pub mod idle;
pub mod load;
pub mod rig;

use anyhow::{bail, Result};
use load::{Figures, Load};
use rig::{Placement, Rig};
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

/// Options of the benchmark.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Rounds per proxy (interleaved; medians are reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Cases to run, comma-separated: h1 (50 keep-alive connections), h1-1000, h1-close (a
    /// new connection per request), h1-64k (64 KiB responses), h2c (50 connections × 10
    /// streams), h1-tls and h2-tls (HTTP/1.1 and HTTP/2 over TLS, 50 keep-alive connections,
    /// h2-tls with 10 streams each), idle (memory per idle HTTP/1.1 and HTTP/2 connection).
    #[arg(
        long,
        default_value = "h1,h1-1000,h1-close,h1-64k,h2c,h1-tls,h2-tls,idle",
        value_delimiter = ','
    )]
    pub cases: Vec<String>,
    /// Idle connections per proxy and protocol in the `idle` case.
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: u32,
    /// CPU list the proxies are pinned to (its length is each proxy's worker count).
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPU list of the backend and the load generator.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// A short run to check the benchmark itself: 1 s, 1 round, 200 idle connections.
    #[arg(long)]
    pub quick: bool,
    /// Benchmark this lb binary instead of building one (e.g. to compare two builds).
    #[arg(long)]
    pub lb_bin: Option<PathBuf>,
}

/// A load case: what runs against each proxy.
struct Case {
    name: &'static str,
    title: &'static str,
    h2: bool,
    /// Over TLS (the proxies' TLS port, HTTP/2 or HTTP/1.1 by ALPN).
    tls: bool,
    connections: u32,
    path: &'static str,
    headers: &'static [&'static str],
}

const CASES: [Case; 7] = [
    Case {
        name: "h1",
        title: "HTTP/1.1 keep-alive, 50 connections, 100 B",
        h2: false,
        tls: false,
        connections: 50,
        path: "/",
        headers: &[],
    },
    Case {
        name: "h1-1000",
        title: "HTTP/1.1 keep-alive, 1000 connections, 100 B",
        h2: false,
        tls: false,
        connections: 1000,
        path: "/",
        headers: &[],
    },
    Case {
        name: "h1-close",
        title: "HTTP/1.1, new connection per request, 50 at once, 100 B",
        h2: false,
        tls: false,
        connections: 50,
        path: "/",
        headers: &["Connection: close"],
    },
    Case {
        name: "h1-64k",
        title: "HTTP/1.1 keep-alive, 50 connections, 64 KiB",
        h2: false,
        tls: false,
        connections: 50,
        path: rig::LARGE_PATH,
        headers: &[],
    },
    Case {
        name: "h2c",
        title: "HTTP/2 h2c, 50 connections x 10 streams, 100 B",
        h2: true,
        tls: false,
        connections: 50,
        path: "/",
        headers: &[],
    },
    Case {
        name: "h1-tls",
        title: "HTTP/1.1 over TLS, keep-alive, 50 connections, 100 B",
        h2: false,
        tls: true,
        connections: 50,
        path: "/",
        headers: &[],
    },
    Case {
        name: "h2-tls",
        title: "HTTP/2 over TLS, 50 connections x 10 streams, 100 B",
        h2: true,
        tls: true,
        connections: 50,
        path: "/",
        headers: &[],
    },
];

pub fn run(mut o: Options) -> Result<()> {
    for tool in [
        "wrk",
        "h2load",
        "taskset",
        "prlimit",
        "haproxy",
        "/usr/sbin/nginx",
        "openssl",
    ] {
        if rig::which(tool).is_none() {
            bail!("{tool} is not installed (apt-get install wrk nghttp2-client nginx haproxy util-linux openssl)");
        }
    }
    if o.quick {
        o.duration = 1;
        o.rounds = 1;
        o.idle_connections = o.idle_connections.min(200);
    }
    for c in &o.cases {
        if c != "idle" && !CASES.iter().any(|k| k.name == c) {
            bail!("unknown case {c:?}");
        }
    }
    let lb = build_lb(o.lb_bin.as_deref())?;
    let dir = std::env::temp_dir().join(format!("lb-bench-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&o, &lb, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `lb` built with the shipped profile ([`crate::deb::PROFILE`]: release + fat LTO), or
/// `given`.
pub fn build_lb(given: Option<&Path>) -> Result<PathBuf> {
    use crate::deb::PROFILE;
    if let Some(lb) = given {
        return Ok(lb.to_path_buf());
    }
    let root = crate::bootstrap::root();
    println!("building lb (profile {PROFILE}: release + fat LTO, as shipped)...");
    let st = Command::new("cargo")
        .args([
            "build",
            "--profile",
            PROFILE,
            "-p",
            "lb-userspace",
            "--bin",
            "lb",
        ])
        .current_dir(&root)
        .status()?;
    if !st.success() {
        bail!("cargo build --profile {PROFILE} failed");
    }
    Ok(root.join("target").join(PROFILE).join("lb"))
}

fn bench(o: &Options, lb: &Path, dir: &Path) -> Result<()> {
    let at = Placement {
        proxy_cpus: o.proxy_cpus.clone(),
        load_cpus: o.load_cpus.clone(),
    };
    let rig = rig::start(lb, dir, &at)?;
    let mut out = format!(
        "== bench-l7: median of {} rounds of {} s, proxies on CPU {} ({} worker(s) each), backend+load on CPU {} ==\n",
        o.rounds,
        o.duration,
        o.proxy_cpus,
        at.proxy_workers(),
        o.load_cpus
    );
    for case in CASES.iter().filter(|c| o.cases.iter().any(|n| n == c.name)) {
        let rows = run_case(o, &rig, case, dir)?;
        out.push_str(&table(case.title, &rows));
    }
    drop(rig);
    if o.cases.iter().any(|c| c == "idle") {
        let n = idle::feasible(o.idle_connections);
        if n < o.idle_connections {
            println!(
                "idle: {n} connections instead of {} (hard RLIMIT_NOFILE {}, see bench_l7/idle.rs)",
                o.idle_connections,
                rig::hard_nofile()
            );
        }
        let rows = idle::measure(lb, dir, &at, n)?;
        out.push_str(&idle::table(n, &rows));
    }
    println!("\n{out}");
    Ok(())
}

fn run_case(
    o: &Options,
    rig: &Rig,
    case: &Case,
    dir: &Path,
) -> Result<Vec<(&'static str, Figures)>> {
    let load_cpus = o.load_cpus.as_str();
    let threads = rig::Placement {
        proxy_cpus: load_cpus.into(),
        load_cpus: load_cpus.into(),
    }
    .proxy_workers() as u32;
    let load = |secs| Load {
        cpus: load_cpus,
        connections: case.connections,
        streams: 10,
        secs,
        threads,
        headers: case.headers,
    };
    let measure = |p: &rig::Proxy, secs| -> Result<Figures> {
        let (scheme, port) = match (case.tls, case.h2) {
            (true, _) => ("https", p.tls_port),
            (false, true) => ("http", p.h2_port),
            (false, false) => ("http", p.h1_port),
        };
        let url = format!("{scheme}://127.0.0.1:{port}{}", case.path);
        if case.h2 {
            load::h2load(&load(secs), &url, &dir.join("h2load.log"))
        } else {
            load::wrk(&load(secs), &url)
        }
    };
    for p in &rig.proxies {
        measure(p, 1)?; // warm-up: pools filled, caches hot
    }
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); rig.proxies.len()];
    for round in 1..=o.rounds {
        for (i, p) in rig.proxies.iter().enumerate() {
            let f = measure(p, o.duration)?;
            println!(
                "{:<9} round {round} {:<8} {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms {}",
                case.name, p.name, f.rps, f.p50_ms, f.p99_ms, f.errors
            );
            runs[i].push(f);
        }
    }
    Ok(rig
        .proxies
        .iter()
        .zip(&runs)
        .map(|(p, r)| (p.name, median(r)))
        .collect())
}

fn median(runs: &[Figures]) -> Figures {
    let mid = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    Figures {
        rps: mid(runs.iter().map(|f| f.rps).collect()),
        p50_ms: mid(runs.iter().map(|f| f.p50_ms).collect()),
        p99_ms: mid(runs.iter().map(|f| f.p99_ms).collect()),
        errors: runs
            .iter()
            .map(|f| f.errors.as_str())
            .collect::<Vec<_>>()
            .join(""),
    }
}

/// One case's rows, with lb's ratios to each peer and to the better peer.
fn table(title: &str, rows: &[(&str, Figures)]) -> String {
    let mut out = format!("{title}\n");
    let lb = &rows[0].1;
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "  {name:<8} {:>10.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms   lb/{name}: req/s x{:.2}, p99 x{:.2} {}",
            f.rps,
            f.p50_ms,
            f.p99_ms,
            lb.rps / f.rps.max(1e-9),
            lb.p99_ms / f.p99_ms.max(1e-9),
            f.errors
        );
    }
    if let Some((name, best)) = rows[1..].iter().max_by(|a, b| a.1.rps.total_cmp(&b.1.rps)) {
        let met = lb.rps >= best.rps && lb.p99_ms <= best.p99_ms;
        let _ = writeln!(
            out,
            "  target (req/s >= the better peer, {name}, at no worse p99): {}",
            if met { "met" } else { "missed" }
        );
    }
    out
}
