//! A test backend: answers TCP and UDP with its name and what it saw, so tests and the demo
//! can tell which backend a flow reached and that the client's address arrived intact.
//!
//! TCP: on connect it sends `name=<n> client=<ip:port> local=<ip:port>\n`, then echoes
//! every line it receives. UDP: every datagram gets the same banner back.
//! Usage: lb-backend NAME TCP_PORT UDP_PORT [UDP_ADDR]
//! UDP_ADDR (the VIP) makes UDP replies leave from that address, as a DSR backend must:
//! a socket bound to 0.0.0.0 would answer from the interface address instead.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, UdpSocket},
    thread,
};

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 && args.len() != 5 {
        eprintln!("usage: lb-backend NAME TCP_PORT UDP_PORT [UDP_ADDR]");
        std::process::exit(2);
    }
    let name = args[1].clone();
    let tcp = TcpListener::bind(("0.0.0.0", args[2].parse::<u16>().expect("TCP port")))?;
    let udp_addr = args.get(4).map_or("0.0.0.0", String::as_str);
    let udp = UdpSocket::bind((udp_addr, args[3].parse::<u16>().expect("UDP port")))?;
    let uname = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, peer)) = udp.recv_from(&mut buf) {
            let local = udp.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let msg = format!("name={uname} client={peer} local={local}\n");
            let _ignored = udp.send_to(msg.as_bytes(), peer);
        }
    });
    for conn in tcp.incoming() {
        let Ok(mut s) = conn else { continue };
        let name = name.clone();
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
    Ok(())
}
