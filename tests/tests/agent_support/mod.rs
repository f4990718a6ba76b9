//! Shared pieces of the agent's whole-system tests: a config template, the `lb` client run
//! as a separate process (as an operator would), a reader of the pinned maps (so tests
//! check what the dataplane does, not what the agent says), and a long-lived TCP
//! conversation driven from the client namespace.
#![allow(
    dead_code,
    reason = "each test file uses a different part of this module"
)]

use anyhow::{bail, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    backend_flags, names, Backend, ConnEntry, FlowKey, ServiceMeta, VipAddrSlot, VipKey, VipMeta,
    VipState,
};
use lb_tests::{
    lbrun::{field, tcp_banner, Agent},
    netns::{ProcGuard, Topology},
};
use lb_userspace::dataplane::{
    conn_tables::{ConnTables, Table},
    loader::open_pinned,
};
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

pub const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_lb-backend");
/// Small prime ring so reading the table from the test is cheap (M > 100·N still holds).
pub const RING: u32 = 1021;

/// Knobs of the generated configuration.
pub struct Opts {
    pub backends: Vec<usize>,
    pub failover: Vec<usize>,
    pub failover_ratio: f64,
    pub drain_sec: u32,
    /// TCP health check every `interval` s with these thresholds (none when `None`).
    pub check: Option<(f64, u32, u32)>,
    /// Port of the metrics endpoint on the balancer's 127.0.0.1.
    pub metrics_port: Option<u16>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            backends: vec![0, 1, 2],
            failover: vec![],
            failover_ratio: 0.0,
            drain_sec: 300,
            check: None,
            metrics_port: None,
        }
    }
}

/// One TCP VIP on port 80 in front of service `web`, backends named `backend-<i>`.
pub fn config(t: &Topology, o: &Opts) -> String {
    let mut c = format!(
        r#"
[dataplane]
interfaces = ["{iface}"]
pin_path = "{{PIN}}"
max_services = 4
ring_size = {RING}

[admin]
socket = "{{SOCK}}"

[forwarding_rules.web]
ip_address = "{vip}"
ip_protocol = "TCP"
ports = [80]
backend_service = "web"

[backend_services.web]
protocol = "TCP"
connection_draining_timeout_sec = {drain}
failover_policy = {{ failover_ratio = {ratio} }}
"#,
        iface = t.iface,
        vip = t.vip(),
        drain = o.drain_sec,
        ratio = o.failover_ratio,
    );
    if let Some(p) = o.metrics_port {
        c = c.replace(
            "[admin]\n",
            &format!("[admin]\nmetrics_listen = \"127.0.0.1:{p}\"\n"),
        );
    }
    if let Some((interval, healthy, unhealthy)) = o.check {
        c += &format!(
            "health_check = \"tcp\"\n\n[health_checks.tcp]\nprotocol = \"TCP\"\nport = 80\n\
             check_interval_sec = {interval}\ntimeout_sec = {interval}\n\
             healthy_threshold = {healthy}\nunhealthy_threshold = {unhealthy}\n"
        );
    }
    for i in &o.backends {
        c += &format!(
            "\n[[backend_services.web.backends]]\nname = \"backend-{i}\"\naddress = \"{}\"\nfailover = {}\n",
            t.backend_ip(*i),
            o.failover.contains(i)
        );
    }
    c
}

/// Starts `lb-backend` in backend `i`'s namespace (TCP 80 banner + echo).
pub fn start_backend(t: &Topology, i: usize) -> Result<ProcGuard> {
    let g = t.backends[i].spawn(&[
        BACKEND_BIN,
        &format!("backend-{i}"),
        "80",
        "53",
        &t.vip().to_string(),
    ])?;
    // Wait until it listens, so a health check does not see a starting backend as down.
    let addr = SocketAddr::new(t.backend_ip(i).into(), 80);
    t.balancer.run_in(move || {
        lb_tests::lbrun::wait_for(Duration::from_secs(5), || {
            Ok(TcpStream::connect_timeout(
                &addr,
                Duration::from_millis(200),
            )?)
        })
    })??;
    Ok(g)
}

pub fn start_backends(t: &Topology) -> Result<Vec<ProcGuard>> {
    (0..t.backends.len()).map(|i| start_backend(t, i)).collect()
}

pub fn socket(agent: &Agent) -> PathBuf {
    agent.dir.join("admin.sock")
}

