//! The young-flow tables (`YOUNG_FLOWS_V4` for IPv4 PER_CONNECTION flows, `YOUNG_FLOWS` for
//! IPv6 flows and PER_SESSION keys): arrays of [`YoungSet`]s of [`WAYS`] slots, the set
//! chosen by a cheap hash of the key. Every new flow writes a slot of its set; a flow that
//! lives a second is promoted into the connection table (an LRU hash map).
//!
//! Why not an LRU like the connection table: a new flow's LRU insert (the kernel's free-list
//! pop, evicting from a full table under a flood, and the bucket walks) was measured at about
//! 190 ns of a new flow's ~420 ns over the floor; a set is one inlined array lookup, and the The price: young flows whose keys hash to one set of
//! [`WAYS`] slots share it and the least recently refreshed gives way; its next packet is
//! hashed again (to the same backend unless the Maglev table changed within its first
//! second) and counted (`conn_miss_mid_flow`, `conn_young_replaced`).
//!
//! Two CPUs may write one slot at once (colliding flows) while a third reads it, so a slot
//! may be read with its words from different writes. [`check`] ties a slot's key to its
//! entry: a slot whose check does not match what was read is treated as empty, so a torn
//! read costs a miss, never a packet sent to another flow's backend.

use crate::{ConnEntry, FlowKey, FlowKeyV4};

/// A young-table slot. The `key` is compared in full on every read; `check` is
/// [`check`] of the key's [`KeyWords::young_hash`] and the entry, or 0 in an empty or
/// promoted slot (never a valid check: [`check`] sets the lowest bit).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct YoungSlot<K: KeyWords> {
    pub entry: ConnEntry,
    pub key: K,
    pub check: u32,
    /// Explicit padding to the slot's 8-byte alignment (none after the 44-byte key).
    pub _pad: K::Pad,
}

/// Slots per set: a key may live in either slot of its set (two-way set-associative, the
/// newer entry in way 0), so a young flow loses its entry only when two newer flows of its
/// set arrive within its first second, not one (with R new flows a second over S slots, a direct-mapped table loses
/// about R/S of its young flows, a two-way one about 2(R/S)²), and two long-lived flows
/// that hash alike do not take turns evicting each other on every packet.
pub const WAYS: usize = 2;

/// A young table's element: one set, read with one map lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct YoungSet<K: KeyWords> {
    pub ways: [YoungSlot<K>; WAYS],
}

/// The set of a key's young hash in a table of `mask + 1` sets (a power of two).
#[inline(always)]
pub fn set_index(hash: u32, mask: u32) -> u32 {
    hash & mask
}

impl<K: KeyWords> YoungSet<K> {
    /// The way that holds `key` (its young hash `hash`) and its entry, if one does
    /// ([`YoungSlot::read`]).
    #[inline(always)]
    pub fn find(&self, key: &K, hash: u32) -> Option<(usize, ConnEntry)> {
        if let Some(e) = self.ways[0].read(key, hash) {
            Some((0, e))
        } else {
            self.ways[1].read(key, hash).map(|e| (1, e))
        }
    }

    /// Writes a new entry for `key` into the set: way 0 takes it and what way 0 held moves
    /// to way 1, so the set keeps its two most recently made entries and drops the older; a
    /// refresh of the key way 0 holds only overwrites it. `check` is [`check`] of the key's
    /// young hash and `entry`; `replaced` runs when the entry dropped was another key's
    /// (`conn_young_replaced`). No choice among ways to branch on: the verifier walks the
    /// rest of the program once, not once per way.
    #[inline(always)]
    pub fn push(&mut self, key: &K, entry: &ConnEntry, check: u32, replaced: impl FnOnce()) {
        let [a, b] = &mut self.ways;
        if a.check == 0 || !key.same(&a.key) {
            if b.check != 0 && !key.same(&b.key) {
                replaced();
            }
            *b = *a;
        }
        a.entry = *entry;
        a.key.copy_from(key);
        a.check = check;
    }
}

