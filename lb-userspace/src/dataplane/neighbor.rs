//! Backend MAC addresses for L2 direct server return, from the kernel's neighbour table.
//! An unknown neighbour is provoked into resolution by sending one empty UDP datagram to
//! the discard port (9): the kernel ARPs for it, and the next lookup finds the entry.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

/// Looks the address up in /proc/net/arp (complete entries only).
pub fn lookup(addr: Ipv4Addr) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&text, addr)
}

/// Starts ARP resolution of `addr` without waiting for it.
pub fn provoke(addr: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
        let _ignored = s.send_to(&[], SocketAddrV4::new(addr, 9));
    }
}

/// Parses the text of /proc/net/arp: `IP  HW-type  Flags  HW-address  Mask  Device`;
/// flag 0x2 (ATF_COM) marks a complete entry.
pub fn parse_arp_table(text: &str, addr: Ipv4Addr) -> Option<[u8; 6]> {
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[0] != addr.to_string() {
            continue;
        }
        let flags = u32::from_str_radix(f[2].trim_start_matches("0x"), 16).ok()?;
        if flags & 0x2 == 0 {
            continue;
        }
        let mac = crate::ids::parse_mac(f[3])?;
        if mac != [0; 6] {
            return Some(mac);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_complete_entries_only() {
        let t = "IP address       HW type     Flags       HW address            Mask     Device\n\
                 10.0.0.2         0x1         0x2         02:00:00:00:00:02     *        eth0\n\
                 10.0.0.3         0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            parse_arp_table(t, "10.0.0.2".parse().unwrap()),
            Some([2, 0, 0, 0, 0, 2])
        );
        assert_eq!(parse_arp_table(t, "10.0.0.3".parse().unwrap()), None);
        assert_eq!(parse_arp_table(t, "10.0.0.4".parse().unwrap()), None);
    }
}