/// Output of one `lb` client run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs `lb --socket S -o json ARGS` (optionally as another user via setpriv).
pub fn lb_as(agent: &Agent, uid: Option<u32>, args: &[&str]) -> Out {
    let lb = lb_tests::lb_binary();
    let sock = socket(agent);
    let mut cmd = match uid {
        None => Command::new(&lb),
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
                "--",
                lb.to_str().unwrap(),
            ]);
            c
        }
    };
    let out = cmd
        .args(["--socket", sock.to_str().unwrap(), "-o", "json"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lb");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

pub fn lb(agent: &Agent, args: &[&str]) -> Out {
    lb_as(agent, None, args)
}

/// Runs a change and insists it worked.
pub fn lb_ok(agent: &Agent, args: &[&str]) -> serde_json::Value {
    let o = lb(agent, args);
    assert_eq!(
        o.code,
        0,
        "lb {args:?} failed: {o:?}\nagent log:\n{}",
        agent.log()
    );
    o.json()
}

/// What the pinned maps say: VIPs, in-use backend slots and each live Maglev table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    pub vips: BTreeMap<VipKey, VipMeta>,
    pub backends: BTreeMap<u32, Backend>,
    pub tables: BTreeMap<u32, Vec<u32>>,
}

impl Maps {
    pub fn read(pin_dir: &Path) -> Result<Maps> {
        let vips: HashMap<MapData, VipKey, VipMeta> = open_pinned(pin_dir, names::MAP_VIPS)?;
        let services: Array<MapData, ServiceMeta> = open_pinned(pin_dir, names::MAP_SERVICES)?;
        let backends: Array<MapData, Backend> = open_pinned(pin_dir, names::MAP_BACKENDS)?;
        let maglev: Array<MapData, u32> = open_pinned(pin_dir, names::MAP_MAGLEV)?;
        let mut m = Maps {
            vips: BTreeMap::new(),
            backends: BTreeMap::new(),
            tables: BTreeMap::new(),
        };
        for kv in vips.iter() {
            let (k, v) = kv?;
            m.vips.insert(k, v);
        }
        for slot in 0..lb_common::limits::MAX_BACKENDS {
            let b = backends.get(&slot, 0)?;
            if b.flags & backend_flags::IN_USE != 0 {
                m.backends.insert(slot, b);
            }
        }
        let sids: std::collections::BTreeSet<u32> = m.vips.values().map(|v| v.service).collect();
        for sid in sids {
            let meta = services.get(&sid, 0)?;
            let base = (sid * 2 + (meta.active & 1)) * RING;
            let t: Result<Vec<u32>, _> = (0..RING).map(|i| maglev.get(&(base + i), 0)).collect();
            m.tables.insert(sid, t?);
        }
        Ok(m)
    }

    /// Maglev slots held by each backend address (absent: not in any table).
    pub fn shares(&self) -> BTreeMap<Ipv4Addr, usize> {
        let mut out = BTreeMap::new();
        for t in self.tables.values() {
            for id in t {
                if let Some(b) = self.backends.get(id) {
                    *out.entry(Ipv4Addr::new(b.addr[0], b.addr[1], b.addr[2], b.addr[3]))
                        .or_default() += 1;
                }
            }
        }
        out
    }

    /// Flags of the in-use slot holding `addr`.
    pub fn flags(&self, addr: Ipv4Addr) -> Option<u32> {
        self.backends
            .values()
            .find(|b| b.addr[..4] == addr.octets())
            .map(|b| b.flags)
    }
}

/// Every entry of every map the programmer writes, plus the connection table, as the
/// kernel holds them: both Maglev halves of every service, every backend slot and VIP
/// state (in use or not). Two equal dumps mean a byte-identical dataplane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dump {
    pub services: Vec<ServiceMeta>,
    pub vip_state: Vec<VipState>,
    /// Non-empty slots of the VIP address set (a restart must not move an address).
    pub addr_slots: Vec<(u32, VipAddrSlot)>,
    pub maglev: Vec<u32>,
    pub backends: Vec<Backend>,
    pub vips: BTreeMap<VipKey, VipMeta>,
    pub conns: BTreeMap<FlowKey, ConnEntry>,
}

