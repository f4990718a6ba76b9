//! Backend MAC addresses for L2 direct server return, from the kernel's neighbour tables:
//! ARP for IPv4 (/proc/net/arp), NDP for IPv6 (`ip -6 neigh`, iproute2's JSON output: the
//! kernel exports no IPv6 neighbour table under /proc). An unknown neighbour is provoked
//! into resolution by sending one empty UDP datagram to the discard port (9): the kernel
//! sends an ARP request or a neighbour solicitation, and the next lookup finds the entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// The MAC of a resolved IPv4 neighbour (a complete ARP entry).
pub fn lookup_v4(addr: Ipv4Addr) -> Option<[u8; 6]> {
    let text = std::fs::read_to_string("/proc/net/arp").ok()?;
    parse_arp_table(&text, addr)
}

/// The IPv6 neighbour table as `ip -j -6 neigh show` prints it (for [`parse_ip_neigh_json`]).
pub fn ndp_table() -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-6", "neigh", "show"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    String::from_utf8(out.stdout).ok()
}

/// The kernel's route toward a routed backend, as `ip route get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The source address the kernel uses toward the backend (the outer source).
    pub src: IpAddr,
    /// The gateway, or the backend itself when it is on a connected subnet.
    pub next_hop: IpAddr,
}

/// The route toward `addr` (`ip -j route get`), if there is one.
pub fn route_to(addr: IpAddr) -> Option<Route> {
    let out = std::process::Command::new("ip")
        .args(["-j", "route", "get", &addr.to_string()])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_route_get(&String::from_utf8(out.stdout).ok()?, addr)
}

/// Parses `ip -j route get ADDR`: `[{"dst": .., "gateway": .., "dev": .., "prefsrc": ..}]`.
pub fn parse_route_get(text: &str, addr: IpAddr) -> Option<Route> {
    #[derive(serde::Deserialize)]
    struct Entry {
        gateway: Option<IpAddr>,
        prefsrc: Option<IpAddr>,
        #[serde(rename = "type", default)]
        kind: Option<String>,
    }
    let entries: Vec<Entry> = serde_json::from_str(text).ok()?;
    let e = entries.into_iter().next()?;
    if e.kind.as_deref().is_some_and(|k| k != "unicast") {
        return None;
    }
    Some(Route {
        src: e.prefsrc?,
        next_hop: e.gateway.unwrap_or(addr),
    })
}

/// Starts neighbour resolution of `addr` without waiting for it.
pub fn provoke(addr: IpAddr) {
    let any: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(s) = UdpSocket::bind(any) {
        let _ignored = s.send_to(&[], SocketAddr::new(addr, 9));
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

/// The MAC of `addr` in `ip -j -6 neigh show` output (`[{"dst": .., "lladdr": ..,
/// "state": [..]}, ..]`): an entry with a link-layer address that is not FAILED or
/// INCOMPLETE.
pub fn parse_ip_neigh_json(text: &str, addr: Ipv6Addr) -> Option<[u8; 6]> {
    #[derive(serde::Deserialize)]
    struct Neigh {
        dst: Ipv6Addr,
        lladdr: Option<String>,
        #[serde(default)]
        state: Vec<String>,
    }
    let entries: Vec<Neigh> = serde_json::from_str(text).ok()?;
    entries
        .into_iter()
        .filter(|n| n.dst == addr)
        .filter(|n| !n.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"))
        .find_map(|n| crate::ids::parse_mac(n.lladdr.as_deref()?))
        .filter(|m| *m != [0; 6])
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

    #[test]
    fn parses_resolved_ndp_entries_only() {
        let t = r#"[{"dst":"fd00::2","dev":"eth0","lladdr":"02:00:00:00:00:02","state":["STALE"]},
                    {"dst":"fd00::3","dev":"eth0","state":["INCOMPLETE"]},
                    {"dst":"fd00::4","dev":"eth0","lladdr":"02:00:00:00:00:04","state":["FAILED"]}]"#;
        let p = |a: &str| parse_ip_neigh_json(t, a.parse().unwrap());
        assert_eq!(p("fd00::2"), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(p("fd00::3"), None);
        assert_eq!(p("fd00::4"), None);
        assert_eq!(p("fd00::5"), None);
        assert_eq!(parse_ip_neigh_json("", "fd00::2".parse().unwrap()), None);
    }
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn route_get_gives_source_and_next_hop() {
        let via = r#"[{"dst":"10.2.0.5","gateway":"10.1.0.1","dev":"eth0","prefsrc":"10.1.0.2","flags":[],"uid":0,"cache":[]}]"#;
        let r = parse_route_get(via, "10.2.0.5".parse().unwrap()).unwrap();
        assert_eq!(r.src, "10.1.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(r.next_hop, "10.1.0.1".parse::<IpAddr>().unwrap());
        let onlink =
            r#"[{"dst":"fd00::5","dev":"eth0","prefsrc":"fd00::2","flags":[],"uid":0,"cache":[]}]"#;
        let a: IpAddr = "fd00::5".parse().unwrap();
        assert_eq!(parse_route_get(onlink, a).unwrap().next_hop, a);
        let local = r#"[{"type":"local","dst":"127.0.0.1","dev":"lo","prefsrc":"127.0.0.1"}]"#;
        assert_eq!(parse_route_get(local, "127.0.0.1".parse().unwrap()), None);
        assert_eq!(parse_route_get("", a), None);
    }
}
