//! A high-availability topology: clients behind a router that runs BIRD with ECMP, several
//! balancers each running `lb run` and BIRD (eBGP to the router, BFD), and backends, all in
//! network namespaces with unique names that the guard removes (BIRD processes included).
//!
//! Wiring (N = a per-run second octet):
//!
//! ```text
//!  client 10.N.1.2 ── eth0|eth1 10.N.1.1  router  10.N.0.1 eth0 ── bridge "lan" ─┬─ balancer 0  10.N.0.2   (XDP on eth0)
//!                                 BIRD: eBGP + BFD to every balancer,            ├─ balancer 1  10.N.0.3   (XDP on eth0)
//!                                 ECMP (merge paths), L4 hash policy 1           ├─ backend 0   10.N.0.11
//!                                                                                ├─ backend 1   10.N.0.12
//!                                                                                └─ backend 2   10.N.0.13
//! ```
//!
//! Each balancer's BIRD announces what its agent writes into the include file (the shipped
//! packaging/bird/bird.conf with this topology's addresses). The router installs one route
//! per VIP with a next hop per announcing balancer and hashes each flow's 5-tuple onto one
//! of them. The balancer's XDP program rewrites the frame's MACs to the chosen backend's
//! (L2 direct server return on the shared segment); backends hold the VIPs on `lo` without
//! answering ARP for them, and answer the client through the router (their default route).
//! The bridge ports facing the balancers carry a trivial XDP program, without which veth
//! drops the balancers' XDP_TX frames (TOOLCHAIN.md), and do not flood unknown unicast (a
//! NIC's MAC filter, which veth lacks: a cut balancer's frames must be lost, not flooded to
//! the other balancer); the client computes checksums in software (`tx off`), since a
//! forwarded frame bounced by XDP keeps veth's unfinished one.

use crate::{
    lbrun::{field, Agent},
    netns::{attach_pass_in, sh, Namespaces, Ns, ProcGuard},
};
use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// The BIRD configuration shipped for balancers; the topology fills in its addresses.
pub const BALANCER_BIRD_CONF: &str = include_str!("../../packaging/bird/bird.conf");

/// VIPs the backends hold on `lo` ([`Ha::vip`] 0..VIPS).
pub const VIPS: u8 = 4;

/// AS of the router; balancer i has 65101 + i.
const ROUTER_AS: u32 = 65000;

pub struct Ha {
    pub prefix: String,
    pub net: u8,
    /// BIRD configurations, sockets, logs and include files.
    pub dir: PathBuf,
    pub router: Ns,
    pub client: Ns,
    pub lan: Ns,
    pub balancers: Vec<Ns>,
    pub backends: Vec<Ns>,
    birds: Vec<ProcGuard>,
    peer_xdp: Vec<aya::Ebpf>,
    namespaces: Namespaces,
}

