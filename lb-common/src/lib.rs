//! Types shared by the XDP program (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! This crate is the single source of truth for every map key and value, every map and
//! program name, every flag and every limit. Rules for the map types (as in aya's own
//! integration-common crate):
//! - `#[repr(C)]` with explicit padding fields, so no byte the kernel sees is undefined;
//! - only integers and arrays of integers (no `bool`, `enum` or `Option` in map values);
//! - addresses are 16 bytes so IPv6 can follow without a new layout; IPv4 uses the first
//!   4 bytes (network order) and zeroes the rest;
//! - ports are stored in network byte order (the program compares them as read from the wire).
//!
//! A layout test at the bottom pins sizes and offsets.
#![no_std]

pub mod addr;
pub mod decap;
pub mod encap;
pub mod flow_hash;
pub mod reason;
pub mod young;

pub use reason::Reason;

/// Names of the maps and programs in the eBPF object. Userspace looks them up by these
/// constants; the eBPF side names its statics the same (checked by a test in lb-userspace).
pub mod names {
    pub const PROG_LB: &str = "lb_xdp";
    pub const PROG_PASS: &str = "xdp_pass";
    pub const MAP_VIPS: &str = "VIPS";
    pub const MAP_VIP_STATE: &str = "VIP_STATE";
    pub const MAP_SERVICES: &str = "SERVICES";
    pub const MAP_BACKENDS: &str = "BACKENDS";
    pub const MAP_MAGLEV: &str = "MAGLEV";
    pub const MAP_CONNS: &str = "CONNS";
    pub const MAP_YOUNG_FLOWS: &str = "YOUNG_FLOWS";
    pub const MAP_CONNS_V4: &str = "CONNS_V4";
    pub const MAP_YOUNG_FLOWS_V4: &str = "YOUNG_FLOWS_V4";
    pub const MAP_PROMOTION_WINDOW: &str = "PROMOTION_WINDOW";
    pub const MAP_SETTINGS: &str = "SETTINGS";
    pub const MAP_VIP_STATS: &str = "VIP_STATS";
    pub const MAP_BACKEND_STATS: &str = "BACKEND_STATS";
    pub const MAP_REASONS: &str = "REASONS";
    pub const MAP_PASS_COUNT: &str = "PASS_COUNT";
    pub const MAP_NEXT_HOPS: &str = "NEXT_HOPS";
    pub const MAP_VIP_ADDR_SET: &str = "VIP_ADDR_SET";
    /// Global of the program (set by the loader, read-only once loaded): the slots of each
    /// young-flow table minus one (`young::set`).
    pub const GLOBAL_YOUNG_MASK: &str = "YOUNG_MASK";
}

/// Limits compiled into the program. Map sizes that depend on the configuration
/// (the Maglev table and the connection table) are set by the loader from [`Settings`].
pub mod limits {
    /// Forwarding rules (VIP, port, protocol) the program can hold.
    pub const MAX_VIPS: u32 = 1024;
    /// Distinct VIP addresses (for the fragment / truncated-L4 verdicts).
    pub const MAX_VIP_ADDRS: u32 = 1024;
    /// Backend slots, shared by all backend services.
    pub const MAX_BACKENDS: u32 = 4096;
    /// Default number of backend services; the Maglev map holds 2 tables per service.
    pub const DEFAULT_MAX_SERVICES: u32 = 32;
    /// Maglev's own default table size (a prime).
    pub const DEFAULT_RING_SIZE: u32 = 65537;
    /// Default connection-table capacity (LRU: the least recently used flow is evicted).
    pub const DEFAULT_CONN_TABLE_SIZE: u32 = 262_144;
    /// Default promotions from the young-flow table into the connection table, per second
    /// and per CPU (`dataplane.conn_promotions_per_sec`).
    pub const DEFAULT_CONN_PROMOTIONS_PER_SEC: u32 = 5_000;
    /// A young flow is promoted into the connection table by its first packet at least this
    /// long after the entry was made (or last refreshed while promotion was refused).
    pub const PROMOTE_AFTER_NS: u64 = 1_000_000_000;
    /// IPv6 extension headers (hop-by-hop, routing, destination options) the program walks
    /// to reach TCP/UDP; a longer chain to a VIP address is dropped (`drop_ext_headers`).
    pub const MAX_IPV6_EXT_HEADERS: usize = 4;
    /// How long one CPU reuses the FIB's next hop toward a routed backend before asking the
    /// FIB again: a neighbour's new MAC or a route change is followed within this time.
    pub const NEXT_HOP_TTL_NS: u64 = 100_000_000;
}

