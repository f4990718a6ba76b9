//! Selection and affinity: weights, draining, health, stability of hashed keys.

use super::*;
use crate::config::{ConsistentHash, HttpCookie};
use crate::l7::capacity::Capacity;

fn backends(n: usize) -> Vec<Arc<Backend>> {
    (0..n)
        .map(|i| {
            Arc::new(Backend::new(
                "svc",
                format!("b{i}"),
                format!("127.0.0.1:{}", 8000 + i).parse().unwrap(),
            ))
        })
        .collect()
}

fn selector(
    policy: LocalityLbPolicy,
    hashing: bool,
    bs: &[Arc<Backend>],
    weights: &[u32],
) -> Selector {
    Selector::new(
        policy,
        hashing,
        bs.iter().cloned().zip(weights.iter().copied()).collect(),
        None,
    )
}

fn counts(s: &Selector, n: usize, key: impl Fn(usize) -> Key) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut c = vec![0; s.backends.len()];
    for i in 0..n {
        c[s.pick(key(i), 1, &[], &mut rng).unwrap()] += 1;
    }
    c
}

#[test]
fn round_robin_follows_weights_and_skips_drained() {
    let bs = backends(3);
    let s = selector(
        LocalityLbPolicy::RoundRobin,
        false,
        &bs,
        &[
            effective_weight(2, 1.0),
            effective_weight(1, 1.0),
            effective_weight(5, 0.0),
        ],
    );
    let c = counts(&s, 3000, |_| Key::None);
    assert_eq!(c, vec![2000, 1000, 0]);
}

#[test]
fn capacity_scaler_scales_share() {
    let bs = backends(2);
    let s = selector(
        LocalityLbPolicy::Random,
        false,
        &bs,
        &[effective_weight(1, 1.0), effective_weight(1, 0.25)],
    );
    let c = counts(&s, 10_000, |_| Key::None);
    let share = c[1] as f64 / 10_000.0;
    assert!((share - 0.2).abs() < 0.02, "{share}");
}

#[test]
fn unhealthy_and_ejected_backends_are_skipped() {
    let bs = backends(3);
    let s = selector(
        LocalityLbPolicy::RoundRobin,
        false,
        &bs,
        &[1000, 1000, 1000],
    );
    bs[0].serving.store(false, Ordering::Relaxed);
    let c = counts(&s, 300, |_| Key::None);
    assert_eq!(c[0], 0);
    assert_eq!(c[1] + c[2], 300);
    bs[1].serving.store(false, Ordering::Relaxed);
    bs[2].serving.store(false, Ordering::Relaxed);
    let mut rng = fastrand::Rng::with_seed(1);
    assert_eq!(
        s.pick(Key::None, 1, &[], &mut rng),
        None,
        "no healthy backend: nothing to pick (503)"
    );
}

#[test]
fn retry_avoids_the_tried_backend_when_it_can() {
    let bs = backends(2);
    let s = selector(LocalityLbPolicy::Maglev, true, &bs, &[1000, 1000]);
    let mut rng = fastrand::Rng::with_seed(1);
    for k in 0..50u64 {
        let first = s.pick(Key::Hash(k * 7919), 1, &[], &mut rng).unwrap();
        let second = s.pick(Key::Hash(k * 7919), 1, &[first], &mut rng).unwrap();
        assert_ne!(first, second);
    }
    bs[1].serving.store(false, Ordering::Relaxed);
    assert_eq!(
        s.pick(Key::None, 1, &[0], &mut rng),
        Some(0),
        "only one usable: retry on the same"
    );
}

#[test]
fn least_request_prefers_the_idle_backend() {
    let bs = backends(2);
    let s = selector(LocalityLbPolicy::LeastRequest, false, &bs, &[1000, 1000]);
    bs[0].in_flight.store(50, Ordering::Relaxed);
    let c = counts(&s, 1000, |_| Key::None);
    // Two choices: the busy backend wins only when both draws land on it (≈25%).
    assert!(c[1] > 650, "{c:?}");
}

