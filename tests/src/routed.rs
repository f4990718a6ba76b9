//! A routed topology: the client, the balancer and the backends each on their own subnet,
//! joined by a router namespace, so the balancer has no L2 adjacency to any backend and
//! reaches them only by encapsulation (IPIP or GUE) through the router.
//!
//! ```text
//!  client 10.61.1.1 ── rc .1.254 ┐
//!                                router ── br0 10.61.3.254 ── backends 10.61.3.11, .12, ...
//!  balancer 10.61.2.2 ── rl .2.254 ┘   (VIP 10.61.9.100/32 routed to the balancer)
//! ```
//!
//! IPv6 alike: fd61:1::/64, fd61:2::/64, fd61:3::/64 (hosts ::1, ::2, ::11..; router ::fe),
//! VIP fd61:9::100. Backends hold the VIPs on `lo` and answer clients directly through the
//! router (direct server return); the router's reverse-path filter is off, since replies
//! from the VIP arrive from the backends' side while the VIP is routed to the balancer.
//! Addresses are private to the namespaces, so they are fixed; names are unique.

use crate::netns::{attach_pass_in, sh, Family, Namespaces, Ns};
use anyhow::Result;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub struct Routed {
    pub prefix: String,
    pub client: Ns,
    pub balancer: Ns,
    pub router: Ns,
    pub backends: Vec<Ns>,
    _peer_xdp: Option<aya::Ebpf>,
    namespaces: Namespaces,
}

fn v6(subnet: u16, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd61, subnet, 0, 0, 0, 0, 0, host)
}

impl Routed {
    pub fn new(n: usize) -> Result<Self> {
        let prefix = crate::unique("lbr");
        let mut t = Routed {
            client: Ns(format!("{prefix}-cl")),
            balancer: Ns(format!("{prefix}-lb")),
            router: Ns(format!("{prefix}-rt")),
            backends: (0..n).map(|i| Ns(format!("{prefix}-b{i}"))).collect(),
            prefix,
            _peer_xdp: None,
            namespaces: Namespaces::default(),
        };
        if let Err(e) = t.build() {
            t.cleanup();
            return Err(e);
        }
        Ok(t)
    }

