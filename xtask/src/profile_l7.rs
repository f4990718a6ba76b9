//! `cargo xtask profile-l7`: where each proxy's CPU goes under the same load. The bench-l7
//! rig (lb, nginx and HAProxy in front of one nginx backend, proxies pinned to one CPU) is
//! loaded by wrk, one proxy at a time; `perf record` (cpu-clock, DWARF call graphs) samples
//! the proxy's processes for a fixed window. `perf script` output is folded and rendered
//! with inferno into `<out>/<proxy>.folded` and `<out>/<proxy>.svg` (open the SVG in a
//! browser), and a breakdown by category (kernel by syscall, HTTP library, runtime,
//! allocation, ...) is printed in CPU microseconds per request, plus the top frames.

use crate::bench_l7::{
    build_lb,
    load::{self, Load},
    rig::{self, Placement},
};
use anyhow::{bail, Context, Result};
use std::{
    collections::HashMap,
    fmt::Write as _,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds sampled per proxy (the load runs 2 s longer: 1 s ramp-up, 1 s after).
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// Concurrent wrk connections.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// A new connection per request (`Connection: close`, bench-l7's h1-close case).
    #[arg(long)]
    pub close: bool,
    /// Samples per second of CPU time (perf -F).
    #[arg(long, default_value_t = 999)]
    pub frequency: u32,
    /// CPU list the proxies are pinned to.
    #[arg(long, default_value = "0")]
    pub proxy_cpus: String,
    /// CPU list of the backend, the load generator and perf.
    #[arg(long, default_value = "1")]
    pub load_cpus: String,
    /// Frames listed per proxy.
    #[arg(long, default_value_t = 12)]
    pub top: usize,
    /// Where folded stacks and flame graphs go (default: target/profile-l7).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Profile this lb binary instead of building one.
    #[arg(long)]
    pub lb_bin: Option<PathBuf>,
}

