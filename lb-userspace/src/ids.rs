//! Typed identities shared by the tiers, so names are built in one place and never parsed
//! back from strings.

use std::net::IpAddr;

/// One backend: its backend service's name and its display name (the configured name, or
/// the address when it has none). The key of health verdicts, admin overrides, dataplane
/// slots and L7 admission alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendKey {
    pub service: String,
    pub backend: String,
}

impl BackendKey {
    pub fn new(service: impl Into<String>, backend: impl Into<String>) -> BackendKey {
        BackendKey {
            service: service.into(),
            backend: backend.into(),
        }
    }
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.backend)
    }
}

/// A MAC address.
pub type Mac = [u8; 6];

/// Parses `aa:bb:cc:dd:ee:ff` (the file's `mac`, the kernel's neighbour table).
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// One VIP as the dataplane programs it: a forwarding rule's address, port (0: every
/// port) and protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipName {
    pub rule: String,
    pub addr: IpAddr,
    pub port: u16,
    /// "tcp" or "udp".
    pub proto: &'static str,
}

impl VipName {
    /// `address:port/PROTO`, as metrics and the CLI show it.
    pub fn endpoint(&self) -> String {
        match self.addr {
            IpAddr::V4(a) => format!("{a}:{}/{}", self.port, self.proto),
            IpAddr::V6(a) => format!("[{a}]:{}/{}", self.port, self.proto),
        }
    }
}

impl std::fmt::Display for VipName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.rule, self.endpoint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_before() {
        let v = VipName {
            rule: "web".into(),
            addr: "10.0.0.100".parse().unwrap(),
            port: 80,
            proto: "tcp",
        };
        assert_eq!(v.to_string(), "web/10.0.0.100:80/tcp");
        assert_eq!(v.endpoint(), "10.0.0.100:80/tcp");
    }
}
