//! Shared helpers of the L7 integration tests: backends (hyper servers on 127.0.0.1 with
//! scripted answers and a request log), configuration text, a proxy started in-process,
//! and clients. Everything is loopback and bounded in time.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lb_userspace::{
    health::{Health, HealthSnapshot},
    l7::{L7Handle, L7Options, L7},
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::sync::watch;

/// Every test step is bounded by this.
pub const STEP: Duration = Duration::from_secs(10);

/// What a test backend answers.
#[derive(Clone)]
pub enum Behaviour {
    /// This status and the backend's name as body.
    Status(u16),
    /// Wait, then 200.
    Delay(Duration),
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A running test backend.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub count: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub behaviour: Arc<Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestBackend {
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }
    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }
}

/// Starts a backend speaking HTTP/1.1 and h2c (prior knowledge). A request with
/// `Upgrade: websocket` is answered 101 and the upgraded stream echoes every byte.
pub async fn backend(name: &str, behaviour: Behaviour) -> TestBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let behaviour = Arc::new(Mutex::new(behaviour));
    let (c, s, b, n) = (
        count.clone(),
        seen.clone(),
        behaviour.clone(),
        name.to_string(),
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (c, s, b, n) = (c.clone(), s.clone(), b.clone(), n.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (c, s, b, n) = (c.clone(), s.clone(), b.clone(), n.clone());
                    async move { Ok::<_, hyper::Error>(answer(req, &c, &s, &b, &n).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestBackend {
        name: name.into(),
        addr,
        count,
        seen,
        behaviour,
        task,
    }
}

async fn answer(
    mut req: Request<Incoming>,
    count: &AtomicUsize,
    seen: &Mutex<Vec<Seen>>,
    behaviour: &Mutex<Behaviour>,
    name: &str,
) -> Response<Full<Bytes>> {
    count.fetch_add(1, Ordering::SeqCst);
    let ws = req
        .headers()
        .get("upgrade")
        .is_some_and(|v| v == "websocket");
    let on_upgrade = ws.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = if ws {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body,
    });
    if let Some(up) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(up) = up.await {
                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let b = behaviour.lock().unwrap().clone();
    let status = match b {
        Behaviour::Status(s) => s,
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            200
        }
    };
    Response::builder()
        .status(status)
        .header("x-backend", name)
        .body(Full::new(Bytes::from(name.to_string())))
        .unwrap()
}

/// `n` distinct free loopback ports: every listener is held until all are picked (ports
/// picked one by one can repeat: the kernel may hand a released port out again at once).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A free loopback port (bound and released; fine for loopback tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Backends as TOML `[[backend_services.<svc>.backends]]` entries.
pub fn backends_toml(svc: &str, bs: &[&TestBackend]) -> String {
    bs.iter()
        .map(|b| {
            format!(
                "[[backend_services.{svc}.backends]]\nname = \"{}\"\naddress = \"127.0.0.1\"\nport = {}\n\n",
                b.name,
                b.addr.port()
            )
        })
        .collect()
}

/// A configuration with one HTTP listener on `port`, URL map `web` defaulting to `svc`.
/// `service_extra` goes into the `[backend_services.svc]` table; `map_extra` is appended.
pub fn http_config(port: u16, service_extra: &str, bs: &[&TestBackend], map_extra: &str) -> String {
    format!(
        r#"
[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{port}]
target = "web-proxy"

[target_http_proxies.web-proxy]
url_map = "web"

[url_maps.web]
default_service = "svc"
{map_extra}

[backend_services.svc]
protocol = "HTTP"
{service_extra}

{}"#,
        backends_toml("svc", bs)
    )
}

/// The L7 tier under test with its health channel.
pub struct Proxy {
    pub handle: L7Handle,
    pub addr: SocketAddr,
    pub health: watch::Sender<Arc<HealthSnapshot>>,
}

pub fn parse(text: &str) -> lb_userspace::model::Model {
    lb_userspace::model::parse(text)
        .unwrap_or_else(|e| panic!("config does not validate:\n{e}\n---\n{text}"))
}

/// Starts the proxy for `text` (must run inside a tokio runtime).
pub fn start(text: &str) -> Proxy {
    start_with(text, L7Options::default())
}

pub fn start_with(text: &str, opts: L7Options) -> Proxy {
    let cfg = parse(text);
    let (tx, rx) = watch::channel(Arc::new(HealthSnapshot::default()));
    let handle = L7::start_with(&cfg, rx, opts).expect("L7 starts");
    let addr = handle.local_addrs()[0].1;
    Proxy {
        handle,
        addr,
        health: tx,
    }
}

impl Proxy {
    /// Marks backends of `svc` unhealthy.
    pub fn set_unhealthy(&self, svc: &str, names: &[&str]) {
        let mut snap = HealthSnapshot::default();
        for n in names {
            snap.backends.insert(
                lb_userspace::ids::BackendKey::new(svc, *n),
                Health::Unhealthy,
            );
        }
        self.health.send(Arc::new(snap)).unwrap();
    }
}

pub type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request through the proxy and returns status, headers and body.
pub async fn send(c: &Client, req: Request<Full<Bytes>>) -> (u16, http::HeaderMap, String) {
    let resp = tokio::time::timeout(STEP, c.request(req))
        .await
        .expect("response in time")
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(STEP, resp.into_body().collect())
        .await
        .expect("body in time")
        .expect("body")
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Writes raw bytes to the proxy and reads until the proxy closes or `STEP` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A proxy that refuses an oversized head may close before it is all sent; its answer
    // is still there to read.
    if let Err(e) = s.write_all(bytes).await {
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}
