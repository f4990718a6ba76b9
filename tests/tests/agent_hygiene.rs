//! The agent's own files and socket, attacked the way a local user without root would try:
//! a socket folder someone else owns or can write, a file planted at the socket path, a
//! corrupt, oversized or symlinked state file, a symlink planted at the state file's
//! temporary, a second agent, a silent admin peer and a flood of 2,000 admin connections.
//! Every case goes through `lb run` and checks the refusal's message and that nothing the
//! agent keeps (files, state, answers) was damaged.

mod agent_support;

use agent_support::*;
use lb_tests::{lbrun::Agent, netns::ProcGuard, netns::Topology, root_or_skip};
use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::{fs::PermissionsExt, net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const NOBODY: u32 = 65534;

/// A scratch folder (0755, root's) for an agent without the L4 tier.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let d = std::env::temp_dir().join(lb_tests::unique("lbhyg-"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(d)
    }

    /// Writes a config whose admin socket is `socket`, with extra `[admin]` lines.
    fn config(&self, socket: &Path, admin: &str) -> PathBuf {
        let p = self.0.join("lb.toml");
        std::fs::write(
            &p,
            format!("[admin]\nsocket = \"{}\"\n{admin}\n", socket.display()),
        )
        .unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_dir_all(&self.0);
    }
}

fn lb_cmd(socket: &Path) -> Command {
    let mut c = Command::new(lb_tests::lb_binary());
    c.args(["--socket", socket.to_str().unwrap(), "-o", "json"]);
    c.env("RUST_LOG", "warn");
    c
}

