//! Session affinity, PER_SESSION tracking, connection persistence on unhealthy backends and
//! `drop_traffic_if_unhealthy` over IPv4 and over IPv6, from configuration to dataplane:
//! `lb run` in a namespace topology (client, balancer, three backends), the client speaking
//! from several addresses of its own. Each rule is a port of one of two IPv6 VIPs; every service has
//! the same three backends, so services share one Maglev table and differences between
//! them come from the fields their affinity hashes.

use anyhow::{Context, Result};
use lb_tests::{
    lbrun::{agent_sections, field, udp_banner_from, wait_for, Agent},
    netns::{Family as Fam, ProcGuard, Topology},
    root_or_skip,
};
use socket2::{Domain, Socket, Type};
use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lb-backend");
/// Client addresses used besides the client's own.
const CLIENTS: u16 = 12;
/// Ports served by every backend (one lb-backend per port, TCP and UDP).
const PORTS: [u16; 8] = [80, 81, 82, 83, 84, 86, 87, 88];

/// What these tests need of a family beyond the topology's own addresses: a second VIP,
/// extra client addresses, and how `ip` adds them.
trait Extra {
    fn vip_b(self, t: &Topology) -> IpAddr;
    fn client(self, t: &Topology, i: u16) -> IpAddr;
    fn add_addr(self, ns: &lb_tests::netns::Ns, addr: IpAddr, len: u8, dev: &str) -> Result<()>;
    fn host_len(self) -> u8;
    fn subnet_len(self) -> u8;
}

impl Extra for Fam {
    /// The second VIP (.101, or ::101 of the topology's prefix).
    fn vip_b(self, t: &Topology) -> IpAddr {
        match self {
            Fam::V4 => Ipv4Addr::new(10, t.net, 0, 101).into(),
            Fam::V6 => {
                let mut s = t.vip6().segments();
                s[7] = 0x101;
                Ipv6Addr::from(s).into()
            }
        }
    }

    /// The client's `i`th extra address.
    fn client(self, t: &Topology, i: u16) -> IpAddr {
        match self {
            Fam::V4 => Ipv4Addr::new(10, t.net, 0, 150 + i as u8).into(),
            Fam::V6 => {
                let mut s = t.client_ip6().segments();
                s[7] = 0x1000 + i;
                Ipv6Addr::from(s).into()
            }
        }
    }

    /// `ip addr add <addr>/<len> dev <dev>` (IPv6 without duplicate detection, so the
    /// address is usable at once).
    fn add_addr(self, ns: &lb_tests::netns::Ns, addr: IpAddr, len: u8, dev: &str) -> Result<()> {
        let a = format!("{addr}/{len}");
        let mut args = vec!["ip", "addr", "add", a.as_str(), "dev", dev];
        if self == Fam::V6 {
            args.push("nodad");
        }
        ns.exec(&args)?;
        Ok(())
    }

    fn host_len(self) -> u8 {
        match self {
            Fam::V4 => 32,
            Fam::V6 => 128,
        }
    }

    fn subnet_len(self) -> u8 {
        match self {
            Fam::V4 => 24,
            Fam::V6 => 64,
        }
    }
}