/// Sets in a young table for `conn_table_size`: as many slots as the next power of two,
/// so a set is found with a mask.
pub fn sets_for(conn_table_size: u32) -> u32 {
    (conn_table_size.next_power_of_two() / WAYS as u32).max(1)
}

/// A key read as 32-bit words.
///
/// # Safety
/// An implementor is `repr(C)`, 4-aligned, exactly `WORDS * 4` bytes long and has no
/// undefined (padding) bytes: the words are read and written through `u32` pointers.
pub unsafe trait KeyWords: Copy {
    const WORDS: usize;
    /// [`YoungSlot::_pad`]: what the slot needs after `check` to end 8-aligned.
    type Pad: Copy + Default + core::fmt::Debug + PartialEq + Eq;

    /// Word `i < WORDS` of the key.
    #[inline(always)]
    fn word(&self, i: usize) -> u32 {
        // SAFETY: the trait's contract; every caller passes `i < WORDS`.
        unsafe { (self as *const Self as *const u32).add(i).read() }
    }

    #[inline(always)]
    fn set_word(&mut self, i: usize, w: u32) {
        // SAFETY: as in `word`.
        unsafe { (self as *mut Self as *mut u32).add(i).write(w) }
    }

    /// `*self = *from`, word by word (a struct copy may compile to a byte-loop `memcpy`
    /// call in BPF).
    #[inline(always)]
    fn copy_from(&mut self, from: &Self) {
        let mut i = 0;
        while i < Self::WORDS {
            self.set_word(i, from.word(i));
            i += 1;
        }
    }

    /// Multiply-xorshift over the key's words: a few cycles per word (the Maglev hash,
    /// `flow_hash`, is a stronger and slower murmur; slot placement needs spread only).
    #[inline(always)]
    fn young_hash(&self) -> u32 {
        let mut h: u32 = 0x2545_f491;
        let mut i = 0;
        while i < Self::WORDS {
            h = (h ^ self.word(i)).wrapping_mul(0x9e37_79b1);
            h ^= h >> 15;
            i += 1;
        }
        h
    }

    /// Whether two keys are equal, word by word (a derived `==` over byte arrays compiles
    /// to a `memcmp` call in BPF).
    #[inline(always)]
    fn same(&self, other: &Self) -> bool {
        let mut diff = 0;
        let mut i = 0;
        while i < Self::WORDS {
            diff |= self.word(i) ^ other.word(i);
            i += 1;
        }
        diff == 0
    }
}

// SAFETY: 16 bytes, 4-aligned (`repr(C, align(4))`), explicit padding (layout test).
unsafe impl KeyWords for FlowKeyV4 {
    const WORDS: usize = 4;
    type Pad = u32;
}

// SAFETY: 44 bytes, 4-aligned, explicit padding (layout test).
unsafe impl KeyWords for FlowKey {
    const WORDS: usize = 11;
    type Pad = [u32; 0];
}

/// The check word of a slot holding `entry` for a key whose young hash is `hash`: every
/// field a forwarding decision reads, mixed; never 0.
#[inline(always)]
pub fn check(hash: u32, entry: &ConnEntry) -> u32 {
    let mut h = hash;
    for w in [
        entry.backend,
        entry.generation,
        entry.vip_id,
        entry.vip_generation,
    ] {
        h = (h ^ w).wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
    }
    h | 1
}

