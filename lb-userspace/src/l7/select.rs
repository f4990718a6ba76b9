//! Backend selection: locality policies (SEMANTICS.md: ROUND_ROBIN default without affinity,
//! LEAST_REQUEST with two random choices, RING_HASH, RANDOM, MAGLEV default with affinity),
//! weights and capacity scalers (0 = drained), and session-affinity keys.
//!
//! Selection is pure given the backends' atomics: health (mirrored from the shared snapshot),
//! outlier ejection and in-flight counts. Hash tables (Maglev, ring) are built per
//! configuration over the non-drained backends; an ineligible backend is skipped by walking
//! to the next entry, so keys keep their backend while it stays eligible.

use super::capacity::{Capacity, RateMeter};
use super::outlier::{now_ms, OutlierState};
use super::schedule;
use crate::config::{BackendService, LocalityLbPolicy, SessionAffinity};
use crate::maglev::{self, MaglevBackend};
use arc_swap::ArcSwap;
use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Maglev table size for L7 services: prime, and > 100·N for the few backends an L7
/// service has, which keeps imbalance within about 1% (Maglev §3.4).
const MAGLEV_SIZE: u32 = 65537;
/// RING_HASH's default minimum ring size (Envoy: 1024).
const DEFAULT_RING_SIZE: u32 = 1024;

/// FNV-1a 64 with a splitmix64 finish: stable across runs and releases, so cookies and
/// hashes keep pointing at the same backend after a restart.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// One backend of one service, shared by the routing tables of consecutive configurations
/// while its name and address stay the same.
#[derive(Debug)]
pub struct Backend {
    /// Display name: the health snapshot's and the CLI's key.
    pub name: String,
    pub addr: SocketAddr,
    /// `ip:port` for request URIs.
    pub authority: http::uri::Authority,
    /// Stable id: the GENERATED_COOKIE value.
    pub id: u64,
    /// Health as the agent sees it (checker verdict or forced by the admin), for display.
    pub healthy: AtomicBool,
    /// Takes new requests: the agent's decision from health, drain, maintenance and the
    /// failover policy (see [`super::admission`]).
    pub serving: AtomicBool,
    /// Set when the backend's connection draining is over (or maintenance): requests and
    /// tunnels still open on it are closed. Back to false when it returns to service.
    pub evicted: tokio::sync::watch::Sender<bool>,
    pub in_flight: AtomicU64,
    pub requests: AtomicU64,
    /// Requests that ended in a 5xx answer from the backend or in no answer at all.
    pub errors: AtomicU64,
    pub outlier: OutlierState,
    /// Requests per second sent here (kept only when a service sets a max rate).
    pub rate: RateMeter,
    /// Final responses by class (index 0 = 1xx … 4 = 5xx) of requests answered here.
    pub responses: [AtomicU64; 5],
}

impl Backend {
    pub fn new(service: &str, name: String, addr: SocketAddr) -> Backend {
        let authority = match addr.ip() {
            IpAddr::V4(_) => addr.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
        }
        .parse()
        .expect("a socket address is a valid authority");
        Backend {
            id: stable_hash(&[service.as_bytes(), name.as_bytes()]),
            name,
            addr,
            authority,
            healthy: AtomicBool::new(true),
            serving: AtomicBool::new(true),
            evicted: tokio::sync::watch::Sender::new(false),
            in_flight: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outlier: OutlierState::default(),
            rate: RateMeter::default(),
            responses: Default::default(),
        }
    }

