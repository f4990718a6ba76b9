//! Running the `lb` agent in a topology's balancer namespace with a generated config, a
//! private pin folder and admin socket; the guard stops it and removes the pins.

use crate::netns::{sh, Ns, ProcGuard};
use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::mpsc,
    time::{Duration, Instant},
};

pub struct Agent {
    pub ns: Ns,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
    pub proc: ProcGuard,
    /// Options of `lb run` after the config (`--xdp-log`, ...), kept for restarts.
    pub run_args: Vec<String>,
}

impl Agent {
    /// Writes `config` (TOML; `{PIN}` and `{SOCK}` are replaced by private paths) and starts
    /// `lb run` in `ns`, logging to `<dir>/lb.log`.
    pub fn start(ns: &Ns, config: &str) -> Result<Agent> {
        Self::start_with_args(ns, config, &[])
    }

    /// [`Agent::start`] with more `lb run` options.
    pub fn start_with_args(ns: &Ns, config: &str, run_args: &[&str]) -> Result<Agent> {
        let name = crate::unique("lbagent-");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let text = config
            .replace("{PIN}", &pin_dir.display().to_string())
            .replace("{SOCK}", &dir.join("admin.sock").display().to_string());
        let path = dir.join("lb.toml");
        std::fs::write(&path, text)?;
        let run_args: Vec<String> = run_args.iter().map(|a| a.to_string()).collect();
        let proc = Self::spawn(ns, &path, &dir, &run_args)?;
        Ok(Agent {
            ns: ns.clone(),
            config: path,
            pin_dir,
            dir,
            proc,
            run_args,
        })
    }

    fn spawn(
        ns: &Ns,
        config: &std::path::Path,
        dir: &std::path::Path,
        run_args: &[String],
    ) -> Result<ProcGuard> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("lb.log"))?;
        let lb = crate::lb_binary();
        let mut args = vec![
            lb.to_str().unwrap(),
            "run",
            "--config",
            config.to_str().unwrap(),
        ];
        args.extend(run_args.iter().map(String::as_str));
        ns.spawn_with(&args, Stdio::null(), Stdio::from(log))
    }

    /// Replaces the config file (`{PIN}`/`{SOCK}` filled in) without telling the agent.
    pub fn rewrite_config(&self, config: &str) -> Result<()> {
        let text = config
            .replace("{PIN}", &self.pin_dir.display().to_string())
            .replace("{SOCK}", &self.dir.join("admin.sock").display().to_string());
        std::fs::write(&self.config, text)?;
        Ok(())
    }

    /// Replaces the config file and sends SIGHUP (reload).
    pub fn reload(&self, config: &str) -> Result<()> {
        self.rewrite_config(config)?;
        // SAFETY: signalling our own child (ip netns exec execs lb in place).
        unsafe { libc::kill(self.proc.pid() as i32, libc::SIGHUP) };
        Ok(())
    }

    /// Kills the agent (SIGKILL) without cleanup, as a crash would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the agent again with the same config (it adopts the pinned dataplane).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.proc = Self::spawn(&self.ns, &self.config, &self.dir, &self.run_args)?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.proc.kill();
        let lb = crate::lb_binary();
        let _ignored = sh(&[
            lb.to_str().unwrap(),
            "down",
            "--pin-path",
            self.pin_dir.to_str().unwrap(),
        ]);
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `[dataplane]` and `[admin]` sections of a test agent: XDP on the topology's interface,
/// room for 4 services, private pins and socket (`{PIN}`/`{SOCK}`, filled in by
/// [`Agent::start`]).
pub fn agent_sections(t: &crate::netns::Topology) -> String {
    format!(
        "[dataplane]\ninterfaces = [\"{}\"]\npin_path = \"{{PIN}}\"\nmax_services = 4\n\n[admin]\nsocket = \"{{SOCK}}\"\n\n",
        t.iface
    )
}