/// Maglev slot value meaning "no backend": the service has none usable, drop.
pub const NO_BACKEND: u32 = u32::MAX;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Which fields of a flow choose its backend (SEMANTICS.md, session affinity).
pub mod hash_mode {
    /// NONE and CLIENT_IP_PORT_PROTO: source and destination address and port, protocol.
    pub const FIVE_TUPLE: u32 = 0;
    /// CLIENT_IP_PROTO: source address, destination address, protocol.
    pub const CLIENT_IP_PROTO: u32 = 1;
    /// CLIENT_IP: source and destination address.
    pub const CLIENT_IP: u32 = 2;
    /// CLIENT_IP_NO_DESTINATION: source address only.
    pub const CLIENT_IP_NO_DESTINATION: u32 = 3;
}

/// Flags of [`ServiceMeta::flags`].
pub mod service_flags {
    /// A TCP flow pinned to an unhealthy backend stays there (connection persistence).
    pub const PERSIST_TCP: u32 = 1 << 0;
    /// A UDP flow pinned to an unhealthy backend stays there.
    pub const PERSIST_UDP: u32 = 1 << 1;
    /// Connection tracking PER_SESSION: the connection table is keyed by the affinity
    /// fields rather than the 5-tuple, so a whole session shares one entry.
    pub const PER_SESSION: u32 = 1 << 2;
}

/// Flags of [`Backend::flags`].
pub mod backend_flags {
    /// The slot holds a configured backend. Cleared when the backend is removed: flows
    /// pinned to it are hashed again.
    pub const IN_USE: u32 = 1 << 0;
    /// The health checker (or an override) says the backend is healthy.
    pub const HEALTHY: u32 = 1 << 1;
    /// Draining: out of the Maglev table, existing flows stay until the draining timeout.
    pub const DRAINING: u32 = 1 << 2;
    /// Existing flows must leave too (draining timeout expired, or maintenance).
    pub const EVICT: u32 = 1 << 3;
    /// A failover backend of its service (its role, not its state). The program ignores it;
    /// `lb explain` reads it to say that failover put a flow there.
    pub const FAILOVER: u32 = 1 << 4;
}

