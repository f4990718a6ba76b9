//! The L7 tier inside `lb run`: every admin verb changes where requests go (drain,
//! maintenance, forced health, weight, add/remove), failover backends stay idle until the
//! ratio is crossed, connection draining keeps in-flight requests and WebSockets until the
//! timeout and then closes them, and a change the L7 tier cannot take (an unreadable
//! certificate) is refused with nothing changed. Loopback only, L4 tier off.

mod l7_support;

use l7_support::{backend, backends_toml, free_port, Behaviour, TestBackend};
use lb_tests::{lbrun::LocalRun, root_or_skip, unique};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `lb run` with an L7-only configuration in a private folder.
struct Lb {
    dir: PathBuf,
    listen: SocketAddr,
    run: LocalRun,
}

impl Lb {
    fn start(config_body: &str, listen: u16) -> Lb {
        let run = LocalRun::start("lbl7ops-", |dir| Self::text(dir, config_body), None);
        let lb = Lb {
            dir: run.dir.clone(),
            listen: SocketAddr::from(([127, 0, 0, 1], listen)),
            run,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lb.run.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "agent did not start:\n{}",
                lb.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lb
    }

    fn text(dir: &Path, body: &str) -> String {
        format!(
            "[admin]\nsocket = \"{}\"\n\n{body}",
            dir.join("admin.sock").display()
        )
    }

    fn log(&self) -> String {
        self.run.log()
    }

    /// Runs a client verb; returns (success, stdout + stderr).
    fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = self.run.cli(args);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.cli(args);
        assert!(ok, "lb {args:?} failed: {text}\nagent log:\n{}", self.log());
        text
    }

    fn reload_with(&self, body: &str) -> (bool, String) {
        std::fs::write(self.run.config_path(), Self::text(&self.dir, body)).unwrap();
        self.cli(&["reload"])
    }
}

impl Drop for Lb {
    fn drop(&mut self) {
        let _ignored = std::fs::remove_dir_all(&self.dir);
    }
}

/// One GET on a fresh connection: (status, the answering backend's name or "").
async fn get(to: SocketAddr) -> (u16, String) {
    let c = l7_support::client();
    let req = l7_support::get(to, "/");
    let (status, headers, _) = l7_support::send(&c, req).await;
    let b = headers
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, b)
}

/// `n` sequential GETs: answers per backend name ("" for the proxy's own answers, keyed
/// by status).
async fn tally(to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let (status, b) = get(to).await;
        let key = if b.is_empty() {
            format!("status {status}")
        } else {
            b
        };
        *m.entry(key).or_default() += 1;
    }
    m
}

