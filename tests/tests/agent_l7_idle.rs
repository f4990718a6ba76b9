//! `lb run` parks idle HTTP/1.1 keep-alive connections (see `l7/park.rs`): quiet for
//! 20 ms between requests, a plain-text connection holds only its socket and a little
//! bookkeeping, not hyper's buffers. Checked from outside: the agent's resident memory grows by a few KB per
//! idle connection (about 30 KB before parking, about 3 KB after in a debug build), every
//! parked connection still serves its next request, and pipelined, split and paused
//! requests are answered as before.
//! Loopback only; root because `lb run` is the root agent.

#[path = "l7_agent_support/mod.rs"]
mod support;

use lb_tests::root_or_skip;
use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};
use support::*;

/// Resident bytes of a process.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn connect(listen: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn idle_keep_alive_connections_hold_little_memory_and_serve_again() {
    if !root_or_skip("lb run") {
        return;
    }
    raise_nofile();
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| config(dir, listen, b.port, ""));
    wait_serving(listen, &run);
    const N: usize = 2000;
    // A first batch warms the allocator and the runtime, so the measured growth is the
    // connections' own.
    let mut warm: Vec<TcpStream> = (0..200).map(|_| connect(listen)).collect();
    for s in &mut warm {
        assert_eq!(get_on(s).unwrap(), 200);
    }
    let before = rss(run.pid());
    let t0 = Instant::now();
    let mut open = Vec::with_capacity(N);
    for i in 0..N {
        let mut s = connect(listen);
        assert_eq!(get_on(&mut s).unwrap(), 200, "connection {i}");
        open.push(s);
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "opening took too long"
        );
    }
    // Connections are parked once quiet for 20 ms: wait until the resident size stops
    // changing (two equal readings half a second apart, 15 s at most).
    let per_now = || rss(run.pid()).saturating_sub(before) / N as u64;
    let settle = Instant::now() + Duration::from_secs(15);
    let mut per = per_now();
    while Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(500));
        let now = per_now();
        if now == per {
            break;
        }
        per = now;
    }
    eprintln!("resident memory per idle HTTP/1.1 connection: {per} B");
    // About 0.7 KB in a debug build since parked connections have no task (3 KB before,
    // 30 KB before parking).
    assert!(
        per < 1536,
        "an idle connection costs {per} B of resident memory (a task or hyper's buffers held?)"
    );
    // Every parked connection wakes up for its next request.
    for (i, s) in open.iter_mut().enumerate() {
        assert_eq!(get_on(s).unwrap(), 200, "second request on connection {i}");
    }
    assert!(run.status_ok());
}

/// Reads `n` complete "ok" answers from `s`.
fn answers(s: &mut TcpStream, n: usize) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while String::from_utf8_lossy(&buf).matches("\r\n\r\nok").count() < n {
        assert!(Instant::now() < deadline, "answers so far: {buf:?}");
        let k = s.read(&mut chunk).unwrap();
        assert!(k > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..k]);
    }
    String::from_utf8_lossy(&buf).to_string()
}

#[test]
fn pipelined_split_and_paused_requests_are_answered_across_parking() {
    if !root_or_skip("lb run") {
        return;
    }
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| config(dir, listen, b.port, ""));
    wait_serving(listen, &run);
    let mut s = connect(listen);
    // Two requests in one write: the second sits in hyper's read buffer when the first is
    // answered and must be served, not lost, when the connection's state is rebuilt.
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let two = answers(&mut s, 2);
    assert_eq!(two.matches("HTTP/1.1 200").count(), 2, "{two}");
    // A head in two parts with a pause between (the connection is mid-head, not idle).
    s.write_all(b"GET /3 HTTP/1.1\r\nHo").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(b"st: a\r\n\r\n").unwrap();
    assert!(answers(&mut s, 1).starts_with("HTTP/1.1 200"));
    // Pauses longer than the quiet period (20 ms): parked each time, and woken up.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(get_on(&mut s).unwrap(), 200);
    }
    // A second pipelined pair after a pause.
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(b"GET /4 HTTP/1.1\r\nHost: a\r\n\r\nGET /5 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(answers(&mut s, 2).matches("HTTP/1.1 200").count(), 2);
    // The client's close is seen by a parked connection.
    drop(s);
    assert!(run.status_ok());
}

