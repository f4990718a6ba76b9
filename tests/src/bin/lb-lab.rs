//! The prime-number lab (`cargo xtask lab`, Google Cloud's GSP041): three backends answer
//! `GET /<n>` with True/False, a fourth is broken (False to everything, `/2` included), an
//! HTTP health check `GET /2` expecting "True" guards them, a VIP on TCP port 80 fronts them
//! through `lb run`, and the frontend renders 1..100 with primes marked by asking the VIP.
//! The lab shows the broken backend failing its check and leaving rotation, prints the
//! 10x10 matrix, then serves the frontend on the host's 127.0.0.1:<port> (default 8080,
//! `LB_LAB_PORT`) for a browser until Ctrl-C (or `LB_LAB_SERVE_SECS`). Everything created is
//! removed at the end.

use anyhow::{bail, Context, Result};
use lb_tests::{
    lbrun::{agent_sections, wait_for, Agent},
    netns::{Ns, Topology},
};
use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab");
const BROKEN: usize = 3;
const FRONTEND_PORT: u16 = 8080;

fn main() -> Result<()> {
    anyhow::ensure!(
        lb_tests::is_root(),
        "the lab creates network namespaces: run as root"
    );
    lb_tests::interrupt::install();
    let result = lab();
    if let Err(e) = &result {
        eprintln!("lab stopped: {e}");
    }
    println!("\ncleaned up: namespaces, links, pinned objects and processes removed");
    result
}

fn config(t: &Topology) -> String {
    agent_sections(t) + &lb_tests::lbrun::gsp041_sections(t, 4)
}

fn lb(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(lb_tests::lb_binary())
        .arg("--socket")
        .arg(agent.dir.join("admin.sock"))
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints each backend's health as it changes until the broken one is out and the others
/// are in (deadline 30 s).
fn watch_health(agent: &Agent) -> Result<()> {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let started = Instant::now();
    loop {
        lb_tests::interrupt::check()?;
        let text = lb(agent, &["-o", "json", "describe", "service", "primes"])?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let mut now = BTreeMap::new();
        for b in v["backends"].as_array().into_iter().flatten() {
            let name = b["name"].as_str().unwrap_or("?").to_string();
            let state = format!(
                "{} ({})",
                b["health"].as_str().unwrap_or("?"),
                if b["in_table"] == true {
                    "in rotation"
                } else {
                    "out of rotation"
                }
            );
            if last.get(&name) != Some(&state) {
                println!(
                    "   {:>5.1} s  {name:<9} {state}",
                    started.elapsed().as_secs_f64()
                );
            }
            now.insert(name, state);
        }
        let done = (0..4).all(|i| {
            let want = if i == BROKEN {
                "unhealthy (out"
            } else {
                "healthy (in"
            };
            now.get(&format!("primes-{i}"))
                .is_some_and(|s| s.starts_with(want))
        });
        last = now;
        if done {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("health did not settle in 30 s; lb log:\n{}", agent.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_get(to: SocketAddr, path: &str) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The frontend's table as text: primes in brackets.
fn matrix(page: &str) -> Result<(String, usize)> {
    let mut out = String::new();
    let mut primes = 0;
    for (i, cell) in page.split("<td bgcolor=\"").skip(1).enumerate() {
        let (color, rest) = cell.split_once("\">").context("cell")?;
        let n = rest.split('<').next().unwrap_or("?");
        if color == "green" {
            primes += 1;
            out += &format!("[{n:>3}]");
        } else {
            out += &format!(" {n:>3} ");
        }
        if i % 10 == 9 {
            out.push('\n');
        }
    }
    Ok((out, primes))
}

/// Copies bytes both ways between a host-side connection and one made in `ns`.
fn forward(ns: &Ns, client: TcpStream) {
    let ns = ns.clone();
    std::thread::spawn(move || {
        let to: SocketAddr = ([127, 0, 0, 1], FRONTEND_PORT).into();
        let Ok(Ok(up)) = ns.run_in(move || TcpStream::connect_timeout(&to, Duration::from_secs(2)))
        else {
            return;
        };
        let (Ok(mut up_r), Ok(mut cl_w)) = (up.try_clone(), client.try_clone()) else {
            return;
        };
        let (mut cl_r, mut up_w) = (client, up);
        let back = std::thread::spawn(move || {
            let _ignored = std::io::copy(&mut up_r, &mut cl_w);
            let _ignored = cl_w.shutdown(std::net::Shutdown::Write);
        });
        let _ignored = std::io::copy(&mut cl_r, &mut up_w);
        let _ignored = up_w.shutdown(std::net::Shutdown::Write);
        let _ignored = back.join();
    });
}

fn lab() -> Result<()> {
    let port: u16 = std::env::var("LB_LAB_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let serve_secs: Option<u64> = std::env::var("LB_LAB_SERVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    // Bound first: a busy port is found out before anything is built.
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("127.0.0.1:{port} is busy: set LB_LAB_PORT to another port"))?;
    println!("== topology: a client, the balancer, backends primes-0..3 on one bridge");
    let t = Topology::new(4)?;
    let backend = format!("{LAB}/primes_backend.py");
    let _backends = (0..4)
        .map(|i| {
            let name = format!("primes-{i}");
            let mut args = vec!["python3", &backend, &name, "80"];
            if i == BROKEN {
                args.push("broken");
            }
            t.backends[i].spawn(&args)
        })
        .collect::<Result<Vec<_>>>()?;
    println!(
        "   VIP {}:80 → primes-0..3 ({}..{}); primes-{BROKEN} is broken: it answers False to everything",
        t.vip(),
        t.backend_ip(0),
        t.backend_ip(3)
    );
    let agent = Agent::start(&t.balancer, &config(&t))?;
    println!("== `lb run`: health check GET /2 expecting \"True\", every 1 s, 2 failures to leave");
    watch_health(&agent)?;
    println!("== the agent's view (lb list backends)");
    print!("{}", lb(&agent, &["list", "backends"])?);
    lb_tests::interrupt::check()?;

    let frontend = format!("{LAB}/primes_frontend.py");
    let _front = t.client.spawn(&[
        "python3",
        &frontend,
        &t.vip().to_string(),
        &FRONTEND_PORT.to_string(),
    ])?;
    let page = t.client.run_in(|| {
        let to: SocketAddr = ([127, 0, 0, 1], FRONTEND_PORT).into();
        wait_for(Duration::from_secs(30), || http_get(to, "/1"))
    })??;
    let (text, primes) = matrix(&page)?;
    println!("== the frontend's 10x10 table of 1..100 through the VIP, primes in brackets");
    print!("{text}");
    println!("   {primes} primes (1..100 holds 25)");
    lb_tests::interrupt::check()?;

    println!("== open http://127.0.0.1:{port}/1 in a browser (any /<start>); Ctrl-C to stop");
    listener.set_nonblocking(true)?;
    let started = Instant::now();
    while !lb_tests::interrupt::stopping()
        && serve_secs.is_none_or(|s| started.elapsed().as_secs() < s)
    {
        match listener.accept() {
            Ok((c, _)) => {
                c.set_nonblocking(false)?;
                forward(&t.client, c);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
