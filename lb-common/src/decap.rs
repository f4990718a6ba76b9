//! The backend-side decapsulation program (`lb decap`, `lb-ebpf/src/decap/`): its names,
//! map types and verdict reasons. It strips the IPIP or GUE encapsulation the balancer adds
//! ([`crate::encap`]) from packets addressed to one of this host's decapsulation addresses
//! and passes the inner packet to the stack; everything else passes untouched.

/// Names of the program and maps in the decapsulation object (`lb-decap`).
pub mod names {
    pub const PROG_DECAP: &str = "lb_decap";
    pub const MAP_ADDRS: &str = "DECAP_ADDRS";
    pub const MAP_SETTINGS: &str = "DECAP_SETTINGS";
    pub const MAP_COUNTS: &str = "DECAP_COUNTS";
}

/// Addresses one interface's program decapsulates for (its own addresses by default).
pub const MAX_ADDRS: u32 = 64;

/// Key of `DECAP_ADDRS` (value: `u32`, 0): an outer destination address whose IPIP and GUE
/// packets are decapsulated. IPv4 uses the first 4 bytes (network order), the rest zero.
/// Aligned to 4 (no size change) so the program can build it with word stores.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Value of `DECAP_SETTINGS[0]`, written by `lb decap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// GUE destination port, network byte order (0: GUE off, never a UDP destination).
    pub gue_port_be: u16,
    pub _pad: u16,
}

/// Index into `DECAP_COUNTS` (per-CPU packet counters), one per verdict. The README
/// ("Routed backends: `lb decap` on the backend") documents each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    /// Pass, stripped: IPIP (IPv4 or IPv6 outer) to one of our addresses.
    pub const DECAP_IPIP: Reason = Reason(0);
    /// Pass, stripped: GUE (UDP to the GUE port) to one of our addresses.
    pub const DECAP_GUE: Reason = Reason(1);
    /// Pass untouched: not IPv4/IPv6 (ARP, VLAN-tagged, ...) or shorter than Ethernet.
    pub const PASS_NOT_IP: Reason = Reason(2);
    /// Pass untouched: outer IP header truncated or invalid (the kernel validates it).
    pub const PASS_BAD_IP: Reason = Reason(3);
    /// Pass untouched: neither IPIP nor UDP (TCP, ICMP, IPv6 extension headers, ...).
    pub const PASS_NOT_ENCAP: Reason = Reason(4);
    /// Pass untouched: IPIP or UDP addressed to an address not in `DECAP_ADDRS`.
    pub const PASS_OTHER_HOST: Reason = Reason(5);
    /// Pass untouched: UDP to us, not to the GUE port (ordinary UDP traffic).
    pub const PASS_UDP_OTHER_PORT: Reason = Reason(6);
    /// Pass untouched: IPIP or UDP to us with IPv4 options (the balancer never sends them).
    pub const PASS_IP_OPTIONS: Reason = Reason(7);
    /// Pass untouched: an IPv4 fragment of IPIP or UDP to us (the balancer never fragments:
    /// it answers "fragmentation needed" instead); the kernel reassembles or drops it.
    pub const PASS_FRAGMENT: Reason = Reason(8);
    /// Drop: encapsulated to us, but the inner packet has no complete IP header or its
    /// version is not the one the encapsulation announces.
    pub const DROP_BAD_INNER: Reason = Reason(9);
    /// Aborted: moving the frame start failed (cannot happen for a frame that passed the
    /// checks; counted so it would be seen).
    pub const ABORT_ADJUST: Reason = Reason(10);

    pub const COUNT: u32 = 11;

    /// Stable names, used by `lb decap --stats`.
    pub const NAMES: [&'static str; Self::COUNT as usize] = [
        "decap_ipip",
        "decap_gue",
        "pass_not_ip",
        "pass_bad_ip",
        "pass_not_encap",
        "pass_other_host",
        "pass_udp_other_port",
        "pass_ip_options",
        "pass_fragment",
        "drop_bad_inner",
        "abort_adjust",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("unknown")
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers only, explicit padding (checked below).
    unsafe impl aya::Pod for super::AddrKey {}
    unsafe impl aya::Pod for super::Settings {}
}

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn sizes_have_no_implicit_padding() {
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<Settings>(), 4);
        assert_eq!(Reason::NAMES.len() as u32, Reason::COUNT);
    }
}
