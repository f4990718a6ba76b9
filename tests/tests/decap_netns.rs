//! `lb decap` as a user runs it, in network namespaces: a backend namespace holds a VIP on
//! `lo` with a UDP socket and a TCP listener bound to it, and `lb decap --interface eth0`
//! attached to its one interface. A peer namespace (standing for the balancer and the
//! router behind it) sends IPIP and GUE frames, crafted on an AF_PACKET socket, whose inner
//! packet is client → VIP. The kernel has no ipip or fou module, so only the program can
//! make them arrive.
//!
//! Shown: the backend's socket receives each datagram with the client's address (IPv4 and
//! IPv6, IPIP and GUE); an encapsulated SYN (both families, both methods) is answered by a
//! SYN-ACK straight to the client (seen on the peer's wire); plain traffic to the backend's own address still works;
//! `lb decap --stats` counts exactly what was decapsulated; a second `lb decap` changes the
//! GUE port in place, keeping the counters; `lb decap --down` detaches and leaves no pin.

use anyhow::{bail, Context, Result};
use lb_tests::{
    decap::{encap_packet, Encap},
    lb_binary,
    netns::{attach_pass_in, sh, Ns},
    packet::{checksum, Frame6},
    root_or_skip, unique,
};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

/// Two namespaces joined by a veth pair: the peer (balancer side) and the backend.
struct Pair {
    peer: Ns,
    backend: Ns,
    pin_dir: PathBuf,
}

const PEER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 100);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 8, 1);
const PEER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 77, 0, 0, 0, 0, 1);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 77, 0, 0, 0, 0, 0x11);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 77, 0, 0, 0, 0, 0x100);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 8, 77, 0, 0, 0, 0, 1);

impl Pair {
    fn new() -> Result<Self> {
        let prefix = unique("lbd");
        let p = Pair {
            peer: Ns(format!("{prefix}-pe")),
            backend: Ns(format!("{prefix}-be")),
            pin_dir: PathBuf::from("/sys/fs/bpf").join(format!("{prefix}-decap")),
        };
        p.build().inspect_err(|_| p.cleanup())?;
        Ok(p)
    }

