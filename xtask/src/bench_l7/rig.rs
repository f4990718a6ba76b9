//! The benchmark rig shared by `bench-l7` and `profile-l7`: one nginx backend and the three
//! proxies (lb, nginx, HAProxy) in front of it, on loopback, each pinned to its CPUs.
//! Configurations go to a temporary folder; the servers run in the foreground as child
//! processes and are stopped when the rig is dropped, also on errors.

use anyhow::{bail, Context, Result};
use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const BACKEND_PORT: u16 = 18080;
/// (name, HTTP/1.1 port, HTTP/2 cleartext port, TLS port: HTTP/2 or HTTP/1.1 by ALPN).
pub const PROXIES: [(&str, u16, u16, u16); 3] = [
    ("lb", 18081, 18081, 18181),
    ("nginx", 18082, 18092, 18182),
    ("haproxy", 18083, 18093, 18183),
];

/// Where the proxies and the backend run.
#[derive(Debug, Clone)]
pub struct Placement {
    /// CPU list of the proxies (`taskset -c`); its length is each proxy's worker count.
    pub proxy_cpus: String,
    /// CPU list of the backend and the load generator.
    pub load_cpus: String,
}

impl Placement {
    /// Number of CPUs in `proxy_cpus` ("0", "0,1", "0-1").
    pub fn proxy_workers(&self) -> usize {
        cpu_count(&self.proxy_cpus)
    }
}

fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 1,
            },
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

/// Kills its child on drop, so no server outlives the run.
pub struct Server(Child);

impl Server {
    /// The processes that do the work: nginx's workers (children of the master), or the
    /// process itself (lb, HAProxy).
    pub fn worker_pids(&self) -> Vec<u32> {
        let pid = self.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let kids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if kids.is_empty() {
            vec![pid]
        } else {
            kids
        }
    }
}

