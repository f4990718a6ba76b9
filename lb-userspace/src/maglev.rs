//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4), with weights.
//!
//! Each backend has a permutation of the M table slots derived from its identity: `offset` and
//! `skip` come from two independent hashes, and its j-th preference is
//! `(offset + j * skip) mod M`. Backends take turns claiming their next free preferred slot
//! until the table is full. M must be prime so every `skip` in 1..M generates a full
//! permutation. Weights: in every round each backend accumulates its weight and claims one
//! slot per `max_weight` accumulated, so shares are proportional to weights.
//!
//! The permutation depends only on the backend's identity and M, and turns are taken in the
//! order of identities, so the table is a function of the set of (identity, weight) pairs:
//! the same in any order, after any history of adds and removes, after a restart, and on
//! every balancer given the same backends (which is what keeps a flow on its backend when
//! ECMP moves it to another balancer). Removing one backend moves only the slots it held
//! plus a small disturbance (≈1/N + 1%).
//!
//! Identities: the L4 tier uses the backend's address (`L4Backend::maglev_key`), never its
//! display name, since two balancers may name one backend differently (an admin-socket add
//! without `--name`, a renamed entry); the L7 tier uses its backends' names.

/// A backend as Maglev sees it: a stable identity and a weight (> 0). Two backends of one
/// table must not share an identity (validation refuses duplicate addresses and names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaglevBackend<'a> {
    pub name: &'a str,
    pub weight: u32,
}

