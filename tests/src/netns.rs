//! Network-namespace topologies for whole-system tests: a client, the balancer and N
//! backends on one L2 segment (a bridge in its own namespace). Every namespace and link
//! carries a unique prefix, and the guard deletes them on drop, also when a test panics.
//!
//! Addresses: 10.<net>.0.0/24 with client .1, balancer .2, backends .11, .12, ...; the VIP
//! is 10.<net>.0.100. Backends hold the VIP on `lo` with ARP suppressed (arp_ignore=1,
//! arp_announce=2) so they accept VIP traffic without answering ARP for it; the client
//! routes the VIP via the balancer. IPv6 alike: fd00:0:<net>::/64 with the same host
//! numbers (client ::1, balancer ::2, backends ::11.., VIP ::100 on the backends' `lo`,
//! which Linux never answers neighbour solicitations for on eth0), added without duplicate
//! address detection so they are usable at once. The bridge port facing the balancer carries a trivial
//! XDP program, because veth drops XDP_TX frames at a peer without one (TOOLCHAIN.md).

use anyhow::{bail, Context, Result};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Child, Command, Stdio},
};

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {args:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A namespace name.
#[derive(Clone, Debug)]
pub struct Ns(pub String);

impl Ns {
    /// `ip netns exec <ns> <args...>`.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut v = vec!["ip", "netns", "exec", &self.0];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// Runs `f` on a thread that has entered the namespace (setns affects only the calling
    /// thread), so sockets `f` opens live there. Returns `f`'s result.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || -> Result<T> {
            enter(&path)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Starts a long-running process in the namespace; killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Result<ProcGuard> {
        self.spawn_with(args, Stdio::null(), Stdio::null())
    }

    pub fn spawn_with(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<ProcGuard> {
        // nsenter switches only the network namespace. `ip netns exec` would also give the
        // process a private mount namespace with a fresh /sys, where a bpffs mount (and so
        // every pin of the agent) would be invisible to the host and lost with the process.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.0))
            .arg("--")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {args:?} in {}", self.0))?;
        Ok(ProcGuard(Some(child)))
    }
}

impl Ns {
    /// Loads an nftables ruleset (the text of an `nft -f` file) in the namespace.
    pub fn nft_load(&self, rules: &str) -> Result<()> {
        let path = std::env::temp_dir().join(format!("{}-{}.nft", self.0, crate::unique("r")));
        std::fs::write(&path, rules)?;
        let out = self.exec(&["nft", "-f", path.to_str().unwrap()]);
        let _ignored = std::fs::remove_file(&path);
        out.map(drop)
    }

    /// The packet counts of the `counter` rules of `chain` in table `family table`, in order.
    pub fn nft_counters(&self, family: &str, table: &str, chain: &str) -> Result<Vec<u64>> {
        let out = self.exec(&["nft", "list", "chain", family, table, chain])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "packets")?;
                w.get(i + 1)?.parse().ok()
            })
            .collect())
    }
}

/// The namespaces a topology created, deleted (newest first) by [`Namespaces::delete_all`]
/// and on drop.
#[derive(Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    /// Creates `ns` (recorded at once, so a failure after this still deletes it) with `lo` up.
    pub fn add(&mut self, ns: &Ns) -> Result<()> {
        sh(&["ip", "netns", "add", &ns.0])?;
        self.0.push(ns.0.clone());
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn delete_all(&mut self) {
        for ns in self.0.drain(..).rev() {
            let _ignored = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.delete_all();
    }
}

/// Kills (SIGKILL) and reaps its child on drop.
pub struct ProcGuard(pub Option<Child>);

impl ProcGuard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, |c| c.id())
    }

    /// Sends SIGTERM and waits up to `secs` for exit.
    pub fn terminate(&mut self, secs: u64) {
        if let Some(c) = &mut self.0 {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    self.0 = None;
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ignored = c.kill();
            let _ignored = c.wait();
        }
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A client, a balancer and backends on one bridge.
/// The address family a dual-stack topology test runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// `addr:port` as a peer prints it (`10.0.0.1:` or `[fd00::1]:`), without the port.
    pub fn host_prefix(addr: IpAddr) -> String {
        match addr {
            IpAddr::V4(a) => format!("{a}:"),
            IpAddr::V6(a) => format!("[{a}]:"),
        }
    }

    /// nftables' name of the family (`ip`, `ip6`).
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
}

pub struct Topology {
    pub prefix: String,
    pub net: u8,
    pub switch: Ns,
    pub client: Ns,
    pub balancer: Ns,
    pub backends: Vec<Ns>,
    /// Interface name inside every host namespace.
    pub iface: String,
    /// Holds the XDP pass program on the bridge port facing the balancer.
    _peer_xdp: Option<aya::Ebpf>,
    /// Pins of the peer program (none: it is not pinned).
    namespaces: Namespaces,
}

impl Topology {
    /// Builds the topology with `n` backends. `net` picks 10.<net>.0.0/24.
    pub fn new(n: usize) -> Result<Self> {
        let prefix = crate::unique("lbt");
        // Second octet from the pid/counter so parallel runs use distinct subnets.
        let net = (std::process::id() % 200 + 20) as u8;
        let mut topo = Topology {
            prefix: prefix.clone(),
            net,
            switch: Ns(format!("{prefix}-sw")),
            client: Ns(format!("{prefix}-cl")),
            balancer: Ns(format!("{prefix}-lb")),
            backends: (0..n).map(|i| Ns(format!("{prefix}-b{i}"))).collect(),
            iface: "eth0".into(),
            _peer_xdp: None,
            namespaces: Namespaces::default(),
        };
        topo.build().inspect_err(|_| topo.cleanup())?;
        Ok(topo)
    }

