//! The demo (`cargo xtask demo`): a client, the balancer and three backends in network
//! namespaces on one bridge; `lb run` with the embedded default configuration puts a VIP in
//! front of the backends; the client opens connections to the VIP and each backend answers
//! with its name. A second act puts two backends behind a router, reached by GUE
//! encapsulation (`lb decap` on each). Everything created is removed at the end, also on
//! Ctrl-C.

use anyhow::{bail, Result};
use lb_tests::{
    lbrun::{field, tcp_banner, udp_banner, wait_for, Agent},
    netns::Topology,
};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

const CONFIG: &str = include_str!("demo.toml");
const ROUTED_CONFIG: &str = include_str!("demo-routed.toml");

fn main() -> Result<()> {
    anyhow::ensure!(
        lb_tests::is_root(),
        "the demo creates network namespaces: run as root"
    );
    lb_tests::interrupt::install();
    // Guards drop in reverse order: agent (lb down), backends, then namespaces.
    let result = demo().and_then(|()| routed());
    if let (Err(_), Ok(secs)) = (&result, std::env::var("LB_DEMO_HOLD")) {
        // Debugging aid: keep everything up for inspection before cleaning up.
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
    }
    if let Err(e) = &result {
        eprintln!("demo stopped: {e}");
    }
    println!("\ncleaned up: namespaces, links, pinned objects and processes removed");
    result
}