/// The GSP041 lab's resources (seed 000): the `/2` HTTP health check expecting `True`, the
/// `primes` TCP service with `backends` backends `primes-<i>`, and the VIP on port 80.
pub fn gsp041_sections(t: &crate::netns::Topology, backends: usize) -> String {
    let mut cfg = format!(
        r#"
[health_checks.http-2]
protocol = "HTTP"
port = 80
request_path = "/2"
response = "True"
check_interval_sec = 1
timeout_sec = 1

[backend_services.primes]
protocol = "TCP"
health_check = "http-2"

[forwarding_rules.primes-vip]
ip_address = "{vip}"
ip_protocol = "TCP"
ports = [80]
backend_service = "primes"
"#,
        vip = t.vip()
    );
    for i in 0..backends {
        cfg += &format!(
            "[[backend_services.primes.backends]]\nname = \"primes-{i}\"\naddress = \"{}\"\n",
            t.backend_ip(i)
        );
    }
    cfg
}

/// One TCP exchange: connect, read the backend's banner line. Returns the banner.
pub fn tcp_banner(to: SocketAddr, timeout: Duration) -> Result<String> {
    let s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    if line.is_empty() {
        bail!("connection closed without a banner");
    }
    Ok(line.trim().to_string())
}

/// One UDP exchange on a connected socket (so only replies from `to` are accepted).
pub fn udp_banner(to: SocketAddr, timeout: Duration) -> Result<String> {
    let any = if to.is_ipv6() {
        IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
    };
    udp_banner_from(any, to, timeout, 1)
}

/// A UDP exchange from address `src` with `to`, the datagram sent up to `sends` times from
/// the same socket (so the same flow) while no answer comes within `timeout`: UDP has no
/// retransmission of its own, and a datagram may be lost on a loaded machine.
pub fn udp_banner_from(
    src: IpAddr,
    to: SocketAddr,
    timeout: Duration,
    sends: u32,
) -> Result<String> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
    s.connect(to)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 512];
    let mut sent = 0;
    let n = loop {
        s.send(b"hi")?;
        sent += 1;
        match s.recv(&mut buf) {
            Ok(n) => break n,
            Err(e) if sent < sends && e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    };
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// Tries `f` until it succeeds or `within` passes.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A field `key=value` of a banner.
pub fn field<'a>(banner: &'a str, key: &str) -> Option<&'a str> {
    banner
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `n` TCP (or UDP) exchanges with `to` from namespace `ns`: the backends' banners, within
/// 60 s.
pub fn banners(ns: &Ns, to: SocketAddr, n: usize, udp: bool) -> Result<Vec<String>> {
    ns.run_in(move || -> Result<Vec<String>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            anyhow::ensure!(Instant::now() < deadline, "{n} exchanges took over 60 s");
            out.push(if udp {
                udp_banner(to, Duration::from_secs(2))?
            } else {
                tcp_banner(to, Duration::from_secs(2))?
            });
        }
        Ok(out)
    })?
}

/// Waits up to 20 s for `to` to answer over TCP from `ns`. On failure the namespaces are
/// kept for `LB_TEST_HOLD` seconds when that is set (a debugging aid), then the error
/// carries the agent's log.
pub fn wait_answering(ns: &Ns, to: SocketAddr, agent: &Agent) -> Result<()> {
    let ok = ns.run_in(move || {
        wait_for(Duration::from_secs(20), || {
            tcp_banner(to, Duration::from_millis(500))
        })
    })?;
    if let Err(e) = ok {
        if let Ok(secs) = std::env::var("LB_TEST_HOLD") {
            eprintln!(
                "holding {} / {} for {secs} s",
                ns.0,
                agent.pin_dir.display()
            );
            std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
        }
        bail!("{to} never answered: {e}; agent log:\n{}", agent.log());
    }
    Ok(())
}

/// Writes a line and reads the echo.
pub fn exchange(s: &mut TcpStream, msg: &str) -> Result<String> {
    writeln!(s, "{msg}")?;
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone()?);
    r.read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A long-lived TCP connection through the VIP, held by a thread in the client namespace.