/// Key of `VIPS`: one forwarding rule. `port_be == 0` means every port of that address and
/// protocol; the program tries the exact port first, then port 0. Aligned to 4 (no size
/// change) so the program can build it with word stores.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u8; 16],
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of `VIPS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into `SERVICES` (and the service's pair of Maglev tables).
    pub service: u32,
    /// Index into `VIP_STATS` and `VIP_STATE`; part of PER_SESSION connection keys.
    pub vip_id: u32,
    /// Equal to `VIP_STATE[vip_id].generation` while the rule is unchanged.
    pub generation: u32,
}

/// Value of `VIP_STATE`, indexed by VIP id: lets a connection-table hit, which skips the
/// `VIPS` lookup, check that its VIP still exists and still points to the same service.
/// Userspace bumps `generation` whenever the rule behind the id changes or goes away.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipState {
    pub service: u32,
    pub generation: u32,
}

/// VIP address flag (`VipAddrSlot::tcp`/`udp`): the address has an all-ports (port 0) rule for the
/// protocol, so a miss on the exact port must try port 0.
pub const VIP_ADDR_ALL_PORTS: u32 = 1 << 0;
/// VIP address flag: the address has at least one rule with a specific port.
pub const VIP_ADDR_PORTS: u32 = 1 << 1;

/// An address and protocol looked up in the VIP address set (`VIP_ADDR_SET`, whose slots
/// carry the `VIP_ADDR_*` flags): an address that carries at least one VIP.
/// Aligned to 4 (no size change) so the program can build it with word stores. Used to decide the verdict
/// of packets whose ports cannot be read (fragments, truncated L4 headers): such packets
/// to a VIP address are dropped, to any other address they pass untouched.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct VipAddrKey {
    pub addr: [u8; 16],
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Value of `VIP_ADDR_SET`: the set of VIP addresses as an open-addressing table in an
/// array, which the program reads without a hash-map lookup (array reads are inlined by the
/// verifier): the first check every TCP/UDP packet makes. An address lives in one of
/// [`vip_addr_set::PROBES`] slots from its home slot; `family` 0 is an empty slot (lookups
/// stop there), [`vip_addr_set::TOMBSTONE`] a removed one (lookups go on). `tcp`/`udp` are
/// the `VIP_ADDR_*` flags of the address's rules for that protocol, 0 when it has none.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipAddrSlot {
    pub addr: [u8; 16],
    pub family: u8,
    pub tcp: u8,
    pub udp: u8,
    pub _pad: u8,
}

/// Geometry and hash of [`VipAddrSlot`]'s table, shared by the program and the programmer.
pub mod vip_addr_set {
    /// Slots (a power of two): 8 × `limits::MAX_VIP_ADDRS`, so the table is at most 1/8
    /// full and an address almost always sits in its home slot.
    pub const SLOTS: u32 = 8192;
    /// Slots an address may be placed in from its home slot (and a lookup reads, at most).
    pub const PROBES: u32 = 8;
    /// `family` of a slot whose address was removed.
    pub const TOMBSTONE: u8 = 0xff;

    /// The home slot of an address given as its four 32-bit words (native order, as read
    /// from memory; IPv4 uses the first).
    #[inline(always)]
    pub fn home(w: [u32; 4]) -> u32 {
        let x = w[0] ^ w[1].rotate_left(8) ^ w[2].rotate_left(16) ^ w[3].rotate_left(24);
        x.wrapping_mul(0x9e37_79b1) >> (32 - SLOTS.trailing_zeros())
    }
}

/// Value of `SERVICES`, indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceMeta {
    /// Which of the service's two Maglev tables is live (0 or 1). Userspace fills the
    /// other one completely, then flips this word: a packet reads one whole table.
    pub active: u32,
    /// One of [`hash_mode`].
    pub hash_mode: u32,
    /// [`service_flags`].
    pub flags: u32,
    /// Idle timeout of connection-table entries, seconds (SEMANTICS: 600 by default).
    pub idle_timeout_s: u32,
    /// How packets reach the backends: one of [`encap::forwarding`].
    pub forwarding: u32,
    /// GUE: the outer UDP destination port, network order.
    pub gue_port_be: u16,
    pub _pad: u16,
}

/// Value of `BACKENDS`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Destination MAC written into forwarded frames (L2 direct server return).
    pub mac: [u8; 6],
    pub family: u8,
    pub _pad: u8,
    /// [`backend_flags`].
    pub flags: u32,
    /// Bumped each time the slot gets a new backend, so a connection-table entry that
    /// names the slot's previous occupant is recognised as stale.
    pub generation: u32,
    /// The service the slot belongs to; lets a restarted agent adopt slot assignments from
    /// the pinned map instead of reshuffling them.
    pub service: u32,
    /// Encapsulated forwarding: the outer source address (the address the kernel itself
    /// uses toward this backend, `ip route get`), same layout as `addr`. Unused by L2 DSR.
    pub src: [u8; 16],
}

/// Key of `CONNS` (and the input of the flow hash).
///
/// PER_CONNECTION flows (the default) are keyed by the raw 5-tuple with `vip_id = 0` and
/// `kind = KEY_FLOW`, so an established packet finds its entry straight from its headers,
/// before and without the VIP lookup. PER_SESSION keys zero the fields the affinity
/// ignores, carry the VIP id and `kind = KEY_SESSION`, so they never collide with raw keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    /// `KEY_FLOW` or `KEY_SESSION`.
    pub kind: u8,
    pub _pad: u8,
    /// PER_SESSION: the VIP the flow was addressed to, so sessions keyed by the client
    /// address alone stay distinct per VIP. 0 in raw flow keys.
    pub vip_id: u32,
}

/// Key of the IPv4 connection tables (`CONNS_V4`, `YOUNG_FLOWS_V4`): the raw 5-tuple of an
/// IPv4 PER_CONNECTION flow in 16 bytes instead of [`FlowKey`]'s 44. The kernel hashes and
/// compares the whole key on every lookup; the short key made an established IPv4 packet
/// about 8 ns cheaper (README: Performance). IPv6 flows and PER_SESSION keys of both
/// families stay in `CONNS` and `YOUNG_FLOWS` under [`FlowKey`]. 4-aligned so the young
/// table reads it as words (`young::KeyWords`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKeyV4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKeyV4 {
    /// The IPv4 key of `k`, or `None` when `k` belongs in the family-neutral tables (an
    /// IPv6 flow, or a PER_SESSION key).
    pub fn narrow(k: &FlowKey) -> Option<FlowKeyV4> {
        if k.family != FAMILY_V4 || k.kind != KEY_FLOW {
            return None;
        }
        Some(FlowKeyV4 {
            src: [k.src[0], k.src[1], k.src[2], k.src[3]],
            dst: [k.dst[0], k.dst[1], k.dst[2], k.dst[3]],
            sport_be: k.sport_be,
            dport_be: k.dport_be,
            proto: k.proto,
            _pad: [0; 3],
        })
    }

    /// The [`FlowKey`] this key stands for.
    pub fn widen(&self) -> FlowKey {
        let mut src = [0; 16];
        let mut dst = [0; 16];
        src[..4].copy_from_slice(&self.src);
        dst[..4].copy_from_slice(&self.dst);
        FlowKey {
            src,
            dst,
            sport_be: self.sport_be,
            dport_be: self.dport_be,
            proto: self.proto,
            family: FAMILY_V4,
            kind: KEY_FLOW,
            _pad: 0,
            vip_id: 0,
        }
    }
}

/// [`FlowKey::kind`] of a raw 5-tuple key.
pub const KEY_FLOW: u8 = 0;
/// [`FlowKey::kind`] of a PER_SESSION key.
pub const KEY_SESSION: u8 = 1;

/// Value of `CONNS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEntry {
    pub backend: u32,
    /// The backend slot's generation when the entry was made.
    pub generation: u32,
    pub vip_id: u32,
    /// `VIP_STATE[vip_id].generation` when the entry was made.
    pub vip_generation: u32,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of the last packet, refreshed
    /// at most once a second to keep the hot path from writing on every packet.
    pub last_seen_ns: u64,
}