fn demo() -> Result<()> {
    println!("== building the topology: client, balancer, 3 backends on one bridge");
    let t = Topology::new(3)?;
    println!(
        "   client {}  balancer {}  backends {}, {}, {}  VIP {}",
        t.client_ip(),
        t.balancer_ip(),
        t.backend_ip(0),
        t.backend_ip(1),
        t.backend_ip(2),
        t.vip()
    );
    println!(
        "   IPv6: client {}  backends {}, {}, {}  VIP {}",
        t.client_ip6(),
        t.backend_ip6(0),
        t.backend_ip6(1),
        t.backend_ip6(2),
        t.vip6()
    );
    let backend_bin = std::env::current_exe()?.with_file_name("lb-backend");
    let vip = t.vip().to_string();
    let vip6 = t.vip6().to_string();
    let _backends = (0..3)
        .map(|i| {
            t.backends[i].spawn(&[
                backend_bin.to_str().unwrap(),
                &format!("backend-{i}"),
                "80",
                "53",
                &vip,
                &vip6,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    lb_tests::interrupt::check()?;
    let cfg = CONFIG
        .replace("{IFACE}", &t.iface)
        .replace("{VIP}", &vip)
        .replace("{B0}", &t.backend_ip(0).to_string())
        .replace("{B1}", &t.backend_ip(1).to_string())
        .replace("{B2}", &t.backend_ip(2).to_string())
        .replace("{VIP6}", &vip6)
        .replace("{B0_6}", &t.backend_ip6(0).to_string())
        .replace("{B1_6}", &t.backend_ip6(1).to_string())
        .replace("{B2_6}", &t.backend_ip6(2).to_string());
    println!(
        "== starting `lb run` in the balancer namespace (XDP on {})",
        t.iface
    );
    let agent = Agent::start(&t.balancer, &cfg)?;
    eprintln!(
        "   (namespaces {}-*, pins {})",
        t.prefix,
        agent.pin_dir.display()
    );
    let to = SocketAddr::new(t.vip().into(), 80);
    let ready = t.client.run_in(move || {
        wait_for(Duration::from_secs(20), || {
            tcp_banner(to, Duration::from_millis(500))
        })
    })?;
    if ready.is_err() {
        bail!(
            "the VIP did not answer within 20 s; lb log:\n{}",
            agent.log()
        );
    }
    lb_tests::interrupt::check()?;
    for (proto, port) in [("TCP", 80u16), ("UDP", 53)] {
        println!(
            "== 24 {proto} connections from the client to {}:{port}",
            t.vip()
        );
        let to = SocketAddr::new(t.vip().into(), port);
        let banners = t.client.run_in(move || -> Result<Vec<String>> {
            (0..24)
                .map(|_| {
                    if port == 53 {
                        // UDP may lose a datagram: ask again, at most 3 times.
                        let mut r = udp_banner(to, Duration::from_secs(1));
                        for _ in 0..2 {
                            if r.is_ok() {
                                break;
                            }
                            r = udp_banner(to, Duration::from_secs(1));
                        }
                        r
                    } else {
                        tcp_banner(to, Duration::from_secs(2))
                    }
                })
                .collect()
        })??;
        show_spread(proto, &banners);
        lb_tests::interrupt::check()?;
    }
    println!("== 12 TCP connections to the IPv6 VIP [{}]:80", t.vip6());
    let to6 = SocketAddr::new(t.vip6().into(), 80);
    let banners = t.client.run_in(move || -> Result<Vec<String>> {
        (0..12)
            .map(|_| tcp_banner(to6, Duration::from_secs(2)))
            .collect()
    })??;
    show_spread("TCP6", &banners);
    lb_tests::interrupt::check()?;
    let sock = agent.dir.join("admin.sock");
    let lb = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new(lb_tests::lb_binary())
            .args(args)
            .arg("--socket")
            .arg(&sock)
            .output()?;
        print!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    println!("== the agent's view (lb list backends)");
    lb(&["list", "backends"])?;
    lb_tests::interrupt::check()?;
    println!("== lb drain web backend-0: no new flows for it, open ones may finish");
    lb(&["drain", "web", "backend-0"])?;
    let to = SocketAddr::new(t.vip().into(), 80);
    let banners = t.client.run_in(move || -> Result<Vec<String>> {
        (0..12)
            .map(|_| tcp_banner(to, Duration::from_secs(2)))
            .collect()
    })??;
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for b in &banners {
        *per.entry(field(b, "name").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!("   12 new TCP connections after the drain: {per:?}");
    lb(&["undrain", "web", "backend-0"])?;
    lb_tests::interrupt::check()?;
    println!("== dataplane counters (lb stats, read from the pinned maps)");
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["stats", "--pin-path", agent.pin_dir.to_str().unwrap()])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

/// The routed act: backends on another subnet behind a router, reached by GUE.
fn routed() -> Result<()> {
    use lb_tests::{netns::Family, routed::Decap, routed::Routed};
    println!(
        "\n== routed backends: client, balancer and 2 backends on three subnets joined by a router"
    );
    let t = Routed::new(2)?;
    let vip = t.vip(Family::V4);
    let (b0, b1) = (t.backend_ip(Family::V4, 0), t.backend_ip(Family::V4, 1));
    println!(
        "   client {}  balancer {}  backends {b0}, {b1} (behind the router)  VIP {vip}",
        t.client_ip(Family::V4),
        t.balancer_ip(Family::V4)
    );
    let backend_bin = std::env::current_exe()?.with_file_name("lb-backend");
    let _backends = (0..2)
        .map(|i| {
            t.backends[i].spawn(&[
                backend_bin.to_str().unwrap(),
                &format!("routed-{i}"),
                "80",
                "53",
                &vip.to_string(),
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    println!("== lb decap --interface eth0 on each backend (strips IPIP/GUE addressed to it)");
    let _decap = Decap::attach(&t, lb_common::encap::GUE_DEFAULT_PORT)?;
    let cfg = ROUTED_CONFIG
        .replace("{VIP}", &vip.to_string())
        .replace("{B0}", &b0.to_string())
        .replace("{B1}", &b1.to_string());
    println!("== a second `lb run`, forwarding = \"GUE\"");
    let agent = Agent::start(&t.balancer, &cfg)?;
    let to = SocketAddr::new(vip, 80);
    let ready = t.client.run_in(move || {
        wait_for(Duration::from_secs(20), || {
            tcp_banner(to, Duration::from_millis(500))
        })
    })?;
    if ready.is_err() {
        bail!(
            "the routed VIP did not answer within 20 s; lb log:\n{}",
            agent.log()
        );
    }
    lb_tests::interrupt::check()?;
    println!("== 12 TCP connections from the client to {vip}:80, through the router");
    let banners = t.client.run_in(move || -> Result<Vec<String>> {
        (0..12)
            .map(|_| tcp_banner(to, Duration::from_secs(2)))
            .collect()
    })??;
    show_spread("TCP", &banners);
    println!("== lb describe service routed-web");
    let out = std::process::Command::new(lb_tests::lb_binary())
        .args(["describe", "service", "routed-web", "--socket"])
        .arg(agent.dir.join("admin.sock"))
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    drop(agent);
    Ok(())
}

/// Prints which backend answered each exchange (and the client address it saw), then the
/// spread over backends.
fn show_spread(proto: &str, banners: &[String]) {
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for (i, b) in banners.iter().enumerate() {
        let name = field(b, "name").unwrap_or("?");
        println!(
            "   {proto} #{i:<2} answered by {name:<10} (it saw client {})",
            field(b, "client").unwrap_or("?")
        );
        *per.entry(name.to_string()).or_default() += 1;
    }
    println!("   spread: {per:?}");
}