#[test]
fn hashed_keys_are_stable_and_move_little_when_a_backend_goes() {
    for policy in [LocalityLbPolicy::Maglev, LocalityLbPolicy::RingHash] {
        let bs = backends(5);
        let s = selector(policy, true, &bs, &[1000; 5]);
        let mut rng = fastrand::Rng::with_seed(9);
        let keys: Vec<u64> = (0..2000u64)
            .map(|i| stable_hash(&[&i.to_le_bytes()]))
            .collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| s.pick(Key::Hash(*k), 1, &[], &mut rng).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| s.pick(Key::Hash(*k), 1, &[], &mut rng).unwrap())
            .collect();
        assert_eq!(before, again, "{policy:?}: same key, same backend");
        bs[2].serving.store(false, Ordering::Relaxed);
        let after: Vec<usize> = keys
            .iter()
            .map(|k| s.pick(Key::Hash(*k), 1, &[], &mut rng).unwrap())
            .collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != 2 {
                assert_eq!(b, a, "{policy:?}: keys of healthy backends stay");
            } else {
                assert_ne!(*a, 2);
            }
        }
        let share = before.iter().filter(|b| **b == 2).count() as f64 / 2000.0;
        assert!((share - 0.2).abs() < 0.06, "{policy:?}: share {share}");
    }
}

#[test]
fn generated_cookie_pins_its_backend() {
    let bs = backends(3);
    let s = selector(LocalityLbPolicy::Maglev, true, &bs, &[1000; 3]);
    let mut rng = fastrand::Rng::with_seed(5);
    for b in &bs {
        for _ in 0..20 {
            assert_eq!(
                s.backends[s.pick(Key::Backend(b.id), 1, &[], &mut rng).unwrap()].name,
                b.name
            );
        }
    }
    bs[1].serving.store(false, Ordering::Relaxed);
    let i = s.pick(Key::Backend(bs[1].id), 1, &[], &mut rng).unwrap();
    assert_ne!(i, 1, "an unhealthy pinned backend is replaced");
}

fn service(aff: SessionAffinity, ch: ConsistentHash) -> BackendService {
    let mut bs: BackendService = toml::from_str("protocol = \"HTTP\"").unwrap();
    bs.session_affinity = aff;
    bs.consistent_hash = ch;
    bs
}

#[test]
fn affinity_keys() {
    let mut rng = fastrand::Rng::with_seed(2);
    let ip: IpAddr = "10.0.0.1".parse().unwrap();
    let mut h = http::HeaderMap::new();
    let none = service(SessionAffinity::None, Default::default());
    assert_eq!(affinity(&none, &h, ip, &mut rng).key, Key::None);

    let cip = service(SessionAffinity::ClientIp, Default::default());
    let a = affinity(&cip, &h, ip, &mut rng);
    assert_eq!(a, affinity(&cip, &h, ip, &mut rng));
    assert_ne!(
        a.key,
        affinity(&cip, &h, "10.0.0.2".parse().unwrap(), &mut rng).key
    );

    let gen = service(SessionAffinity::GeneratedCookie, Default::default());
    assert_eq!(affinity(&gen, &h, ip, &mut rng).key, Key::None);
    h.insert(
        http::header::COOKIE,
        "a=b; GCILB=\"00000000000000ff\"".parse().unwrap(),
    );
    assert_eq!(affinity(&gen, &h, ip, &mut rng).key, Key::Backend(255));

    let hdr = service(
        SessionAffinity::HeaderField,
        ConsistentHash {
            http_header_name: Some("x-user".into()),
            ..Default::default()
        },
    );
    assert_eq!(affinity(&hdr, &h, ip, &mut rng).key, Key::None);
    h.insert("x-user", "alice".parse().unwrap());
    let k = affinity(&hdr, &h, ip, &mut rng).key;
    assert_eq!(k, affinity(&hdr, &h, ip, &mut rng).key);

    let hc = service(
        SessionAffinity::HttpCookie,
        ConsistentHash {
            http_cookie: Some(HttpCookie {
                name: Some("sid".into()),
                path: None,
                ttl_sec: 60,
            }),
            ..Default::default()
        },
    );
    let fresh = affinity(&hc, &h, ip, &mut rng);
    let v = fresh
        .new_cookie_value
        .clone()
        .expect("a cookie is generated");
    h.insert(http::header::COOKIE, format!("sid={v}").parse().unwrap());
    let back = affinity(&hc, &h, ip, &mut rng);
    assert_eq!(
        back.key, fresh.key,
        "the generated cookie maps to the same hash"
    );
    assert_eq!(back.new_cookie_value, None);
}

#[test]
fn default_policies_and_cookie_format() {
    assert_eq!(
        policy_of(&service(SessionAffinity::None, Default::default())),
        LocalityLbPolicy::RoundRobin
    );
    assert_eq!(
        policy_of(&service(SessionAffinity::ClientIp, Default::default())),
        LocalityLbPolicy::Maglev
    );
    assert_eq!(
        set_cookie("GCILB", "ab", "/", 0),
        "GCILB=\"ab\"; Path=/; HttpOnly"
    );
    assert_eq!(
        set_cookie("GCILB", "ab", "/", 30),
        "GCILB=\"ab\"; Path=/; Max-Age=30; HttpOnly"
    );
}

