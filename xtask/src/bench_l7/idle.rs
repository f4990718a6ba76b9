//! Resident memory per idle client connection: for each proxy, freshly started, the
//! resident set (VmRSS of its working processes) before and after opening N HTTP/1.1
//! keep-alive connections that each made one request and then stay idle; then likewise
//! with N HTTP/2 (h2c) connections on freshly started proxies, so neither protocol reuses
//! memory the other freed. The difference divided by N is the cost of one idle connection
//! in the proxy's own memory (kernel socket buffers are not in it, and are alike for every
//! proxy).
//!
//! N is capped by the descriptor limit: lb keeps (hard RLIMIT_NOFILE − 1024) / 2 descriptors
//! for client connections, so where the hard limit cannot be raised (a container without
//! CAP_SYS_RESOURCE: 20,000 here) N is rounded down to whole thousands below that cap.

use super::rig::{self, Placement, Proxy};
use anyhow::{bail, Context, Result};
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

/// Bytes per idle connection of one proxy.
pub struct Row {
    pub name: &'static str,
    pub h1: f64,
    pub h2: f64,
}

/// How long opening one proxy's connections may take before the case fails.
const DEADLINE: Duration = Duration::from_secs(180);

/// The number of idle connections measured when `wanted` are asked for (see the module).
pub fn feasible(wanted: u32) -> u32 {
    let cap = rig::hard_nofile().saturating_sub(1024) / 2;
    let n = u64::from(wanted).min(if cap > 2000 {
        cap / 1000 * 1000
    } else {
        cap / 2
    });
    n as u32
}

/// Bytes per idle HTTP/1.1 and HTTP/2 connection of each proxy, each protocol on freshly
/// started proxies.
pub fn measure(lb: &Path, dir: &Path, at: &Placement, n: u32) -> Result<Vec<Row>> {
    raise_nofile(u64::from(n) + 1024)?;
    let mut rows: Vec<Row> = Vec::new();
    for h2 in [false, true] {
        let rig = rig::start(lb, dir, at)?;
        for (i, p) in rig.proxies.iter().enumerate() {
            let per = per_connection(p, n, h2)?;
            match rows.get_mut(i) {
                Some(r) => r.h2 = per,
                None => rows.push(Row {
                    name: p.name,
                    h1: per,
                    h2: f64::NAN,
                }),
            }
        }
    }
    Ok(rows)
}

/// Opens `n` connections to `p`, one request each, and returns the growth of its resident
/// memory per connection; the connections are closed on return.
fn per_connection(p: &Proxy, n: u32, h2: bool) -> Result<f64> {
    let start = Instant::now();
    let proto = if h2 { "HTTP/2" } else { "HTTP/1.1" };
    let base = rss(p)?;
    let mut open = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let s = if h2 {
            h2_request(p.h2_port)
        } else {
            h1_request(p.h1_port)
        };
        open.push(s.with_context(|| format!("{} {proto}: connection {}", p.name, open.len()))?);
        if start.elapsed() > DEADLINE {
            bail!("{}: opening {n} connections took over {DEADLINE:?}", p.name);
        }
    }
    // lb parks an idle HTTP/1.1 connection after 20 ms of quiet: let every proxy settle
    // (resident memory unchanged over half a second, at most 10 s).
    let mut after = rss(p)?;
    let settle = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss(p)?;
        if now == after {
            break;
        }
        after = now;
    }
    println!(
        "idle      {:<8} {proto:<8} RSS {:>7} KiB → {:>7} KiB with {n} idle connections ({:.1} s)",
        p.name,
        base / 1024,
        after / 1024,
        start.elapsed().as_secs_f64()
    );
    Ok(after.saturating_sub(base) as f64 / f64::from(n))
}

pub fn table(n: u32, rows: &[Row]) -> String {
    let mut out =
        format!("Resident memory per idle connection ({n} connections after one request each)\n");
    let lb = &rows[0];
    for r in rows {
        let _ = writeln!(
            out,
            "  {:<8} HTTP/1.1 {:>8.0} B/conn   HTTP/2 {:>8.0} B/conn   lb/{}: x{:.2}, x{:.2}",
            r.name,
            r.h1,
            r.h2,
            r.name,
            lb.h1 / r.h1.max(1.0),
            lb.h2 / r.h2.max(1.0)
        );
    }
    let best = |f: fn(&Row) -> f64| rows[1..].iter().map(f).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        out,
        "  target (<= 2x the better peer): HTTP/1.1 {}, HTTP/2 {}",
        if lb.h1 <= 2.0 * best(|r| r.h1) {
            "met"
        } else {
            "missed"
        },
        if lb.h2 <= 2.0 * best(|r| r.h2) {
            "met"
        } else {
            "missed"
        }
    );
    out
}

/// Resident bytes of the proxy's working processes.
fn rss(p: &Proxy) -> Result<u64> {
    let mut total = 0;
    for pid in p.server.worker_pids() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        total += kib * 1024;
    }
    Ok(total)
}

fn raise_nofile(want: u64) -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: want,
        rlim_max: want,
    };
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both pointers are to live rlimit values.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        if cur.rlim_cur >= want {
            return Ok(());
        }
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            bail!(
                "raising RLIMIT_NOFILE to {want}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

fn connect(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One HTTP/1.1 request on a new connection, its response read to the end; the connection
/// stays open.
fn h1_request(port: u16) -> Result<TcpStream> {
    let mut s = connect(port)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before the response ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                bail!("unexpected response: {head}");
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .context("response without content-length")?;
            if buf.len() >= end + 4 + len {
                return Ok(s);
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/2 (prior knowledge) GET on a new connection, read until its stream ends; the
/// connection stays open, its SETTINGS acknowledged.
fn h2_request(port: u16) -> Result<TcpStream> {
    let mut s = connect(port)?;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&frame(0x4, 0, 0, &[])); // SETTINGS, none changed
                                                   // HPACK: :method GET, :scheme http, :path / (static indexes), :authority literal.
    let mut block = vec![0x82, 0x86, 0x84, 0x01, 9];
    block.extend_from_slice(b"127.0.0.1");
    out.extend_from_slice(&frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM|END_HEADERS
    s.write_all(&out)?;
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head)?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)?;
        match kind {
            0x4 if flags & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[]))?, // SETTINGS ACK
            0x7 => bail!("GOAWAY from the proxy"),
            0x3 if stream == 1 => bail!("stream reset by the proxy"),
            0x0 | 0x1 if stream == 1 && flags & 0x1 != 0 => return Ok(s),
            _ => {}
        }
    }
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}
