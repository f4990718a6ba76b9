//! Routed backends through `lb run`: the backends sit on another subnet behind a router
//! namespace (tests/src/routed.rs), so the balancer reaches them only by IPIP or GUE; each
//! backend runs `lb decap`. Checked for both methods: spread over ≥ 300 TCP and UDP flows,
//! the client's address seen by the backends, replies straight from the backends, the
//! balancer host's own traffic untouched, an oversized packet answered with ICMP and the
//! connection working once the client's path MTU shrinks, a long-lived connection surviving
//! the removal of its backend, and `lb describe service` naming the method and addresses.

use anyhow::Result;
use lb_tests::{
    lbrun::{banners, field, tcp_banner, wait_answering, wait_for, Agent, Conversation},
    netns::{sh, Family, ProcGuard},
    root_or_skip,
    routed::{Decap, Routed},
};
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lb-backend");
const GUE_PORT: u16 = 7080;

fn config(t: &Routed, fam: Family, method: &str, backends: &[usize]) -> String {
    let gue = if method == "GUE" {
        format!("gue_port = {GUE_PORT}\n")
    } else {
        String::new()
    };
    let mut c = format!(
        r#"[dataplane]
interfaces = ["eth0"]
pin_path = "{{PIN}}"
max_services = 4

[admin]
socket = "{{SOCK}}"

[forwarding_rules.web]
ip_address = "{vip}"
ip_protocol = "TCP"
ports = [80]
backend_service = "tcp-svc"

[forwarding_rules.dns]
ip_address = "{vip}"
ip_protocol = "UDP"
ports = [53]
backend_service = "udp-svc"

[health_checks.tcp80]
protocol = "TCP"
port = 80
check_interval_sec = 1
timeout_sec = 1

[backend_services.tcp-svc]
protocol = "TCP"
health_check = "tcp80"
forwarding = "{method}"
{gue}
[backend_services.udp-svc]
protocol = "UDP"
forwarding = "{method}"
{gue}"#,
        vip = t.vip(fam)
    );
    for svc in ["tcp-svc", "udp-svc"] {
        for i in backends {
            c += &format!(
                "[[backend_services.{svc}.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\n",
                t.backend_ip(fam, *i)
            );
        }
    }
    c
}

fn lb(args: &[&str]) -> Result<String> {
    let bin = lb_tests::lb_binary();
    let mut v = vec![bin.to_str().unwrap()];
    v.extend_from_slice(args);
    sh(&v)
}

fn flows(t: &Routed, fam: Family, n: usize, udp: bool) -> Result<Vec<String>> {
    banners(
        &t.client,
        SocketAddr::new(t.vip(fam), if udp { 53 } else { 80 }),
        n,
        udp,
    )
}

/// Counts packets from the VIP at the router by where they came from: the backends' bridge
/// (direct server return) or the balancer's link.
fn install_reply_counter(t: &Routed, fam: Family) -> Result<()> {
    let (vip, nft) = (t.vip(fam), fam.nft());
    let rules = format!(
        "table {nft} lbtest {{\n chain replies {{\n  type filter hook forward priority 0;\n  {nft} saddr {vip} iifname \"br0\" counter\n  {nft} saddr {vip} iifname \"rl\" counter\n }}\n}}\n"
    );
    t.router.nft_load(&rules)
}

fn read_reply_counter(t: &Routed, fam: Family) -> Result<(u64, u64)> {
    let c = t.router.nft_counters(fam.nft(), "lbtest", "replies")?;
    anyhow::ensure!(c.len() == 2, "unexpected nft counters: {c:?}");
    Ok((c[0], c[1]))
}

/// Fields drop in this order: the agent and `lb decap` go while the namespaces they live
/// in still exist (their pins are removed), the topology last.
struct Running {
    agent: Agent,
    _decap: Decap,
    _backends: Vec<ProcGuard>,
    t: Routed,
}

