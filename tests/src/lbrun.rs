//! Running the `lb` agent in a topology's balancer namespace with a generated config, a
//! private pin folder and admin socket; the guard stops it and removes the pins.

use crate::netns::{sh, Ns, ProcGuard};
use anyhow::{bail, Result};
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

pub struct Agent {
    pub ns: Ns,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    pub dir: PathBuf,
    pub proc: ProcGuard,
}

impl Agent {
    /// Writes `config` (TOML; `{PIN}` and `{SOCK}` are replaced by private paths) and starts
    /// `lb run` in `ns`, logging to `<dir>/lb.log`.
    pub fn start(ns: &Ns, config: &str) -> Result<Agent> {
        let name = crate::unique("lbagent-");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(&name);
        let text = config
            .replace("{PIN}", &pin_dir.display().to_string())
            .replace("{SOCK}", &dir.join("admin.sock").display().to_string());
        let path = dir.join("lb.toml");
        std::fs::write(&path, text)?;
        let proc = Self::spawn(ns, &path, &dir)?;
        Ok(Agent {
            ns: ns.clone(),
            config: path,
            pin_dir,
            dir,
            proc,
        })
    }

    fn spawn(ns: &Ns, config: &std::path::Path, dir: &std::path::Path) -> Result<ProcGuard> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("lb.log"))?;
        let lb = crate::lb_binary();
        ns.spawn_with(
            &[
                lb.to_str().unwrap(),
                "run",
                "--config",
                config.to_str().unwrap(),
            ],
            Stdio::null(),
            Stdio::from(log),
        )
    }

    /// Replaces the config file and sends SIGHUP (reload).
    pub fn reload(&self, config: &str) -> Result<()> {
        let text = config
            .replace("{PIN}", &self.pin_dir.display().to_string())
            .replace("{SOCK}", &self.dir.join("admin.sock").display().to_string());
        std::fs::write(&self.config, text)?;
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
        self.proc = Self::spawn(&self.ns, &self.config, &self.dir)?;
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
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect(to)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"hi")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
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

/// Writes a line and reads the echo.
pub fn exchange(s: &mut TcpStream, msg: &str) -> Result<String> {
    writeln!(s, "{msg}")?;
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone()?);
    r.read_line(&mut line)?;
    Ok(line.trim().to_string())
}