pub struct Conversation {
    pub backend: String,
    cmd: mpsc::Sender<Option<String>>,
    res: mpsc::Receiver<Result<String, String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Conversation {
    pub fn open(t: &crate::netns::Topology) -> Result<Conversation> {
        Self::open_to(t, SocketAddr::new(t.vip().into(), 80))
    }

    /// A conversation with `to` (e.g. the IPv6 VIP).
    pub fn open_to(t: &crate::netns::Topology, to: SocketAddr) -> Result<Conversation> {
        Self::open_from(&t.client, to)
    }

    /// A conversation with `to` from namespace `ns`.
    pub fn open_from(ns: &Ns, to: SocketAddr) -> Result<Conversation> {
        let (cmd_tx, cmd_rx) = mpsc::channel::<Option<String>>();
        let (res_tx, res_rx) = mpsc::channel::<Result<String, String>>();
        let ns = ns.clone();
        let thread = std::thread::spawn(move || {
            let _ignored = ns.run_in(move || {
                let s = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(s) => s,
                    Err(e) => return drop(res_tx.send(Err(e.to_string()))),
                };
                let _ignored = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut w = s.try_clone().expect("clone");
                let mut r = BufReader::new(s);
                let mut line = String::new();
                let _ignored = r.read_line(&mut line);
                let _ignored = res_tx.send(Ok(line.trim().to_string()));
                while let Ok(Some(msg)) = cmd_rx.recv() {
                    let mut line = String::new();
                    let res = writeln!(w, "{msg}")
                        .map_err(|e| e.to_string())
                        .and_then(|_| r.read_line(&mut line).map_err(|e| e.to_string()))
                        .and_then(|n| {
                            if n == 0 {
                                Err("closed".into())
                            } else {
                                Ok(line.trim().to_string())
                            }
                        });
                    if res_tx.send(res).is_err() {
                        return;
                    }
                }
            });
        });
        let banner = res_rx
            .recv_timeout(Duration::from_secs(5))
            .context("no banner")?
            .map_err(anyhow::Error::msg)?;
        let backend = field(&banner, "name")
            .context("banner without name")?
            .to_string();
        Ok(Conversation {
            backend,
            cmd: cmd_tx,
            res: res_rx,
            thread: Some(thread),
        })
    }

    /// One exchange: a line out, the backend's echo back (within 3 s).
    pub fn exchange(&self, msg: &str) -> Result<String, String> {
        self.cmd
            .send(Some(msg.to_string()))
            .map_err(|e| e.to_string())?;
        self.res
            .recv_timeout(Duration::from_secs(3))
            .map_err(|e| format!("no reply: {e}"))?
    }

    /// Whether an exchange succeeds with the expected echo.
    pub fn works(&self, i: usize) -> bool {
        self.exchange(&format!("ping{i}")) == Ok(format!("{} ping{i}", self.backend))
    }
}

impl Drop for Conversation {
    fn drop(&mut self) {
        let _ignored = self.cmd.send(None);
        if let Some(t) = self.thread.take() {
            let _ignored = t.join();
        }
    }
}

/// `lb run` on the host (L7 only, no dataplane) in a private folder holding its config
/// (`lb.toml`), its log (`lb.log`) and, where the config puts it, its admin socket
/// (`admin.sock`). Dropping it stops the agent (SIGTERM, then SIGKILL after 5 s) and removes
/// the folder. The L7 test suites' runners are thin layers over this one.
pub struct LocalRun {
    pub dir: PathBuf,
    proc: ProcGuard,
}

impl LocalRun {
    /// Writes `config(dir)` and starts `lb run` on it; `nofile` sets the agent's
    /// RLIMIT_NOFILE (soft and hard). Returns at once: callers wait for what they need.
    pub fn start(prefix: &str, config: impl FnOnce(&Path) -> String, nofile: Option<u64>) -> Self {
        use std::os::unix::process::CommandExt;
        let dir = std::env::temp_dir().join(crate::unique(prefix));
        std::fs::create_dir_all(&dir).expect("test folder");
        let cfg = dir.join("lb.toml");
        std::fs::write(&cfg, config(&dir)).expect("config");
        let log = std::fs::File::create(dir.join("lb.log")).expect("log file");
        let mut cmd = std::process::Command::new(crate::lb_binary());
        cmd.args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(n) = nofile {
            // SAFETY: only setrlimit between fork and exec (async-signal-safe).
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                })
            };
        }
        let proc = ProcGuard(Some(cmd.spawn().expect("lb run")));
        LocalRun { dir, proc }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    /// `lb <args> --socket <this agent's socket>`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(crate::lb_binary())
            .args(args)
            .arg("--socket")
            .arg(self.socket())
            .output()
            .expect("lb")
    }
}

impl Drop for LocalRun {
    fn drop(&mut self) {
        self.proc.terminate(5);
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}
