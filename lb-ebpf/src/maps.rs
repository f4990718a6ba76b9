//! Every map of the program. Names match `lb_common::names` (a userspace test loads the
//! object and finds each by its constant). Sizes that depend on configuration (`MAGLEV`,
//! `CONNS`) are placeholders the loader overrides before load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    limits, vip_addr_set, young::YoungSet, Backend, BackendStats, ConnEntry, FlowKey, FlowKeyV4,
    NextHop, PromotionWindow, Reason, ServiceMeta, Settings, VipAddrSlot, VipKey, VipMeta,
    VipState, VipStats,
};

/// Forwarding rules: (address, port or 0, protocol) → service and VIP id.
#[map]
pub static VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(limits::MAX_VIPS, 0);

/// Per VIP id: service and generation, checked by connection-table hits.
#[map]
pub static VIP_STATE: Array<VipState> = Array::with_max_entries(limits::MAX_VIPS, 0);

/// The VIP addresses as an open-addressing table (`lb_common::VipAddrSlot`): the first
/// lookup of every TCP/UDP packet, before any connection-table access.
#[map]
pub static VIP_ADDR_SET: Array<VipAddrSlot> = Array::with_max_entries(vip_addr_set::SLOTS, 0);

/// Per-service state: live Maglev table, hash mode, persistence flags, idle timeout.
#[map]
pub static SERVICES: Array<ServiceMeta> = Array::with_max_entries(limits::DEFAULT_MAX_SERVICES, 0);

/// Backend slots.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(limits::MAX_BACKENDS, 0);

/// Maglev tables: service s, table t (0/1), slot i is at `(s * 2 + t) * M + i`; the value
/// is a backend id or `NO_BACKEND`. Sized by the loader to `max_services * 2 * M`.
#[map]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);

/// Connection table: flow → backend, for flows that lived past `PROMOTE_AFTER_NS` (promoted
/// from `YOUNG_FLOWS`, at most `conn_promotions_per_sec` per CPU per second). LRU so a full
/// table evicts the coldest flow rather than refusing new ones; a flood of short-lived
/// (spoofed) flows never reaches it. One LRU list shared by all CPUs: an established flow
/// ages against every CPU's promotions, not against one CPU's share of the table.
#[map]
pub static CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(limits::DEFAULT_CONN_TABLE_SIZE, 0);

/// Young-flow table: every new flow's entry starts here, so packets of a flow younger than a
/// second stay on their backend. A flood churns only this table. An array of two-slot sets
/// chosen by a cheap hash of the key (`lb_common::young`: no insert cost beyond a write, no
/// lock; a third flow of a set takes the older slot over). Sized by the loader
/// (`young::sets_for(conn_table_size)`).
#[map]
pub static YOUNG_FLOWS: Array<YoungSet<FlowKey>> = Array::with_max_entries(1, 0);

/// The IPv4 twin of `CONNS`, keyed by the 16-byte `FlowKeyV4` (the kernel hashes and
/// compares the whole key on every lookup; one table pair per address family, as Cilium
/// keeps `ct4` and `ct6`). Sized like it by the loader.
#[map]
pub static CONNS_V4: LruHashMap<FlowKeyV4, ConnEntry> =
    LruHashMap::with_max_entries(limits::DEFAULT_CONN_TABLE_SIZE, 0);

/// The IPv4 twin of `YOUNG_FLOWS`.
#[map]
pub static YOUNG_FLOWS_V4: Array<YoungSet<FlowKeyV4>> = Array::with_max_entries(1, 0);

/// Per CPU: the promotion rate window (`Settings::conn_promotions_per_sec`). Not pinned: a
/// new program starting with an empty window only allows one window's worth early.
#[map]
pub static PROMOTION_WINDOW: PerCpuArray<PromotionWindow> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU, by backend id: the FIB's next hop toward a routed backend, reused for
/// `limits::NEXT_HOP_TTL_NS` (`encap`). Not pinned: a cache a new program refills.
#[map]
pub static NEXT_HOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(limits::MAX_BACKENDS, 0);

/// Per CPU: the last coarse clock reading and the `jiffies` it was taken at (`now_ns`). Not
/// pinned: a cache.
#[map]
pub static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// `SETTINGS[0]`: ring size and service count.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
pub static VIP_STATS: PerCpuArray<VipStats> = PerCpuArray::with_max_entries(limits::MAX_VIPS, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<BackendStats> =
    PerCpuArray::with_max_entries(limits::MAX_BACKENDS, 0);

/// Packets by verdict reason (`lb_common::Reason`).
#[map]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Packets seen by `xdp_pass`: its one counter makes it the same kind of floor as a real
/// program that counts (TOOLCHAIN: a trivial program bumping one per-CPU counter).
#[map]
pub static PASS_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