fn config(t: &Topology, fam: Fam) -> String {
    let mut c = agent_sections(t).replace("max_services = 4", "max_services = 12");
    let (a, b) = (t.vip_of(fam), fam.vip_b(t));
    // (rule, VIP, protocol, port, service)
    let rules: &[(&str, IpAddr, &str, u16, &str)] = &[
        ("none", a, "TCP", 80, "none"),
        ("cip-tcp", a, "TCP", 81, "cip-tcp"),
        ("cip-udp", a, "UDP", 81, "cip-udp"),
        ("cip-tcp-b", b, "TCP", 81, "cip-tcp"),
        ("proto-tcp", a, "TCP", 82, "proto-tcp"),
        ("proto-udp", a, "UDP", 82, "proto-udp"),
        ("port", a, "TCP", 83, "port"),
        ("nodst-a", a, "TCP", 84, "nodst"),
        ("nodst-b", b, "TCP", 84, "nodst"),
        ("sess", a, "TCP", 86, "sess"),
        ("never", a, "TCP", 87, "never"),
        ("always", a, "TCP", 88, "always"),
    ];
    for (name, vip, proto, port, svc) in rules {
        c += &format!(
            "[forwarding_rules.{name}]\nip_address = \"{vip}\"\nip_protocol = \"{proto}\"\nports = [{port}]\nbackend_service = \"{svc}\"\n\n"
        );
    }
    let services: &[(&str, &str, &str)] = &[
        ("none", "TCP", "session_affinity = \"NONE\""),
        ("cip-tcp", "TCP", "session_affinity = \"CLIENT_IP\""),
        ("cip-udp", "UDP", "session_affinity = \"CLIENT_IP\""),
        ("proto-tcp", "TCP", "session_affinity = \"CLIENT_IP_PROTO\""),
        ("proto-udp", "UDP", "session_affinity = \"CLIENT_IP_PROTO\""),
        ("port", "TCP", "session_affinity = \"CLIENT_IP_PORT_PROTO\""),
        ("nodst", "TCP", "session_affinity = \"CLIENT_IP_NO_DESTINATION\""),
        (
            "sess",
            "TCP",
            "session_affinity = \"CLIENT_IP\"\nconnection_tracking_policy = { tracking_mode = \"PER_SESSION\" }",
        ),
        (
            "never",
            "TCP",
            "connection_tracking_policy = { connection_persistence_on_unhealthy_backends = \"NEVER_PERSIST\" }\nfailover_policy = { drop_traffic_if_unhealthy = true }",
        ),
        (
            "always",
            "TCP",
            "connection_tracking_policy = { connection_persistence_on_unhealthy_backends = \"ALWAYS_PERSIST\" }",
        ),
    ];
    for (name, proto, extra) in services {
        c += &format!("[backend_services.{name}]\nprotocol = \"{proto}\"\n{extra}\n");
        for i in 0..3 {
            c += &format!(
                "[[backend_services.{name}.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\n",
                t.backend_of(fam, i)
            );
        }
        c += "\n";
    }
    c
}

/// Every backend serves every port, TCP and UDP (UDP bound to both VIPs).
fn start_backends(t: &Topology, fam: Fam) -> Result<Vec<ProcGuard>> {
    let (a, b) = (t.vip_of(fam).to_string(), fam.vip_b(t).to_string());
    let mut out = Vec::new();
    for (i, ns) in t.backends.iter().enumerate() {
        fam.add_addr(ns, fam.vip_b(t), fam.host_len(), "lo")?;
        for p in PORTS {
            let p = p.to_string();
            out.push(ns.spawn(&[BACKEND_BIN, &format!("backend-{i}"), &p, &p, &a, &b])?);
        }
    }
    Ok(out)
}

fn tcp_from(src: IpAddr, to: SocketAddr) -> Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(2))?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// The name of the backend that answers a new TCP connection from `src`.
fn tcp_backend(src: IpAddr, to: SocketAddr) -> Result<String> {
    let s = tcp_from(src, to)?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    Ok(field(&line, "name").context("no banner")?.to_string())
}

/// The name of the backend that answers a UDP datagram from `src` (sent up to three times
/// from the same socket: the same flow, so the affinity check is unchanged).
fn udp_backend(src: IpAddr, to: SocketAddr) -> Result<String> {
    let line = udp_banner_from(src, to, Duration::from_secs(1), 3)?;
    Ok(field(&line, "name").context("no banner")?.to_string())
}

/// Backend of each of `n` new connections (TCP or UDP) from `src`, from the client
/// namespace.
fn backends_of(
    t: &Topology,
    src: IpAddr,
    to: SocketAddr,
    udp: bool,
    n: usize,
) -> Result<Vec<String>> {
    t.client.run_in(move || {
        (0..n)
            .map(|_| {
                if udp {
                    udp_backend(src, to)
                } else {
                    tcp_backend(src, to)
                }
            })
            .collect::<Result<Vec<_>>>()
    })?
}

/// The one backend all `n` connections from `src` reached (fails if they split).
fn one_backend(t: &Topology, src: IpAddr, to: SocketAddr, udp: bool) -> String {
    let seen: BTreeSet<String> = backends_of(t, src, to, udp, 3)
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        seen.len(),
        1,
        "{src} → {to} ({}) split: {seen:?}",
        if udp { "udp" } else { "tcp" }
    );
    seen.into_iter().next().unwrap()
}

