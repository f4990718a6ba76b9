//! The connection tables, young and established. Every new flow's entry goes into its
//! young table (`YOUNG_FLOWS*`: arrays of slots direct-mapped by a cheap hash, churned by
//! floods; `lb_common::young`); a flow is copied into `CONNS*` (LRU hash maps, where
//! established flows live) by its first packet at least `PROMOTE_AFTER_NS` after its entry
//! was made, and at most `conn_promotions_per_sec` times per second per CPU. A spoofed
//! source, which sends its packets back to back, never lives long enough to displace an
//! established flow.
//! README: "Connection table under a flood". IPv4 PER_CONNECTION flows have their own pair
//! of tables under the 16-byte `FlowKeyV4` ([`ConnKey`]); IPv6 flows and PER_SESSION keys of
//! both families use `FlowKey`.

use aya_ebpf::maps::{Array, LruHashMap};
use lb_common::{
    flow_hash,
    limits::PROMOTE_AFTER_NS,
    young::{self, KeyWords, YoungSlot},
    ConnEntry, FlowKey, FlowKeyV4, Reason,
};

use crate::{
    counters, keys,
    maps::{CONNS, CONNS_V4, PROMOTION_WINDOW, SETTINGS, YOUNG_FLOWS, YOUNG_FLOWS_V4},
};

/// A connection-table key: which pair of tables holds it, and the [`FlowKey`] it stands for.
pub trait ConnKey: KeyWords + Sized + 'static {
    /// The connection table and the young table of this key's family.
    fn tables() -> (
        &'static LruHashMap<Self, ConnEntry>,
        &'static Array<YoungSlot<Self>>,
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
        &'static Array<YoungSlot<Self>>,
    ) {
        (&CONNS, &YOUNG_FLOWS)
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
        &'static Array<YoungSlot<Self>>,
    ) {
        (&CONNS_V4, &YOUNG_FLOWS_V4)
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

/// The young slot of `key` (its young hash `hash`), whoever holds it.
#[inline(always)]
fn young_slot<K: ConnKey>(hash: u32) -> Option<&'static mut YoungSlot<K>> {
    let mask = SETTINGS.get(0)?.young_mask;
    let slot = K::tables().1.get_ptr_mut(young::index(hash, mask))?;
    // SAFETY: a map value pointer, valid for the program's run; plain data.
    Some(unsafe { &mut *slot })
}

/// An entry that may be followed, with what `usable` made of it (the backend, and what
/// the caller needs besides) and which table holds it.
pub struct Found<T> {
    pub entry: &'static mut ConnEntry,
    pub backend: T,
    /// The young slot's check word, when the entry is young (cleared on promotion).
    young: Option<&'static mut u32>,
}

/// The entry of `key` that `usable` accepts: the connection table first, then the young
/// table. A connection-table entry `usable` refuses is stale for good (expired, its VIP or
/// backend gone, or a flow that had to leave its backend) and is removed, as the old single
/// table overwrote it: otherwise it would shadow the flow's new young entry.
#[inline(always)]
pub fn find<K: ConnKey, T>(key: &K, usable: impl Fn(&ConnEntry) -> Option<T>) -> Option<Found<T>> {
    let conns = K::tables().0;
    // SAFETY: a map value pointer, valid for the program's run; plain data.
    if let Some(entry) = conns.get_ptr_mut(key).map(|p| unsafe { &mut *p }) {
        if let Some(backend) = usable(entry) {
            return Some(Found {
                entry,
                backend,
                young: None,
            });
        }
        let _ = conns.remove(key);
    }
    let hash = key.young_hash();
    let slot = young_slot::<K>(hash)?;
    if !young::holds(slot, key, hash) {
        return None;
    }
    let backend = usable(&slot.entry)?;
    Some(Found {
        entry: &mut slot.entry,
        backend,
        young: Some(&mut slot.check),
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
    let Some(check) = found.young else {
        found.entry.last_seen_ns = now;
        return;
    };
    promote(key, found.entry, check, now);
}

/// Copies a young flow's entry into the connection table and empties its young slot
/// (`check`: the slot's check word).
#[inline(always)]
fn promote<K: ConnKey>(key: &K, young: &mut ConnEntry, check: &mut u32, now: u64) {
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
    if K::tables().0.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_PROMOTED);
        *check = 0;
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

/// Records a new flow's choice in its young slot, over whatever the slot held (counted when
/// it held another flow's key). Without a slot (settings missing: never while the loader
/// wrote them) the packet is still forwarded; the next one is hashed again.
#[inline(always)]
pub fn insert_young<K: ConnKey>(key: &K, entry: &ConnEntry) {
    let hash = key.young_hash();
    let Some(slot) = young_slot::<K>(hash) else {
        counters::reason(Reason::CONN_INSERT_FAILED);
        crate::diag::insert_failed();
        return;
    };
    if slot.check != 0 && !key.same(&slot.key) {
        counters::reason(Reason::CONN_YOUNG_REPLACED);
    }
    slot.entry = *entry;
    slot.key.copy_from(key);
    slot.check = young::check(hash, entry);
    counters::reason(Reason::CONN_YOUNG_INSERT);
}