/// Value of `SETTINGS[0]`: program-wide settings written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Maglev table size M (prime). The `MAGLEV` array holds `2 * M` slots per service.
    pub ring_size: u32,
    pub max_services: u32,
    /// Most young flows promoted into `CONNS` per second on one CPU; above it, promotion is
    /// skipped (counted) and the flow stays young. 0 is never written (validation).
    pub conn_promotions_per_sec: u32,
}

/// Value of `NEXT_HOPS` (per CPU, indexed by backend id): the FIB's answer toward a routed
/// backend, reused for `limits::NEXT_HOP_TTL_NS` so that an encapsulated packet costs one
/// array read instead of a FIB lookup. `generation` ties it to the slot's occupant.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub ifindex: u32,
    /// The route's MTU (what the outer packet may measure).
    pub mtu: u32,
    pub generation: u32,
    pub checked_ns: u64,
}

/// Value of `PROMOTION_WINDOW` (per CPU): promotions counted in the current one-second
/// window, the rate limit of [`Settings::conn_promotions_per_sec`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PromotionWindow {
    pub start_ns: u64,
    pub count: u64,
}

/// Per-CPU counters of one VIP (`VIP_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that got a backend from the Maglev table (connection-table miss or stale entry).
    pub new_flows: u64,
    pub conn_hits: u64,
    pub conn_misses: u64,
    /// Packets dropped because the service had no usable backend.
    pub no_backend: u64,
}