fn lb(agent: &Agent, args: &[&str]) -> Result<String> {
    let sock = agent.dir.join("admin.sock");
    let mut v = vec![
        lb_tests::lb_binary().to_str().unwrap().to_string(),
        "--socket".into(),
    ];
    v.push(sock.to_str().unwrap().into());
    v.extend(args.iter().map(|s| s.to_string()));
    let v: Vec<&str> = v.iter().map(String::as_str).collect();
    lb_tests::netns::sh(&v)
}

/// The topology with extra client addresses, backends on every port and the agent, ready.
fn running(fam: Fam) -> (Topology, Vec<ProcGuard>, Agent) {
    let t = Topology::new(3).expect("topology");
    for i in 0..CLIENTS {
        fam.add_addr(&t.client, fam.client(&t, i), fam.subnet_len(), &t.iface)
            .unwrap();
    }
    let route = format!("{}/{}", fam.vip_b(&t), fam.host_len());
    t.client
        .exec(&[
            "ip",
            "route",
            "add",
            &route,
            "via",
            &t.balancer_of(fam).to_string(),
        ])
        .unwrap();
    let backends = start_backends(&t, fam).unwrap();
    let agent = Agent::start(&t.balancer, &config(&t, fam)).unwrap();
    let to = SocketAddr::new(t.vip_of(fam), 80);
    let src = fam.client(&t, 0);
    let ok = t
        .client
        .run_in(move || wait_for(Duration::from_secs(20), || tcp_backend(src, to)))
        .unwrap();
    assert!(ok.is_ok(), "the VIP never answered; log:\n{}", agent.log());
    (t, backends, agent)
}

#[test]
fn each_session_affinity_mode_hashes_its_fields_over_ipv4() {
    if root_or_skip("l4 netns IPv4 affinity") {
        affinity_modes(Fam::V4);
    }
}

#[test]
fn each_session_affinity_mode_hashes_its_fields_over_ipv6() {
    if root_or_skip("l4 netns IPv6 affinity") {
        affinity_modes(Fam::V6);
    }
}

#[test]
fn per_session_persistence_and_drop_if_unhealthy_over_ipv4() {
    if root_or_skip("l4 netns IPv4 affinity") {
        persistence(Fam::V4);
    }
}

#[test]
fn per_session_persistence_and_drop_if_unhealthy_over_ipv6() {
    if root_or_skip("l4 netns IPv6 affinity") {
        persistence(Fam::V6);
    }
}

fn affinity_modes(fam: Fam) {
    let (t, _backends, agent) = running(fam);
    let at = |vip: IpAddr, port| SocketAddr::new(vip, port);
    let (a, b) = (t.vip_of(fam), fam.vip_b(&t));
    let me = fam.client(&t, 0);

    // NONE and CLIENT_IP_PORT_PROTO: one client's connections spread (5-tuple).
    for port in [80, 83] {
        let seen: BTreeSet<String> = backends_of(&t, me, at(a, port), false, 60)
            .unwrap()
            .into_iter()
            .collect();
        assert!(
            seen.len() >= 2,
            "port {port}: one client's connections did not spread: {seen:?}"
        );
    }

    let (mut over_clients, mut proto_differs, mut vip_differs) = (BTreeSet::new(), 0, 0);
    for i in 0..CLIENTS {
        let c = fam.client(&t, i);
        // CLIENT_IP: one backend per client whatever the port, and the protocol is not
        // hashed: TCP and UDP agree.
        let tcp = one_backend(&t, c, at(a, 81), false);
        let udp = one_backend(&t, c, at(a, 81), true);
        assert_eq!(tcp, udp, "CLIENT_IP: {c} TCP and UDP differ");
        over_clients.insert(tcp.clone());
        // The destination is hashed: the same client on the other VIP may differ.
        vip_differs += usize::from(one_backend(&t, c, at(b, 81), false) != tcp);
        // CLIENT_IP_PROTO: stable per protocol, and the protocol is hashed.
        let ptcp = one_backend(&t, c, at(a, 82), false);
        let pudp = one_backend(&t, c, at(a, 82), true);
        proto_differs += usize::from(ptcp != pudp);
        // CLIENT_IP_NO_DESTINATION: the same backend on both VIPs.
        let n1 = one_backend(&t, c, at(a, 84), false);
        let n2 = one_backend(&t, c, at(b, 84), false);
        assert_eq!(n1, n2, "CLIENT_IP_NO_DESTINATION: {c} differs between VIPs");
    }
    println!(
        "{fam:?}, {CLIENTS} clients: CLIENT_IP backends {over_clients:?}; TCP≠UDP under CLIENT_IP_PROTO for {proto_differs}; VIP A≠B under CLIENT_IP for {vip_differs}"
    );
    assert!(
        over_clients.len() >= 2,
        "CLIENT_IP sent every client to one backend"
    );
    assert!(
        proto_differs > 0,
        "CLIENT_IP_PROTO never separated TCP from UDP"
    );
    assert!(vip_differs > 0, "CLIENT_IP never told the two VIPs apart");
    drop(agent);
}