/// Starts `lb run` and returns its guard once it answers `lb status`, or its exit code and
/// stderr if it stops first (within 10 s).
fn run(
    config: &Path,
    socket: &Path,
    extra: &[&str],
) -> Result<(ProcGuard, PathBuf), (i32, String)> {
    let log = config.with_extension("log");
    let child = Command::new(lb_tests::lb_binary())
        .args(["run", "--config", config.to_str().unwrap()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut g = ProcGuard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = g.0.as_mut().unwrap().try_wait().unwrap() {
            g.0 = None;
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            return Err((st.code().unwrap_or(-1), err));
        }
        // Started when the socket answers with this process's pid (not another agent's).
        if socket.exists() && status_pid(socket) == Some(g.pid()) {
            return Ok((g, log));
        }
        assert!(
            Instant::now() < deadline,
            "lb run neither answered nor stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status_pid(socket: &Path) -> Option<u32> {
    let out = lb_cmd(socket).arg("status").output().ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

fn refused(config: &Path, socket: &Path, extra: &[&str], says: &[&str]) -> String {
    match run(config, socket, extra) {
        Ok(_) => panic!("lb run started but should refuse ({says:?})"),
        Err((code, err)) => {
            assert_ne!(code, 0, "{err}");
            for s in says {
                assert!(err.contains(s), "message lacks {s:?}:\n{err}");
            }
            err
        }
    }
}

#[test]
fn socket_folders_another_user_could_tamper_with_are_refused() {
    if !root_or_skip("socket folder hygiene") {
        return;
    }
    let s = Scratch::new();
    // Owned by nobody, as if that user had created /run/lb before the agent first ran.
    let foreign = s.0.join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = foreign.join("admin.sock");
    let cfg = s.config(&sock, "");
    refused(
        &cfg,
        &sock,
        &[],
        &["admin socket folder", "foreign", "owned by uid 65534"],
    );
    let left: Vec<_> = std::fs::read_dir(&foreign).unwrap().collect();
    assert!(left.is_empty(), "the agent wrote into the folder: {left:?}");

    // Root's own folder, but inside nobody's: nobody could rename it and put another there.
    let inner = s.0.join("foreign-parent/run");
    std::fs::create_dir_all(&inner).unwrap();
    std::os::unix::fs::chown(inner.parent().unwrap(), Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = inner.join("admin.sock");
    let cfg = s.config(&sock, "");
    refused(
        &cfg,
        &sock,
        &[],
        &["the folder above it", "foreign-parent", "uid 65534"],
    );
    assert!(std::fs::read_dir(&inner).unwrap().next().is_none());

    // Root's, but group-writable.
    let gw = s.0.join("group-writable");
    std::fs::create_dir(&gw).unwrap();
    std::fs::set_permissions(&gw, std::fs::Permissions::from_mode(0o775)).unwrap();
    let sock = gw.join("admin.sock");
    let cfg = s.config(&sock, "");
    refused(
        &cfg,
        &sock,
        &[],
        &[
            "group-writable",
            "writable by its group or by others (mode 775)",
        ],
    );
    assert!(std::fs::read_dir(&gw).unwrap().next().is_none());

    // A missing folder is created 0700.
    let fresh = s.0.join("fresh/run");
    let sock = fresh.join("admin.sock");
    let cfg = s.config(&sock, "");
    let (mut g, _log) = run(&cfg, &sock, &[]).expect("starts");
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    g.terminate(5);
}

#[test]
fn a_file_at_the_socket_path_is_not_removed() {
    if !root_or_skip("socket path hygiene") {
        return;
    }
    let s = Scratch::new();
    let sock = s.0.join("admin.sock");
    std::fs::write(&sock, "not yours").unwrap();
    let cfg = s.config(&sock, "");
    refused(
        &cfg,
        &sock,
        &[],
        &["is not a socket; refusing to remove it"],
    );
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "not yours");
}

/// The state file is unreadable: the agent stops naming it (the drain and maintenance flags
/// it holds must not be lost silently) and leaves it as it was; `--discard-state` starts.
#[test]
fn a_corrupt_huge_or_symlinked_state_file_stops_the_agent() {
    if !root_or_skip("state file hygiene") {
        return;
    }
    let s = Scratch::new();
    let sock = s.0.join("admin.sock");
    let state = s.0.join("admin.state.json");
    let cfg = s.config(&sock, "");
    let corrupt = b"{\"version\":1,\"overrides\":[{\"service\":\"web\"";
    std::fs::write(&state, corrupt).unwrap();
    refused(
        &cfg,
        &sock,
        &[],
        &[state.to_str().unwrap(), "EOF", "--discard-state"],
    );
    assert_eq!(std::fs::read(&state).unwrap(), corrupt, "left as it was");

    std::fs::write(&state, "{\"version\":2,\"overrides\":[]}").unwrap();
    refused(
        &cfg,
        &sock,
        &[],
        &[state.to_str().unwrap(), "state version 2 is not supported"],
    );

    std::fs::File::create(&state)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    refused(
        &cfg,
        &sock,
        &[],
        &[
            state.to_str().unwrap(),
            "67108864 bytes is over the 1048576-byte limit",
        ],
    );
    assert_eq!(std::fs::metadata(&state).unwrap().len(), 64 << 20);

    let victim = s.0.join("victim");
    std::fs::write(&victim, "{\"version\":1,\"overrides\":[]}").unwrap();
    std::fs::remove_file(&state).unwrap();
    std::os::unix::fs::symlink(&victim, &state).unwrap();
    refused(&cfg, &sock, &[], &[state.to_str().unwrap(), "is a symlink"]);

    std::fs::remove_file(&state).unwrap();
    std::fs::write(&state, corrupt).unwrap();
    let (mut g, log) = run(&cfg, &sock, &["--discard-state"]).expect("--discard-state starts");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("--discard-state: starting without the saved overrides"),
        "{text}"
    );
    g.terminate(5);
}

/// A symlink planted at the state file's temporary (owned by nobody, pointing at a file root
/// owns) is not written through: the change stays live, the save is refused and logged, the
/// target and the saved state are intact.
#[test]
fn a_symlinked_state_temporary_is_not_written_through() {
    if !root_or_skip("state temporary hygiene") {
        return;
    }
    let t = Topology::new(2).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        backends: vec![0, 1],
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    lb_ok(&agent, &["drain", "web", "backend-0"]);
    let state = agent.dir.join("admin.state.json");
    let saved = std::fs::read(&state).unwrap();
    let victim = agent.dir.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let tmp = agent.dir.join("admin.state.json.tmp");
    std::os::unix::fs::symlink(&victim, &tmp).unwrap();
    std::os::unix::fs::lchown(&tmp, Some(NOBODY), Some(NOBODY)).unwrap();
    lb_ok(&agent, &["maintenance", "web", "backend-1", "on"]);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        saved,
        "the last good state stays"
    );
    assert!(std::fs::symlink_metadata(&tmp)
        .unwrap()
        .file_type()
        .is_symlink());
    let log = agent.log();
    assert!(
        log.contains("refusing to write the state through a symlink"),
        "{log}"
    );
}

/// Two agents over one pin folder (different sockets): the second stops before touching
/// the maps, naming the pin folder. Two L4-less agents on one socket folder: the socket's
/// lock refuses the second.
#[test]
fn a_second_agent_over_the_same_pins_or_socket_is_refused() {
    if !root_or_skip("single agent") {
        return;
    }
    let t = Topology::new(2).expect("topology");
    let _backends = start_backends(&t).unwrap();
    let o = Opts {
        backends: vec![0, 1],
        ..Default::default()
    };
    let agent = Agent::start(&t.balancer, &config(&t, &o)).unwrap();
    wait_ready(&t, &agent);
    let before = Dump::read(&agent.pin_dir).unwrap();
    let s = Scratch::new();
    let sock2 = s.0.join("admin.sock");
    let text = config(&t, &o)
        .replace("{PIN}", agent.pin_dir.to_str().unwrap())
        .replace("{SOCK}", sock2.to_str().unwrap());
    let cfg2 = s.0.join("lb.toml");
    std::fs::write(&cfg2, text).unwrap();
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.balancer.0))
        .arg("--")
        .arg(lb_tests::lb_binary())
        .args(["run", "--config", cfg2.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("another lb agent is running over")
            && err.contains(agent.pin_dir.to_str().unwrap())
            && err.contains("dataplane.pin_path"),
        "{err}"
    );
    assert!(!sock2.exists(), "the second agent bound its socket");
    assert_eq!(Dump::read(&agent.pin_dir).unwrap(), before);
    assert_eq!(
        lb(&agent, &["status"]).code,
        0,
        "the first agent still answers"
    );

    // No L4 tier: the lock next to the socket.
    let s = Scratch::new();
    let sock = s.0.join("admin.sock");
    let cfg = s.config(&sock, "");
    let (_first, _log) = run(&cfg, &sock, &[]).expect("first starts");
    refused(
        &cfg,
        &sock,
        &[],
        &[
            "another lb agent is running over",
            "admin.lock",
            "admin.socket",
        ],
    );
    assert!(
        lb_cmd(&sock)
            .arg("status")
            .output()
            .unwrap()
            .status
            .success(),
        "the first keeps its socket"
    );
}

/// A peer that connects and says nothing (or half a line) is closed after
/// `admin.idle_timeout_sec` while other clients are served meanwhile.
#[test]
fn a_silent_admin_peer_is_closed_after_the_idle_timeout() {
    if !root_or_skip("admin idle timeout") {
        return;
    }
    let s = Scratch::new();
    let sock = s.0.join("admin.sock");
    let cfg = s.config(&sock, "idle_timeout_sec = 1");
    let (_agent, _log) = run(&cfg, &sock, &[]).expect("starts");
    let silent = UnixStream::connect(&sock).unwrap();
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"{\"version\":1,").unwrap();
    let t0 = Instant::now();
    for _ in 0..5 {
        assert!(lb_cmd(&sock)
            .arg("status")
            .output()
            .unwrap()
            .status
            .success());
    }
    for mut peer in [silent, half] {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut text = String::new();
        peer.read_to_string(&mut text).expect("closed within 5 s");
        assert!(
            text.contains("\"kind\":\"timeout\"") && text.contains("admin.idle_timeout_sec"),
            "{text}"
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

/// Opens 2,000 connections as `nobody` (the socket's mode widened to let that user in):
/// beyond `admin.max_connections` each is answered `busy` and closed, while root's
/// `lb status` and changes keep being served from their own budget.
const FLOOD: &str = r#"
import json, selectors, socket, sys, time
path, n, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    socks.append(s)
sel = selectors.DefaultSelector()
for s in socks:
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
busy, closed, deadline = 0, set(), time.time() + 20
while busy < n - cap and time.time() < deadline:
    for key, _ in sel.select(timeout=0.2):
        data = key.fileobj.recv(4096)
        if b'"busy"' in data and b"max_connections" in data:
            busy += 1
        if not data or b'"busy"' in data:
            sel.unregister(key.fileobj)
            closed.add(key.fileobj)
open_now = sum(1 for s in socks if s not in closed)
print(json.dumps({"busy": busy, "open": open_now}), flush=True)
sys.stdin.readline()
"#;

#[test]
fn two_thousand_admin_connections_are_capped_and_root_is_still_served() {
    if !root_or_skip("admin connection cap") {
        return;
    }
    let s = Scratch::new();
    let sock = s.0.join("admin.sock");
    let cfg = s.config(&sock, "max_connections = 16");
    let (mut agent, _log) = run(&cfg, &sock, &[]).expect("starts");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut flood = Command::new("python3")
        .args(["-c", FLOOD, sock.to_str().unwrap(), "2000", "16"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let counts: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(counts["busy"], 1984, "{counts}");
    assert_eq!(counts["open"], 16, "{counts}");
    // While nobody holds its 16 and keeps knocking, root is served.
    for _ in 0..5 {
        let o = lb_cmd(&sock).arg("status").output().unwrap();
        assert!(o.status.success(), "{o:?}");
    }
    let st: serde_json::Value =
        serde_json::from_slice(&lb_cmd(&sock).arg("status").output().unwrap().stdout).unwrap();
    assert!(st["uptime_sec"].is_u64(), "{st}");
    drop(flood.stdin.take());
    let _ignored = flood.wait();
    assert!(
        agent.0.as_mut().unwrap().try_wait().unwrap().is_none(),
        "agent alive"
    );
}
