//! Backend selection: locality policies (SEMANTICS.md: ROUND_ROBIN default without affinity,
//! LEAST_REQUEST with two random choices, RING_HASH, RANDOM, MAGLEV default with affinity),
//! weights and capacity scalers (0 = drained), and session-affinity keys.
//!
//! Selection is pure given the backends' atomics: health (mirrored from the shared snapshot),
//! outlier ejection and in-flight counts. Hash tables (Maglev, ring) are built per
//! configuration over the non-drained backends; an ineligible backend is skipped by walking
//! to the next entry, so keys keep their backend while it stays eligible.

use super::outlier::OutlierState;
use crate::config::{BackendService, LocalityLbPolicy, SessionAffinity};
use crate::maglev::{self, MaglevBackend};
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

/// Picks backends of one service.
#[derive(Debug)]
pub struct Selector {
    pub policy: LocalityLbPolicy,
    pub backends: Vec<Arc<Backend>>,
    weights: Vec<u32>,
    /// Cumulative effective weights, for weighted round robin and random draws.
    cumulative: Vec<u64>,
    total: u64,
    rr: AtomicU64,
    /// Maglev table (indexes into `backends`), built only when hashing is used.
    maglev: Vec<u32>,
    /// Sorted (point, backend index) ring for RING_HASH.
    ring: Vec<(u64, u32)>,
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
        Selector {
            policy,
            backends,
            weights,
            cumulative,
            total: acc,
            rr: AtomicU64::new(0),
            maglev,
            ring,
        }
    }

    fn usable(&self, i: usize, now_ms: u64, avoid: &[usize]) -> bool {
        self.weights[i] > 0 && self.backends[i].eligible(now_ms) && !avoid.contains(&i)
    }

    /// The backend drawn for `x` in `0..total` by weight.
    fn by_weight(&self, x: u64) -> usize {
        self.cumulative.partition_point(|c| *c <= x)
    }

    /// From `start`, the first usable backend in list order.
    fn walk(&self, start: usize, now_ms: u64, avoid: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.usable(i, now_ms, avoid))
    }

    /// Picks a backend index. `avoid` lists backends already tried for this request (a
    /// retry goes to another backend when one is usable, else to the same one).
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
        self.pick_avoiding(key, now_ms, avoid, rng).or_else(|| {
            (!avoid.is_empty())
                .then(|| self.pick_avoiding(key, now_ms, &[], rng))
                .flatten()
        })
    }

    fn pick_avoiding(
        &self,
        key: Key,
        now_ms: u64,
        avoid: &[usize],
        rng: &mut fastrand::Rng,
    ) -> Option<usize> {
        match key {
            Key::Backend(id) => {
                if let Some(i) = self.backends.iter().position(|b| b.id == id) {
                    if self.usable(i, now_ms, avoid) {
                        return Some(i);
                    }
                }
                self.pick_avoiding(Key::None, now_ms, avoid, rng)
            }
            Key::Hash(h) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|(p, _)| *p < h);
                let n = self.ring.len();
                (0..n)
                    .map(|k| self.ring[(start + k) % n].1 as usize)
                    .find(|&i| self.usable(i, now_ms, avoid))
            }
            Key::Hash(h) if !self.maglev.is_empty() => {
                let m = self.maglev.len();
                let start = (h % m as u64) as usize;
                (0..m)
                    .map(|k| self.maglev[(start + k) % m])
                    .find(|&i| i != u32::MAX && self.usable(i as usize, now_ms, avoid))
                    .map(|i| i as usize)
            }
            _ => match self.policy {
                LocalityLbPolicy::RoundRobin => {
                    let x = self.rr.fetch_add(1, Ordering::Relaxed) % self.total;
                    self.walk(self.by_weight(x), now_ms, avoid)
                }
                LocalityLbPolicy::LeastRequest => {
                    // Power of two choices (Mitzenmacher): two weighted random draws, the
                    // one with fewer requests in flight wins.
                    let a = self.walk(self.by_weight(rng.u64(0..self.total)), now_ms, avoid)?;
                    let b = self
                        .walk(self.by_weight(rng.u64(0..self.total)), now_ms, avoid)
                        .unwrap_or(a);
                    let load = |i: usize| self.backends[i].in_flight.load(Ordering::Relaxed);
                    Some(if load(b) < load(a) { b } else { a })
                }
                // RANDOM, and hash policies without a key (no header, first request).
                _ => self.walk(self.by_weight(rng.u64(0..self.total)), now_ms, avoid),
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