/// Per-CPU counters of one backend slot (`BACKEND_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl VipStats {
    /// Sum of per-CPU values.
    pub fn add(&mut self, o: &VipStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.conn_hits += o.conn_hits;
        self.conn_misses += o.conn_misses;
        self.no_backend += o.no_backend;
    }
}

impl BackendStats {
    /// Sum of per-CPU values.
    pub fn add(&mut self, o: &BackendStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), made only of integers, with explicit padding
    // (checked by the layout test), so every bit pattern is valid and none is undefined.
    unsafe impl aya::Pod for VipKey {}
    unsafe impl aya::Pod for VipMeta {}
    unsafe impl aya::Pod for VipState {}
    unsafe impl aya::Pod for VipAddrKey {}
    unsafe impl aya::Pod for VipAddrSlot {}
    unsafe impl aya::Pod for ServiceMeta {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKeyV4 {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for young::YoungSet<FlowKeyV4> {}
    unsafe impl aya::Pod for young::YoungSet<FlowKey> {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for PromotionWindow {}
    unsafe impl aya::Pod for VipStats {}
    unsafe impl aya::Pod for BackendStats {}
}

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(offset_of!(VipKey, port_be), 16);
        assert_eq!(offset_of!(VipKey, family), 19);
        assert_eq!(size_of::<VipMeta>(), 12);
        assert_eq!(size_of::<VipAddrKey>(), 20);
        assert_eq!(size_of::<VipAddrSlot>(), 20);
        assert_eq!(offset_of!(VipAddrSlot, family), 16);
        assert_eq!(size_of::<ServiceMeta>(), 24);
        assert_eq!(offset_of!(ServiceMeta, gue_port_be), 20);
        assert_eq!(size_of::<Backend>(), 52);
        assert_eq!(offset_of!(Backend, src), 36);
        assert_eq!(offset_of!(Backend, service), 32);
        assert_eq!(offset_of!(Backend, mac), 16);
        assert_eq!(offset_of!(Backend, flags), 24);
        assert_eq!(offset_of!(Backend, generation), 28);
        assert_eq!(size_of::<FlowKey>(), 44);
        assert_eq!(offset_of!(FlowKey, sport_be), 32);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, vip_id), 40);
        assert_eq!(size_of::<FlowKeyV4>(), 16);
        assert_eq!(offset_of!(FlowKeyV4, sport_be), 8);
        assert_eq!(offset_of!(FlowKeyV4, proto), 12);
        assert_eq!(size_of::<ConnEntry>(), 24);
        assert_eq!(offset_of!(ConnEntry, last_seen_ns), 16);
        assert_eq!(size_of::<VipState>(), 8);
        assert_eq!(offset_of!(FlowKey, kind), 38);
        assert_eq!(size_of::<Settings>(), 12);
        assert_eq!(size_of::<young::YoungSlot<FlowKeyV4>>(), 48);
        assert_eq!(offset_of!(young::YoungSlot<FlowKeyV4>, check), 40);
        assert_eq!(size_of::<young::YoungSlot<FlowKey>>(), 72);
        assert_eq!(offset_of!(young::YoungSlot<FlowKey>, check), 68);
        assert_eq!(size_of::<young::YoungSet<FlowKeyV4>>(), 96);
        assert_eq!(size_of::<young::YoungSet<FlowKey>>(), 144);
        assert_eq!(core::mem::align_of::<FlowKeyV4>(), 4);
        // `young::KeyWords`: the keys are read as whole words.
        use young::KeyWords;
        assert_eq!(size_of::<FlowKeyV4>(), 4 * FlowKeyV4::WORDS);
        assert_eq!(size_of::<FlowKey>(), 4 * FlowKey::WORDS);
        assert_eq!(core::mem::align_of::<FlowKey>(), 4);
        assert_eq!(offset_of!(Settings, conn_promotions_per_sec), 8);
        assert_eq!(size_of::<PromotionWindow>(), 16);
        assert_eq!(size_of::<VipStats>(), 48);
        assert_eq!(size_of::<BackendStats>(), 24);
    }
}