/// Descriptors the process holds open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn parked_connections_keep_their_deadlines_and_see_the_client_leave() {
    if !root_or_skip("lb run") {
        return;
    }
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| {
        config(dir, listen, b.port, "").replace(
            "url_map = \"m\"\n",
            "url_map = \"m\"\nhttp_keep_alive_timeout_sec = 5\n",
        )
    });
    wait_serving(listen, &run);
    // Silent after one answer: parked after 20 ms, closed by the keep-alive timeout.
    let mut quiet = connect(listen);
    assert_eq!(get_on(&mut quiet).unwrap(), 200);
    let t0 = Instant::now();
    let n = quiet.read(&mut [0u8; 16]).expect("closed, not timed out");
    let took = t0.elapsed();
    assert_eq!(n, 0, "the connection ends without an answer");
    assert!(
        took >= Duration::from_millis(4800) && took < Duration::from_secs(9),
        "parked connection closed after {took:?} (keep-alive 5 s)"
    );
    // Requests 2 s apart for 8 s: each pause parks it, each request moves its deadline.
    let mut busy = connect(listen);
    for i in 0..4 {
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(get_on(&mut busy).unwrap(), 200, "request {i} after a pause");
    }
    // Clients that leave while parked: their sockets are closed at once, not at the timeout.
    let base = open_fds(run.pid());
    let mut many: Vec<TcpStream> = (0..50).map(|_| connect(listen)).collect();
    for s in &mut many {
        assert_eq!(get_on(s).unwrap(), 200);
    }
    std::thread::sleep(Duration::from_millis(200)); // parked by now
    assert!(open_fds(run.pid()) >= base + 50);
    drop(many);
    let deadline = Instant::now() + Duration::from_millis(1500);
    // Wait for all of them (the lot may close them over more than one turn on a loaded
    // machine), not only the first.
    while open_fds(run.pid()) >= base + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        open_fds(run.pid()) < base + 10,
        "closed parked connections still held: {} descriptors, {base} before",
        open_fds(run.pid())
    );
    drop(busy);
    assert!(run.status_ok());
}

/// Nanoseconds of CPU each of the process's threads named `name*` has run (the first
/// field of the thread's `schedstat`).
fn cpu_ns_of(pid: u32, name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with(name) {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((comm.trim().to_string(), ns));
    }
    out.sort();
    out
}

/// With more than one CPU, `lb run` serves client connections on one L7 worker thread per
/// CPU (`l7/workers.rs`), each accepting on its own socket (SO_REUSEPORT: the kernel
/// spreads connections by their addresses): every worker thread exists, and each one's CPU
/// time over an exchange on 16 connections per worker opened one after the other is a real
/// share of the workers' total (one that served nothing would have none).
#[test]
fn connections_are_served_by_every_worker_thread() {
    if !root_or_skip("lb run") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: one CPU, lb run starts no workers");
        return;
    }
    let b = backend();
    let listen = free_port();
    let run = Run::start(|dir| config(dir, listen, b.port, ""));
    wait_serving(listen, &run);
    let before = cpu_ns_of(run.pid(), "lb-l7-");
    assert_eq!(before.len(), cpus, "worker threads: {before:?}");
    for i in 0..16 * cpus {
        let mut s = connect(listen);
        for r in 0..20 {
            assert_eq!(get_on(&mut s).unwrap(), 200, "connection {i}, request {r}");
        }
    }
    let after = cpu_ns_of(run.pid(), "lb-l7-");
    let used: Vec<u64> = before.iter().zip(&after).map(|(a, b)| b.1 - a.1).collect();
    let total: u64 = used.iter().sum();
    eprintln!("CPU ns per worker over the exchange: {used:?}");
    for (ns, (name, _)) in used.iter().zip(&after) {
        assert!(
            *ns * 100 >= total * 10,
            "{name} ran {ns} ns of the workers' {total} ns: it served almost nothing"
        );
    }
    assert!(run.status_ok());
}