pub fn run(o: Options) -> Result<()> {
    crate::bootstrap::run()?;
    if rig::which("perf").is_none() {
        bail!("perf is not installed (apt-get install linux-perf)");
    }
    let lb = build_lb(o.lb_bin.as_deref())?;
    let out = o
        .out
        .clone()
        .unwrap_or_else(|| crate::bootstrap::root().join("target/profile-l7"));
    std::fs::create_dir_all(&out)?;
    let dir = std::env::temp_dir().join(format!("lb-profile-l7-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = profile(&o, &lb, &dir, &out);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn profile(o: &Options, lb: &Path, dir: &Path, out: &Path) -> Result<()> {
    let at = Placement {
        proxy_cpus: o.proxy_cpus.clone(),
        load_cpus: o.load_cpus.clone(),
    };
    let rig = rig::start(lb, dir, &at)?;
    let mut summaries = Vec::new();
    for p in &rig.proxies {
        let url = format!("http://127.0.0.1:{}/", p.h1_port);
        let load = Load {
            cpus: &o.load_cpus,
            connections: o.connections,
            streams: 1,
            secs: 2,
            threads: 1,
            headers: if o.close { &["Connection: close"] } else { &[] },
        };
        load::wrk(&load, &url)?; // warm-up: pools filled, caches hot
        let data = out.join(format!("{}.perf.data", p.name));
        let pids: Vec<String> = p.server.worker_pids().iter().map(u32::to_string).collect();
        let load = Load {
            secs: o.duration + 2,
            ..load
        };
        let (figures, recorded, segments) = std::thread::scope(|s| {
            let wrk = s.spawn(|| load::wrk(&load, &url));
            std::thread::sleep(Duration::from_secs(1)); // ramp-up outside the window
            let before = Segments::now();
            let recorded = record(o, &pids.join(","), &data);
            let segments = before.and_then(|b| Ok(Segments::now()?.since(&b)));
            (wrk.join(), recorded, segments)
        });
        recorded?;
        let segments = segments?;
        let figures = figures.map_err(|_| anyhow::anyhow!("wrk thread panicked"))??;
        let folded = fold(&data, &out.join(format!("{}.folded", p.name)))?;
        flame(
            &folded,
            &out.join(format!("{}.svg", p.name)),
            &format!(
                "{} under wrk -c{}{}",
                p.name,
                o.connections,
                if o.close { " (Connection: close)" } else { "" }
            ),
        )?;
        let requests = figures.rps * f64::from(o.duration);
        summaries.push(Summary {
            name: p.name,
            rps: figures.rps,
            breakdown: Breakdown::of(&folded, o, requests),
            segments: segments.per_request(requests),
        });
    }
    drop(rig);
    println!("{}", report(o, &summaries, out));
    Ok(())
}

/// `perf record` of `pids` for the window, on the load CPUs so the proxy's CPU is its own.
fn record(o: &Options, pids: &str, data: &Path) -> Result<()> {
    let st = Command::new("taskset")
        .args([
            "-c",
            &o.load_cpus,
            "perf",
            "record",
            "-q",
            "-e",
            "cpu-clock",
        ])
        .arg(format!("-F{}", o.frequency))
        .args(["--call-graph", "dwarf,16384", "-p", pids, "-o"])
        .arg(data)
        .args(["--", "sleep", &o.duration.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running perf record")?;
    if !st.success() {
        bail!("perf record failed ({st})");
    }
    Ok(())
}

/// `perf script` folded by inferno: one "frame;frame;...;leaf count" line per stack.
fn fold(data: &Path, folded_path: &Path) -> Result<String> {
    use inferno::collapse::{perf, Collapse};
    let mut child = Command::new("perf")
        .args(["script", "--no-inline", "-i"])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("running perf script")?;
    let stdout = child.stdout.take().context("perf script output")?;
    let mut opts = perf::Options::default();
    opts.annotate_kernel = true;
    let mut folded = Vec::new();
    perf::Folder::from(opts).collapse(BufReader::new(stdout), &mut folded)?;
    child.wait()?;
    let text = String::from_utf8(folded).context("folded stacks are not UTF-8")?;
    std::fs::write(folded_path, &text)?;
    Ok(text)
}

fn flame(folded: &str, svg: &Path, title: &str) -> Result<()> {
    let mut opts = inferno::flamegraph::Options::default();
    title.clone_into(&mut opts.title);
    let file = std::fs::File::create(svg)?;
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), std::io::BufWriter::new(file))?;
    Ok(())
}

/// The host's TCP segment counters (`/proc/net/snmp` OutSegs, `/proc/net/netstat`
/// TCPOrigDataSent). Segments without data are mostly pure ACKs: a socket that reads a
/// small pushed segment acknowledges it at once unless it is in "ping-pong" mode, which
/// the kernel leaves when its answer comes later than the delayed-ACK timeout (40 ms at
/// least). A proxy whose requests wait longer than that (1,000 connections on one CPU)
/// pays about two extra segments per request, each a trip through the loopback stack.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Segments {
    out: u64,
    with_data: u64,
}

impl Segments {
    fn now() -> Result<Segments> {
        let snmp = std::fs::read_to_string("/proc/net/snmp")?;
        let netstat = std::fs::read_to_string("/proc/net/netstat")?;
        Segments::parse(&snmp, &netstat).context("TCP counters not found in /proc/net")
    }

    /// Reads a counter from /proc/net's "Prefix: names" / "Prefix: values" line pairs.
    fn parse(snmp: &str, netstat: &str) -> Option<Segments> {
        fn counter(text: &str, prefix: &str, name: &str) -> Option<u64> {
            let mut lines = text.lines().filter(|l| l.starts_with(prefix));
            while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
                let at = names.split_whitespace().position(|n| n == name);
                if let Some(at) = at {
                    return values.split_whitespace().nth(at)?.parse().ok();
                }
            }
            None
        }
        Some(Segments {
            out: counter(snmp, "Tcp:", "OutSegs")?,
            with_data: counter(netstat, "TcpExt:", "TCPOrigDataSent")?,
        })
    }

    fn since(&self, before: &Segments) -> Segments {
        Segments {
            out: self.out.saturating_sub(before.out),
            with_data: self.with_data.saturating_sub(before.with_data),
        }
    }

    /// Segments with data and without, per request.
    fn per_request(&self, requests: f64) -> (f64, f64) {
        let r = requests.max(1.0);
        (
            self.with_data as f64 / r,
            self.out.saturating_sub(self.with_data) as f64 / r,
        )
    }
}