    pub fn vip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 100)
    }
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 1)
    }
    pub fn balancer_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 2)
    }
    pub fn backend_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 11 + i as u8)
    }
    fn ip6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0, self.net as u16, 0, 0, 0, 0, host)
    }
    pub fn vip6(&self) -> Ipv6Addr {
        self.ip6(0x100)
    }
    pub fn client_ip6(&self) -> Ipv6Addr {
        self.ip6(1)
    }
    pub fn balancer_ip6(&self) -> Ipv6Addr {
        self.ip6(2)
    }
    pub fn backend_ip6(&self, i: usize) -> Ipv6Addr {
        self.ip6(0x11 + i as u16)
    }
    /// The VIP of `fam`.
    pub fn vip_of(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => self.vip().into(),
            Family::V6 => self.vip6().into(),
        }
    }
    pub fn client_of(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => self.client_ip().into(),
            Family::V6 => self.client_ip6().into(),
        }
    }
    pub fn balancer_of(&self, fam: Family) -> IpAddr {
        match fam {
            Family::V4 => self.balancer_ip().into(),
            Family::V6 => self.balancer_ip6().into(),
        }
    }
    pub fn backend_of(&self, fam: Family, i: usize) -> IpAddr {
        match fam {
            Family::V4 => self.backend_ip(i).into(),
            Family::V6 => self.backend_ip6(i).into(),
        }
    }
    /// The MAC of `eth0` in `ns`.
    pub fn mac_of(&self, ns: &Ns) -> Result<String> {
        let out = ns.exec(&["cat", &format!("/sys/class/net/{}/address", self.iface)])?;
        Ok(out.trim().to_string())
    }

    fn add_ns(&mut self, ns: &Ns) -> Result<()> {
        self.namespaces.add(ns)
    }

    /// veth pair: `eth0` in `host`, `<port>` in the switch namespace on the bridge.
    fn plug(&mut self, host: &Ns, port: &str, addr: Ipv4Addr, addr6: Ipv6Addr) -> Result<()> {
        let tmp = format!("{}{}", &self.prefix, port);
        let tmp = &tmp[..tmp.len().min(15)];
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
            &self.switch.0,
        ])?;
        sh(&["ip", "link", "set", tmp, "netns", &host.0])?;
        host.exec(&["ip", "link", "set", tmp, "name", &self.iface])?;
        host.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &self.iface,
        ])?;
        host.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{addr6}/64"),
            "dev",
            &self.iface,
            "nodad",
        ])?;
        host.exec(&["ip", "link", "set", &self.iface, "up"])?;
        self.switch
            .exec(&["ip", "link", "set", port, "master", "br0"])?;
        self.switch.exec(&["ip", "link", "set", port, "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let switch = self.switch.clone();
        self.add_ns(&switch)?;
        // No multicast snooping: an MLD report lost while a port came up would otherwise
        // stop neighbour solicitations for that address from being flooded to it.
        switch.exec(&[
            "ip",
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        switch.exec(&["ip", "link", "set", "br0", "up"])?;
        let (client, balancer) = (self.client.clone(), self.balancer.clone());
        self.add_ns(&client)?;
        self.add_ns(&balancer)?;
        self.plug(&client, "pcl", self.client_ip(), self.client_ip6())?;
        self.plug(&balancer, "plb", self.balancer_ip(), self.balancer_ip6())?;
        for (i, b) in self.backends.clone().iter().enumerate() {
            self.add_ns(b)?;
            self.plug(
                b,
                &format!("pb{i}"),
                self.backend_ip(i),
                self.backend_ip6(i),
            )?;
            let vip = format!("{}/32", self.vip());
            b.exec(&["ip", "addr", "add", &vip, "dev", "lo"])?;
            let vip6 = format!("{}/128", self.vip6());
            b.exec(&["ip", "-6", "addr", "add", &vip6, "dev", "lo", "nodad"])?;
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"])?;
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"])?;
            // Replies leave from the VIP towards the client directly (DSR); the client's
            // frames arrive from the balancer's MAC, so loose reverse-path filtering.
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
            b.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.rp_filter=0"])?;
        }
        // veth leaves TCP/UDP checksums to "hardware" (CHECKSUM_PARTIAL); a frame bounced by
        // XDP_TX carries the unfinished checksum to the backend, which drops it. A real NIC
        // finishes checksums before the wire, so the client computes them in software here.
        client.exec(&["ethtool", "-K", &self.iface, "tx", "off"])?;
        client.exec(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", self.vip()),
            "via",
            &self.balancer_ip().to_string(),
        ])?;
        client.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("{}/128", self.vip6()),
            "via",
            &self.balancer_ip6().to_string(),
        ])?;
        self._peer_xdp = Some(attach_pass_in(&switch, "plb")?);
        Ok(())
    }

    fn cleanup(&mut self) {
        self._peer_xdp = None;
        self.namespaces.delete_all();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a valid namespace fd; only this thread changes namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the project's trivial XDP_PASS program to `iface` inside `ns`, from a thread
/// that enters the namespace (setns affects only the calling thread). The returned object
/// keeps it attached; dropping it detaches.
pub fn attach_pass_in(ns: &Ns, iface: &str) -> Result<aya::Ebpf> {
    let ns_name = ns.0.clone();
    let iface = iface.to_string();
    std::thread::spawn(move || -> Result<aya::Ebpf> {
        enter(&format!("/run/netns/{ns_name}"))?;
        let mut ebpf = aya::Ebpf::load(lb_userspace::dataplane::EBPF_OBJECT)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut(lb_common::names::PROG_PASS)
            .context("xdp_pass")?
            .try_into()?;
        prog.load()?;
        prog.attach(&iface, aya::programs::xdp::XdpMode::Default)?;
        Ok(ebpf)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("attach thread panicked"))?
}