/// FNV-1a 64 with a seed folded in first: stable across releases and platforms, unlike
/// `std`'s hasher, which matters because tables must survive an upgrade of the binary.
fn fnv1a(seed: u64, s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so nearby names spread over the whole range.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Builds a table of `m` slots holding indexes into `backends`. Backends with weight 0 get
/// no slot. With no backend of positive weight every slot is `None`.
pub fn build(backends: &[MaglevBackend<'_>], m: u32) -> Vec<Option<u32>> {
    let m = m as u64;
    let mut table: Vec<Option<u32>> = vec![None; m as usize];
    // Turn order decides contested slots, so fix it by identity (then weight, so even a
    // duplicate identity could not make the order depend on the input's): the table then
    // depends on the set of backends, not on the order the configuration lists them.
    let mut live: Vec<(usize, &MaglevBackend)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .collect();
    live.sort_by(|a, b| (a.1.name, a.1.weight).cmp(&(b.1.name, b.1.weight)));
    if live.is_empty() || m == 0 {
        return table;
    }
    let max_weight = live.iter().map(|(_, b)| b.weight as u64).max().unwrap_or(1);
    let perms: Vec<(u64, u64)> = live
        .iter()
        .map(|(_, b)| {
            let offset = fnv1a(0x5bd1_e995, b.name) % m;
            let skip = if m > 1 {
                fnv1a(0x1b87_3593, b.name) % (m - 1) + 1
            } else {
                1
            };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; live.len()];
    let mut credit = vec![0u64; live.len()];
    let mut filled = 0u64;
    'fill: loop {
        for (i, (idx, b)) in live.iter().enumerate() {
            credit[i] += b.weight as u64;
            while credit[i] >= max_weight {
                credit[i] -= max_weight;
                let (offset, skip) = perms[i];
                // Find this backend's next preferred slot that is still empty.
                let mut slot = (offset + next[i] * skip) % m;
                while table[slot as usize].is_some() {
                    next[i] += 1;
                    slot = (offset + next[i] * skip) % m;
                }
                table[slot as usize] = Some(*idx as u32);
                next[i] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 65537;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.1.{}.{}", i / 250, i % 250 + 1))
            .collect()
    }

    fn equal(names: &[String]) -> Vec<MaglevBackend<'_>> {
        names
            .iter()
            .map(|n| MaglevBackend { name: n, weight: 1 })
            .collect()
    }

    fn shares(t: &[Option<u32>], n: usize) -> Vec<u64> {
        let mut c = vec![0u64; n];
        for s in t {
            c[s.expect("full table") as usize] += 1;
        }
        c
    }

    #[test]
    fn largest_share_within_one_percent_of_ideal() {
        for n in [3usize, 10, 100, 1000] {
            let ns = names(n);
            let t = build(&equal(&ns), M);
            let c = shares(&t, n);
            let ideal = M as f64 / n as f64;
            let max = *c.iter().max().unwrap() as f64;
            let min = *c.iter().min().unwrap() as f64;
            println!("N={n}: ideal {ideal:.1}, max {max}, min {min}");
            assert!(
                max <= ideal * 1.01 + 1.0,
                "N={n}: max {max} > ideal {ideal} + 1%"
            );
        }
    }

    #[test]
    fn removing_one_backend_moves_little_more_than_its_share() {
        for n in [3usize, 10, 100, 1000] {
            let ns = names(n);
            let before = build(&equal(&ns), M);
            // Remove a backend in the middle; indexes after it shift, so compare names.
            let removed = n / 2;
            let rest: Vec<String> = ns
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, s)| s.clone())
                .collect();
            let after = build(&equal(&rest), M);
            let changed = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| ns[b.unwrap() as usize] != rest[a.unwrap() as usize])
                .count();
            let frac = changed as f64 / M as f64;
            println!(
                "N={n}: {:.3}% of slots changed (1/N = {:.3}%)",
                frac * 100.0,
                100.0 / n as f64
            );
            assert!(
                frac <= 1.0 / n as f64 + 0.01,
                "N={n}: {frac} of slots moved"
            );
        }
    }

    #[test]
    fn weights_give_proportional_shares() {
        let ns = names(4);
        let weights = [1u32, 2, 3, 4];
        let bs: Vec<MaglevBackend> = ns
            .iter()
            .zip(weights)
            .map(|(n, w)| MaglevBackend { name: n, weight: w })
            .collect();
        let c = shares(&build(&bs, M), 4);
        for (i, w) in weights.iter().enumerate() {
            let ideal = M as f64 * *w as f64 / 10.0;
            let got = c[i] as f64;
            assert!(
                (got - ideal).abs() <= ideal * 0.01 + 1.0,
                "weight {w}: {got} vs {ideal}"
            );
        }
    }

    #[test]
    fn zero_weight_and_empty_sets() {
        assert!(build(&[], 7).iter().all(Option::is_none));
        let ns = names(2);
        let bs = vec![
            MaglevBackend {
                name: &ns[0],
                weight: 0,
            },
            MaglevBackend {
                name: &ns[1],
                weight: 5,
            },
        ];
        assert!(build(&bs, 7).iter().all(|s| *s == Some(1)));
    }

    #[test]
    fn order_independent() {
        let ns = names(10);
        let mut rev = ns.clone();
        rev.reverse();
        let a = build(&equal(&ns), 251);
        let b = build(&equal(&rev), 251);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(ns[x.unwrap() as usize], rev[y.unwrap() as usize]);
        }
    }

    /// Every order of a weighted set gives the same table, read as identities.
    #[test]
    fn every_permutation_gives_the_same_table() {
        let ns = names(4);
        let weights = [1u32, 3, 2, 1];
        let by_id = |order: &[usize]| -> Vec<String> {
            let bs: Vec<MaglevBackend> = order
                .iter()
                .map(|&i| MaglevBackend {
                    name: &ns[i],
                    weight: weights[i],
                })
                .collect();
            build(&bs, 251)
                .iter()
                .map(|s| ns[order[s.unwrap() as usize]].clone())
                .collect()
        };
        let reference = by_id(&[0, 1, 2, 3]);
        let mut count = 0;
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let order = [a, b, c, d];
                        let mut seen = order.to_vec();
                        seen.sort();
                        seen.dedup();
                        if seen.len() == 4 {
                            assert_eq!(by_id(&order), reference, "order {order:?}");
                            count += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(count, 24);
    }
}