/// Samples by category of the leaf frame, and by leaf frame.
/// perf's cpu-clock counts are nanoseconds of CPU time, so folded counts are too.
struct Breakdown {
    total: u64,
    us_per_count_per_request: f64,
    categories: Vec<(String, u64)>,
    top: Vec<(String, u64)>,
}

impl Breakdown {
    fn of(folded: &str, o: &Options, requests: f64) -> Breakdown {
        let mut categories: HashMap<String, u64> = HashMap::new();
        let mut frames: HashMap<String, u64> = HashMap::new();
        let mut total = 0;
        for line in folded.lines() {
            let Some((stack, count)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            let frames_of: Vec<&str> = stack.split(';').collect();
            let leaf = frames_of.last().copied().unwrap_or("?");
            total += count;
            *categories.entry(category(&frames_of)).or_default() += count;
            *frames.entry(short(leaf)).or_default() += count;
        }
        let sorted = |m: HashMap<String, u64>| {
            let mut v: Vec<(String, u64)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        let mut top = sorted(frames);
        top.truncate(o.top);
        Breakdown {
            total,
            us_per_count_per_request: 1e-3 / requests.max(1.0),
            categories: sorted(categories),
            top,
        }
    }

    fn us(&self, samples: u64) -> f64 {
        samples as f64 * self.us_per_count_per_request
    }
}

/// The category of a stack's CPU time, from its leaf frame (and, for the kernel, the system
/// call it runs under).
fn category(stack: &[&str]) -> String {
    let leaf = stack.last().copied().unwrap_or("");
    if leaf.ends_with("_[k]") {
        // The frame after the system-call entry names the call (do_writev, __sys_recvfrom,
        // __x64_sys_epoll_wait, ...); without one the kernel ran on an interrupt.
        let call = stack
            .iter()
            .skip_while(|f| !f.starts_with("do_syscall_64"))
            .skip(1)
            .map(|f| f.trim_end_matches("_[k]"))
            .find(|f| *f != "x64_sys_call")
            .map(|f| {
                [
                    "__x64_sys_",
                    "__se_sys_",
                    "__do_sys_",
                    "__sys_",
                    "ksys_",
                    "do_",
                ]
                .iter()
                .fold(f, |f, p| f.strip_prefix(p).unwrap_or(f))
            })
            .unwrap_or("interrupts (no system call)");
        return format!("kernel: {call}");
    }
    let l = leaf;
    let has = |needles: &[&str]| needles.iter().any(|n| l.contains(n));
    if has(&[
        "malloc",
        "free",
        "realloc",
        "calloc",
        "__rust_alloc",
        "__rust_dealloc",
        "__rdl_",
        "mi_",
        "je_",
        "sdallocx",
        "alloc::alloc",
        "_int_",
        "tcache",
        "arena_",
    ]) {
        "allocation".into()
    } else if has(&[
        "memcpy", "memmove", "memset", "memcmp", "strlen", "__memchr",
    ]) {
        "memcpy/memset".into()
    } else if has(&[
        "http::header",
        "HeaderMap",
        "HeaderValue",
        "HeaderName",
        "httparse",
        "hpack",
    ]) {
        "header maps and parsing".into()
    } else if has(&["hyper_util::client", "hyper::client", "l7::client"]) {
        "backend client (hyper client, pool)".into()
    } else if has(&["hyper"]) {
        "hyper (server, dispatch, h1 codec)".into()
    } else if has(&["h2::"]) {
        "h2".into()
    } else if has(&["tokio::", "mio::"]) {
        "tokio runtime and I/O driver".into()
    } else if has(&["lb_userspace::routing", "l7::select", "l7::table"]) {
        "routing and selection".into()
    } else if has(&["lb_userspace"]) {
        "lb (proxy, edge rules, stats)".into()
    } else if has(&["core::", "alloc::", "std::", "bytes::"]) {
        "Rust core/std/bytes".into()
    } else if has(&["[libc", "libc.so", "libc-"]) {
        "libc (other)".into()
    } else if has(&["[nginx]", "[haproxy]"]) {
        "own code without symbols (Debian binary)".into()
    } else {
        let comm = stack.first().copied().unwrap_or("?");
        format!("{comm}: other own code")
    }
}

/// A frame name without generic arguments and hashes, at most 100 characters.
fn short(frame: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for c in frame.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<..>");
                }
                depth += 1;
            }
            '>' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    let out = match out.rfind("::h") {
        Some(i) if out[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => out[..i].to_string(),
        _ => out,
    };
    out.chars().take(100).collect()
}

/// One proxy's profile, as reported.
struct Summary<'a> {
    name: &'a str,
    rps: f64,
    breakdown: Breakdown,
    /// TCP segments per request, with data and without ([`Segments::per_request`]).
    segments: (f64, f64),
}

