//! Placement of VIP addresses in the program's array-based address set (`VIP_ADDR_SET`,
//! `lb_common::VipAddrSlot`). Pure: from the slots the map holds and the addresses the plan
//! wants, the slots it must hold. An address never moves while it stays (so no packet to a
//! standing VIP misses it while the table changes); a removed address leaves a tombstone,
//! which later insertions reuse; a new one takes the first free slot of its probe sequence.

use lb_common::{vip_addr_set, VipAddrKey, VipAddrSlot, PROTO_TCP, PROTO_UDP};
use std::collections::BTreeMap;

/// An address as the table keys it: its 16 bytes and family.
pub type Addr = ([u8; 16], u8);

/// The home slot of `addr` (the program computes the same from the packet).
pub fn home(addr: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    vip_addr_set::home([w(0), w(4), w(8), w(12)])
}

/// The per-protocol flags of every address the plan's rules name.
pub fn wanted(addrs: &BTreeMap<VipAddrKey, u32>) -> BTreeMap<Addr, (u8, u8)> {
    let mut out: BTreeMap<Addr, (u8, u8)> = BTreeMap::new();
    for (k, flags) in addrs {
        let e = out.entry((k.addr, k.family)).or_default();
        match k.proto {
            PROTO_TCP => e.0 = *flags as u8,
            PROTO_UDP => e.1 = *flags as u8,
            _ => {}
        }
    }
    out
}

/// The slots the table must hold (empty slots left out) given what it holds now (`cur`).
/// Fails when an address finds no free slot among its probes (not expected: the table is
/// at most 1/8 full).
pub fn place(
    cur: &BTreeMap<u32, VipAddrSlot>,
    wanted: &BTreeMap<Addr, (u8, u8)>,
) -> Result<BTreeMap<u32, VipAddrSlot>, String> {
    let mut next = BTreeMap::new();
    let mut placed = BTreeMap::new();
    for (slot, s) in cur {
        if s.family == 0 || s.family == vip_addr_set::TOMBSTONE {
            next.insert(*slot, tombstone());
            continue;
        }
        match wanted.get(&(s.addr, s.family)) {
            Some((tcp, udp)) => {
                next.insert(*slot, slot_of((s.addr, s.family), *tcp, *udp));
                placed.insert((s.addr, s.family), *slot);
            }
            None => {
                next.insert(*slot, tombstone());
            }
        }
    }
    for (a, (tcp, udp)) in wanted {
        if placed.contains_key(a) {
            continue;
        }
        let h = home(&a.0);
        let free = (0..vip_addr_set::PROBES)
            .map(|i| (h + i) % vip_addr_set::SLOTS)
            .find(|s| {
                next.get(s)
                    .is_none_or(|x: &VipAddrSlot| x.family == vip_addr_set::TOMBSTONE)
            })
            .ok_or_else(|| {
                format!(
                    "no free slot for a VIP address within {} probes of the address set",
                    vip_addr_set::PROBES
                )
            })?;
        next.insert(free, slot_of(*a, *tcp, *udp));
        placed.insert(*a, free);
    }
    // Tombstones at the end of a probe run are not needed by any lookup, but dropping them
    // would need knowing every chain; they stay until reused.
    Ok(next)
}

fn slot_of((addr, family): Addr, tcp: u8, udp: u8) -> VipAddrSlot {
    VipAddrSlot {
        addr,
        family,
        tcp,
        udp,
        _pad: 0,
    }
}

fn tombstone() -> VipAddrSlot {
    VipAddrSlot {
        family: vip_addr_set::TOMBSTONE,
        ..Default::default()
    }
}

/// What the program finds for (address, protocol) in a table held in memory.
pub fn lookup(table: &BTreeMap<u32, VipAddrSlot>, addr: Addr, proto: u8) -> Option<u32> {
    lookup_with(
        |slot| table.get(&slot).copied().unwrap_or_default(),
        addr,
        proto,
    )
}

/// The program's probing (`lb-ebpf`'s `vip_addr_flags`) over any reader of slots (the
/// pinned map for `lb explain`, an in-memory table for tests).
pub fn lookup_with(slot: impl Fn(u32) -> VipAddrSlot, addr: Addr, proto: u8) -> Option<u32> {
    let h = home(&addr.0);
    for i in 0..vip_addr_set::PROBES {
        let s = slot((h + i) % vip_addr_set::SLOTS);
        if s.family == 0 {
            return None;
        }
        if (s.addr, s.family) == addr {
            let f = if proto == PROTO_TCP { s.tcp } else { s.udp };
            return (f != 0).then_some(f as u32);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> Addr {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&(0x0a00_0000 + i).to_be_bytes());
        (a, 4)
    }

    #[test]
    fn addresses_are_found_and_never_move_while_they_stay() {
        let mut want: BTreeMap<Addr, (u8, u8)> = (0..1024).map(|i| (v4(i), (2, 0))).collect();
        let t1 = place(&BTreeMap::new(), &want).unwrap();
        for a in want.keys() {
            assert_eq!(lookup(&t1, *a, PROTO_TCP), Some(2));
            assert_eq!(lookup(&t1, *a, PROTO_UDP), None);
        }
        assert_eq!(lookup(&t1, v4(5000), PROTO_TCP), None);
        // Remove every other address, add new ones: the staying ones keep their slots.
        let staying: Vec<Addr> = (0..1024).step_by(2).map(v4).collect();
        want.retain(|a, _| staying.contains(a));
        for i in 2000..2512 {
            want.insert(v4(i), (1, 3));
        }
        let t2 = place(&t1, &want).unwrap();
        for a in &staying {
            let slot = |t: &BTreeMap<u32, VipAddrSlot>| {
                t.iter()
                    .find(|(_, s)| (s.addr, s.family) == *a)
                    .map(|(k, _)| *k)
            };
            assert_eq!(slot(&t1), slot(&t2));
        }
        for (a, (tcp, udp)) in &want {
            assert_eq!(lookup(&t2, *a, PROTO_TCP), Some(*tcp as u32));
            assert_eq!(
                lookup(&t2, *a, PROTO_UDP),
                (*udp != 0).then_some(*udp as u32)
            );
        }
        for i in (1..1024).step_by(2) {
            assert_eq!(lookup(&t2, v4(i), PROTO_TCP), None, "removed {i}");
        }
    }

    #[test]
    fn the_plans_flags_are_grouped_by_address() {
        let k = |proto| VipAddrKey {
            addr: v4(1).0,
            proto,
            family: 4,
            _pad: [0; 2],
        };
        let m: BTreeMap<VipAddrKey, u32> = [(k(PROTO_TCP), 1), (k(PROTO_UDP), 2)].into();
        assert_eq!(wanted(&m).get(&v4(1)), Some(&(1, 2)));
    }
}
