//! The two connection tables. Every new flow's entry goes into `YOUNG_CONNS` (per-CPU LRU
//! lists, cheap inserts, churned by floods); a flow is copied into `CONNS` (where established
//! flows live) by its first packet at least `PROMOTE_AFTER_NS` after its entry was made,
//! and at most `conn_promotions_per_sec` times per second per CPU. A spoofed source, which
//! sends its packets back to back, never lives long enough to displace an established flow.
//! README: "Connection table under a flood".

use lb_common::{limits::PROMOTE_AFTER_NS, ConnEntry, FlowKey, Reason};

use crate::{
    counters,
    maps::{CONNS, PROMOTION_WINDOW, SETTINGS, YOUNG_CONNS},
};

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
pub fn find<T>(key: &FlowKey, usable: impl Fn(&ConnEntry) -> Option<T>) -> Option<Found<T>> {
    // SAFETY (both lookups): a map value pointer, valid for the program's run; plain data.
    if let Some(entry) = CONNS.get_ptr_mut(key).map(|p| unsafe { &mut *p }) {
        if let Some(backend) = usable(entry) {
            return Some(Found {
                entry,
                backend,
                young: false,
            });
        }
        let _ = CONNS.remove(key);
    }
    let entry = unsafe { &mut *YOUNG_CONNS.get_ptr_mut(key)? };
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
pub fn touch<T>(key: &FlowKey, found: Found<T>, now: u64) {
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
fn promote(key: &FlowKey, young: &mut ConnEntry, now: u64) {
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
    if CONNS.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_PROMOTED);
        // `young` is not touched after this: the element is freed.
        let _ = YOUNG_CONNS.remove(key);
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
pub fn insert_young(key: &FlowKey, entry: &ConnEntry) {
    if YOUNG_CONNS.insert(key, entry, 0).is_ok() {
        counters::reason(Reason::CONN_YOUNG_INSERT);
    } else {
        counters::reason(Reason::CONN_INSERT_FAILED);
        crate::diag::insert_failed();
    }
}
