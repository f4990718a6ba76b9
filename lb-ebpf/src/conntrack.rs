//! The connection tables, young and established. Every new flow's entry goes into its
//! young table (`YOUNG_FLOWS*`: arrays of two-slot sets chosen by a cheap hash, churned by
//! floods; `lb_common::young`); a flow is copied into `CONNS*` (LRU hash maps, where
//! established flows live) by its first packet at least `PROMOTE_AFTER_NS` after its entry
//! was made, and at most `conn_promotions_per_sec` times per second per CPU. A spoofed
//! source, which sends its packets back to back, never lives long enough to displace an
//! established flow.
//! README: "Connection table under a flood". IPv4 PER_CONNECTION flows have their own pair
//! of tables under the 16-byte `FlowKeyV4` ([`ConnKey`]); IPv6 flows and PER_SESSION keys of
//! both families use `FlowKey`.

use core::mem::MaybeUninit;

use aya_ebpf::maps::{Array, LruHashMap};
use lb_common::{
    flow_hash,
    limits::PROMOTE_AFTER_NS,
    young::{self, KeyWords, YoungSet},
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
        &'static Array<YoungSet<Self>>,
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
        &'static Array<YoungSet<Self>>,
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
        &'static Array<YoungSet<Self>>,
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

/// Sets of each young table minus one (`lb_common::young::set_index`), set by the loader
/// (`names::GLOBAL_YOUNG_MASK`). A read-only global: the verifier knows its value, and
/// reading it costs no map lookup.
#[unsafe(no_mangle)]
static YOUNG_MASK: u32 = 0;

/// The young set of a key whose young hash is `hash`, whoever holds its slots.
#[inline(always)]
fn young_set<K: ConnKey>(hash: u32) -> Option<&'static mut YoungSet<K>> {
    // SAFETY: a plain global; volatile so the loader's value is read, not the zero above.
    let mask = unsafe { core::ptr::read_volatile(&YOUNG_MASK) };
    let set = K::tables().1.get_ptr_mut(young::set_index(hash, mask))?;
    // SAFETY: a map value pointer, valid for the program's run; plain data.
    Some(unsafe { &mut *set })
}

/// An entry that may be followed, with what `usable` made of it (the backend, and what
/// the caller needs besides) and which table holds it: the connection table's value
/// itself, or a copy of the young slot's entry in the caller's buffer. A copy, because the
/// slot is one of two: a pointer to either would leave the verifier two states to carry
/// through the rest of the program (it went past its one-million-instruction limit); the
/// slot is found again by `touch` in the rare case it is written.
pub struct Found<'a, T> {
    pub entry: &'a mut ConnEntry,
    pub backend: T,
    young: bool,
}

/// The entry of `key` that `usable` accepts: the connection table first, then the young
/// table (its entry copied into `buf`). A connection-table entry `usable` refuses is stale
/// for good (expired, its VIP or backend gone, or a flow that had to leave its backend) and
/// is removed, as the old single table overwrote it: otherwise it would shadow the flow's
/// new young entry.
#[inline(always)]
pub fn find<'a, K: ConnKey, T>(
    key: &K,
    buf: &'a mut MaybeUninit<ConnEntry>,
    usable: impl Fn(&ConnEntry) -> Option<T>,
) -> Option<Found<'a, T>> {
    let conns = K::tables().0;
    // SAFETY: a map value pointer, valid for the program's run; plain data.
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
    let hash = key.young_hash();
    let set = young_set::<K>(hash)?;
    let (_, entry) = set.find(key, hash)?;
    let entry = buf.write(entry);
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
    if found.young {
        promote(key, now);
    } else {
        found.entry.last_seen_ns = now;
    }
}

/// Copies a young flow's entry into the connection table and empties its young slot; at
/// most `conn_promotions_per_sec` a second per CPU (refused: it stays young, refreshed so
/// it is tried again a second later).
#[inline(always)]
fn promote<K: ConnKey>(key: &K, now: u64) {
    let hash = key.young_hash();
    let Some(set) = young_set::<K>(hash) else {
        return;
    };
    let Some((w, young)) = set.find(key, hash) else {
        return;
    };
    // `& 1`: the verifier sees the index within the set.
    let slot = &mut set.ways[w & 1];
    if !admit(now) {
        counters::reason(Reason::CONN_PROMOTION_SKIPPED);
        slot.entry.last_seen_ns = now;
        return;
    }
    let entry = ConnEntry {
        last_seen_ns: now,
        ..young
    };
    if K::tables().0.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_PROMOTED);
        slot.check = 0;
    } else {
        insert_failed();
        slot.entry.last_seen_ns = now;
    }
}

#[inline(always)]
fn insert_failed() {
    counters::reason(Reason::CONN_INSERT_FAILED);
    crate::diag::insert_failed();
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

/// Records a new flow's choice in its young set (`YoungSet::push`: it becomes the set's
/// newest entry), counted when it drops another flow's entry. Without a set (never: the
/// array has every index the mask makes) the packet is still forwarded; the next one is
/// hashed again.
#[inline(always)]
pub fn insert_young<K: ConnKey>(key: &K, entry: &ConnEntry) {
    let hash = key.young_hash();
    let Some(set) = young_set::<K>(hash) else {
        insert_failed();
        return;
    };
    set.push(key, entry, young::check(hash, entry), || {
        counters::reason(Reason::CONN_YOUNG_REPLACED)
    });
    counters::reason(Reason::CONN_YOUNG_INSERT);
}
