//! The flow hash that picks a Maglev slot. Shared so userspace tests and tools can predict
//! the program's choice. Fields not selected by the affinity mode are zeroed before hashing
//! (see [`mask_for_hash`]), so one function serves every mode.

use crate::{hash_mode, FlowKey, FlowKeyV4};

const SEED: u32 = 0x9e37_79b9;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    // MurmurHash3 (public domain) 32-bit body round.
    let mut k = k.wrapping_mul(0xcc9e_2d51);
    k = k.rotate_left(15);
    k = k.wrapping_mul(0x1b87_3593);
    let h = h ^ k;
    h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of the flow's address, port and protocol fields (not `vip_id`).
#[inline(always)]
pub fn flow_hash(k: &FlowKey) -> u32 {
    let mut h = SEED;
    h = mix(h, word(&k.src, 0));
    h = mix(h, word(&k.src, 4));
    h = mix(h, word(&k.src, 8));
    h = mix(h, word(&k.src, 12));
    h = mix(h, word(&k.dst, 0));
    h = mix(h, word(&k.dst, 4));
    h = mix(h, word(&k.dst, 8));
    h = mix(h, word(&k.dst, 12));
    h = mix(h, (k.sport_be as u32) << 16 | k.dport_be as u32);
    h = mix(h, k.proto as u32);
    fmix(h ^ 40)
}

/// [`flow_hash`] of `k.widen()`, from the IPv4 key itself (the zero words of the widened
/// addresses mixed as constants): the XDP program hashes an established IPv4 flow for
/// encapsulation without building the 44-byte key.
#[inline(always)]
pub fn flow_hash_v4(k: &FlowKeyV4) -> u32 {
    let mut h = SEED;
    h = mix(h, u32::from_ne_bytes(k.src));
    h = mix(h, 0);
    h = mix(h, 0);
    h = mix(h, 0);
    h = mix(h, u32::from_ne_bytes(k.dst));
    h = mix(h, 0);
    h = mix(h, 0);
    h = mix(h, 0);
    h = mix(h, (k.sport_be as u32) << 16 | k.dport_be as u32);
    h = mix(h, k.proto as u32);
    fmix(h ^ 40)
}

/// Zeroes the fields the affinity mode ignores.
#[inline(always)]
pub fn mask_for_hash(k: &mut FlowKey, mode: u32) {
    if mode == hash_mode::FIVE_TUPLE {
        return;
    }
    k.sport_be = 0;
    k.dport_be = 0;
    if mode == hash_mode::CLIENT_IP_PROTO {
        return;
    }
    k.proto = 0;
    if mode == hash_mode::CLIENT_IP {
        return;
    }
    k.dst = [0; 16];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            sport_be: sport.to_be(),
            dport_be: 80u16.to_be(),
            proto: 6,
            family: 4,
            ..Default::default()
        }
    }

    #[test]
    fn the_ipv4_hash_is_the_hash_of_the_widened_key() {
        for i in 0..2000u32 {
            let k = FlowKeyV4 {
                src: (i.wrapping_mul(2_654_435_761)).to_ne_bytes(),
                dst: (i ^ 0x0a00_0064).to_ne_bytes(),
                sport_be: (i as u16).wrapping_mul(7),
                dport_be: (i >> 3) as u16,
                proto: if i % 2 == 0 { 6 } else { 17 },
                ..Default::default()
            };
            assert_eq!(flow_hash_v4(&k), flow_hash(&k.widen()), "key {k:?}");
            assert_eq!(FlowKeyV4::narrow(&k.widen()), Some(k));
            let mut session = k.widen();
            session.kind = crate::KEY_SESSION;
            assert_eq!(
                FlowKeyV4::narrow(&session),
                None,
                "sessions stay in FlowKey tables"
            );
        }
    }

    #[test]
    fn five_tuple_depends_on_ports_client_ip_does_not() {
        assert_ne!(flow_hash(&key(1000)), flow_hash(&key(1001)));
        let (mut a, mut b) = (key(1000), key(1001));
        mask_for_hash(&mut a, hash_mode::CLIENT_IP);
        mask_for_hash(&mut b, hash_mode::CLIENT_IP);
        assert_eq!(flow_hash(&a), flow_hash(&b));
    }

    #[test]
    fn no_destination_ignores_destination() {
        let (mut a, mut b) = (key(1000), key(1000));
        b.dst[3] = 200;
        mask_for_hash(&mut a, hash_mode::CLIENT_IP_NO_DESTINATION);
        mask_for_hash(&mut b, hash_mode::CLIENT_IP_NO_DESTINATION);
        assert_eq!(flow_hash(&a), flow_hash(&b));
        let (mut c, mut d) = (key(1000), key(1000));
        d.dst[3] = 200;
        mask_for_hash(&mut c, hash_mode::CLIENT_IP);
        mask_for_hash(&mut d, hash_mode::CLIENT_IP);
        assert_ne!(flow_hash(&c), flow_hash(&d));
    }

    /// The hash has no per-host or per-boot input (a fixed seed, no random state), so every
    /// balancer, and every release, hashes a flow the same way: the values are pinned.
    #[test]
    fn hashes_are_the_same_on_every_host_and_release() {
        let golden = [
            (hash_mode::FIVE_TUPLE, flow_hash(&key(1000))),
            (hash_mode::CLIENT_IP_PROTO, {
                let mut k = key(1000);
                mask_for_hash(&mut k, hash_mode::CLIENT_IP_PROTO);
                flow_hash(&k)
            }),
        ];
        assert_eq!(
            golden, GOLDEN,
            "the flow hash changed: flows would move between releases"
        );
    }

    const GOLDEN: [(u32, u32); 2] = [(0, 2_295_098_915), (1, 2_116_477_438)];
}