fn running(fam: Family, method: &str) -> Running {
    let t = Routed::new(3).expect("routed topology");
    let (vip, vip6) = (t.vip(Family::V4).to_string(), t.vip(Family::V6).to_string());
    let backends = (0..3)
        .map(|i| {
            t.backends[i].spawn(&[
                BACKEND_BIN,
                &format!("backend-{i}"),
                "80",
                "53",
                &vip,
                &vip6,
            ])
        })
        .collect::<Result<Vec<_>>>()
        .unwrap();
    let decap = Decap::attach(&t, GUE_PORT).expect("lb decap on the backends");
    let agent = Agent::start(&t.balancer, &config(&t, fam, method, &[0, 1, 2])).unwrap();
    if let Err(e) = wait_answering(&t.client, SocketAddr::new(t.vip(fam), 80), &agent) {
        panic!("{method}: {e}");
    }
    Running {
        agent,
        _decap: decap,
        _backends: backends,
        t,
    }
}

#[test]
fn ipip_reaches_routed_backends() {
    if root_or_skip("ipip_reaches_routed_backends") {
        routed_backends(Family::V4, "IPIP");
    }
}

#[test]
fn gue_reaches_routed_backends() {
    if root_or_skip("gue_reaches_routed_backends") {
        routed_backends(Family::V4, "GUE");
    }
}

#[test]
fn ipip_reaches_routed_backends_over_ipv6() {
    if root_or_skip("ipip_reaches_routed_backends_over_ipv6") {
        routed_backends(Family::V6, "IPIP");
    }
}

#[test]
fn gue_reaches_routed_backends_over_ipv6() {
    if root_or_skip("gue_reaches_routed_backends_over_ipv6") {
        routed_backends(Family::V6, "GUE");
    }
}

#[test]
fn routed_forwarding_waits_for_ip_forwarding_and_names_the_sysctl() {
    if !root_or_skip("routed_forwarding_waits_for_ip_forwarding_and_names_the_sysctl") {
        return;
    }
    let t = Routed::new(1).expect("routed topology");
    t.balancer
        .exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=0"])
        .unwrap();
    let mut agent = Agent::start(&t.balancer, &config(&t, Family::V4, "IPIP", &[0])).unwrap();
    let hint = "sysctl -w net.ipv4.conf.eth0.forwarding=1";
    let said = wait_for(Duration::from_secs(10), || {
        anyhow::ensure!(agent.log().contains(hint), "not yet");
        Ok(())
    });
    assert!(said.is_ok(), "no hint in the log:\n{}", agent.log());
    // Nothing was programmed; once forwarding is on, the next reconcile programs the VIP.
    let pins = agent.pin_dir.to_str().unwrap().to_string();
    let vip = format!("{}:80/tcp", t.vip(Family::V4));
    assert!(!lb(&["stats", "--pin-path", &pins]).unwrap().contains(&vip));
    t.balancer
        .exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"])
        .unwrap();
    let programmed = wait_for(Duration::from_secs(10), || {
        anyhow::ensure!(
            lb(&["stats", "--pin-path", &pins])?.contains(&vip),
            "not yet"
        );
        Ok(())
    });
    assert!(
        programmed.is_ok(),
        "not programmed after forwarding was enabled:\n{}",
        agent.log()
    );
    agent.kill();
}