impl Ha {
    /// Builds the namespaces and links and starts the router's BIRD (balancers' BIRDs start
    /// with [`Ha::start_balancer_bird`], once their include file exists).
    pub fn new(balancers: usize, backends: usize) -> Result<Ha> {
        let prefix = crate::unique("lbha");
        let net = (std::process::id() % 150 + 60) as u8;
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir)?;
        let mut ha = Ha {
            prefix: prefix.clone(),
            net,
            dir,
            router: Ns(format!("{prefix}-rt")),
            client: Ns(format!("{prefix}-cl")),
            lan: Ns(format!("{prefix}-lan")),
            balancers: (0..balancers)
                .map(|i| Ns(format!("{prefix}-lb{i}")))
                .collect(),
            backends: (0..backends)
                .map(|i| Ns(format!("{prefix}-b{i}")))
                .collect(),
            birds: Vec::new(),
            peer_xdp: Vec::new(),
            namespaces: Namespaces::default(),
        };
        ha.build().inspect_err(|_| ha.cleanup())?;
        Ok(ha)
    }

    pub fn vip(&self, k: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 100 + k)
    }
    pub fn router_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 1)
    }
    pub fn balancer_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 2 + i as u8)
    }
    pub fn backend_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, 11 + i as u8)
    }
    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 1, 2)
    }

    /// Balancer i's include file and BIRD control socket.
    pub fn include_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("lb{i}-vips.conf"))
    }
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("lb{i}.ctl"))
    }

    /// The `[announce]` section of balancer i's agent.
    pub fn announce_section(&self, i: usize) -> String {
        format!(
            "[announce]\ndaemon = \"bird\"\ninclude_file = \"{}\"\ncontrol_socket = \"{}\"\n\n",
            self.include_file(i).display(),
            self.control_socket(i).display()
        )
    }

    fn add_ns(&mut self, ns: &Ns) -> Result<()> {
        self.namespaces.add(ns)
    }

    /// A veth pair: `ifname` in `host` with `addr`, `peer` in `other` (on `br0` when
    /// `other` is the LAN).
    fn link(&self, host: &Ns, ifname: &str, addr: &str, other: &Ns, peer: &str) -> Result<()> {
        let tmp = format!("{}{peer}", &self.prefix);
        let tmp = &tmp[tmp.len().saturating_sub(15)..];
        sh(&[
            "ip", "link", "add", tmp, "type", "veth", "peer", "name", peer, "netns", &other.0,
        ])?;
        sh(&["ip", "link", "set", tmp, "netns", &host.0])?;
        host.exec(&["ip", "link", "set", tmp, "name", ifname])?;
        host.exec(&["ip", "addr", "add", addr, "dev", ifname])?;
        host.exec(&["ip", "link", "set", ifname, "up"])?;
        if other.0 == self.lan.0 {
            other.exec(&["ip", "link", "set", peer, "master", "br0"])?;
        }
        other.exec(&["ip", "link", "set", peer, "up"])?;
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let net = self.net;
        for ns in [self.lan.clone(), self.router.clone(), self.client.clone()] {
            self.add_ns(&ns)?;
        }
        let (lan, router, client) = (self.lan.clone(), self.router.clone(), self.client.clone());
        lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lan.exec(&["ip", "link", "set", "br0", "up"])?;
        self.link(&router, "eth0", &format!("10.{net}.0.1/24"), &lan, "prt")?;
        self.link(
            &client,
            "eth0",
            &format!("10.{net}.1.2/24"),
            &router,
            "eth1",
        )?;
        router.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.{net}.1.1/24"),
            "dev",
            "eth1",
        ])?;
        for s in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.fib_multipath_hash_policy=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.eth0.rp_filter=0",
            "net.ipv4.conf.eth1.rp_filter=0",
        ] {
            router.exec(&["sysctl", "-qw", s])?;
        }
        client.exec(&["ethtool", "-K", "eth0", "tx", "off"])?;
        client.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.{net}.1.1"),
        ])?;
        for (i, b) in self.balancers.clone().iter().enumerate() {
            self.add_ns(b)?;
            let port = format!("pl{i}");
            self.link(
                b,
                "eth0",
                &format!("{}/24", self.balancer_ip(i)),
                &lan,
                &port,
            )?;
            self.peer_xdp.push(attach_pass_in(&lan, &port)?);
            // A NIC drops frames for other MACs before XDP sees them; a veth does not. Without
            // this, frames for a balancer whose link is cut would be flooded to the others
            // (the bridge forgets the dead port's MACs) and fail over without the router.
            lan.exec(&["bridge", "link", "set", "dev", &port, "flood", "off"])?;
        }
        for (i, b) in self.backends.clone().iter().enumerate() {
            self.add_ns(b)?;
            self.link(
                b,
                "eth0",
                &format!("{}/24", self.backend_ip(i)),
                &lan,
                &format!("pb{i}"),
            )?;
            for k in 0..VIPS {
                b.exec(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/32", self.vip(k)),
                    "dev",
                    "lo",
                ])?;
            }
            for s in [
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
            ] {
                b.exec(&["sysctl", "-qw", s])?;
            }
            b.exec(&[
                "ip",
                "route",
                "add",
                "default",
                "via",
                &self.router_ip().to_string(),
            ])?;
        }
        self.start_router_bird()
    }

    fn spawn_bird(&mut self, ns: &Ns, name: &str, conf: &str) -> Result<()> {
        let conf_path = self.dir.join(format!("{name}.conf"));
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let ctl = self.dir.join(format!("{name}.ctl"));
        let g = ns.spawn_with(
            &[
                "bird",
                "-f",
                "-c",
                conf_path.to_str().unwrap(),
                "-s",
                ctl.to_str().unwrap(),
            ],
            Stdio::null(),
            Stdio::from(log),
        )?;
        self.birds.push(g);
        crate::lbrun::wait_for(Duration::from_secs(10), || {
            birdc(&ctl, &["show", "status"]).map(|_| ())
        })
        .with_context(|| format!("BIRD {name} did not answer; log:\n{}", self.bird_log(name)))
    }

    fn start_router_bird(&mut self) -> Result<()> {
        let mut conf = format!(
            "router id {rt};\nlog stderr all;\nprotocol device {{ scan time 1; }}\n\
             protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; merge paths on; }}\n\
             protocol bfd {{ interface \"eth0\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
             template bgp balancer {{ local {rt} as {ROUTER_AS}; hold time 3; keepalive time 1; \
             connect retry time 1; error wait time 1, 2; bfd on; ipv4 {{ import all; export none; }}; }}\n",
            rt = self.router_ip()
        );
        for i in 0..self.balancers.len() {
            conf += &format!(
                "protocol bgp lb{i} from balancer {{ neighbor {} as {}; }}\n",
                self.balancer_ip(i),
                65101 + i as u32
            );
        }
        let router = self.router.clone();
        self.spawn_bird(&router, "router", &conf)
    }

    /// Starts balancer i's BIRD from the shipped configuration (its include file must exist:
    /// the agent writes it, or [`Ha::empty_include`] before the agent starts).
    pub fn start_balancer_bird(&mut self, i: usize) -> Result<()> {
        let conf = BALANCER_BIRD_CONF
            .replace("192.0.2.10", &self.balancer_ip(i).to_string())
            .replace("192.0.2.1", &self.router_ip().to_string())
            .replace("65101", &(65101 + i as u32).to_string())
            .replace(
                "/var/lib/lb/bird-vips.conf",
                &self.include_file(i).display().to_string(),
            )
            .replace("log syslog all;", "log stderr all;");
        let ns = self.balancers[i].clone();
        self.spawn_bird(&ns, &format!("lb{i}"), &conf)
    }

    /// Writes an include file announcing nothing (BIRD needs the file to start).
    pub fn empty_include(&self, i: usize) -> Result<()> {
        std::fs::write(
            self.include_file(i),
            "protocol static lb_vips {\n  ipv4;\n}\n",
        )?;
        Ok(())
    }

    pub fn bird_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The router's next hops for `vip` (empty: no route).
    pub fn next_hops(&self, vip: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
        let out = self
            .router
            .exec(&["ip", "route", "show", &format!("{vip}/32")])?;
        let words: Vec<&str> = out.split_whitespace().collect();
        let mut hops: Vec<Ipv4Addr> = words
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// Waits until the router's next hops for `vip` are exactly `want`; returns how long it took.
    pub fn wait_next_hops(
        &self,
        vip: Ipv4Addr,
        want: &[Ipv4Addr],
        within: Duration,
    ) -> Result<Duration> {
        let mut want = want.to_vec();
        want.sort();
        let t0 = Instant::now();
        loop {
            let got = self.next_hops(vip)?;
            if got == want {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > within {
                bail!("router next hops for {vip}: {got:?}, expected {want:?} within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Cuts balancer i's cable: its bridge port goes down.
    pub fn cut_link(&self, i: usize) -> Result<()> {
        self.lan
            .exec(&["ip", "link", "set", &format!("pl{i}"), "down"])?;
        Ok(())
    }

    fn cleanup(&mut self) {
        for b in &mut self.birds {
            b.kill();
        }
        self.peer_xdp.clear();
        self.namespaces.delete_all();
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// `birdc -s <ctl> <args>`: its output, or an error with it.
pub fn birdc(ctl: &std::path::Path, args: &[&str]) -> Result<String> {
    let mut v = vec!["birdc", "-s", ctl.to_str().unwrap()];
    v.extend_from_slice(args);
    let out = sh(&v)?;
    if out.contains("Unable to connect") {
        bail!("{out}");
    }
    Ok(out)
}

/// One short connection from `port` to the VIP: the answering backend's name. Closed with a
/// reset (linger 0), so the same 5-tuple can be used again at once (no TIME_WAIT).
pub fn probe(to: SocketAddr, port: u16) -> Result<String> {
    use std::os::fd::AsRawFd;
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    if sock < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh socket we own; converted into a TcpStream below.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let one: libc::c_int = 1;
    let sa = |ip: Ipv4Addr, p: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: p.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    let SocketAddr::V4(to4) = to else {
        bail!("IPv4 only")
    };
    // SAFETY: plain socket calls on our descriptor with correctly sized arguments.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            4,
        );
        // Bounds the connect too (a SYN nobody answers would otherwise wait minutes).
        let tv = libc::timeval {
            tv_sec: 3,
            tv_usec: 0,
        };
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
        let local = sa(Ipv4Addr::UNSPECIFIED, port);
        if libc::bind(
            stream.as_raw_fd(),
            &local as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            bail!("bind {port}: {}", std::io::Error::last_os_error());
        }
        let remote = sa(*to4.ip(), to4.port());
        if libc::connect(
            stream.as_raw_fd(),
            &remote as *const _ as *const libc::sockaddr,
            len,
        ) != 0
        {
            bail!("connect from {port}: {}", std::io::Error::last_os_error());
        }
    }
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on our socket with a linger struct.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    let name = field(&line, "name")
        .with_context(|| format!("banner {line:?}"))?
        .to_string();
    Ok(name)
}

/// Client ports of every flow to `vip` in balancer `agent`'s connection tables (which
/// balancer carries a flow: the router sends each 5-tuple to one).
pub fn carried(agent: &Agent, vip: Ipv4Addr) -> Result<Vec<u16>> {
    let f = lb_userspace::dataplane::flows::Filter {
        vip: Some(vip.into()),
        ..Default::default()
    };
    let mut ports: Vec<u16> = lb_userspace::dataplane::flows::list(&agent.pin_dir, &f)?
        .into_iter()
        .map(|fl| fl.client_port)
        .collect();
    ports.sort();
    ports.dedup();
    Ok(ports)
}

/// A long-lived connection exchanging a line every 100 ms from the client namespace until
/// stopped; records every successful exchange's time and the first error.
pub struct Talker {
    pub backend: String,
    pub local_port: u16,
    stop: Arc<AtomicBool>,
    /// Successful exchanges so far.
    done: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Result<Vec<Instant>, String>>>,
}

impl Talker {
    pub fn open(client: &Ns, to: SocketAddr) -> Result<Talker> {
        let (tx, rx) = std::sync::mpsc::channel::<Result<(String, u16), String>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done2 = done.clone();
        let ns = client.clone();
        let thread = std::thread::spawn(move || {
            ns.run_in(move || talk(to, &tx, &stop2, &done2))
                .map_err(|e| e.to_string())?
        });
        let (backend, local_port) = rx
            .recv_timeout(Duration::from_secs(5))
            .context("no banner")?
            .map_err(anyhow::Error::msg)?;
        Ok(Talker {
            backend,
            local_port,
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// Successful exchanges so far.
    pub fn exchanges(&self) -> usize {
        self.done.load(Ordering::SeqCst)
    }

    /// Stops it: the times of its successful exchanges, or its first error.
    pub fn finish(mut self) -> Result<Vec<Instant>, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().map_or(Err("no thread".into()), |t| {
            t.join().map_err(|_| "panicked".to_string())?
        })
    }
}

impl Drop for Talker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ignored = t.join();
        }
    }
}

/// The talker's loop. Linear retransmission timeouts (`TCP_THIN_LINEAR_TIMEOUTS`, for
/// streams with few packets in flight) keep the client retrying every RTO while the router
/// has not yet moved the flow, rather than backing off past the failover.
fn talk(
    to: SocketAddr,
    tx: &std::sync::mpsc::Sender<Result<(String, u16), String>>,
    stop: &AtomicBool,
    done: &std::sync::atomic::AtomicUsize,
) -> Result<Vec<Instant>, String> {
    use std::os::fd::AsRawFd;
    let s = match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e.to_string()));
            return Err(e.to_string());
        }
    };
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on our socket with an int option.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_THIN_LINEAR_TIMEOUTS,
            &one as *const _ as *const libc::c_void,
            4,
        );
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(8)));
    let local = s.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut banner = String::new();
    r.read_line(&mut banner).map_err(|e| e.to_string())?;
    let name = field(&banner, "name").unwrap_or("?").to_string();
    let _ = tx.send(Ok((name.clone(), local)));
    let mut times = Vec::new();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let mut line = String::new();
        writeln!(w, "ping{i}").map_err(|e| format!("write {i}: {e}"))?;
        let n = r
            .read_line(&mut line)
            .map_err(|e| format!("read {i}: {e}"))?;
        if n == 0 || line.trim() != format!("{name} ping{i}") {
            return Err(format!("exchange {i}: got {line:?}"));
        }
        times.push(Instant::now());
        done.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(times)
}

pub fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}
