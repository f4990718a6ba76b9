//! `lb run` with an L7-only configuration: the agent serves the URL map, and a reload
//! through the admin socket swaps the routing (a broken file changes nothing). Loopback only;
//! needs root only because `lb run` is the root agent (it checks peers and may pin maps).

use lb_tests::{lb_binary, netns::ProcGuard, root_or_skip, unique};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/lab");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET over a fresh connection; returns (status, the X-Backend header).
fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: primes.test\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let backend = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("x-backend: ")
                .or_else(|| l.strip_prefix("X-Backend: "))
        })
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((status, backend))
}

fn config(dir: &std::path::Path, listen: u16, a: u16, b: u16, default: &str) -> String {
    format!(
        r#"
[admin]
socket = "{sock}"

[backend_services.a]
protocol = "HTTP"
backends = [{{ name = "primes-a", address = "127.0.0.1", port = {a} }}]

[backend_services.b]
protocol = "HTTP"
backends = [{{ name = "primes-b", address = "127.0.0.1", port = {b} }}]

[url_maps.m]
default_service = "{default}"

[target_http_proxies.p]
url_map = "m"

[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{listen}]
target = "p"
"#,
        sock = dir.join("admin.sock").display()
    )
}

fn lb_cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(lb_binary())
        .args(args)
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .output()
        .unwrap()
}

/// Waits until GET / answers 200 from `want`, within 10 s.
fn until_backend(port: u16, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((200, b)) = get(port, "/7") {
            if b == want {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn reload_through_the_admin_socket_swaps_the_url_map() {
    if !root_or_skip("agent L7 reload") {
        return;
    }
    let dir = std::env::temp_dir().join(unique("lbl7-"));
    std::fs::create_dir_all(&dir).unwrap();
    let (pa, pb, listen) = (free_port(), free_port(), free_port());
    let spawn = |args: &[&str]| {
        ProcGuard(Some(
            Command::new(args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    let backend = format!("{LAB}/primes_backend.py");
    let _a = spawn(&["python3", &backend, "primes-a", &pa.to_string()]);
    let _b = spawn(&["python3", &backend, "primes-b", &pb.to_string()]);
    let cfg = dir.join("lb.toml");
    std::fs::write(&cfg, config(&dir, listen, pa, pb, "a")).unwrap();
    let log = std::fs::File::create(dir.join("lb.log")).unwrap();
    let _agent = ProcGuard(Some(
        Command::new(lb_binary())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ));
    let agent_log = || std::fs::read_to_string(dir.join("lb.log")).unwrap_or_default();
    assert!(
        until_backend(listen, "primes-a"),
        "URL map never served a; log:\n{}",
        agent_log()
    );

    // Route to b and reload through the socket.
    std::fs::write(&cfg, config(&dir, listen, pa, pb, "b")).unwrap();
    let out = lb_cli(&dir, &["reload"]);
    assert!(
        out.status.success(),
        "reload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        until_backend(listen, "primes-b"),
        "reload did not swap the URL map; log:\n{}",
        agent_log()
    );

    // A broken file is refused with its place and changes nothing.
    std::fs::write(&cfg, config(&dir, listen, pa, pb, "nope")).unwrap();
    let out = lb_cli(&dir, &["reload"]);
    assert!(!out.status.success(), "a broken reload was accepted");
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("line 14: url_maps.m.default_service") && err.contains("\"nope\""),
        "error without its place: {err}"
    );
    for _ in 0..10 {
        assert_eq!(get(listen, "/7").unwrap(), (200, "primes-b".to_string()));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
