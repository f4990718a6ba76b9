//! The `lb` binary's own edges, without root: `lb validate` reports every error with its
//! line and place, and client verbs without a running agent say what to do.

use std::process::Command;

fn lb(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(lb_tests::lb_binary())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running lb");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn validate_reports_every_error_with_line_and_place() {
    let dir = std::env::temp_dir().join(lb_tests::unique("lb-cli-"));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "[dataplane]\nring_size = 100\n\n[backend_services.web]\nprotocol = \"TCP\"\n\n\
         [[backend_services.web.backends]]\naddress = \"10.0.0.1\"\nweight = 0\n",
    )
    .unwrap();
    let (code, _, err) = lb(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("2 error(s)"), "{err}");
    assert!(
        err.contains("line 2: dataplane.ring_size: 100 is not a prime"),
        "{err}"
    );
    assert!(
        err.contains("line 9: backend_services.web.backends[0].weight: 0 is outside 1..=1000"),
        "{err}"
    );
    std::fs::write(&f, "[backend_services.web]\nprotocol = \"TCP\"\n").unwrap();
    let (code, out, err) = lb(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn client_verbs_without_an_agent_say_what_to_do() {
    let sock = std::env::temp_dir()
        .join(lb_tests::unique("lb-no-agent-"))
        .join("admin.sock");
    let (code, _, err) = lb(&["--socket", sock.to_str().unwrap(), "status"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot connect to the agent") && err.contains("is `lb run` running?"),
        "{err}"
    );
    // Arguments are checked before any connection: a bad value never reaches the agent.
    let (code, _, err) = lb(&[
        "--socket",
        sock.to_str().unwrap(),
        "weight",
        "web",
        "b1",
        "-3",
    ]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = lb(&[
        "--socket",
        sock.to_str().unwrap(),
        "maintenance",
        "web",
        "b1",
        "maybe",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'maybe'"), "{err}");
}

/// Each way a first try commonly fails names its cause and the next step: no agent (start
/// it, or point at its socket), no pinned dataplane (start the agent with interfaces, or
/// name its config), a missing config file (--config, the example), a wrongly typed value
/// (its place, and `lb validate`).
#[test]
fn every_common_failure_says_what_to_do_next() {
    let dir = std::env::temp_dir().join(lb_tests::unique("lb-next-"));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("admin.sock");
    let pins = dir.join("pins");
    let missing = dir.join("missing.toml");
    let typed = dir.join("typed.toml");
    std::fs::write(&typed, "[admin]\nsocket = 5\n").unwrap();
    let (s, p, m, t) = (
        sock.to_str().unwrap(),
        pins.to_str().unwrap(),
        missing.to_str().unwrap(),
        typed.to_str().unwrap(),
    );
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--socket", s, "status"],
            &["systemctl start lb", "--socket"],
        ),
        (
            &["--socket", s, "drain", "web", "b1"],
            &["sudo lb run --config"],
        ),
        (
            &["stats", "--pin-path", p],
            &["no dataplane is pinned", "dataplane.interfaces"],
        ),
        (
            &["flows", "--pin-path", p],
            &["no dataplane is pinned", "--pin-path"],
        ),
        (
            &[
                "explain",
                "--pin-path",
                p,
                "tcp",
                "10.0.0.1",
                "1",
                "10.0.0.2",
                "80",
            ],
            &["no dataplane is pinned", "--config"],
        ),
        (
            &["run", "--config", m],
            &["--config", "example", "lb validate"],
        ),
        (&["validate", m], &["--config", "example"]),
        (
            &["run", "--config", t],
            &["line 2: admin.socket", "lb validate"],
        ),
    ];
    for (args, hints) in cases {
        let (code, _, err) = lb(args);
        assert_ne!(code, 0, "lb {args:?} succeeded");
        for h in *hints {
            assert!(err.contains(h), "lb {args:?}: no {h:?} in:\n{err}");
        }
        assert!(
            !err.contains("Caused by"),
            "lb {args:?} repeats its cause:\n{err}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `lb run` over an interface this host does not have stops at once, naming the setting to
/// fix, and leaves no pinned dataplane behind.
#[test]
fn run_on_a_missing_interface_names_the_setting() {
    if !lb_tests::root_or_skip("lb run on a missing interface") {
        return;
    }
    let dir = std::env::temp_dir().join(lb_tests::unique("lb-noif-"));
    std::fs::create_dir_all(&dir).unwrap();
    let pins = std::path::Path::new("/sys/fs/bpf").join(lb_tests::unique("lbnoif-"));
    let cfg = dir.join("lb.toml");
    std::fs::write(
        &cfg,
        format!(
            "[dataplane]\ninterfaces = [\"lbnosuch0\"]\npin_path = \"{}\"\n\n\
             [admin]\nsocket = \"{}\"\n",
            pins.display(),
            dir.join("admin.sock").display()
        ),
    )
    .unwrap();
    // `timeout` bounds the run should the agent start serving instead of failing.
    let o = Command::new("timeout")
        .arg("60")
        .arg(lb_tests::lb_binary())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    let left = pins.exists();
    let _ = Command::new(lb_tests::lb_binary())
        .args(["down", "--pin-path", pins.to_str().unwrap()])
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no network interface \"lbnosuch0\"") && err.contains("dataplane.interfaces"),
        "{err}"
    );
    assert!(!left, "a refused start left {} pinned", pins.display());
}
