//! `lb` as a system service: the systemd unit verifies, `lb run` speaks the notify protocol
//! (READY=1 only once it serves, WATCHDOG=1 at half of WATCHDOG_USEC, STOPPING=1), logs
//! carry no colour codes off a terminal and parse as JSON with `--log-format json`, and the
//! Debian package metadata names files that exist. The agents here run with the L4 tier
//! off (no interfaces), so they need neither namespaces nor BPF.

use lb_tests::netns::ProcGuard;
use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A private folder with a config whose admin socket lives in it; removed on drop.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(lb_tests::unique("lb-service-"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "[admin]\nsocket = \"{}\"\n",
            dir.join("run").join("admin.sock").display()
        );
        std::fs::write(dir.join("lb.toml"), cfg).unwrap();
        Scratch { dir }
    }
    fn config(&self) -> PathBuf {
        self.dir.join("lb.toml")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("run").join("admin.sock")
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("lb.log")).unwrap_or_default()
    }

    /// Starts `lb [extra] run --config <cfg>` with stderr to `lb.log` and `env` set.
    fn spawn(&self, extra: &[&str], env: &[(&str, String)]) -> ProcGuard {
        let log = std::fs::File::create(self.dir.join("lb.log")).unwrap();
        let mut cmd = Command::new(lb_tests::lb_binary());
        cmd.args(extra)
            .args(["run", "--config", self.config().to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        ProcGuard(Some(cmd.spawn().expect("spawning lb run")))
    }

    /// Whether the admin socket answers `lb status`.
    fn status_ok(&self) -> bool {
        Command::new(lb_tests::lb_binary())
            .args(["--socket", self.socket().to_str().unwrap(), "status"])
            .env("RUST_LOG", "warn")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn wait_serving(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.status_ok() {
            assert!(
                Instant::now() < deadline,
                "agent not serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn unit_verifies_with_systemd_analyze() {
    let unit = repo_root().join("packaging/lb.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/usr/bin/lb reload",
        "RuntimeDirectory=lb",
        "CAP_BPF",
        "ReadWritePaths=/sys/fs/bpf",
    ] {
        assert!(text.contains(needed), "unit lacks {needed}");
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!(
            "skipping systemd-analyze verify: not installed (scripts/bootstrap.sh installs it)"
        );
        return;
    };
    // verify checks that ExecStart's binary exists: point the unit at the built one.
    let s = Scratch::new();
    let lb = lb_tests::lb_binary();
    let copy = s.dir.join("lb.service");
    std::fs::write(&copy, text.replace("/usr/bin/lb", lb.to_str().unwrap())).unwrap();
    let o = Command::new(analyze)
        .args(["verify", "--man=no", copy.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // Lines about other units on this machine (or its missing systemd instance) are not ours.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("lb.service")).collect();
    assert!(
        o.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{err}",
        o.status
    );
}

fn which(cmd: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .find(|f| f.is_file())
        })
        .ok_or(())
}

#[test]
fn ready_after_serving_then_watchdog_pings_and_stopping() {
    let s = Scratch::new();
    let notify = s.dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // 300 ms: the agent pings every 150 ms.
    let mut agent = s.spawn(
        &[],
        &[
            ("NOTIFY_SOCKET", notify.display().to_string()),
            ("WATCHDOG_USEC", "300000".into()),
        ],
    );
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        assert!(Instant::now() < deadline, "no READY=1:\n{}", s.log());
        if let Ok(n) = rx.recv(&mut buf) {
            break String::from_utf8_lossy(&buf[..n]).to_string();
        }
    };
    // The first message is READY=1, and by then the admin socket answers.
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(
        s.status_ok(),
        "READY=1 before the admin socket answers:\n{}",
        s.log()
    );

    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_millis(1500) {
        if let Ok(n) = rx.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            assert_eq!(msg, "WATCHDOG=1", "unexpected message");
            pings += 1;
        }
    }
    // 1.5 s at one per 150 ms: 10; allow a loaded machine to lose some.
    assert!((5..=12).contains(&pings), "{pings} watchdog pings in 1.5 s");

    agent.terminate(10);
    let mut stopping = false;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !stopping {
        if let Ok(n) = rx.recv(&mut buf) {
            stopping = &buf[..n] == b"STOPPING=1";
        }
    }
    assert!(stopping, "no STOPPING=1:\n{}", s.log());
}

#[test]
fn no_watchdog_pings_without_watchdog_usec_and_none_for_another_pid() {
    let s = Scratch::new();
    let notify = s.dir.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut agent = s.spawn(
        &[],
        &[
            ("NOTIFY_SOCKET", notify.display().to_string()),
            ("WATCHDOG_USEC", "200000".into()),
            // A watchdog meant for another process (e.g. a wrapper): not ours to feed.
            ("WATCHDOG_PID", "1".into()),
        ],
    );
    s.wait_serving(Duration::from_secs(20));
    let mut buf = [0u8; 512];
    let mut msgs = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        if let Ok(n) = rx.recv(&mut buf) {
            msgs.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    assert_eq!(msgs, ["READY=1\nSTATUS=serving"], "{}", s.log());
    agent.terminate(10);
}

#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let s = Scratch::new();
    let mut agent = s.spawn(&[], &[]);
    s.wait_serving(Duration::from_secs(20));
    agent.terminate(10);
    let log = s.log();
    assert!(log.contains("admin socket ready"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape in a log file:\n{log}");
}

#[test]
fn json_logs_parse_line_by_line() {
    let s = Scratch::new();
    let mut agent = s.spawn(&["--log-format", "json"], &[]);
    s.wait_serving(Duration::from_secs(20));
    agent.terminate(10);
    let log = s.log();
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}\n{log}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        if let Some(m) = v.pointer("/fields/message").and_then(|m| m.as_str()) {
            messages.push(m.to_string());
        }
    }
    assert!(
        messages.iter().any(|m| m == "admin socket ready"),
        "{messages:?}"
    );
}

#[test]
fn down_and_stats_read_the_pin_path_from_the_config() {
    let s = Scratch::new();
    let pins = PathBuf::from("/sys/fs/bpf").join(lb_tests::unique("lb-service-pins-"));
    std::fs::write(
        s.config(),
        format!("[dataplane]\npin_path = \"{}\"\n", pins.display()),
    )
    .unwrap();
    let o = Command::new(lb_tests::lb_binary())
        .args(["down", "--config", s.config().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains(&pins.display().to_string()),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // An unreadable explicit config is an error naming the file, never the default folder.
    let missing = s.dir.join("missing.toml");
    let o = Command::new(lb_tests::lb_binary())
        .args(["down", "--config", missing.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("missing.toml"), "{err}");
    // --pin-path and --config together are refused by the argument parser.
    let o = Command::new(lb_tests::lb_binary())
        .args(["down", "--config", "x.toml", "--pin-path", "/sys/fs/bpf/x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn completions_are_generated() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef lb"),
        ("fish", "complete -c lb"),
    ] {
        let o = Command::new(lb_tests::lb_binary())
            .args(["completions", shell])
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success() && out.contains(marker), "{shell}: {out}");
        assert!(out.contains("drain") && out.contains("reload"), "{shell}");
    }
}

#[test]
fn manual_page_is_generated() {
    let o = Command::new(lb_tests::lb_binary())
        .arg("manpage")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains(".TH lb 1"), "{out}");
    for verb in ["run", "validate", "flows", "explain", "down"] {
        assert!(out.contains(verb), "manual page lacks {verb}");
    }
}

/// `cargo deb` (what `cargo xtask deb` runs after a release build) packages the binary
/// built for the tests; the package holds every file a host needs, the example config is a
/// conffile and valid, the unit inside it verifies, and the packaged binary runs.
#[test]
fn deb_package_builds_and_holds_what_it_should() {
    let have = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        // `cargo xtask test` installs cargo-deb first, so there this cannot skip.
        assert!(
            std::env::var_os("LB_REQUIRE_ROOT").is_none(),
            "cargo-deb missing: `cargo xtask test` installs it (cargo install --locked cargo-deb)"
        );
        eprintln!("skipping: cargo-deb not installed (cargo xtask deb installs it)");
        return;
    }
    let s = Scratch::new();
    let lb = lb_tests::lb_binary();
    // The assets' target/release/ paths follow --profile: write the generated files beside
    // the binary, as `cargo xtask deb` does beside the release one.
    let gen = lb.parent().unwrap().join("completions");
    std::fs::create_dir_all(&gen).unwrap();
    for (args, file) in [
        (&["completions", "bash"][..], "lb.bash"),
        (&["completions", "zsh"][..], "_lb"),
        (&["completions", "fish"][..], "lb.fish"),
        (&["manpage"][..], "lb.1"),
    ] {
        let o = Command::new(&lb).args(args).output().unwrap();
        assert!(o.status.success() && !o.stdout.is_empty(), "lb {args:?}");
        std::fs::write(gen.join(file), o.stdout).unwrap();
    }
    let deb = s.dir.join("lb.deb");
    let o = Command::new("cargo")
        .current_dir(repo_root())
        .args(["deb", "-p", "lb-userspace", "--no-build", "--fast"])
        .args(["--profile", "dev", "-o", deb.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo deb: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let root = s.dir.join("root");
    let run = |args: &[&str]| {
        let o = Command::new("dpkg-deb").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "dpkg-deb {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    run(&["-x", deb.to_str().unwrap(), root.to_str().unwrap()]);
    for needed in [
        "usr/bin/lb",
        "lib/systemd/system/lb.service",
        "etc/lb/lb.toml",
        "usr/share/bash-completion/completions/lb",
        "usr/share/zsh/vendor-completions/_lb",
        "usr/share/fish/vendor_completions.d/lb.fish",
        "usr/share/man/man1/lb.1",
        "usr/share/doc/lb/README.md",
        "usr/share/doc/lb/copyright",
    ] {
        let f = root.join(needed);
        assert!(
            f.is_file() && f.metadata().unwrap().len() > 0,
            "package lacks {needed}"
        );
    }
    assert_eq!(run(&["-f", deb.to_str().unwrap(), "Package"]).trim(), "lb");
    assert_eq!(
        run(&["-I", deb.to_str().unwrap(), "conffiles"]).trim(),
        "/etc/lb/lb.toml"
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/lb.service")).unwrap();
    assert_eq!(
        unit,
        std::fs::read_to_string(repo_root().join("packaging/lb.service")).unwrap()
    );
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/lb")).unwrap();
    assert!(
        bash.contains("explain") && bash.contains("drain"),
        "bash completion"
    );

    // The packaged binary runs and accepts the packaged example configuration.
    let packaged = root.join("usr/bin/lb");
    let o = Command::new(&packaged)
        .args(["validate", root.join("etc/lb/lb.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
