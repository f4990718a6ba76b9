//! Encapsulation formats shared by the balancer (which encapsulates toward routed backends)
//! and the backend-side decapsulation program (`lb decap`), so both ends agree on the wire.
//!
//! - IPIP: IPv4 in IPv4 (outer protocol 4, RFC 2003) and IPv6 in IPv6 (outer next header 41,
//!   RFC 2473). The outer destination is the backend's own address.
//! - GUE variant 1 (draft-ietf-intarea-gue, "direct IP encapsulation"): the UDP payload is the
//!   inner IP packet itself, with no GUE header; the first nibble of the payload (4 or 6) is
//!   the inner IP version. The outer UDP source port carries the flow hash (in the ephemeral
//!   range, RFC 7510 §3.2) so backends' receive-side scaling spreads flows; the destination
//!   port is configurable, [`GUE_DEFAULT_PORT`] by default. The outer UDP checksum is zero
//!   (RFC 6935/6936 allow it for tunnels; the decapsulation program never hands the outer
//!   header to the kernel).

/// Values of `ServiceMeta::forwarding`.
pub mod forwarding {
    /// L2 direct server return: only the MACs change (the backend shares the balancer's L2).
    pub const L2_DSR: u32 = 0;
    /// IPIP to the backend's address, next hop from the kernel's FIB.
    pub const IPIP: u32 = 1;
    /// GUE (variant 1) to the backend's address, next hop from the kernel's FIB.
    pub const GUE: u32 = 2;
}

/// Default GUE destination port (the one Katran uses).
pub const GUE_DEFAULT_PORT: u16 = 6080;
/// IP protocol number of IPv4-in-IP (outer IPv4 `protocol`, RFC 2003).
pub const PROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP (outer IPv6 `next header`, RFC 2473).
pub const PROTO_IPV6_IN_IP: u8 = 41;
/// Bytes the balancer adds in front of the inner IP packet: outer IPv4 (20) or IPv6 (40)
/// header, plus 8 for the UDP header of GUE.
pub const IPIP_V4_OVERHEAD: usize = 20;
pub const IPIP_V6_OVERHEAD: usize = 40;
pub const GUE_V4_OVERHEAD: usize = 28;
pub const GUE_V6_OVERHEAD: usize = 48;
/// GUE source ports are `GUE_SPORT_BASE + hash % GUE_SPORT_SPAN` (49152..=65535).
pub const GUE_SPORT_BASE: u16 = 49152;
pub const GUE_SPORT_SPAN: u32 = 16384;

/// The outer UDP source port of a GUE packet for a flow whose hash is `hash`.
pub const fn gue_source_port(hash: u32) -> u16 {
    GUE_SPORT_BASE + (hash % GUE_SPORT_SPAN) as u16
}