fn report(o: &Options, rows: &[Summary<'_>], out: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== profile-l7: wrk -c{} for {} s per proxy, perf cpu-clock at {} Hz, proxies on CPU {}; flame graphs in {} ==",
        o.connections,
        o.duration,
        o.frequency,
        o.proxy_cpus,
        out.display()
    );
    for Summary {
        name,
        rps,
        breakdown: b,
        segments: (data, without),
    } in rows
    {
        let _ = writeln!(
            s,
            "\n{name}: {rps:.0} req/s, {:.2} s of CPU sampled, {:.1} µs of CPU per request",
            b.total as f64 / 1e9,
            b.us(b.total)
        );
        let _ = writeln!(
            s,
            "  TCP segments per request (every socket on the host): {data:.2} with data, \
             {without:.2} without (pure ACKs; SYN/FIN with --close)"
        );
        for (cat, n) in &b.categories {
            let _ = writeln!(
                s,
                "  {:>5.1}%  {:>6.2} µs/req  {cat}",
                100.0 * *n as f64 / b.total.max(1) as f64,
                b.us(*n)
            );
        }
        let _ = writeln!(s, "  top frames (self):");
        for (frame, n) in &b.top {
            let _ = writeln!(
                s,
                "  {:>5.1}%  {frame}",
                100.0 * *n as f64 / b.total.max(1) as f64
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_read_from_the_named_columns() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm InSegs OutSegs RetransSegs\nTcp: 1 900 1000 7\n";
        let netstat = "TcpExt: SyncookiesSent TCPOrigDataSent\nTcpExt: 0 600\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        let before = Segments::parse(snmp, netstat).unwrap();
        assert_eq!(
            before,
            Segments {
                out: 1000,
                with_data: 600
            }
        );
        let after = Segments {
            out: 1400,
            with_data: 900,
        };
        assert_eq!(after.since(&before).per_request(100.0), (3.0, 1.0));
        assert_eq!(Segments::parse("Tcp: OutSegs\n", netstat), None);
    }

    #[test]
    fn categories_follow_the_leaf_and_the_system_call() {
        assert_eq!(
            category(&[
                "lb",
                "__libc_send",
                "do_syscall_64_[k]",
                "__x64_sys_sendto_[k]",
                "tcp_sendmsg_[k]"
            ]),
            "kernel: sendto"
        );
        assert_eq!(
            category(&[
                "lb",
                "__GI___writev",
                "do_syscall_64_[k]",
                "do_writev_[k]",
                "tcp_sendmsg_[k]"
            ]),
            "kernel: writev"
        );
        assert_eq!(
            category(&["lb", "asm_common_interrupt_[k]"]),
            "kernel: interrupts (no system call)"
        );
        assert_eq!(category(&["lb", "_int_malloc"]), "allocation");
        assert_eq!(
            category(&["lb", "hyper::proto::h1::role::Server::encode"]),
            "hyper (server, dispatch, h1 codec)"
        );
        assert_eq!(
            category(&["lb", "http::header::map::HeaderMap<T>::insert"]),
            "header maps and parsing"
        );
    }

    #[test]
    fn short_names_drop_generics_and_hashes() {
        assert_eq!(
            short("hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_loop::h0123456789abcdef"),
            "hyper::proto::h1::dispatch::Dispatcher<..>::poll_loop"
        );
    }
}