    /// Counts the final response of a request this backend answered.
    pub fn record_response(&self, status: u16) {
        if let Some(c) = super::stats::class_of(status) {
            self.responses[c].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Eligible for new requests: admitted by the agent and not ejected (drained ones have
    /// weight 0 and never reach this check).
    pub fn eligible(&self, now_ms: u64) -> bool {
        self.serving.load(Ordering::Relaxed) && !self.outlier.is_ejected(now_ms)
    }

    /// Resolves once the backend is evicted (at once when it already is).
    pub fn wait_evicted(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.evicted.subscribe();
        async move {
            // The sender lives in the backend, which the caller holds, so an error (sender
            // gone) only happens at shutdown: then never resolve.
            if rx.wait_for(|e| *e).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The effective weight: weight × capacity scaler, in thousandths so 0.1 keeps precision;
/// 0 means drained (SEMANTICS: capacity scaler 0 = drained).
pub fn effective_weight(weight: u32, capacity_scaler: f64) -> u32 {
    (weight as f64 * capacity_scaler * 1000.0).round() as u32
}

/// The policy in force: the configured one, else MAGLEV with affinity and ROUND_ROBIN
/// without.
pub fn policy_of(bs: &BackendService) -> LocalityLbPolicy {
    bs.locality_lb_policy.unwrap_or(match bs.session_affinity {
        SessionAffinity::None => LocalityLbPolicy::RoundRobin,
        _ => LocalityLbPolicy::Maglev,
    })
}

/// A key that pins requests: a hash to look up, or a backend id from a generated cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    None,
    Hash(u64),
    Backend(u64),
}

/// The round-robin cycle over the backends eligible when it was built.
#[derive(Debug, Default)]
struct Schedule {
    /// Eligibility it was built for (see [`Selector::eligibility`]); none before the first.
    eligible: Option<u64>,
    order: Vec<u32>,
}

/// Picks backends of one service.
///
/// ROUND_ROBIN follows a smooth weighted round-robin cycle (see [`super::schedule`]) built
/// over the backends eligible right now and rebuilt when that set changes, indexed by one
/// atomic counter: equal weights alternate request by request, 3:1 puts 3 and 1 in every
/// window of 4. RANDOM and LEAST_REQUEST draw by weight among eligible backends. With a
/// balancing-mode target ([`Capacity`]), full backends are passed over while another has
/// room.
#[derive(Debug)]
pub struct Selector {
    pub policy: LocalityLbPolicy,
    pub backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    /// Cumulative effective weights, for weighted random draws.
    cumulative: Vec<u64>,
    total: u64,
    rr: AtomicU64,
    schedule: ArcSwap<Schedule>,
    /// Maglev table (indexes into `backends`), built only when hashing is used.
    maglev: Vec<u32>,
    /// Sorted (point, backend index) ring for RING_HASH.
    ring: Vec<(u64, u32)>,
    /// Balancing-mode targets, when the service sets any.
    capacity: Option<Capacity>,
}

/// Which backends a pass of a pick accepts.
#[derive(Clone, Copy)]
struct Pass<'a> {
    now_ms: u64,
    avoid: &'a [usize],
    /// Pass over backends at their balancing-mode target.
    need_room: bool,
    /// This pick's place in the round-robin cycle, taken once however many passes run.
    ticket: &'a OnceCell<u64>,
}

impl Selector {
    /// `backends` with their effective weights (0 = drained).
    pub fn new(
        policy: LocalityLbPolicy,
        hashing: bool,
        backends: Vec<(Arc<Backend>, u32)>,
        min_ring_size: Option<u32>,
    ) -> Selector {
        let weights: Vec<u32> = backends.iter().map(|(_, w)| *w).collect();
        let backends: Vec<Arc<Backend>> = backends.into_iter().map(|(b, _)| b).collect();
        let mut acc = 0u64;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += *w as u64;
                acc
            })
            .collect();
        let mut maglev = Vec::new();
        let mut ring = Vec::new();
        let use_maglev =
            policy == LocalityLbPolicy::Maglev || (hashing && policy != LocalityLbPolicy::RingHash);
        if use_maglev && acc > 0 {
            let mb: Vec<MaglevBackend> = backends
                .iter()
                .zip(&weights)
                .map(|(b, w)| MaglevBackend {
                    name: &b.name,
                    weight: *w,
                })
                .collect();
            maglev = maglev::build(&mb, MAGLEV_SIZE)
                .into_iter()
                .map(|s| s.unwrap_or(u32::MAX))
                .collect();
        }
        if policy == LocalityLbPolicy::RingHash && acc > 0 {
            let size = min_ring_size
                .unwrap_or(DEFAULT_RING_SIZE)
                .max(backends.len() as u32) as u64;
            for (i, (b, w)) in backends.iter().zip(&weights).enumerate() {
                let points = (size * *w as u64).div_ceil(acc);
                for p in 0..points {
                    ring.push((
                        stable_hash(&[b.name.as_bytes(), &p.to_le_bytes()]),
                        i as u32,
                    ));
                }
            }
            ring.sort_unstable();
        }
        let s = Selector {
            policy,
            backends,
            weights,
            cumulative,
            total: acc,
            rr: AtomicU64::new(0),
            schedule: ArcSwap::from_pointee(Schedule::default()),
            maglev,
            ring,
            capacity: None,
        };
        if policy == LocalityLbPolicy::RoundRobin {
            s.rebuild_schedule(s.eligibility(now_ms()));
        }
        s
    }

    /// Sets balancing-mode targets (matched to `backends` by name).
    pub fn with_capacity(mut self, capacity: Option<Capacity>) -> Selector {
        self.capacity = capacity.map(|c| c.aligned(self.backends.iter().map(|b| b.name.as_str())));
        self
    }

    fn usable(&self, i: usize, p: Pass<'_>) -> bool {
        self.weights[i] > 0
            && self.backends[i].eligible(p.now_ms)
            && !p.avoid.contains(&i)
            && !(p.need_room && self.full(i, p.now_ms))
    }

    /// Whether backend `i` is at its balancing-mode target.
    fn full(&self, i: usize, now_ms: u64) -> bool {
        let Some(c) = &self.capacity else {
            return false;
        };
        let b = &self.backends[i];
        c.full(
            i,
            || b.rate.rate(now_ms),
            b.in_flight.load(Ordering::Relaxed),
        )
    }

    /// Which backends are eligible (weight > 0, healthy, not ejected), a bit per backend.
    /// Beyond 64 backends it is not tracked (always 0): the cycle covers every backend with
    /// a weight, and an ineligible backend's turns are drawn by weight among the others.
    fn eligibility(&self, now_ms: u64) -> u64 {
        if self.backends.len() > 64 {
            return 0;
        }
        let mut bits = 0u64;
        for (i, b) in self.backends.iter().enumerate() {
            if self.weights[i] > 0 && b.eligible(now_ms) {
                bits |= 1 << i;
            }
        }
        bits
    }

    fn rebuild_schedule(&self, eligible: u64) -> Arc<Schedule> {
        let weights: Vec<u64> = (0..self.backends.len())
            .map(|i| {
                let on = self.backends.len() > 64 || eligible & (1 << i) != 0;
                if on {
                    self.weights[i] as u64
                } else {
                    0
                }
            })
            .collect();
        let s = Arc::new(Schedule {
            eligible: Some(eligible),
            order: schedule::build(&weights),
        });
        self.schedule.store(s.clone());
        s
    }

    /// The next backend of the round-robin cycle that `p` accepts.
    fn round_robin(&self, p: Pass<'_>) -> Option<usize> {
        let eligible = self.eligibility(p.now_ms);
        let guard = self.schedule.load();
        let fresh;
        let sched: &Schedule = if guard.eligible == Some(eligible) {
            &guard
        } else {
            fresh = self.rebuild_schedule(eligible);
            &fresh
        };
        let n = sched.order.len();
        if n == 0 {
            return None;
        }
        let ticket = *p
            .ticket
            .get_or_init(|| self.rr.fetch_add(1, Ordering::Relaxed));
        let start = (ticket % n as u64) as usize;
        let i = sched.order[start] as usize;
        if self.usable(i, p) {
            return Some(i);
        }
        if self.backends.len() > 64 {
            // The cycle also holds ineligible backends here: their turns are drawn by weight
            // among the usable ones, so no neighbour inherits a gap.
            let mut rng = fastrand::Rng::with_seed(ticket);
            return self.weighted_draw(p, &mut rng);
        }
        // A retry's tried backend, or one at its target: the next turn in the cycle.
        (1..n)
            .map(|k| sched.order[(start + k) % n] as usize)
            .find(|&i| self.usable(i, p))
    }

    /// A draw by weight among the backends `p` accepts: one draw over all weights when it
    /// lands on an acceptable backend (the common case), else a draw over the acceptable
    /// ones only, so every acceptable backend keeps exactly its weight's share.
    fn weighted_draw(&self, p: Pass<'_>, rng: &mut fastrand::Rng) -> Option<usize> {
        let x = rng.u64(0..self.total);
        let first = self.cumulative.partition_point(|c| *c <= x);
        if self.usable(first, p) {
            return Some(first);
        }
        let ok: u64 = (0..self.backends.len())
            .filter(|&i| self.usable(i, p))
            .map(|i| self.weights[i] as u64)
            .sum();
        if ok == 0 {
            return None;
        }
        let mut x = rng.u64(0..ok);
        (0..self.backends.len())
            .filter(|&i| self.usable(i, p))
            .find(|&i| {
                let w = self.weights[i] as u64;
                if x < w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
    }

    /// Picks a backend index. `avoid` lists backends already tried for this request (a
    /// retry goes to another backend when one is usable, else to the same one). Backends at
    /// their balancing-mode target are passed over while another has room; when all are
    /// full, the pick ignores the targets (requests are served beyond them, by weight).
    pub fn pick(
        &self,
        key: Key,
        now_ms: u64,
        avoid: &[usize],
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        // Preference: another backend with room, another backend, then the tried ones.
        let with_room = self.capacity.is_some();
        let ticket = OnceCell::new();
        let mut passes = [(true, true), (true, false), (false, true), (false, false)]
            .into_iter()
            .filter(|(use_avoid, need_room)| {
                (with_room || !need_room) && (*use_avoid || !avoid.is_empty())
            })
            .map(|(use_avoid, need_room)| Pass {
                now_ms,
                avoid: if use_avoid { avoid } else { &[] },
                need_room,
                ticket: &ticket,
            });
        let picked = passes.find_map(|p| self.pick_in(key, p, rng))?;
        if self.capacity.as_ref().is_some_and(|c| c.max_rate.is_some()) {
            self.backends[picked].rate.record(now_ms);
        }
        Some(picked)
    }

    fn pick_in(&self, key: Key, p: Pass<'_>, rng: &mut fastrand::Rng) -> Option<usize> {
        match key {
            Key::Backend(id) => {
                if let Some(i) = self.backends.iter().position(|b| b.id == id) {
                    if self.usable(i, p) {
                        return Some(i);
                    }
                }
                self.pick_in(Key::None, p, rng)
            }
            Key::Hash(h) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|(pt, _)| *pt < h);
                let n = self.ring.len();
                (0..n)
                    .map(|k| self.ring[(start + k) % n].1 as usize)
                    .find(|&i| self.usable(i, p))
            }
            Key::Hash(h) if !self.maglev.is_empty() => {
                let m = self.maglev.len();
                let start = (h % m as u64) as usize;
                (0..m)
                    .map(|k| self.maglev[(start + k) % m])
                    .find(|&i| i != u32::MAX && self.usable(i as usize, p))
                    .map(|i| i as usize)
            }
            _ => match self.policy {
                LocalityLbPolicy::RoundRobin => self.round_robin(p),
                LocalityLbPolicy::LeastRequest => {
                    // Power of two choices (Mitzenmacher): two weighted random draws, the
                    // one with fewer requests in flight wins.
                    let a = self.weighted_draw(p, rng)?;
                    let b = self.weighted_draw(p, rng).unwrap_or(a);
                    let load = |i: usize| self.backends[i].in_flight.load(Ordering::Relaxed);
                    Some(if load(b) < load(a) { b } else { a })
                }
                // RANDOM, and hash policies without a key (no header, first request).
                _ => self.weighted_draw(p, rng),
            },
        }
    }
}

/// The cookie GENERATED_COOKIE uses when no name is configured (Google Cloud's internal
/// Application Load Balancer calls it `GCILB`).
pub const GENERATED_COOKIE: &str = "GCILB";
/// HTTP_COOKIE's cookie name when none is configured.
pub const DEFAULT_HTTP_COOKIE: &str = "lb-affinity";

/// The value of cookie `name` in the request's Cookie headers (RFC 6265 §5.4).
pub fn cookie<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v.trim_matches('"'))
        })
}

