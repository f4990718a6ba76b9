//! The high-availability demo (`cargo xtask demo-ha`): a client behind a router running BIRD
//! with ECMP, two balancers each running `lb run` and BIRD (eBGP + BFD to the router, the
//! shipped packaging/bird/bird.conf), three backends (wiring in `lb_tests::ha`). It shows the
//! router's two-path route, flows spread over both balancers and the three backends,
//! long-lived connections while one balancer's agent is killed and its link cut, and
//! `lb node drain`. Everything is removed at the end, also on Ctrl-C.

use anyhow::{bail, Context, Result};
use lb_tests::{
    ha::{self, longest_gap, probe, Ha, Talker},
    interrupt,
    lbrun::{wait_for, Agent},
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

/// Client ports of the spread (above the ephemeral range).
const FIRST_PORT: u16 = 61000;
const FLOWS: u16 = 300;

fn main() -> Result<()> {
    anyhow::ensure!(
        lb_tests::is_root(),
        "the demo creates network namespaces: run as root"
    );
    interrupt::install();
    let result = demo();
    if let Err(e) = &result {
        eprintln!("demo stopped: {e:#}");
    }
    println!("\ncleaned up: namespaces, links, BIRD and lb processes, pinned objects removed");
    result
}

/// Balancer i's configuration: the web VIP over the three backends, in `order`.
fn config(ha: &Ha, i: usize, order: &[usize]) -> String {
    let mut c = format!(
        "[dataplane]\ninterfaces = [\"eth0\"]\npin_path = \"{{PIN}}\"\nmax_services = 4\n\n\
         [admin]\nsocket = \"{{SOCK}}\"\n\n{}\
         [health_checks.tcp]\nprotocol = \"TCP\"\nport = 80\ncheck_interval_sec = 1\ntimeout_sec = 1\n\n\
         [backend_services.web]\nprotocol = \"TCP\"\nhealth_check = \"tcp\"\n\n\
         [forwarding_rules.web]\nip_address = \"{}\"\nports = [80]\nbackend_service = \"web\"\n",
        ha.announce_section(i),
        ha.vip(0)
    );
    for b in order {
        c += &format!(
            "\n[[backend_services.web.backends]]\nname = \"backend-{b}\"\naddress = \"{}\"\n",
            ha.backend_ip(*b)
        );
    }
    c
}

fn lb(agent: &Agent, args: &[&str]) -> Result<String> {
    let sock = agent.dir.join("admin.sock");
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["--socket", sock.to_str().unwrap()])
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!("lb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn demo() -> Result<()> {
    println!("== building: client, router (BIRD, ECMP), 2 balancers (lb + BIRD), 3 backends");
    let mut ha = Ha::new(2, 3)?;
    let vip = ha.vip(0);
    let bal: Vec<Ipv4Addr> = (0..2).map(|i| ha.balancer_ip(i)).collect();
    println!(
        "   client {}  router {}  balancers {} {}  backends {} {} {}  VIP {vip}",
        ha.client_ip(),
        ha.router_ip(),
        bal[0],
        bal[1],
        ha.backend_ip(0),
        ha.backend_ip(1),
        ha.backend_ip(2)
    );
    let backend_bin = std::env::current_exe()?.with_file_name("lb-backend");
    let _backends = (0..3)
        .map(|i| {
            ha.backends[i].spawn(&[
                backend_bin.to_str().unwrap(),
                &format!("backend-{i}"),
                "80",
                "53",
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    for i in 0..2 {
        ha.empty_include(i)?;
        ha.start_balancer_bird(i)?;
    }
    interrupt::check()?;
    println!("== starting `lb run` on both balancers (backends listed in different orders)");
    let mut a0 = Agent::start(&ha.balancers[0], &config(&ha, 0, &[0, 1, 2]))?;
    let a1 = Agent::start(&ha.balancers[1], &config(&ha, 1, &[2, 0, 1]))?;
    let t = ha
        .wait_next_hops(vip, &bal, Duration::from_secs(30))
        .with_context(|| format!("lb log:\n{}", a0.log()))?;
    println!("   BGP up, the router's ECMP route after {t:.1?}:");
    print!(
        "{}",
        ha.router
            .exec(&["ip", "route", "show", &format!("{vip}/32")])?
    );
    println!("   balancer 0 `lb status` (announcements):");
    for l in lb(&a0, &["status"])?
        .lines()
        .filter(|l| l.contains("announce") || l.starts_with("  "))
    {
        println!("   {l}");
    }
    interrupt::check()?;

    println!("== {FLOWS} connections from different client ports");
    let to = SocketAddr::new(vip.into(), 80);
    let names = ha
        .client
        .run_in(move || -> Result<BTreeMap<u16, String>> {
            let mut out = BTreeMap::new();
            for p in FIRST_PORT..FIRST_PORT + FLOWS {
                out.insert(p, wait_for(Duration::from_secs(5), || probe(to, p))?);
            }
            Ok(out)
        })??;
    let in_range = |v: Vec<u16>| v.into_iter().filter(|p| names.contains_key(p)).count();
    let (n0, n1) = (
        in_range(ha::carried(&a0, vip)?),
        in_range(ha::carried(&a1, vip)?),
    );
    println!("   balancer 0 carried {n0}, balancer 1 carried {n1}");
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for n in names.values() {
        *per.entry(n.as_str()).or_default() += 1;
    }
    for (b, n) in &per {
        println!("   {b}: {n} flows");
    }
    interrupt::check()?;

    println!("== 8 long-lived connections exchanging a line every 100 ms");
    let talkers: Vec<Talker> = (0..8)
        .map(|_| Talker::open(&ha.client, to))
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_millis(1500));
    let on0 = ha::carried(&a0, vip)?;
    for t in &talkers {
        let via = if on0.contains(&t.local_port) { 0 } else { 1 };
        println!(
            "   client port {} via balancer {via} on {}",
            t.local_port, t.backend
        );
    }
    println!("== SIGKILL of balancer 0's agent (the dataplane and BIRD keep going), then its link is cut");
    a0.kill();
    std::thread::sleep(Duration::from_millis(500));
    ha.cut_link(0)?;
    let cut = Instant::now();
    let t = ha.wait_next_hops(vip, &bal[1..], Duration::from_secs(10))?;
    println!("   the router dropped balancer 0 after {t:.1?} (BFD: 3 x 100 ms)");
    std::thread::sleep(Duration::from_secs(3));
    for tk in talkers {
        let (port, backend) = (tk.local_port, tk.backend.clone());
        match tk.finish() {
            Ok(times) => println!(
                "   client port {port} on {backend}: {} exchanges after the cut, longest gap {:.0?}, no reset",
                times.iter().filter(|t| **t > cut).count(),
                longest_gap(&times)
            ),
            Err(e) => println!("   client port {port} on {backend}: FAILED: {e}"),
        }
    }
    interrupt::check()?;

    println!("== `lb node drain` on balancer 1 withdraws its announcement (the last one)");
    println!("   {}", lb(&a1, &["node", "drain"])?.trim());
    let t = ha.wait_next_hops(vip, &[], Duration::from_secs(5))?;
    println!("   the router has no route to {vip} after {t:.1?}; `lb node undrain` brings it back");
    lb(&a1, &["node", "undrain"])?;
    ha.wait_next_hops(vip, &bal[1..], Duration::from_secs(5))?;
    drop(a1);
    Ok(())
}
