//! Every verdict other than "forwarded to a backend" has a named reason, counted per CPU in
//! the `REASONS` array at the reason's index. The documented verdict of each is in the
//! README ("Packet verdicts").

/// Index into `REASONS`. A plain `u32` newtype rather than an enum so that the eBPF side can
/// index the array without conversions and userspace can print names for unknown values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reason(pub u32);

impl Reason {
    /// Forwarded to a backend with XDP_TX.
    pub const TX: Reason = Reason(0);
    /// Pass: frame shorter than an Ethernet header.
    pub const PASS_SHORT_ETH: Reason = Reason(1);
    /// Pass: not IPv4 or IPv6 (ARP, LLDP, VLAN-tagged, ...).
    pub const PASS_NOT_IP: Reason = Reason(2);
    /// IPv6 to a VIP whose TCP/UDP header was reached through extension headers
    /// (hop-by-hop, routing, destination options): forwarded unchanged, counted in addition
    /// to TX for visibility (as `SEEN_IP_OPTIONS` for IPv4).
    pub const SEEN_IPV6_EXT: Reason = Reason(3);
    /// Pass: shorter than the IPv4 (or IPv6) header it claims (the kernel validates and drops it).
    pub const PASS_SHORT_IP: Reason = Reason(4);
    /// Pass: IPv4 header with a bad version, IHL < 5 or a total length below the header;
    /// IPv6 header whose version is not 6.
    pub const PASS_BAD_IP: Reason = Reason(5);
    /// Pass: neither TCP nor UDP (ICMP, ...).
    pub const PASS_NOT_TCP_UDP: Reason = Reason(6);
    /// Pass: TCP or UDP not addressed to a VIP.
    pub const PASS_NOT_VIP: Reason = Reason(7);
    /// Drop: an IPv4 fragment, or IPv6 with a fragment header, addressed to a VIP address (its ports cannot be read, so it
    /// cannot be given the flow's backend).
    pub const DROP_FRAGMENT: Reason = Reason(8);
    /// Drop: a packet to a VIP address whose TCP/UDP header is truncated.
    pub const DROP_SHORT_L4: Reason = Reason(9);
    /// Drop: the VIP's service has no usable backend (none configured, or all unhealthy
    /// with drop-traffic-if-unhealthy).
    pub const DROP_NO_BACKEND: Reason = Reason(10);
    /// Aborted: an internal lookup failed that configuration should make impossible
    /// (service or backend index out of range). Counted so it is visible.
    pub const ABORT_INTERNAL: Reason = Reason(11);
    /// Pass: IPv4 with IP options addressed to a VIP are forwarded like any other packet
    /// (counted here in addition to TX, for visibility).
    pub const SEEN_IP_OPTIONS: Reason = Reason(12);

    /// An ICMP "fragmentation needed" or ICMPv6 "packet too big" about a VIP flow, forwarded to that flow's backend
    /// (counted in addition to TX).
    pub const SEEN_ICMP_TO_BACKEND: Reason = Reason(13);

    // Connection-table events (counted beside the packet's verdict, like `SEEN_*`): each is
    // a packet that caused the event. See the README, "Connection table under a flood".
    /// A new flow's entry made in the young-flow table.
    pub const CONN_YOUNG_INSERT: Reason = Reason(14);
    /// An insert into either table failed (memory pressure); the packet is still forwarded.
    pub const CONN_INSERT_FAILED: Reason = Reason(15);
    /// A young flow that lived past `PROMOTE_AFTER_NS` was copied into `CONNS`.
    pub const CONN_PROMOTED: Reason = Reason(16);
    /// A promotion refused because this CPU promoted `conn_promotions_per_sec` flows in the
    /// current second (a flood of flows that live long enough); the flow stays young.
    pub const CONN_PROMOTION_SKIPPED: Reason = Reason(17);
    /// A TCP packet without SYN to a VIP that found no entry in either table: its entry was
    /// evicted or expired, or the flow started elsewhere. The observable trace of evictions.
    pub const CONN_MISS_MID_FLOW: Reason = Reason(18);

    /// Drop: IPv6 to a VIP address whose extension-header chain cannot be walked (more than
    /// `limits::MAX_IPV6_EXT_HEADERS` headers, or one cut off by the end of the frame): the
    /// ports cannot be found, so no backend can be chosen.
    pub const DROP_EXT_HEADERS: Reason = Reason(19);

    // Encapsulated forwarding (routed backends; README "Routed backends").
    /// Forwarded to a backend in IPIP (IPv4 in IPv4, IPv6 in IPv6).
    pub const TX_IPIP: Reason = Reason(20);
    /// Forwarded to a backend in GUE (variant 1: the IP packet directly in UDP).
    pub const TX_GUE: Reason = Reason(21);
    /// An encapsulated packet left by another interface than it came in on (XDP_REDIRECT to
    /// the FIB's egress interface), counted beside `tx_ipip`/`tx_gue`.
    pub const SEEN_ENCAP_REDIRECT: Reason = Reason(22);
    /// Drop: the FIB's next hop toward the backend has no resolved neighbour (MAC) yet; the
    /// agent provokes resolution on its next tick.
    pub const DROP_FIB_NO_NEIGH: Reason = Reason(23);
    /// Drop: the FIB has no usable route toward the backend (unreachable, blackhole,
    /// prohibited, forwarding disabled on the interface, or an error).
    pub const DROP_FIB_NO_ROUTE: Reason = Reason(24);
    /// Answered: the encapsulated packet would exceed the egress MTU; the client got ICMP
    /// "fragmentation needed" (ICMPv6 Packet Too Big) with the MTU left after encapsulation.
    pub const TX_ICMP_TOO_BIG: Reason = Reason(25);
    /// Drop: too big once encapsulated and not answerable: IPv4 without DF (it may not be
    /// answered with "fragmentation needed") or with IP options.
    pub const DROP_TOO_BIG: Reason = Reason(26);

    /// A new flow's young entry written over another flow's (the slot's previous key
    /// differed: young tables are direct-mapped, `lb_common::young`). The flow that lost
    /// its slot is hashed again by its next packet.
    pub const CONN_YOUNG_REPLACED: Reason = Reason(27);

    pub const COUNT: u32 = 28;

    /// Stable names, used by `lb stats`, the admin socket and metrics.
    pub const NAMES: [&'static str; Self::COUNT as usize] = [
        "tx",
        "pass_short_eth",
        "pass_not_ip",
        "seen_ipv6_ext",
        "pass_short_ip",
        "pass_bad_ip",
        "pass_not_tcp_udp",
        "pass_not_vip",
        "drop_fragment",
        "drop_short_l4",
        "drop_no_backend",
        "abort_internal",
        "seen_ip_options",
        "seen_icmp_to_backend",
        "conn_young_insert",
        "conn_insert_failed",
        "conn_promoted",
        "conn_promotion_skipped",
        "conn_miss_mid_flow",
        "drop_ext_headers",
        "tx_ipip",
        "tx_gue",
        "seen_encap_redirect",
        "drop_fib_no_neigh",
        "drop_fib_no_route",
        "tx_icmp_too_big",
        "drop_too_big",
        "conn_young_replaced",
    ];

    pub fn name(self) -> &'static str {
        Self::NAMES
            .get(self.0 as usize)
            .copied()
            .unwrap_or("unknown")
    }
}
