//! A test backend: answers TCP and UDP with its name and what it saw, so tests and the demo
//! can tell which backend a flow reached and that the client's address arrived intact.
//!
//! TCP: on connect it sends `name=<n> client=<ip:port> local=<ip:port>\n`, then echoes
//! every line it receives. UDP: every datagram gets the same banner back.
//! Usage: lb-backend NAME TCP_PORT UDP_PORT [UDP_ADDR ...]
//! Each UDP_ADDR (a VIP, IPv4 or IPv6) gets a socket bound to it, so UDP replies leave from
//! that address, as a DSR backend's must: a socket bound to the wildcard would answer from
//! the interface address instead. Without one, UDP listens on 0.0.0.0. TCP listens on
//! 0.0.0.0 and, where the host has IPv6, on [::] (IPv6 only, so IPv4 peers keep their
//! plain addresses in the banner).

use socket2::{Domain, Socket, Type};
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    thread,
};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: lb-backend NAME TCP_PORT UDP_PORT [UDP_ADDR ...]");
        std::process::exit(2);
    }
    let name = args[1].clone();
    let tcp_port = args[2].parse::<u16>().expect("TCP port");
    let udp_port = args[3].parse::<u16>().expect("UDP port");
    let mut udp_addrs: Vec<IpAddr> = args[4..]
        .iter()
        .map(|a| a.parse().expect("UDP address"))
        .collect();
    if udp_addrs.is_empty() {
        udp_addrs.push(IpAddr::from([0, 0, 0, 0]));
    }
    for a in udp_addrs {
        let udp = UdpSocket::bind((a, udp_port))?;
        let name = name.clone();
        thread::spawn(move || serve_udp(&udp, &name));
    }
    if let Ok(v6) = tcp_v6_only(tcp_port) {
        let name = name.clone();
        thread::spawn(move || serve_tcp(&v6, &name));
    }
    let tcp = TcpListener::bind(("0.0.0.0", tcp_port))?;
    serve_tcp(&tcp, &name);
    Ok(())
}

/// A TCP listener on [::]:port that takes IPv6 peers only.
fn tcp_v6_only(port: u16) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
    s.listen(128)?;
    Ok(s.into())
}

fn serve_udp(udp: &UdpSocket, name: &str) {
    let mut buf = [0u8; 2048];
    while let Ok((_, peer)) = udp.recv_from(&mut buf) {
        let local = udp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let msg = format!("name={name} client={peer} local={local}\n");
        let _ignored = udp.send_to(msg.as_bytes(), peer);
    }
}

fn serve_tcp(tcp: &TcpListener, name: &str) {
    for conn in tcp.incoming() {
        let Ok(mut s) = conn else { continue };
        let name = name.to_string();
        thread::spawn(move || {
            let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let local = s.local_addr().map(|a| a.to_string()).unwrap_or_default();
            if writeln!(s, "name={name} client={peer} local={local}").is_err() {
                return;
            }
            let Ok(r) = s.try_clone() else { return };
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { return };
                if writeln!(s, "{name} {line}").is_err() {
                    return;
                }
            }
        });
    }
}