/// Repeats `tally` until `ok` holds on a whole window (the agent applies a verb before it
/// answers, so this normally passes at once; the deadline covers health-check timing).
async fn until(to: SocketAddr, what: &str, ok: impl Fn(&BTreeMap<String, usize>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = tally(to, 20).await;
        if ok(&t) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last window {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn only(t: &BTreeMap<String, usize>, name: &str) -> bool {
    t.len() == 1 && t.contains_key(name)
}

fn service(extra: &str, bs: &[&TestBackend]) -> String {
    format!(
        "[backend_services.svc]\nprotocol = \"HTTP\"\n{extra}\n\n{}",
        backends_toml("svc", bs)
    )
}

fn config(listen: u16, services: &str) -> String {
    format!(
        r#"[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{listen}]
target = "web-proxy"

[target_http_proxies.web-proxy]
url_map = "web"

[url_maps.web]
default_service = "svc"

{services}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_verbs_steer_l7_requests() {
    if !root_or_skip("agent L7 admin verbs") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let listen = free_port();
    // RANDOM: every window of 20 requests reaches both backends (1 in 500,000 does not).
    let lb = Lb::start(
        &config(
            listen,
            &service(
                "locality_lb_policy = \"RANDOM\"\nconnection_draining_timeout_sec = 0",
                &[&a, &b],
            ),
        ),
        listen,
    );
    let to = lb.listen;
    let both =
        |t: &BTreeMap<String, usize>| t.len() == 2 && t.contains_key("a") && t.contains_key("b");
    until(to, "start: both backends", both).await;

    lb.ok(&["drain", "svc", "a"]);
    until(to, "drained a", |t| only(t, "b")).await;
    let listed = lb.ok(&["list", "backends"]);
    assert!(
        listed.contains("REQUESTS") && listed.contains("SERVING"),
        "L7 columns in list backends: {listed}"
    );
    lb.ok(&["undrain", "svc", "a"]);
    until(to, "undrained a", both).await;

    lb.ok(&["maintenance", "svc", "b", "on"]);
    until(to, "b in maintenance", |t| only(t, "a")).await;
    lb.ok(&["maintenance", "svc", "b", "off"]);
    until(to, "b back from maintenance", both).await;

    lb.ok(&["health", "svc", "a", "down"]);
    until(to, "a forced down", |t| only(t, "b")).await;
    lb.ok(&["health", "svc", "b", "down"]);
    until(to, "both forced down: 503", |t| only(t, "status 503")).await;
    lb.ok(&["health", "svc", "a", "auto"]);
    lb.ok(&["health", "svc", "b", "auto"]);
    until(to, "health back to the checker", both).await;

    lb.ok(&["weight", "svc", "a", "1000"]);
    let t = tally(to, 40).await;
    assert!(
        t.get("a").copied().unwrap_or(0) >= 36,
        "weight 1000:1 puts nearly everything on a: {t:?}"
    );

    lb.ok(&["backend", "remove", "svc", "b"]);
    until(to, "b removed", |t| only(t, "a")).await;
    let port = b.addr.port().to_string();
    lb.ok(&[
        "backend",
        "add",
        "svc",
        "--address",
        "127.0.0.1",
        "--port",
        &port,
        "--name",
        "b",
        "--weight",
        "1000",
    ]);
    lb.ok(&["weight", "svc", "a", "1"]);
    let t = tally(to, 40).await;
    assert!(
        t.get("b").copied().unwrap_or(0) >= 36,
        "b added back with weight 1000 takes nearly everything: {t:?}"
    );
    let described = lb.ok(&["describe", "service", "svc"]);
    assert!(described.contains("REQUESTS"), "{described}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_backends_idle_until_the_ratio_is_crossed() {
    if !root_or_skip("agent L7 failover") {
        return;
    }
    let p1 = backend("p1", Behaviour::Status(200)).await;
    let p2 = backend("p2", Behaviour::Status(200)).await;
    let f = backend("f", Behaviour::Status(200)).await;
    let listen = free_port();
    let mut svc = service(
        "locality_lb_policy = \"RANDOM\"\nfailover_policy = { failover_ratio = 0.6 }",
        &[&p1, &p2],
    );
    svc += &format!(
        "[[backend_services.svc.backends]]\nname = \"f\"\naddress = \"127.0.0.1\"\nport = {}\nfailover = true\n",
        f.addr.port()
    );
    let lb = Lb::start(&config(listen, &svc), listen);
    let to = lb.listen;
    until(to, "primaries only", |t| {
        t.len() == 2 && t.contains_key("p1") && t.contains_key("p2")
    })
    .await;
    let t = tally(to, 40).await;
    assert!(
        !t.contains_key("f"),
        "failover backend took traffic at ratio 1.0: {t:?}"
    );
    // One primary of two down: 0.5 < 0.6, the failover backend takes every request.
    lb.ok(&["health", "svc", "p1", "down"]);
    until(to, "failover active", |t| only(t, "f")).await;
    lb.ok(&["health", "svc", "p1", "auto"]);
    until(to, "back on primaries", |t| !t.contains_key("f")).await;
}

/// Opens a WebSocket through the proxy and checks an echo.
async fn open_ws(to: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(to).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("101 in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the 101: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Writes `msg` and reads its echo; Err when the tunnel is closed.
async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) -> Result<(), String> {
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; msg.len()];
    match tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf == msg => Ok(()),
        Ok(Ok(_)) => Err("wrong echo".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no echo in 3 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_keeps_requests_and_websockets_until_the_timeout() {
    if !root_or_skip("agent L7 draining") {
        return;
    }
    const DRAIN: u64 = 4;
    let a = backend("a", Behaviour::Status(200)).await;
    let listen = free_port();
    let lb = Lb::start(
        &config(
            listen,
            &service(&format!("connection_draining_timeout_sec = {DRAIN}"), &[&a]),
        ),
        listen,
    );
    let to = lb.listen;
    until(to, "serving", |t| only(t, "a")).await;

    // A WebSocket and two slow requests in flight: one ends within the timeout, one not.
    let mut ws = open_ws(to).await;
    echo(&mut ws, b"before")
        .await
        .expect("echo before the drain");
    a.set(Behaviour::Delay(Duration::from_secs(2)));
    let short = tokio::spawn(get(to));
    tokio::time::sleep(Duration::from_millis(300)).await; // both requests reach the backend first
    a.set(Behaviour::Delay(Duration::from_secs(30)));
    let long = tokio::spawn(async move {
        let started = Instant::now();
        (get(to).await, started.elapsed())
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.count() < 3 {
        assert!(
            Instant::now() < deadline,
            "slow requests never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_at = Instant::now();
    lb.ok(&["drain", "svc", "a"]);
    a.set(Behaviour::Status(200));

    // No new requests: the only backend is draining.
    assert_eq!(
        get(to).await.0,
        503,
        "a draining backend took a new request"
    );
    // In flight within the timeout: finishes normally.
    assert_eq!(
        short.await.unwrap(),
        (200, "a".to_string()),
        "in-flight request cut by the drain"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    echo(&mut ws, b"during")
        .await
        .expect("the WebSocket stays open while draining");

    // After the timeout: the long request is answered by the proxy, the tunnel is closed.
    let ((status, _), took) = long.await.unwrap();
    assert_eq!(
        status, 502,
        "a request still running when draining ends is closed"
    );
    assert!(
        took < Duration::from_secs(DRAIN + 3),
        "the long request lasted {took:?}, not cut at the draining timeout"
    );
    assert!(drained_at.elapsed() >= Duration::from_secs(DRAIN - 1));
    assert!(
        echo(&mut ws, b"after").await.is_err(),
        "the WebSocket outlived the draining timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_refuses_the_whole_change() {
    if !root_or_skip("agent L7 refused change") {
        return;
    }
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let listen = free_port();
    let tls_port = free_port();
    let two = format!(
        "{}\n[backend_services.other]\nprotocol = \"HTTP\"\n\n{}",
        service("", &[&a]),
        backends_toml("other", &[&b])
    );
    let lb = Lb::start(&config(listen, &two), listen);
    let to = lb.listen;
    until(to, "serving a", |t| only(t, "a")).await;
    let before = lb.ok(&["-o", "json", "list", "services"]);

    // The new file routes to `other`, adds a backend and an HTTPS listener whose
    // certificate cannot be read.
    let mut broken =
        config(listen, &two).replace("default_service = \"svc\"", "default_service = \"other\"");
    broken += &format!(
        r#"
[[backend_services.svc.backends]]
name = "extra"
address = "127.0.0.1"
port = {extra}

[ssl_certificates.missing]
certificate = "/nonexistent/{u}.pem"
private_key = "/nonexistent/{u}.key"

[target_https_proxies.tls]
url_map = "web"
ssl_certificates = ["missing"]

[forwarding_rules.tls]
ip_address = "127.0.0.1"
ports = [{tls_port}]
target = "tls"
"#,
        extra = free_port(),
        u = unique("cert")
    );
    let (ok, text) = lb.reload_with(&broken);
    assert!(!ok, "a change with an unreadable certificate was accepted");
    assert!(
        text.contains("ssl_certificates.missing") && text.contains("nothing was changed"),
        "the refusal names the certificate: {text}"
    );
    assert_eq!(
        lb.ok(&["-o", "json", "list", "services"]),
        before,
        "configuration changed"
    );
    let t = tally(to, 20).await;
    assert!(
        only(&t, "a"),
        "routing changed after a refused change: {t:?}"
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .is_err(),
        "the refused change's listener was left open"
    );
    let status = lb.ok(&["-o", "json", "status"]);
    assert!(status.contains("\"config_changes\":0"), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_keeps_its_requests_until_the_draining_timeout() {
    if !root_or_skip("agent L7 removed backend draining") {
        return;
    }
    const DRAIN: u64 = 3;
    let a = backend("a", Behaviour::Status(200)).await;
    let b = backend("b", Behaviour::Status(200)).await;
    let listen = free_port();
    let lb = Lb::start(
        &config(
            listen,
            &service(
                &format!(
                    "locality_lb_policy = \"RANDOM\"\nconnection_draining_timeout_sec = {DRAIN}"
                ),
                &[&a, &b],
            ),
        ),
        listen,
    );
    let to = lb.listen;
    until(to, "both", |t| t.len() == 2).await;
    // Only `a` answers slowly: find a request that lands on it.
    a.set(Behaviour::Delay(Duration::from_secs(30)));
    let before = a.count();
    let slow: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                (get(to).await, started.elapsed())
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.count() == before {
        assert!(Instant::now() < deadline, "no request reached a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lb.ok(&["backend", "remove", "svc", "a"]);
    a.set(Behaviour::Status(200));
    until(to, "a removed", |t| only(t, "b")).await;
    let mut cut = 0;
    for h in slow {
        let ((status, who), took) = h.await.unwrap();
        if status == 502 {
            cut += 1;
            assert!(
                took >= Duration::from_secs(DRAIN - 1) && took < Duration::from_secs(DRAIN + 3),
                "a request on the removed backend ended after {took:?}, not at the draining timeout"
            );
        } else {
            assert_eq!((status, who.as_str()), (200, "b"), "only b answers");
        }
    }
    assert!(cut >= 1, "no request was kept on the removed backend");
}
