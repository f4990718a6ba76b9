//! The desired L4 state: what the maps should say, derived from the configuration, health
//! and admin overrides (see `crate::model`). Pure data, so it can be diffed and tested.

use lb_common::{VipKey, PROTO_TCP, PROTO_UDP};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
pub struct L4Plan {
    pub services: Vec<L4Service>,
    pub vips: Vec<L4Vip>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct L4Service {
    pub name: String,
    /// `lb_common::hash_mode`.
    pub hash_mode: u32,
    /// `lb_common::service_flags`.
    pub flags: u32,
    pub idle_timeout_s: u32,
    /// `lb_common::encap::forwarding`: L2 DSR, IPIP or GUE.
    pub forwarding: u32,
    /// GUE's outer destination port (0 otherwise).
    pub gue_port: u16,
    pub backends: Vec<L4Backend>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct L4Backend {
    pub name: String,
    pub addr: IpAddr,
    /// None while the MAC is unknown (L2 DSR), or while the next hop toward a routed backend
    /// is unresolved: the backend cannot receive frames, so it stays out of the table (and
    /// its flows are hashed again). Routed backends carry a zero MAC: the program takes the
    /// next hop's from the FIB.
    pub mac: Option<[u8; 6]>,
    /// Routed (encapsulating) services: the outer source address, the one the kernel uses
    /// toward the backend; `None` for L2 DSR.
    pub src: Option<IpAddr>,
    /// Maglev weight; 0 keeps it out of the table.
    pub weight: u32,
    /// In the Maglev table (chosen for new flows).
    pub in_table: bool,
    pub healthy: bool,
    pub draining: bool,
    /// Existing flows must leave (drain timeout over, maintenance, removed from failover).
    pub evict: bool,
    /// A failover backend (in the table only while failover is active); shown by `lb explain`.
    pub failover: bool,
}

impl L4Backend {
    /// The backend's identity in its service's Maglev table: its address, the same on every
    /// balancer whatever the backend is called there or when it was added (see `maglev`).
    pub fn maglev_key(&self) -> String {
        self.addr.to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct L4Vip {
    pub name: String,
    /// Same family as the service's backends (validation).
    pub addr: IpAddr,
    /// 0: every port.
    pub port: u16,
    pub proto: u8,
    pub service: String,
}

impl L4Vip {
    pub fn key(&self) -> VipKey {
        let (addr, family) = lb_common::addr::to_map(self.addr);
        VipKey {
            addr,
            port_be: self.port.to_be(),
            proto: self.proto,
            family,
        }
    }

    /// Its typed name (rule, address, port, protocol).
    pub fn name(&self) -> crate::ids::VipName {
        crate::ids::VipName {
            rule: self.name.clone(),
            addr: self.addr,
            port: self.port,
            proto: self.proto_name(),
        }
    }

    pub fn proto_name(&self) -> &'static str {
        match self.proto {
            PROTO_TCP => "tcp",
            PROTO_UDP => "udp",
            _ => "?",
        }
    }
}