fn persistence(fam: Fam) {
    let (t, _backends, agent) = running(fam);
    let at = |port| SocketAddr::new(t.vip_of(fam), port);
    let me = fam.client(&t, 0);

    // PER_SESSION: the client's session lives on one backend; drained, it keeps the
    // session's new connections while every other client avoids it.
    let owner = one_backend(&t, me, at(86), false);
    lb(&agent, &["drain", "sess", &owner]).unwrap();
    let others_avoid = wait_for(Duration::from_secs(10), || {
        for i in 1..CLIENTS {
            let b = backends_of(&t, fam.client(&t, i), at(86), false, 1)?;
            anyhow::ensure!(b[0] != owner, "{} still reaches {owner}", fam.client(&t, i));
        }
        Ok(())
    });
    assert!(
        others_avoid.is_ok(),
        "{others_avoid:?}; log:\n{}",
        agent.log()
    );
    let again = backends_of(&t, me, at(86), false, 5).unwrap();
    assert!(
        again.iter().all(|b| *b == owner),
        "session left its draining backend: {again:?}"
    );

    // Connection persistence on an unhealthy backend: an open connection on each service,
    // then its backend forced down. ALWAYS_PERSIST keeps the connection; NEVER_PERSIST
    // moves it (the new backend knows no such connection and resets it).
    let open = |port| {
        let to = at(port);
        t.client
            .run_in(move || -> Result<(TcpStream, String)> {
                let s = tcp_from(me, to)?;
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line)?;
                Ok((s, field(&line, "name").context("no banner")?.to_string()))
            })
            .unwrap()
            .unwrap()
    };
    let (mut kept, kept_on) = open(88);
    let (mut moved, moved_on) = open(87);
    lb(&agent, &["health", "always", &kept_on, "down"]).unwrap();
    lb(&agent, &["health", "never", &moved_on, "down"]).unwrap();
    let talk = |s: &mut TcpStream, msg: &str| -> Result<String> {
        writeln!(s, "{msg}")?;
        let mut line = String::new();
        let n = BufReader::new(s.try_clone()?).read_line(&mut line)?;
        anyhow::ensure!(n > 0, "closed");
        Ok(line.trim().to_string())
    };
    // The forced health reaches the maps within a bounded wait: the NEVER_PERSIST
    // connection breaks, the ALWAYS_PERSIST one keeps answering throughout.
    let broke = wait_for(Duration::from_secs(10), || {
        anyhow::ensure!(talk(&mut moved, "x").is_err(), "still answering");
        Ok(())
    });
    assert!(
        broke.is_ok(),
        "NEVER_PERSIST kept the connection on its unhealthy backend"
    );
    for i in 0..5 {
        assert_eq!(
            talk(&mut kept, &format!("ping{i}")).unwrap(),
            format!("{kept_on} ping{i}"),
            "ALWAYS_PERSIST lost its connection"
        );
    }

    // drop_traffic_if_unhealthy (service "never"): with every backend down, new
    // connections are dropped instead of spread over unhealthy backends.
    for i in 0..3 {
        let _ = lb(
            &agent,
            &["health", "never", &format!("backend-{i}"), "down"],
        );
    }
    let dropped = wait_for(Duration::from_secs(10), || {
        let r = backends_of(&t, me, at(87), false, 1);
        anyhow::ensure!(r.is_err(), "still answered: {r:?}");
        Ok(())
    });
    assert!(
        dropped.is_ok(),
        "drop_traffic_if_unhealthy did not drop; log:\n{}",
        agent.log()
    );
    // The same state without the flag (service "always", all down): traffic still flows.
    for i in 0..3 {
        let _ = lb(
            &agent,
            &["health", "always", &format!("backend-{i}"), "down"],
        );
    }
    let flows = backends_of(&t, fam.client(&t, 1), at(88), false, 3);
    assert!(
        flows.is_ok(),
        "without drop_traffic_if_unhealthy traffic stopped: {flows:?}"
    );
}