fn routed_backends(fam: Family, method: &str) {
    let r = running(fam, method);
    let (t, agent) = (&r.t, &r.agent);
    install_reply_counter(t, fam).unwrap();
    let client = Family::host_prefix(t.client_ip(fam));
    for udp in [false, true] {
        let banners = flows(t, fam, 300, udp)
            .unwrap_or_else(|e| panic!("{method}: {e}; agent log:\n{}", agent.log()));
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for b in &banners {
            *per.entry(field(b, "name").unwrap().to_string())
                .or_default() += 1;
            let seen = field(b, "client").unwrap();
            assert!(
                seen.starts_with(&client),
                "backend saw {seen}, not the client"
            );
            let local = field(b, "local").unwrap();
            assert!(
                local.starts_with(&Family::host_prefix(t.vip(fam))),
                "backend saw {local}"
            );
        }
        println!(
            "{method} {} flows: {per:?}",
            if udp { "UDP" } else { "TCP" }
        );
        assert_eq!(per.len(), 3, "not all backends reached: {per:?}");
        for (name, n) in &per {
            let share = *n as f64 / banners.len() as f64;
            assert!(
                (0.25..=0.42).contains(&share),
                "{name} got {:.1}%",
                share * 100.0
            );
        }
    }
    let (from_backends, via_balancer) = read_reply_counter(t, fam).unwrap();
    println!("{method} replies from the VIP at the router: {from_backends} from the backends, {via_balancer} via the balancer");
    assert!(from_backends >= 600, "only {from_backends} replies counted");
    assert_eq!(via_balancer, 0, "replies went through the balancer");

    // The balancer host's own traffic is untouched: it reaches a backend's own address.
    let direct = SocketAddr::new(t.backend_ip(fam, 0), 80);
    let b = t
        .balancer
        .run_in(move || tcp_banner(direct, Duration::from_secs(2)))
        .unwrap()
        .unwrap();
    assert_eq!(field(&b, "name"), Some("backend-0"));
    assert!(
        field(&b, "client")
            .unwrap()
            .starts_with(&Family::host_prefix(t.balancer_ip(fam))),
        "{b}"
    );

    // The dataplane counted the encapsulated packets; describe names method and addresses.
    let pins = agent.pin_dir.to_str().unwrap();
    let stats = lb(&["stats", "--pin-path", pins]).unwrap();
    let tx = if method == "GUE" { "tx_gue" } else { "tx_ipip" };
    assert!(stats.contains(tx), "lb stats lacks {tx}:\n{stats}");
    let sock = agent.dir.join("admin.sock");
    let sock = sock.to_str().unwrap();
    let described = lb(&["--socket", sock, "describe", "service", "tcp-svc"]).unwrap();
    assert!(
        described.contains(&format!("forwarding {method}")),
        "{described}"
    );
    let outer = format!("{} -> {}", t.balancer_ip(fam), t.backend_ip(fam, 0));
    assert!(described.contains(&outer), "{described}");
    // `lb explain` ends with the encapsulation and its outer addresses.
    let client = t.client_ip(fam).to_string();
    let vip = t.vip(fam).to_string();
    let explained = lb(&[
        "explain",
        "--pin-path",
        pins,
        "tcp",
        &client,
        "40000",
        &vip,
        "80",
    ])
    .unwrap();
    let outer = format!("encapsulated in {method}");
    assert!(
        explained.contains(&outer) && explained.contains(&format!("outer {}", t.balancer_ip(fam))),
        "{explained}"
    );

    // An oversized segment: answered with ICMP by the balancer, the client's path MTU
    // shrinks, the retransmission fits, the echo comes back.
    let conv = Conversation::open_from(&t.client, SocketAddr::new(t.vip(fam), 80)).unwrap();
    let pinned = conv.backend.clone();
    let big = "x".repeat(6000);
    assert_eq!(
        conv.exchange(&big),
        Ok(format!("{pinned} {big}")),
        "a large write through {method}; log:\n{}",
        agent.log()
    );
    let too_big = reason(
        &lb(&["stats", "--pin-path", pins]).unwrap(),
        "tx_icmp_too_big",
    );
    assert!(too_big >= 1, "no ICMP too-big answer counted");

    // The long-lived connection survives its backend's removal; new flows avoid it.
    let idx: usize = pinned.trim_start_matches("backend-").parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|i| *i != idx).collect();
    agent.reload(&config(t, fam, method, &rest)).unwrap();
    let avoided = wait_for(Duration::from_secs(10), || {
        let b = flows(t, fam, 30, false)?;
        anyhow::ensure!(
            b.iter().all(|b| field(b, "name") != Some(pinned.as_str())),
            "still reaching {pinned}"
        );
        Ok(())
    });
    assert!(
        avoided.is_ok(),
        "new connections still reach the removed backend; log:\n{}",
        agent.log()
    );
    for i in 0..10 {
        assert_eq!(
            conv.exchange(&format!("ping{i}")),
            Ok(format!("{pinned} ping{i}")),
            "exchange {i} after removal; log:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A verdict reason's count in `lb stats` (a `name  packets` row).
fn reason(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(name)).then(|| w.next()?.parse().ok())?
        })
        .unwrap_or(0)
}