fn sequence(s: &Selector, n: usize, now_ms: u64) -> Vec<usize> {
    let mut rng = fastrand::Rng::with_seed(4);
    (0..n)
        .map(|_| s.pick(Key::None, now_ms, &[], &mut rng).unwrap())
        .collect()
}

/// Every window of `len` consecutive picks holds exactly `want[i]` picks of backend i.
fn assert_windows(seq: &[usize], len: usize, want: &[usize]) {
    for (k, w) in seq.windows(len).enumerate() {
        let mut c = vec![0; want.len()];
        for i in w {
            c[*i] += 1;
        }
        assert_eq!(c, want, "window at {k} of {seq:?}");
    }
}

#[test]
fn round_robin_alternates_request_by_request() {
    let bs = backends(2);
    let s = selector(LocalityLbPolicy::RoundRobin, false, &bs, &[1000, 1000]);
    assert_eq!(sequence(&s, 12, 1), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
}

#[test]
fn round_robin_three_to_one_in_every_window_of_four() {
    let bs = backends(2);
    let s = selector(
        LocalityLbPolicy::RoundRobin,
        false,
        &bs,
        &[effective_weight(3, 1.0), effective_weight(1, 1.0)],
    );
    assert_windows(&sequence(&s, 40, 1), 4, &[3, 1]);
}

#[test]
fn capacity_scaler_keeps_the_interleaving() {
    let bs = backends(3);
    let s = selector(
        LocalityLbPolicy::RoundRobin,
        false,
        &bs,
        &[
            effective_weight(1, 1.0),
            effective_weight(1, 0.5),
            effective_weight(1, 0.0),
        ],
    );
    assert_windows(&sequence(&s, 30, 1), 3, &[2, 1, 0]);
}

#[test]
fn round_robin_interleaves_the_eligible_backends_after_a_change() {
    let bs = backends(3);
    let s = selector(LocalityLbPolicy::RoundRobin, false, &bs, &[1000; 3]);
    assert_windows(&sequence(&s, 9, 1), 3, &[1, 1, 1]);
    bs[1].serving.store(false, Ordering::Relaxed);
    assert_windows(&sequence(&s, 10, 1), 2, &[1, 0, 1]);
    bs[1].serving.store(true, Ordering::Relaxed);
    assert_windows(&sequence(&s, 9, 1), 3, &[1, 1, 1]);
}

#[test]
fn random_draws_honour_weights_among_eligible_backends() {
    let bs = backends(3);
    let s = selector(LocalityLbPolicy::Random, false, &bs, &[1000, 1000, 2000]);
    bs[0].serving.store(false, Ordering::Relaxed);
    let c = counts(&s, 30_000, |_| Key::None);
    assert_eq!(c[0], 0);
    let share = c[2] as f64 / 30_000.0;
    // Walking to the next backend in list order would give b1 b0's share (1/2 each).
    assert!((share - 2.0 / 3.0).abs() < 0.02, "{c:?}");
}

#[test]
fn least_request_spreads_sequential_requests() {
    // Sequential requests find every backend idle: two equal random draws, ties to the
    // first. Over short windows each backend still gets a share, within binomial bounds.
    let bs = backends(2);
    let s = selector(LocalityLbPolicy::LeastRequest, false, &bs, &[1000, 1000]);
    let seq = sequence(&s, 400, 1);
    for w in seq.chunks(40) {
        let ones = w.iter().filter(|i| **i == 1).count();
        assert!((8..=32).contains(&ones), "{w:?}");
    }
}

fn with_capacity(s: Selector, extra: &str, scalers: &[f64]) -> Selector {
    let mut bs = service(SessionAffinity::None, Default::default());
    let extra: BackendService = toml::from_str(&format!("protocol = \"HTTP\"\n{extra}")).unwrap();
    bs.balancing_mode = extra.balancing_mode;
    bs.max_rate_per_endpoint = extra.max_rate_per_endpoint;
    bs.max_connections_per_endpoint = extra.max_connections_per_endpoint;
    bs.max_utilization = extra.max_utilization;
    bs.backends = scalers
        .iter()
        .enumerate()
        .map(|(i, c)| crate::config::BackendConfig {
            name: Some(format!("b{i}")),
            address: "10.0.0.1".parse().unwrap(),
            port: Some(1),
            weight: 1,
            capacity_scaler: *c,
            failover: false,
            mac: None,
        })
        .collect();
    s.with_capacity(Capacity::of(&bs))
}

#[test]
fn rate_mode_passes_over_full_backends_then_spreads_by_weight() {
    let bs = backends(2);
    let s = with_capacity(
        selector(LocalityLbPolicy::RoundRobin, false, &bs, &[10_000, 1000]),
        "max_rate_per_endpoint = 2.0",
        &[1.0, 1.0],
    );
    // Weights alone would send b0 ten requests of eleven; at 2 per second each, the
    // first 4 requests of a second are 2 and 2.
    let first = sequence(&s, 4, 5_000);
    assert_eq!(first.iter().filter(|i| **i == 0).count(), 2, "{first:?}");
    // Both full: served anyway, by weight.
    let more = sequence(&s, 22, 5_100);
    let b0 = more.iter().filter(|i| **i == 0).count();
    assert_eq!(b0, 20, "{more:?}");
    // The next second has room again.
    assert_eq!(
        sequence(&s, 4, 7_000).iter().filter(|i| **i == 1).count(),
        2
    );
}

#[test]
fn utilization_mode_passes_over_busy_backends() {
    let bs = backends(2);
    let s = with_capacity(
        selector(LocalityLbPolicy::RoundRobin, false, &bs, &[1000, 1000]),
        "balancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 10\nmax_utilization = 0.5",
        &[1.0, 1.0],
    );
    bs[0].in_flight.store(5, Ordering::Relaxed);
    assert_eq!(sequence(&s, 6, 1), [1; 6], "b0 is at 50% of 10 in flight");
    bs[1].in_flight.store(5, Ordering::Relaxed);
    let both = sequence(&s, 6, 1);
    assert!(
        both.contains(&0) && both.contains(&1),
        "all full: by weight"
    );
    bs[0].in_flight.store(4, Ordering::Relaxed);
    assert_eq!(sequence(&s, 4, 1), [0; 4]);
}

#[test]
fn affinity_keys_move_off_a_full_backend_while_another_has_room() {
    let bs = backends(2);
    let s = with_capacity(
        selector(LocalityLbPolicy::Maglev, true, &bs, &[1000, 1000]),
        "balancing_mode = \"UTILIZATION\"\nmax_connections_per_endpoint = 2\nmax_utilization = 0.5",
        &[1.0, 1.0],
    );
    let mut rng = fastrand::Rng::with_seed(1);
    let key = (0..100u64)
        .map(Key::Hash)
        .find(|k| s.pick(*k, 1, &[], &mut rng) == Some(0))
        .unwrap();
    bs[0].in_flight.store(1, Ordering::Relaxed);
    assert_eq!(s.pick(key, 1, &[], &mut rng), Some(1));
    bs[1].in_flight.store(1, Ordering::Relaxed);
    assert_eq!(
        s.pick(key, 1, &[], &mut rng),
        Some(0),
        "all full: the key's own"
    );
}

/// Cost of one pick on the request path (run with
/// `cargo test --release -p lb-userspace --lib pick_cost -- --ignored --nocapture`).
#[test]
#[ignore]
fn pick_cost() {
    for (policy, n) in [
        (LocalityLbPolicy::RoundRobin, 1),
        (LocalityLbPolicy::RoundRobin, 2),
        (LocalityLbPolicy::RoundRobin, 8),
        (LocalityLbPolicy::Random, 8),
        (LocalityLbPolicy::LeastRequest, 8),
    ] {
        let bs = backends(n);
        let s = selector(policy, false, &bs, &vec![1000; n]);
        let mut rng = fastrand::Rng::with_seed(1);
        let rounds = 5_000_000u32;
        let t = std::time::Instant::now();
        let mut sum = 0usize;
        for _ in 0..rounds {
            sum += s.pick(Key::None, 1, &[], &mut rng).unwrap();
        }
        let ns = t.elapsed().as_nanos() as f64 / rounds as f64;
        println!("{policy:?} over {n} backends: {ns:.1} ns per pick ({sum})");
    }
}

#[test]
fn many_backends_share_by_weight_with_gaps() {
    let bs = backends(70);
    let s = selector(LocalityLbPolicy::RoundRobin, false, &bs, &[1000; 70]);
    bs[3].serving.store(false, Ordering::Relaxed);
    let c = counts(&s, 70 * 100, |_| Key::None);
    assert_eq!(c[3], 0);
    // b3's 100 turns are drawn among the 69 others: no backend inherits them all.
    assert!(
        c.iter()
            .enumerate()
            .all(|(i, n)| i == 3 || (100..=110).contains(n)),
        "{c:?}"
    );
}
