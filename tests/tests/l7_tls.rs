//! TLS termination: two certificates chosen by SNI (checked by the certificate the client
//! receives), the first as default, and HTTP/2 or HTTP/1.1 negotiated by ALPN.

#[path = "l7_support/mod.rs"]
mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use std::{path::PathBuf, sync::Arc};
use support::*;

struct Certs {
    dir: PathBuf,
    a: CertificateDer<'static>,
    b: CertificateDer<'static>,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certs() -> Certs {
    let dir =
        std::env::temp_dir().join(format!("lb-l7-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ders = Vec::new();
    for name in ["a", "b"] {
        let ck = rcgen::generate_simple_self_signed(vec![
            format!("{name}.test"),
            format!("*.{name}.test"),
        ])
        .unwrap();
        std::fs::write(dir.join(format!("{name}.crt")), ck.cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), ck.key_pair.serialize_pem()).unwrap();
        ders.push(ck.cert.der().clone());
    }
    let b = ders.pop().unwrap();
    let a = ders.pop().unwrap();
    Certs { dir, a, b }
}

fn https_config(port: u16, dir: &std::path::Path, b: &TestBackend) -> String {
    format!(
        r#"
[forwarding_rules.web]
ip_address = "127.0.0.1"
ports = [{port}]
target = "secure"

[target_https_proxies.secure]
url_map = "web"
ssl_certificates = ["cert-a", "cert-b"]

[ssl_certificates.cert-a]
certificate = "{d}/a.crt"
private_key = "{d}/a.key"

[ssl_certificates.cert-b]
certificate = "{d}/b.crt"
private_key = "{d}/b.key"

[url_maps.web]
default_service = "svc"

[backend_services.svc]
protocol = "HTTP"

{}"#,
        backends_toml("svc", &[b]),
        d = dir.display()
    )
}

/// Accepts any certificate: the test inspects what was served instead.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config(roots: Option<&Certs>, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let mut cfg = match roots {
        Some(c) => {
            let mut store = rustls::RootCertStore::empty();
            store.add(c.a.clone()).unwrap();
            store.add(c.b.clone()).unwrap();
            builder.with_root_certificates(store).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    cfg
}

async fn connect(
    addr: std::net::SocketAddr,
    sni: &str,
    cfg: rustls::ClientConfig,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(
        STEP,
        conn.connect(ServerName::try_from(sni.to_string()).unwrap(), tcp),
    )
    .await
    .expect("handshake in time")
    .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_is_chosen_by_sni() {
    let c = certs();
    let b = backend("b", Behaviour::Status(200)).await;
    let p = start(&https_config(free_port(), &c.dir, &b));
    // Verified handshakes: the served certificate must be valid for the SNI name.
    for (sni, want) in [
        ("a.test", &c.a),
        ("b.test", &c.b),
        ("www.b.test", &c.b),
        ("x.a.test", &c.a),
    ] {
        let s = connect(p.addr, sni, client_config(Some(&c), &[b"http/1.1"])).await;
        let served = &s.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(served, want, "{sni}");
    }
    // Unknown name: the first certificate is the default.
    let s = connect(p.addr, "other.test", client_config(None, &[b"http/1.1"])).await;
    assert_eq!(&s.get_ref().1.peer_certificates().unwrap()[0], &c.a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_and_http1_by_alpn() {
    let c = certs();
    let b = backend("b", Behaviour::Status(200)).await;
    let p = start(&https_config(free_port(), &c.dir, &b));

    let s = connect(
        p.addr,
        "a.test",
        client_config(Some(&c), &[b"h2", b"http/1.1"]),
    )
    .await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    for i in 0..3 {
        let req = hyper::Request::get(format!("https://a.test/h2/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = tokio::time::timeout(STEP, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, Bytes::from_static(b"b"));
    }
    let seen = b.last();
    assert_eq!(
        seen.headers["host"], "a.test",
        "the :authority becomes the backend's Host"
    );
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    driver.abort();

    let s = connect(p.addr, "b.test", client_config(Some(&c), &[b"http/1.1"])).await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let req = hyper::Request::get("/h1")
        .header("host", "b.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = tokio::time::timeout(STEP, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(b.last().headers["host"], "b.test");
    assert_eq!(b.count(), 4);
    driver.abort();
}

/// The first-request deadline covers the TLS handshake and the first request after it:
/// a client that never sends its ClientHello, and one that completes the handshake and
/// then says nothing, are both closed at the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tls_clients_meet_the_first_request_deadline() {
    use tokio::io::AsyncReadExt;
    let c = certs();
    let b = backend("b", Behaviour::Status(200)).await;
    let text = https_config(free_port(), &c.dir, &b) + "\n[l7]\nfirst_request_timeout_sec = 1\n";
    let p = start(&text);
    let t = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, tcp.read(&mut buf))
        .await
        .expect("closed before the step bound")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a client that sent no ClientHello");
    let took = t.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(3),
        "no ClientHello: closed after {took:?}"
    );
    let t = std::time::Instant::now();
    let mut s = connect(p.addr, "a.test", client_config(Some(&c), &[b"http/1.1"])).await;
    let r = tokio::time::timeout(STEP, s.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "closed without an answer: {r:?}"
    );
    let took = t.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(900) && took < std::time::Duration::from_secs(3),
        "silent after the handshake: closed after {took:?}"
    );
    assert_eq!(b.count(), 0);
}
