//! Smooth weighted round robin as a precomputed schedule (nginx's algorithm, run once per
//! set of eligible backends instead of once per request).
//!
//! nginx's pick: every candidate's `current` grows by its weight, the largest `current`
//! wins and gives back the sum of the weights. Over one cycle (sum of weights picks) each
//! backend is picked exactly its weight's number of times, and the picks are spread: equal
//! weights alternate, 3:1 gives `a a b a` — every window of 4 holds 3 and 1. The schedule is
//! that cycle written down; the request path indexes it with one atomic counter, so a pick
//! costs no lock and no loop over the backends.

/// Longest schedule built. Weights (weight × capacity scaler, in thousandths) are first
/// divided by their greatest common divisor, which keeps common cases exact and short
/// (equal weights: 2 entries; 3:1 → 4); beyond this length they are scaled down in
/// proportion (each share off by at most one entry in this many).
pub const MAX_LEN: u64 = 4096;

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Weights of the schedule: divided by their gcd, and scaled to at most [`MAX_LEN`] in sum
/// (no non-zero weight becomes 0).
fn reduce(weights: &[u64]) -> Vec<u64> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|x| x / g).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_LEN {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = ((*x as u128 * MAX_LEN as u128 / sum as u128) as u64).max(1);
        }
    }
    w
}

/// The smooth weighted round-robin cycle over `weights` (index = backend, 0 = left out):
/// the backend indexes in pick order. Empty when every weight is 0.
pub fn build(weights: &[u64]) -> Vec<u32> {
    let w = reduce(weights);
    let total: u64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = usize::MAX;
        for (i, wi) in w.iter().enumerate() {
            if *wi == 0 {
                continue;
            }
            current[i] += *wi as i64;
            if best == usize::MAX || current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for i in s {
            c[*i as usize] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_alternate() {
        assert_eq!(build(&[1000, 1000]), vec![0, 1]);
        assert_eq!(build(&[7, 7, 7]), vec![0, 1, 2]);
    }

    #[test]
    fn three_to_one_is_spread() {
        let s = build(&[3000, 1000]);
        assert_eq!(s, vec![0, 0, 1, 0]);
        // nginx's classic example: 5:1:1 → a a b a c a a.
        assert_eq!(build(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn zero_weights_are_left_out_and_shares_are_exact() {
        assert!(build(&[0, 0]).is_empty());
        let s = build(&[2000, 0, 1000, 250]);
        assert_eq!(counts(&s, 4), vec![8, 0, 4, 1]);
    }

    #[test]
    fn long_cycles_are_scaled_down() {
        let s = build(&[999_000, 1_000, 997]);
        assert!(s.len() as u64 <= MAX_LEN + 3, "{}", s.len());
        let c = counts(&s, 3);
        assert!(c[1] >= 1 && c[2] >= 1, "small weights keep a slot: {c:?}");
        let share = c[0] as f64 / s.len() as f64;
        assert!((share - 0.998).abs() < 0.002, "{share}");
    }
}
