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