impl Drop for Server {
    /// SIGTERM first: an nginx master killed with SIGKILL leaves its workers running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A proxy of the rig.
pub struct Proxy {
    pub name: &'static str,
    pub h1_port: u16,
    pub h2_port: u16,
    pub tls_port: u16,
    pub server: Server,
}

/// The running rig; dropping it stops every server.
pub struct Rig {
    pub proxies: Vec<Proxy>,
    _backend: Server,
}

/// The backend answers `GET /` with a 100-byte body and `GET /64k` with a 64 KiB one.
pub const SMALL_BYTES: usize = 100;
pub const LARGE_PATH: &str = "/64k";
pub const LARGE_BYTES: usize = 64 * 1024;

/// Writes the configurations into `dir` and starts the backend and the proxies.
pub fn start(lb: &Path, dir: &Path, at: &Placement) -> Result<Rig> {
    let workers = at.proxy_workers();
    let large = dir.join("backend-root");
    std::fs::create_dir_all(&large)?;
    std::fs::write(large.join("64k"), vec![b'x'; LARGE_BYTES])?;
    let (cert, key, pem) = certificate(dir)?;
    let backend_conf = nginx_conf(
        dir,
        "backend",
        2,
        &format!(
            "server {{ listen 127.0.0.1:{BACKEND_PORT} backlog=4096; \
             location = {LARGE_PATH} {{ root {root}; }} \
             location / {{ return 200 \"{body}\\n\"; }} }}",
            root = large.display(),
            body = "b".repeat(SMALL_BYTES - 1),
        ),
    )?;
    let proxy_conf = nginx_conf(
        dir,
        "nginx-proxy",
        workers,
        &format!(
            "upstream be {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 128; keepalive_requests 1000000; }}\n\
             server {{ listen 127.0.0.1:{p1} backlog=4096; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
             server {{ listen 127.0.0.1:{p2} backlog=4096 http2; location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
             server {{ listen 127.0.0.1:{p3} backlog=4096 ssl http2; ssl_certificate {cert}; ssl_certificate_key {key}; ssl_session_cache shared:SSL:10m; \
             location / {{ proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}",
            p1 = PROXIES[1].1,
            p2 = PROXIES[1].2,
            p3 = PROXIES[1].3,
            cert = cert.display(),
            key = key.display(),
        ),
    )?;
    let haproxy_conf = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n  nbthread {workers}\n  maxconn {maxconn}\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 600s\n  timeout server 60s\n  http-reuse always\n  option http-keep-alive\n  timeout http-keep-alive 600s\n\
             frontend h1\n  bind 127.0.0.1:{p1}\n  default_backend be\nfrontend h2\n  bind 127.0.0.1:{p2} proto h2\n  default_backend be\n\
             frontend tls\n  bind 127.0.0.1:{p3} ssl crt {pem} alpn h2,http/1.1\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{BACKEND_PORT}\n",
            p1 = PROXIES[2].1,
            p2 = PROXIES[2].2,
            p3 = PROXIES[2].3,
            pem = pem.display(),
            maxconn = hard_nofile().saturating_sub(200) / 2,
        ),
    )?;
    let lb_conf = dir.join("lb.toml");
    std::fs::write(
        &lb_conf,
        format!(
            "[admin]\nsocket = \"{sock}\"\n\n[l7]\nmax_connections_per_listener = 100000\n\n\
             [forwarding_rules.bench]\nip_address = \"127.0.0.1\"\nports = [{p}]\ntarget = \"bench\"\n\n\
             [forwarding_rules.bench-tls]\nip_address = \"127.0.0.1\"\nports = [{p3}]\ntarget = \"bench-tls\"\n\n\
             [target_http_proxies.bench]\nurl_map = \"bench\"\n\n\
             [target_https_proxies.bench-tls]\nurl_map = \"bench\"\nssl_certificates = [\"bench\"]\n\n\
             [ssl_certificates.bench]\ncertificate = \"{cert}\"\nprivate_key = \"{key}\"\n\n[url_maps.bench]\ndefault_service = \"be\"\n\n\
             [backend_services.be]\nprotocol = \"HTTP\"\n\n[[backend_services.be.backends]]\naddress = \"127.0.0.1\"\nport = {BACKEND_PORT}\n",
            p = PROXIES[0].1,
            p3 = PROXIES[0].3,
            cert = cert.display(),
            key = key.display(),
            sock = dir.join("admin.sock").display()
        ),
    )?;

    let nginx = Path::new("/usr/sbin/nginx");
    let haproxy = which("haproxy").context("haproxy")?;
    let backend = Server(pin(
        &at.load_cpus,
        nginx,
        &["-c", &backend_conf.display().to_string()],
    )?);
    wait_port(BACKEND_PORT)?;
    let commands: [(&Path, Vec<String>); 3] = [
        (
            lb,
            vec![
                "run".into(),
                "--config".into(),
                lb_conf.display().to_string(),
            ],
        ),
        (nginx, vec!["-c".into(), proxy_conf.display().to_string()]),
        (
            &haproxy,
            vec![
                "-db".into(),
                "-f".into(),
                haproxy_conf.display().to_string(),
            ],
        ),
    ];
    let mut proxies = Vec::new();
    for ((name, h1_port, h2_port, tls_port), (program, args)) in PROXIES.into_iter().zip(commands) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server(pin(&at.proxy_cpus, program, &args)?);
        proxies.push(Proxy {
            name,
            h1_port,
            h2_port,
            tls_port,
            server,
        });
    }
    for p in &proxies {
        for port in [p.h1_port, p.h2_port, p.tls_port] {
            wait_port(port).with_context(|| format!("{} did not start listening", p.name))?;
        }
    }
    Ok(Rig {
        proxies,
        _backend: backend,
    })
}

/// A self-signed ECDSA P-256 certificate for `bench.test` made with the openssl command
/// (one for all three proxies, so they do the same handshake work): the certificate and
/// key files, and both in one PEM file for HAProxy.
fn certificate(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (cert, key, pem) = (
        dir.join("bench.crt"),
        dir.join("bench.key"),
        dir.join("bench.pem"),
    );
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "7"])
        .args([
            "-subj",
            "/CN=bench.test",
            "-addext",
            "subjectAltName=DNS:bench.test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl (apt-get install openssl)")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let both = [std::fs::read(&cert)?, std::fs::read(&key)?].concat();
    std::fs::write(&pem, both)?;
    Ok((cert, key, pem))
}

/// An nginx configuration in its own folder under `dir`.
fn nginx_conf(dir: &Path, name: &str, workers: usize, body: &str) -> Result<PathBuf> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    let text = format!(
        "daemon off;\nworker_processes {workers};\nworker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\nerror_log stderr error;\n\
         events {{ worker_connections {wc}; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d}/body;\n proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fcgi;\n uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000000;\n keepalive_timeout 600s;\n{body}\n}}\n",
        d = d.display(),
        nofile = hard_nofile(),
        wc = hard_nofile().saturating_sub(100),
    );
    let path = d.join("nginx.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts `program` pinned to `cpus`, with quiet logs.
fn pin(cpus: &str, program: &Path, args: &[&str]) -> Result<Child> {
    Command::new("taskset")
        .arg("-c")
        .arg(cpus)
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // rustls warns once per connection that wrk sends the IP address as SNI.
        .env("RUST_LOG", "warn,rustls=error")
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// The hard descriptor limit every process here inherits (raising it needs
/// CAP_SYS_RESOURCE, which a container may lack); the proxies' connection caps follow it.
pub fn hard_nofile() -> u64 {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: the pointer is to a live rlimit value.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) } != 0 {
        return 1024;
    }
    cur.rlim_max.min(1 << 20)
}

pub fn wait_port(port: u16) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 30 s")
}

pub fn which(tool: &str) -> Option<PathBuf> {
    if tool.starts_with('/') {
        return Path::new(tool).exists().then(|| PathBuf::from(tool));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpu_lists() {
        assert_eq!(cpu_count("0"), 1);
        assert_eq!(cpu_count("0,1"), 2);
        assert_eq!(cpu_count("0-3"), 4);
        assert_eq!(cpu_count("0-1,3"), 3);
    }
}