    pub fn vip(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => Ipv4Addr::new(10, 61, 9, 100).into(),
            Family::V6 => v6(9, 0x100).into(),
        }
    }

    pub fn client_ip(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => Ipv4Addr::new(10, 61, 1, 1).into(),
            Family::V6 => v6(1, 1).into(),
        }
    }

    pub fn balancer_ip(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => Ipv4Addr::new(10, 61, 2, 2).into(),
            Family::V6 => v6(2, 2).into(),
        }
    }

    pub fn backend_ip(&self, fam: Family, i: usize) -> IpAddr {
        match fam {
            Family::V4 => Ipv4Addr::new(10, 61, 3, 11 + i as u8).into(),
            Family::V6 => v6(3, 0x11 + i as u16).into(),
        }
    }

    fn add_ns(&mut self, ns: &Ns) -> Result<()> {
        self.namespaces.add(ns)
    }

    /// A veth pair: `eth0` in `host` with the subnet's host addresses, `port` in the router.
    fn link(&self, host: &Ns, port: &str, subnet: u8, hostnum: u8) -> Result<()> {
        let tmp = format!("{}{port}", self.prefix);
        let tmp = &tmp[tmp.len().saturating_sub(15)..];
        sh(&[
            "ip",
            "link",
            "add",
            tmp,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.router.0,
        ])?;
        sh(&["ip", "link", "set", tmp, "netns", &host.0])?;
        host.exec(&["ip", "link", "set", tmp, "name", "eth0"])?;
        let a4 = format!("10.61.{subnet}.{hostnum}/24");
        // Host n is ::n written in decimal digits (10.61.3.11 and fd61:3::11).
        let host6 = u16::from_str_radix(&hostnum.to_string(), 16)?;
        let a6 = format!("{}/64", v6(subnet as u16, host6));
        host.exec(&["ip", "addr", "add", &a4, "dev", "eth0"])?;
        host.exec(&["ip", "-6", "addr", "add", &a6, "dev", "eth0", "nodad"])?;
        host.exec(&["ip", "link", "set", "eth0", "up"])?;
        let gw4 = format!("10.61.{subnet}.254");
        let gw6 = v6(subnet as u16, 0xfe).to_string();
        host.exec(&["ip", "route", "add", "default", "via", &gw4])?;
        host.exec(&["ip", "-6", "route", "add", "default", "via", &gw6])?;
        self.router.exec(&["ip", "link", "set", port, "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let all: Vec<Ns> = [&self.router, &self.client, &self.balancer]
            .into_iter()
            .cloned()
            .chain(self.backends.iter().cloned())
            .collect();
        for ns in &all {
            self.add_ns(ns)?;
        }
        let r = self.router.clone();
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            r.exec(&["sysctl", "-qw", &format!("{k}={v}")])?;
        }
        self.link(&self.client.clone(), "rc", 1, 1)?;
        self.link(&self.balancer.clone(), "rl", 2, 2)?;
        for (port, subnet) in [("rc", 1), ("rl", 2)] {
            r.exec(&[
                "ip",
                "addr",
                "add",
                &format!("10.61.{subnet}.254/24"),
                "dev",
                port,
            ])?;
            let a6 = format!("{}/64", v6(subnet, 0xfe));
            r.exec(&["ip", "-6", "addr", "add", &a6, "dev", port, "nodad"])?;
        }
        r.exec(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        r.exec(&["ip", "addr", "add", "10.61.3.254/24", "dev", "br0"])?;
        let a6 = format!("{}/64", v6(3, 0xfe));
        r.exec(&["ip", "-6", "addr", "add", &a6, "dev", "br0", "nodad"])?;
        r.exec(&["ip", "link", "set", "br0", "up"])?;
        for (i, b) in self.backends.clone().iter().enumerate() {
            let port = format!("rb{i}");
            self.link(b, &port, 3, 11 + i as u8)?;
            r.exec(&["ip", "link", "set", &port, "master", "br0"])?;
            for fam in [Family::V4, Family::V6] {
                let (vip, len) = match self.vip(fam) {
                    IpAddr::V4(a) => (a.to_string(), 32),
                    IpAddr::V6(a) => (a.to_string(), 128),
                };
                let mut args = vec!["ip", "addr", "add"];
                let cidr = format!("{vip}/{len}");
                args.extend([cidr.as_str(), "dev", "lo"]);
                if len == 128 {
                    args.push("nodad");
                }
                b.exec(&args)?;
            }
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])?;
        }
        // The VIPs are routed to the balancer.
        r.exec(&["ip", "route", "add", "10.61.9.100/32", "via", "10.61.2.2"])?;
        let vip6 = format!("{}/128", self.vip(Family::V6));
        r.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &vip6,
            "via",
            &v6(2, 2).to_string(),
        ])?;
        // The balancer forwards (the kernel's FIB answers XDP's lookups only for interfaces
        // that forward).
        let b = self.balancer.clone();
        b.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.forwarding=1"])?;
        b.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.forwarding=1"])?;
        // Software checksums at the client: veth would leave them to an offload that an
        // XDP_TX frame never gets (as in the bridged topology).
        self.client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        // XDP_TX frames reach the router only through an XDP program on its port.
        self._peer_xdp = Some(attach_pass_in(&r, "rl")?);
        Ok(())
    }

    fn cleanup(&mut self) {
        self._peer_xdp = None;
        self.namespaces.delete_all();
    }
}

impl Drop for Routed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `lb decap` on every backend (entered with nsenter, so its pins land in the host's
/// bpffs); removed with `--down` on drop.
pub struct Decap {
    t_backends: Vec<crate::netns::Ns>,
    pins: Vec<String>,
}

impl Decap {
    pub fn attach(t: &Routed, gue_port: u16) -> Result<Decap> {
        let mut d = Decap {
            t_backends: t.backends.clone(),
            pins: Vec::new(),
        };
        for ns in &t.backends {
            let pin = format!("/sys/fs/bpf/{}", crate::unique("lbdecap-"));
            d.pins.push(pin.clone());
            lb_in(
                ns,
                &[
                    "decap",
                    "--interface",
                    "eth0",
                    "--pin-path",
                    &pin,
                    "--gue-port",
                    &gue_port.to_string(),
                ],
            )?;
        }
        Ok(d)
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        for (ns, pin) in self.t_backends.iter().zip(&self.pins) {
            let _ignored = lb_in(
                ns,
                &["decap", "--down", "--interface", "eth0", "--pin-path", pin],
            );
        }
    }
}

/// `lb <args>` inside `ns` (network namespace only: pins stay visible to the host).
pub fn lb_in(ns: &crate::netns::Ns, args: &[&str]) -> Result<String> {
    let bin = crate::lb_binary();
    let net = format!("--net=/run/netns/{}", ns.0);
    let mut v = vec!["nsenter", net.as_str(), "--", bin.to_str().unwrap()];
    v.extend_from_slice(args);
    sh(&v)
}
