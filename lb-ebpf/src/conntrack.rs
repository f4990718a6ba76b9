//! The connection tables, young and established. Every new flow's entry goes into
//! `YOUNG_CONNS` (per-CPU LRU lists, cheap inserts, churned by floods); a flow is copied into
//! `CONNS` (where established flows live) by its first packet at least `PROMOTE_AFTER_NS`
//! after its entry was made, and at most `conn_promotions_per_sec` times per second per CPU.
//! A spoofed source, which sends its packets back to back, never lives long enough to
//! displace an established flow.
//! README: "Connection table under a flood". IPv4 PER_CONNECTION flows have their own pair
//! of tables under the 16-byte `FlowKeyV4` ([`ConnKey`]); IPv6 flows and PER_SESSION keys of
//! both families use `FlowKey`.

use aya_ebpf::maps::LruHashMap;
use lb_common::{flow_hash, limits::PROMOTE_AFTER_NS, ConnEntry, FlowKey, FlowKeyV4, Reason};

use crate::{
    counters, keys,
    maps::{CONNS, CONNS_V4, PROMOTION_WINDOW, SETTINGS, YOUNG_CONNS, YOUNG_CONNS_V4},
};

/// A connection-table key: which pair of tables holds it, and the [`FlowKey`] it stands for.
pub trait ConnKey: Sized + 'static {
    /// The connection table and the young table of this key's family.
    fn tables() -> (
        &'static LruHashMap<Self, ConnEntry>,
        &'static LruHashMap<Self, ConnEntry>,
    );
    fn proto(&self) -> u8;
    /// `flow_hash` of the flow (encapsulation spreads flows by it).
    fn hash(&self) -> u32;
    /// The [`FlowKey`] of this key (the VIP lookup's and the flow hash's input), built only
    /// where a path needs it: an established packet never does.
    fn flow(&self) -> FlowKey;
}

impl ConnKey for FlowKey {
    #[inline(always)]
    fn tables() -> (
        &'static LruHashMap<Self, ConnEntry>,
        &'static LruHashMap<Self, ConnEntry>,
    ) {
        (&CONNS, &YOUNG_CONNS)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash::flow_hash(self)
    }
    #[inline(always)]
    fn flow(&self) -> FlowKey {
        *self
    }
}

impl ConnKey for FlowKeyV4 {
    #[inline(always)]
    fn tables() -> (
        &'static LruHashMap<Self, ConnEntry>,
        &'static LruHashMap<Self, ConnEntry>,
    ) {
        (&CONNS_V4, &YOUNG_CONNS_V4)
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn hash(&self) -> u32 {
        flow_hash::flow_hash_v4(self)
    }
    #[inline(always)]
    fn flow(&self) -> FlowKey {
        keys::widen_v4(self)
    }
}

/// An entry that may be followed, with what `usable` made of it (the backend, and what
/// the caller needs besides) and which table holds it.
pub struct Found<T> {
    pub entry: &'static mut ConnEntry,
    pub backend: T,
    young: bool,
}

/// The entry of `key` that `usable` accepts: the connection table first, then the young
/// table. A connection-table entry `usable` refuses is stale for good (expired, its VIP or
/// backend gone, or a flow that had to leave its backend) and is removed, as the old single
/// table overwrote it: otherwise it would shadow the flow's new young entry.
#[inline(always)]
pub fn find<K: ConnKey, T>(key: &K, usable: impl Fn(&ConnEntry) -> Option<T>) -> Option<Found<T>> {
    let (conns, young) = K::tables();
    // SAFETY (both lookups): a map value pointer, valid for the program's run; plain data.
    if let Some(entry) = conns.get_ptr_mut(key).map(|p| unsafe { &mut *p }) {
        if let Some(backend) = usable(entry) {
            return Some(Found {
                entry,
                backend,
                young: false,
            });
        }
        let _ = conns.remove(key);
    }
    let entry = unsafe { &mut *young.get_ptr_mut(key)? };
    let backend = usable(entry)?;
    Some(Found {
        entry,
        backend,
        young: true,
    })
}

/// After a packet followed `found`: refresh an established entry's timestamp (at most once a
/// second: `PROMOTE_AFTER_NS` is also the refresh granularity), or promote a young flow that
/// has lived long enough.
#[inline(always)]
pub fn touch<K: ConnKey, T>(key: &K, found: Found<T>, now: u64) {
    if now.wrapping_sub(found.entry.last_seen_ns) <= PROMOTE_AFTER_NS {
        return;
    }
    if !found.young {
        found.entry.last_seen_ns = now;
        return;
    }
    promote(key, found.entry, now);
}

#[inline(always)]
fn promote<K: ConnKey>(key: &K, young: &mut ConnEntry, now: u64) {
    if !admit(now) {
        // Stays young; tried again a second later.
        counters::reason(Reason::CONN_PROMOTION_SKIPPED);
        young.last_seen_ns = now;
        return;
    }
    let entry = ConnEntry {
        last_seen_ns: now,
        ..*young
    };
    let (conns, young_table) = K::tables();
    if conns.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_PROMOTED);
        // `young` is not touched after this: the element is freed.
        let _ = young_table.remove(key);
    } else {
        counters::reason(Reason::CONN_INSERT_FAILED);
        crate::diag::insert_failed();
        young.last_seen_ns = now;
    }
}

/// The per-CPU promotion budget: `conn_promotions_per_sec` per one-second window.
#[inline(always)]
fn admit(now: u64) -> bool {
    let Some(limit) = SETTINGS.get(0).map(|s| s.conn_promotions_per_sec as u64) else {
        return false;
    };
    let Some(w) = PROMOTION_WINDOW.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's element of a per-CPU array, valid for the program's run.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.start_ns) >= 1_000_000_000 {
        w.start_ns = now;
        w.count = 0;
    }
    if w.count >= limit {
        return false;
    }
    w.count += 1;
    true
}

/// Records a new flow's choice in the young table. A failed insert (memory pressure) still
/// forwards the packet; the next one is hashed again to the same backend.
#[inline(always)]
pub fn insert_young<K: ConnKey>(key: &K, entry: &ConnEntry) {
    if K::tables().1.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_YOUNG_INSERT);
    } else {
        counters::reason(Reason::CONN_INSERT_FAILED);
        crate::diag::insert_failed();
    }
}