impl Dump {
    pub fn read(pin_dir: &Path) -> Result<Dump> {
        fn array<T: aya::Pod>(pins: &Path, name: &str) -> Result<Vec<T>> {
            let a: Array<MapData, T> = open_pinned(pins, name)?;
            (0..a.len())
                .map(|i| Ok(a.get(&i, 0)?))
                .collect::<Result<Vec<T>>>()
        }
        fn hash<K: aya::Pod + Ord, V: aya::Pod>(pins: &Path, name: &str) -> Result<BTreeMap<K, V>> {
            let h: HashMap<MapData, K, V> = open_pinned(pins, name)?;
            Ok(h.iter().collect::<Result<BTreeMap<K, V>, _>>()?)
        }
        Ok(Dump {
            services: array(pin_dir, names::MAP_SERVICES)?,
            vip_state: array(pin_dir, names::MAP_VIP_STATE)?,
            addr_slots: array::<VipAddrSlot>(pin_dir, names::MAP_VIP_ADDR_SET)?
                .into_iter()
                .enumerate()
                .filter(|(_, s)| s.family != 0)
                .map(|(i, s)| (i as u32, s))
                .collect(),
            maglev: array(pin_dir, names::MAP_MAGLEV)?,
            backends: array(pin_dir, names::MAP_BACKENDS)?,
            vips: hash(pin_dir, names::MAP_VIPS)?,
            conns: ConnTables::open(pin_dir)?
                .entries(Table::Established)
                .into_iter()
                .collect(),
        })
    }

    /// Connection-table entries without their last-seen clock (which packets move).
    pub fn flows(&self) -> BTreeMap<FlowKey, (u32, u32, u32, u32)> {
        self.conns
            .iter()
            .map(|(k, e)| (*k, (e.backend, e.generation, e.vip_id, e.vip_generation)))
            .collect()
    }
}

/// Waits until `lb describe service` shows exactly these health verdicts, in backend order
/// ("healthy", "unhealthy", "unknown"); panics with the agent's log after `within`.
pub fn wait_health(agent: &Agent, service: &str, want: &[&str], within: Duration) {
    let got = lb_tests::lbrun::wait_for(within, || {
        let d = lb_ok(agent, &["describe", "service", service]);
        let health: Vec<String> = d["backends"]
            .as_array()
            .context("no backends")?
            .iter()
            .map(|b| b["health"].as_str().unwrap_or("?").to_string())
            .collect();
        anyhow::ensure!(health == want, "health {health:?}, want {want:?}");
        Ok(())
    });
    if let Err(e) = got {
        panic!("{e}; log:\n{}", agent.log());
    }
}

/// Polls the maps every 20 ms until `pred` holds; returns the time it took.
pub fn until_maps(
    pin_dir: &Path,
    within: Duration,
    mut pred: impl FnMut(&Maps) -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(m) = Maps::read(pin_dir) {
            if pred(&m) {
                return Ok(start.elapsed());
            }
        }
        if start.elapsed() > within {
            bail!("the dataplane did not reach the expected state within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` new TCP connections through the VIP from the client; backend name per connection.
pub fn new_flows(t: &Topology, n: usize) -> Result<BTreeMap<String, usize>> {
    let to = SocketAddr::new(t.vip().into(), 80);
    t.client
        .run_in(move || -> Result<BTreeMap<String, usize>> {
            let mut per = BTreeMap::new();
            for _ in 0..n {
                let b = tcp_banner(to, Duration::from_secs(2))?;
                *per.entry(
                    field(&b, "name")
                        .context("banner without a name")?
                        .to_string(),
                )
                .or_default() += 1;
            }
            Ok(per)
        })?
}

/// Index of a backend name `backend-<i>`.
pub fn index_of(name: &str) -> usize {
    name.trim_start_matches("backend-")
        .parse()
        .expect("backend-<i>")
}

/// Waits until the agent answers on its socket and the VIP forwards.
pub fn wait_ready(t: &Topology, agent: &Agent) {
    let sock = socket(agent);
    let ok = lb_tests::lbrun::wait_for(Duration::from_secs(20), || {
        anyhow::ensure!(sock.exists(), "no socket yet");
        let to = SocketAddr::new(t.vip().into(), 80);
        t.client
            .run_in(move || tcp_banner(to, Duration::from_millis(500)))??;
        Ok(())
    });
    assert!(ok.is_ok(), "agent not ready: {ok:?}\nlog:\n{}", agent.log());
}

/// `GET /metrics` from the agent's metrics endpoint on the balancer's 127.0.0.1:`port`: the
/// whole HTTP response.
pub fn scrape(t: &Topology, port: u16) -> String {
    use std::io::{Read, Write};
    t.balancer
        .run_in(move || -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET /metrics HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap()
        .unwrap()
}