/// What session affinity asks of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    pub key: Key,
    /// For HTTP_COOKIE without a cookie: the value generated (its hash is `key`) to set.
    pub new_cookie_value: Option<String>,
}

/// Derives the affinity key of a request (SEMANTICS: NONE, CLIENT_IP, GENERATED_COOKIE,
/// HEADER_FIELD, HTTP_COOKIE).
pub fn affinity(
    bs: &BackendService,
    headers: &http::HeaderMap,
    client: IpAddr,
    rng: &mut fastrand::Rng,
) -> Affinity {
    let none = Affinity {
        key: Key::None,
        new_cookie_value: None,
    };
    match bs.session_affinity {
        SessionAffinity::ClientIp => Affinity {
            key: Key::Hash(stable_hash(&[client.to_string().as_bytes()])),
            new_cookie_value: None,
        },
        SessionAffinity::GeneratedCookie => {
            let name = cookie_name(bs);
            match cookie(headers, name).and_then(|v| u64::from_str_radix(v, 16).ok()) {
                Some(id) => Affinity {
                    key: Key::Backend(id),
                    new_cookie_value: None,
                },
                None => none,
            }
        }
        SessionAffinity::HeaderField => {
            let Some(h) = bs.consistent_hash.http_header_name.as_deref() else {
                return none;
            };
            match headers.get(h) {
                Some(v) => Affinity {
                    key: Key::Hash(stable_hash(&[v.as_bytes()])),
                    new_cookie_value: None,
                },
                None => none,
            }
        }
        SessionAffinity::HttpCookie => match cookie(headers, cookie_name(bs)) {
            Some(v) => Affinity {
                key: Key::Hash(stable_hash(&[v.as_bytes()])),
                new_cookie_value: None,
            },
            None => {
                let v = format!("{:016x}", rng.u64(..));
                Affinity {
                    key: Key::Hash(stable_hash(&[v.as_bytes()])),
                    new_cookie_value: Some(v),
                }
            }
        },
        _ => none,
    }
}

/// The affinity cookie's name for GENERATED_COOKIE or HTTP_COOKIE.
pub fn cookie_name(bs: &BackendService) -> &str {
    let configured = bs
        .consistent_hash
        .http_cookie
        .as_ref()
        .and_then(|c| c.name.as_deref());
    match bs.session_affinity {
        SessionAffinity::GeneratedCookie => configured.unwrap_or(GENERATED_COOKIE),
        _ => configured.unwrap_or(DEFAULT_HTTP_COOKIE),
    }
}

/// The Set-Cookie value that pins a client (RFC 6265 §4.1): `Max-Age` from the TTL, none
/// (a session cookie) when the TTL is 0.
pub fn set_cookie(name: &str, value: &str, path: &str, ttl_sec: u32) -> String {
    if ttl_sec == 0 {
        format!("{name}=\"{value}\"; Path={path}; HttpOnly")
    } else {
        format!("{name}=\"{value}\"; Path={path}; Max-Age={ttl_sec}; HttpOnly")
    }
}

#[cfg(test)]
#[path = "select_tests.rs"]
mod tests;