impl<K: KeyWords> YoungSlot<K> {
    /// The slot's entry if it is a valid entry for `key` (`hash` its young hash). The entry
    /// is read once (volatile) and checked as read, so what is returned is what was
    /// checked, whatever another CPU writes meanwhile.
    #[inline(always)]
    pub fn read(&self, key: &K, hash: u32) -> Option<ConnEntry> {
        // SAFETY: a reference to plain data.
        let entry = unsafe { core::ptr::read_volatile(&self.entry) };
        (key.same(&self.key) && self.check == check(hash, &entry)).then_some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKeyV4 {
        FlowKeyV4 {
            src: (0x0a00_0000 | i).to_be_bytes(),
            dst: [10, 0, 0, 100],
            sport_be: (1024 + (i % 60000) as u16).to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn keys_spread_over_the_sets() {
        // 2048 flows of one client subnet into 2048 sets: a uniform hash leaves about 1/e
        // of the sets empty; a poor one piles flows up.
        let mut used = [false; 2048];
        for i in 0..2048 {
            used[set_index(key(i).young_hash(), 2047) as usize] = true;
        }
        let empty = used.iter().filter(|u| !**u).count();
        assert!((650..850).contains(&empty), "{empty} empty sets");
    }

    #[test]
    fn a_slot_holds_only_its_own_key_with_its_own_entry() {
        let e = ConnEntry {
            backend: 3,
            generation: 1,
            vip_id: 2,
            vip_generation: 1,
            last_seen_ns: 5,
        };
        let k = key(7);
        let h = k.young_hash();
        let slot = YoungSlot {
            entry: e,
            key: k,
            check: check(h, &e),
            _pad: 0,
        };
        let holds = |s: &YoungSlot<FlowKeyV4>, k: &FlowKeyV4, h| s.read(k, h).is_some();
        assert_eq!(slot.read(&k, h), Some(e));
        assert!(!holds(&slot, &key(8), key(8).young_hash()));
        // A torn slot: the key of one write, the backend of another.
        let torn = YoungSlot {
            entry: ConnEntry { backend: 4, ..e },
            ..slot
        };
        assert!(!holds(&torn, &k, h));
        // Empty and promoted slots hold nothing.
        assert!(!holds(&YoungSlot::default(), &FlowKeyV4::default(), 0));
        assert!(!holds(&YoungSlot { check: 0, ..slot }, &k, h));
        // The last-seen time is refreshed in place and is not part of the check.
        let e2 = ConnEntry {
            last_seen_ns: 99,
            ..e
        };
        assert!(holds(&YoungSlot { entry: e2, ..slot }, &k, h));
    }

    #[test]
    fn a_set_keeps_its_two_newest_entries() {
        let e = ConnEntry::default();
        let push = |s: &mut YoungSet<FlowKeyV4>, k: u32| {
            let mut replaced = false;
            s.push(&key(k), &e, 1, || replaced = true);
            replaced
        };
        let keys = |s: &YoungSet<FlowKeyV4>| (s.ways[0].key, s.ways[1].key);
        let mut s = YoungSet::default();
        assert!(!push(&mut s, 1));
        assert!(!push(&mut s, 2));
        assert_eq!(keys(&s), (key(2), key(1)));
        // A refresh of the newest overwrites it in place.
        assert!(!push(&mut s, 2));
        assert_eq!(keys(&s), (key(2), key(1)));
        // A refresh of the older makes it the newest; nothing is lost.
        assert!(!push(&mut s, 1));
        assert_eq!(keys(&s), (key(1), key(2)));
        // A third key drops the oldest.
        assert!(push(&mut s, 3));
        assert_eq!(keys(&s), (key(3), key(1)));
    }

    #[test]
    fn a_set_finds_its_keys_in_either_way() {
        let e = ConnEntry {
            backend: 1,
            ..Default::default()
        };
        let full = |k: u32| YoungSlot {
            entry: e,
            key: key(k),
            check: check(key(k).young_hash(), &e),
            _pad: 0,
        };
        let s = YoungSet {
            ways: [full(1), full(2)],
        };
        assert_eq!(s.find(&key(1), key(1).young_hash()), Some((0, e)));
        assert_eq!(s.find(&key(2), key(2).young_hash()), Some((1, e)));
        assert_eq!(s.find(&key(3), key(3).young_hash()), None);
    }

    #[test]
    fn wide_keys_compare_every_word() {
        let a = key(1).widen();
        let mut b = a;
        b.vip_id = 9;
        assert!(a.same(&a) && !a.same(&b));
        assert_ne!(a.young_hash(), b.young_hash());
    }
}
