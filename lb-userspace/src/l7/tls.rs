//! TLS with rustls: server certificates chosen by SNI (several per target HTTPS proxy, the
//! first one the default), ALPN `h2` then `http/1.1` (RFC 7301), and the client side for
//! HTTPS/HTTP2 backends.
//!
//! Backend certificates are not verified: Google Cloud's load balancers do not validate
//! backend certificates unless a backend authentication policy says so, and backends are
//! addressed by IP. The client still checks handshake signatures.

use super::L7Error;
use crate::config::SslCertificate;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use std::sync::Arc;

/// The crypto provider used everywhere (rustls' default, aws-lc-rs), chosen explicitly so a
/// second provider compiled in by another crate cannot make `builder()` ambiguous.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// One certificate with its key.
#[derive(Debug)]
pub struct Certificate {
    pub name: String,
    pub key: Arc<CertifiedKey>,
}

impl Certificate {
    /// Whether the leaf certificate is valid for `sni` (SAN DNS names, wildcards per
    /// RFC 6125 §6.4.3, as webpki checks them).
    fn valid_for(&self, sni: &ServerName<'_>) -> bool {
        let Some(leaf) = self.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(leaf)
            .is_ok_and(|c| c.verify_is_valid_for_subject_name(sni).is_ok())
    }
}

/// The certificates of one target HTTPS proxy.
#[derive(Debug)]
pub struct CertSet {
    certs: Vec<Certificate>,
}

impl CertSet {
    pub fn new(certs: Vec<Certificate>) -> CertSet {
        CertSet { certs }
    }

    /// The certificate for an SNI name: the first one valid for it, else the default
    /// (first) certificate, as Google Cloud does when no certificate matches.
    pub fn choose(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let by_name = sni
            .and_then(|s| ServerName::try_from(s.to_string()).ok())
            .and_then(|name| self.certs.iter().find(|c| c.valid_for(&name)));
        by_name.or(self.certs.first()).map(|c| c.key.clone())
    }
}

/// Reads a PEM certificate chain and private key.
pub fn load_certificate(name: &str, sc: &SslCertificate) -> Result<Certificate, L7Error> {
    let fail = |message: String| L7Error::Tls {
        certificate: name.to_string(),
        message,
    };
    let cert_pem = std::fs::read(&sc.certificate)
        .map_err(|e| fail(format!("cannot read {}: {e}", sc.certificate.display())))?;
    let key_pem = std::fs::read(&sc.private_key)
        .map_err(|e| fail(format!("cannot read {}: {e}", sc.private_key.display())))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("{}: {e}", sc.certificate.display())))?;
    if chain.is_empty() {
        return Err(fail(format!(
            "{} holds no PEM certificate",
            sc.certificate.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| fail(format!("{}: {e}", sc.private_key.display())))?
        .ok_or_else(|| {
            fail(format!(
                "{} holds no PEM private key",
                sc.private_key.display()
            ))
        })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| fail(format!("unusable private key: {e}")))?;
    Ok(Certificate {
        name: name.to_string(),
        key: Arc::new(CertifiedKey::new(chain, signing)),
    })
}

/// Chooses a certificate per handshake by SNI. Each routing table builds its own server
/// configuration, so a reload changes certificates for new connections.
#[derive(Debug)]
pub struct SniResolver(pub Arc<CertSet>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.choose(hello.server_name())
    }
}

/// The server configuration of one target HTTPS proxy.
pub fn server_config(proxy: &str, certs: Arc<CertSet>) -> Result<rustls::ServerConfig, L7Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| L7Error::Tls {
            certificate: proxy.to_string(),
            message: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(certs)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Client configuration towards TLS backends (hyper-rustls sets ALPN itself).
pub fn backend_client_config() -> rustls::ClientConfig {
    let p = provider();
    rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::backend_tls::NoBackendVerification(p)))
        .with_no_client_auth()
}