    fn build(&self) -> Result<()> {
        for ns in [&self.peer, &self.backend] {
            sh(&["ip", "netns", "add", &ns.0])?;
            ns.exec(&["ip", "link", "set", "lo", "up"])?;
        }
        let tmp = format!("{}x", &self.peer.0);
        let tmp = &tmp[tmp.len().saturating_sub(15)..];
        sh(&[
            "ip",
            "link",
            "add",
            tmp,
            "netns",
            &self.peer.0,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &self.backend.0,
        ])?;
        self.peer
            .exec(&["ip", "link", "set", tmp, "name", "eth0"])?;
        for (ns, a4, a6) in [
            (&self.peer, PEER4, PEER6),
            (&self.backend, BACKEND4, BACKEND6),
        ] {
            ns.exec(&["ip", "addr", "add", &format!("{a4}/24"), "dev", "eth0"])?;
            let a6 = format!("{a6}/64");
            ns.exec(&["ip", "-6", "addr", "add", &a6, "dev", "eth0", "nodad"])?;
            ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        }
        let b = &self.backend;
        b.exec(&["ip", "addr", "add", &format!("{VIP4}/32"), "dev", "lo"])?;
        b.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{VIP6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        // Replies to clients go back through the peer (the backend's router), directly:
        // they are never encapsulated.
        b.exec(&["ip", "route", "add", "default", "via", &PEER4.to_string()])?;
        b.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            &PEER6.to_string(),
        ])?;
        b.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
        b.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])?;
        Ok(())
    }

    fn cleanup(&self) {
        let _ignored = std::fs::remove_dir_all(&self.pin_dir);
        for ns in [&self.peer, &self.backend] {
            let _ignored = sh(&["ip", "netns", "del", &ns.0]);
        }
    }

    /// Runs `lb decap ARGS --pin-path <private>` in the backend namespace. nsenter enters
    /// only the network namespace (`ip netns exec` would hide the host's bpffs).
    fn lb(&self, args: &[&str]) -> Result<Output> {
        let pin = self.pin_dir.to_str().context("pin path")?;
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.backend.0))
            .arg("--")
            .arg(lb_binary())
            .arg("decap")
            .args(args)
            .args(["--pin-path", pin])
            .env("RUST_BACKTRACE", "0")
            .output()?;
        Ok(out)
    }

    fn lb_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.lb(args)?;
        if !out.status.success() {
            bail!(
                "lb decap {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lb decap --stats -o json` of the backend's interface.
    fn stats(&self) -> Result<serde_json::Value> {
        let text = self.lb_ok(&["--stats", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        Ok(v[0].clone())
    }

    fn mac(&self, ns: &Ns) -> Result<[u8; 6]> {
        let text = ns.exec(&["cat", "/sys/class/net/eth0/address"])?;
        lb_userspace::ids::parse_mac(text.trim()).context("MAC")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A raw AF_PACKET socket on `eth0` of the calling thread's namespace, for whole frames.
fn packet_socket() -> Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) } as i32;
    // SAFETY: valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        bail!("binding AF_PACKET: {}", std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a timeval option of its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    Ok(fd)
}

fn send_frame(fd: &OwnedFd, frame: &[u8]) -> Result<()> {
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    if n != frame.len() as isize {
        bail!("send: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The next frame, or None after the socket's receive timeout.
fn recv_frame(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    // SAFETY: valid buffer of the given length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

/// An IPv4 TCP or UDP packet (no Ethernet header) with correct checksums.
fn inner4(proto: u8, src: SocketAddr, dst: SocketAddr, tcp_flags: u8, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let mut l4 = Vec::new();
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    let csum_at = if proto == 6 {
        l4.extend_from_slice(&1000u32.to_be_bytes());
        l4.extend_from_slice(&0u32.to_be_bytes());
        l4.extend_from_slice(&[5 << 4, tcp_flags]);
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]);
        16
    } else {
        l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        6
    };
    l4.extend_from_slice(payload);
    let mut pseudo = s.octets().to_vec();
    pseudo.extend_from_slice(&d.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&l4);
    let c = checksum(&pseudo);
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut p = lb_tests::decap::ipv4_header(s.octets(), d.octets(), proto, l4.len());
    p[6] = 0x40; // DF, as Linux sends
    p[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

/// An IPv6 UDP packet with a correct checksum.
fn inner6_udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv6 only")
    };
    let mut f = Frame6::udp(s.octets(), src.port(), d.octets(), dst.port());
    f.payload = payload.to_vec();
    f.packet()
}

/// Ethernet frame peer → backend carrying `packet`.
fn frame(to: [u8; 6], from: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut f = to.to_vec();
    f.extend_from_slice(&from);
    let et: u16 = if packet[0] >> 4 == 6 { 0x86dd } else { 0x0800 };
    f.extend_from_slice(&et.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// Sends `frame` from the peer until `sock` receives `payload` (at most 5 tries, 1 s each);
/// returns the sender address and how many frames were sent.
fn deliver(
    pair: &Pair,
    frame: Vec<u8>,
    sock: &UdpSocket,
    payload: &[u8],
) -> Result<(SocketAddr, u64)> {
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = [0u8; 2048];
    for attempt in 1..=5u64 {
        let f = frame.clone();
        pair.peer.run_in(move || -> Result<()> {
            let fd = packet_socket()?;
            send_frame(&fd, &f)
        })??;
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            anyhow::ensure!(&buf[..n] == payload, "unexpected datagram {:?}", &buf[..n]);
            if attempt > 1 {
                eprintln!("datagram arrived after {attempt} sends");
            }
            return Ok((from, attempt));
        }
    }
    bail!("the datagram never arrived")
}

/// Sends an encapsulated SYN (sequence number `seq`) from the peer and waits (5 s) for the
/// backend's SYN-ACK to the client, unencapsulated, on the peer's wire; returns the frames
/// sent.
fn syn_gets_syn_ack(
    seq: u32,
    pair: &Pair,
    syn_frame: Vec<u8>,
    client: SocketAddr,
    vip: SocketAddr,
) -> Result<u64> {
    pair.peer.run_in(move || -> Result<u64> {
        let fd = packet_socket()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut sent = 0;
        let mut next_send = Instant::now();
        while Instant::now() < deadline {
            if Instant::now() >= next_send && sent < 5 {
                send_frame(&fd, &syn_frame)?;
                sent += 1;
                next_send = Instant::now() + Duration::from_secs(1);
            }
            let Some(f) = recv_frame(&fd) else { continue };
            if is_syn_ack(&f, client, vip, seq) {
                return Ok(sent);
            }
        }
        bail!("no SYN-ACK from {vip} to {client} within 5 s")
    })?
}

/// A TCP SYN-ACK from `vip` to `client` (IPv4 or IPv6, no extension headers)
/// acknowledging sequence number `seq`.
fn is_syn_ack(f: &[u8], client: SocketAddr, vip: SocketAddr, seq: u32) -> bool {
    let (src, dst, l4) = match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => {
            if f.len() < 14 + 20 + 20 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 6 {
                return false;
            }
            let l4 = &f[14 + ((f[14] & 0x0f) as usize) * 4..];
            (f[26..30] == v.octets(), f[30..34] == c.octets(), l4)
        }
        (IpAddr::V6(c), IpAddr::V6(v)) => {
            if f.len() < 14 + 40 + 20 || f[12..14] != [0x86, 0xdd] || f[14 + 6] != 6 {
                return false;
            }
            (f[22..38] == v.octets(), f[38..54] == c.octets(), &f[54..])
        }
        _ => return false,
    };
    src && dst
        && l4.len() >= 20
        && l4[0..2] == vip.port().to_be_bytes()
        && l4[2..4] == client.port().to_be_bytes()
        && l4[13] & 0x12 == 0x12
        && l4[8..12] == (seq + 1).to_be_bytes()
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or(u64::MAX)
}

#[test]
fn lb_decap_delivers_ipip_and_gue_to_the_vip_with_the_client_address() -> Result<()> {
    if !root_or_skip("lb decap in namespaces") {
        return Ok(());
    }
    let pair = Pair::new()?;
    let (peer_mac, backend_mac) = (pair.mac(&pair.peer)?, pair.mac(&pair.backend)?);

    // Errors a user meets, each with its next step, before anything is attached.
    let out = pair.lb(&["--interface", "nosuch0"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no network interface \"nosuch0\""));
    let out = pair.lb(&["--stats"])?;
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing attached"));
    // `ip netns exec` gives a private /sys: pins made there would vanish with the command.
    let lb = lb_binary();
    let lb = lb.to_str().context("lb path")?;
    let err = pair
        .backend
        .exec(&[
            "env",
            "RUST_BACKTRACE=0",
            lb,
            "decap",
            "--interface",
            "eth0",
        ])
        .expect_err("lb decap under ip netns exec");
    assert!(err.to_string().contains("nsenter --net="), "{err}");

    // An interface that already carries an XDP program (here the project's pass program,
    // standing for the balancer) is refused, and the refused attempt leaves no pin.
    let other = attach_pass_in(&pair.backend, "eth0")?;
    let out = pair.lb(&["--interface", "eth0"])?;
    assert!(!out.status.success(), "attached over another XDP program");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already has an XDP program"), "{err}");
    assert!(!pair.pin_dir.exists(), "a refused attach left pins");
    drop(other);

    let said = pair.lb_ok(&["--interface", "eth0"])?;
    assert!(
        said.contains("decapsulating IPIP and GUE (UDP port 6080)"),
        "{said}"
    );
    let link = pair.backend.exec(&["ip", "link", "show", "eth0"])?;
    assert!(link.contains("xdp"), "no XDP program on eth0: {link}");
    // Default addresses: the interface's own.
    let stats = pair.stats()?;
    let addrs = stats["addresses"].to_string();
    assert!(
        addrs.contains(&BACKEND4.to_string()) && addrs.contains(&BACKEND6.to_string()),
        "{addrs}"
    );

    // Sockets bound to the VIP in the backend namespace.
    let (udp4, udp6, tcp, tcp6) = pair.backend.run_in(|| -> Result<_> {
        Ok((
            UdpSocket::bind((VIP4, 5353))?,
            UdpSocket::bind((VIP6, 5353))?,
            TcpListener::bind((VIP4, 8080))?,
            TcpListener::bind((VIP6, 8080))?,
        ))
    })??;
    let (outer4, outer6) = (IpAddr::V4(PEER4), IpAddr::V6(PEER6));
    let (to4, to6) = (IpAddr::V4(BACKEND4), IpAddr::V6(BACKEND6));
    let gue = |dport| Encap::Gue {
        sport: 51_000,
        dport,
    };
    let (mut ipip_sent, mut gue_sent) = (0, 0);
    for (what, how, src, dst, client_port) in [
        ("IPIP 4in4", Encap::Ipip, outer4, to4, 40_001u16),
        ("GUE over IPv4", gue(6080), outer4, to4, 40_002),
        ("IPIP 6in6", Encap::Ipip, outer6, to6, 40_003),
        ("GUE over IPv6", gue(6080), outer6, to6, 40_004),
    ] {
        let (client, vip, sock) = if src.is_ipv4() {
            (
                SocketAddr::new(CLIENT4.into(), client_port),
                SocketAddr::new(VIP4.into(), 5353),
                &udp4,
            )
        } else {
            (
                SocketAddr::new(CLIENT6.into(), client_port),
                SocketAddr::new(VIP6.into(), 5353),
                &udp6,
            )
        };
        let payload = format!("hello over {what}");
        let inner = if src.is_ipv4() {
            inner4(17, client, vip, 0, payload.as_bytes())
        } else {
            inner6_udp(client, vip, payload.as_bytes())
        };
        let f = frame(backend_mac, peer_mac, &encap_packet(how, src, dst, &inner));
        let (from, sent) = deliver(&pair, f, sock, payload.as_bytes()).context(what)?;
        assert_eq!(
            from, client,
            "{what}: the backend sees the client's address"
        );
        match how {
            Encap::Ipip => ipip_sent += sent,
            Encap::Gue { .. } => gue_sent += sent,
        }
    }

    // TCP: an encapsulated SYN is answered directly to the client (not encapsulated).
    for (what, how, v6, client_port) in [
        ("IPIP 4in4", Encap::Ipip, false, 41_001u16),
        ("GUE over IPv4", gue(6080), false, 41_002),
        ("IPIP 6in6", Encap::Ipip, true, 41_003),
        ("GUE over IPv6", gue(6080), true, 41_004),
    ] {
        let (syn, client, vip, src, dst, seq) = if v6 {
            let client = SocketAddr::new(CLIENT6.into(), client_port);
            let vip = SocketAddr::new(VIP6.into(), 8080);
            let f = Frame6::tcp(CLIENT6.octets(), client_port, VIP6.octets(), 8080);
            // Frame6 sends sequence number 1.
            (f.packet(), client, vip, outer6, to6, 1)
        } else {
            let client = SocketAddr::new(CLIENT4.into(), client_port);
            let vip = SocketAddr::new(VIP4.into(), 8080);
            (
                inner4(6, client, vip, 0x02, &[]),
                client,
                vip,
                outer4,
                to4,
                1000,
            )
        };
        let f = frame(backend_mac, peer_mac, &encap_packet(how, src, dst, &syn));
        let sent = syn_gets_syn_ack(seq, &pair, f, client, vip).context(what)?;
        match how {
            Encap::Ipip => ipip_sent += sent,
            Encap::Gue { .. } => gue_sent += sent,
        }
    }
    drop((tcp, tcp6));

    // Plain traffic to the backend's own address still works.
    pair.peer
        .exec(&["ping", "-c", "1", "-W", "5", &BACKEND4.to_string()])?;
    let own = pair
        .backend
        .run_in(|| TcpListener::bind((BACKEND4, 9000)))??;
    pair.peer.run_in(|| {
        std::net::TcpStream::connect_timeout(&(BACKEND4, 9000).into(), Duration::from_secs(5))
    })??;
    drop(own);

    let stats = pair.stats()?;
    assert_eq!(counter(&stats, "decap_ipip"), ipip_sent, "{stats}");
    assert_eq!(counter(&stats, "decap_gue"), gue_sent, "{stats}");
    assert_eq!(counter(&stats, "drop_bad_inner"), 0, "{stats}");
    assert!(
        counter(&stats, "pass_not_encap") >= 2,
        "ping and TCP passed: {stats}"
    );
    let table = pair.lb_ok(&["--stats"])?;
    assert!(
        table.contains("decap_gue") && table.contains("GUE port 6080"),
        "{table}"
    );

    // A second run changes the port in place; the pinned counters carry on.
    let said = pair.lb_ok(&[
        "--interface",
        "eth0",
        "--gue-port",
        "7000",
        "--address",
        &BACKEND4.to_string(),
    ])?;
    assert!(said.contains("updated the running program"), "{said}");
    let client = SocketAddr::new(CLIENT4.into(), 40_010);
    let vip = SocketAddr::new(VIP4.into(), 5353);
    let inner = inner4(17, client, vip, 0, b"port 7000");
    let f = frame(
        backend_mac,
        peer_mac,
        &encap_packet(gue(7000), outer4, to4, &inner),
    );
    let (from, sent) = deliver(&pair, f, &udp4, b"port 7000")?;
    assert_eq!(from, client);
    let stats = pair.stats()?;
    assert_eq!(stats["gue_port"], 7000);
    assert_eq!(
        stats["addresses"],
        serde_json::json!([BACKEND4.to_string()])
    );
    assert_eq!(counter(&stats, "decap_gue"), gue_sent + sent, "{stats}");

    // Down: detached, no pin left; a second down says there is nothing attached.
    let said = pair.lb_ok(&["--down", "--interface", "eth0"])?;
    assert!(said.contains("detached"), "{said}");
    assert!(!pair.pin_dir.exists(), "pins left behind");
    let link = pair.backend.exec(&["ip", "link", "show", "eth0"])?;
    assert!(!link.contains("xdp"), "XDP still attached: {link}");
    let out = pair.lb(&["--down", "--interface", "eth0"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing attached"));

    // --xdp-mode generic attaches in the kernel's generic (skb) mode, where veth's native
    // mode would otherwise be taken.
    pair.lb_ok(&["--interface", "eth0", "--xdp-mode", "generic"])?;
    let link = pair.backend.exec(&["ip", "link", "show", "eth0"])?;
    assert!(link.contains("xdpgeneric"), "not in generic mode: {link}");
    pair.lb_ok(&["--down", "--interface", "eth0"])?;
    assert!(!pair.pin_dir.exists(), "pins left behind");
    Ok(())
}

/// The pinned link outlives its interface. When the interface is removed and made again
/// under the same name, a second `lb decap` replaces the defunct link instead of failing,
/// and `--down` still removes everything.
#[test]
fn lb_decap_reattaches_when_its_interface_was_made_again() -> Result<()> {
    if !root_or_skip("lb decap on a re-created interface") {
        return Ok(());
    }
    let pair = Pair::new()?;
    let addr = BACKEND4.to_string();
    pair.lb_ok(&["--interface", "eth0", "--address", &addr])?;
    let b = &pair.backend;
    b.exec(&["ip", "link", "del", "eth0"])?;
    b.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    b.exec(&["ip", "link", "set", "eth0", "up"])?;
    let said = pair.lb_ok(&["--interface", "eth0", "--address", &addr])?;
    assert!(said.contains("attached in"), "{said}");
    let link = b.exec(&["ip", "link", "show", "eth0"])?;
    assert!(link.contains("lb_decap"), "not attached: {link}");
    pair.lb_ok(&["--down", "--interface", "eth0"])?;
    assert!(!pair.pin_dir.exists(), "pins left behind");
    assert!(!b.exec(&["ip", "link", "show", "eth0"])?.contains("xdp"));
    Ok(())
}
