//! The dataplane fuzzer: generated and mutated frames (IPv4 with options and fragment
//! fields, IPv6 with extension-header chains, TCP/UDP with options, ICMP and ICMPv6 errors
//! quoting inner headers, VLAN tags, ARP, random ethertypes; then truncation and bit flips)
//! run through BPF_PROG_TEST_RUN, each checked against an oracle:
//! - `XDP_PASS`: the frame is unchanged;
//! - `XDP_DROP`: one of the documented drop reasons moved;
//! - `XDP_TX`: only the MACs changed (destination = a configured backend, source = the
//!   frame's old destination), the packet was addressed to a VIP address, and so its
//!   checksums are the ones the sender made (valid checksums stay valid);
//! - never `XDP_ABORTED`.
//!
//! `cargo xtask fuzz-xdp [N]` runs N frames (default 1,000,000); a 20,000-frame run is
//! part of the test suite (tests/tests/xdp_fuzz.rs).

use crate::{
    packet::{checksum, BALANCER_MAC, CLIENT_MAC},
    xdp::XdpHarness,
};
use anyhow::{bail, Result};
use lb_userspace::dataplane::{plan::L4Plan, stats::Counters};
use std::{collections::BTreeMap, net::IpAddr};

const ABORTED: u32 = 0;
const DROP: u32 = 1;
const PASS: u32 = 2;
const TX: u32 = 3;

/// Reasons a drop may be counted under (README, "Packet verdicts").
const DROP_REASONS: &[&str] = &[
    "drop_fragment",
    "drop_short_l4",
    "drop_no_backend",
    "drop_ext_headers",
];

/// Services the fuzz plan needs room for.
pub const SERVICES: u32 = 16;

/// The fixtures' IPv4 plan and the IPv6 services and rules of their IPv6 plan, together.
pub fn plan() -> L4Plan {
    let mut p = crate::xdp_cases::base_plan();
    let v6 = crate::xdp_cases::plan_v6();
    for s in v6.services {
        if !p.services.iter().any(|x| x.name == s.name) {
            p.services.push(s);
        }
    }
    for v in v6.vips {
        if !p.vips.iter().any(|x| x.name == v.name) {
            p.vips.push(v);
        }
    }
    p
}

/// Verdicts seen and frames tried, for the report.
#[derive(Debug, Default)]
pub struct Tally {
    pub frames: u64,
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Frames per generated kind (before mutation).
    pub kinds: BTreeMap<&'static str, u64>,
    /// Forwarded frames per kind: proof the generator reaches the forwarding paths.
    pub forwarded: BTreeMap<&'static str, u64>,
}

/// What the oracle knows of the plan: VIP addresses, backend MACs, ports in rules.
#[derive(Clone)]
pub struct Oracle {
    vips: Vec<IpAddr>,
    /// The VIP addresses by family, for the generator.
    vips4: Vec<[u8; 4]>,
    vips6: Vec<[u8; 16]>,
    backend_macs: Vec<[u8; 6]>,
    ports: Vec<u16>,
}

impl Oracle {
    pub fn new(plan: &L4Plan) -> Oracle {
        let mut vips: Vec<IpAddr> = plan.vips.iter().map(|v| v.addr).collect();
        vips.sort();
        vips.dedup();
        let backend_macs = plan
            .services
            .iter()
            .flat_map(|s| s.backends.iter().filter_map(|b| b.mac))
            .collect();
        let mut ports: Vec<u16> = plan.vips.iter().map(|v| v.port).collect();
        ports.extend([1, 22, 443, 65535]);
        let vips4 = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v) => Some(v.octets()),
                IpAddr::V6(_) => None,
            })
            .collect();
        let vips6 = vips
            .iter()
            .filter_map(|a| match a {
                IpAddr::V6(v) => Some(v.octets()),
                IpAddr::V4(_) => None,
            })
            .collect();
        Oracle {
            vips,
            vips4,
            vips6,
            backend_macs,
            ports,
        }
    }
}

/// A frame generator over a seeded PRNG: the same seed gives the same frames.
pub struct Gen<'a> {
    rng: fastrand::Rng,
    oracle: &'a Oracle,
}

impl<'a> Gen<'a> {
    pub fn new(seed: u64, oracle: &'a Oracle) -> Self {
        Gen {
            rng: fastrand::Rng::with_seed(seed),
            oracle,
        }
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.rng.u8(..)).collect()
    }

    /// Random bytes of a random length in `len`.
    fn junk(&mut self, len: std::ops::Range<usize>) -> Vec<u8> {
        let n = self.rng.usize(len);
        self.bytes(n)
    }

    fn chance(&mut self, percent: u8) -> bool {
        self.rng.u8(0..100) < percent
    }

    fn v4(&mut self) -> [u8; 4] {
        let vips = &self.oracle.vips4;
        match self.rng.u8(0..10) {
            0..=5 if !vips.is_empty() => vips[self.rng.usize(..vips.len())],
            6 | 7 => [10, 0, 0, self.rng.u8(..)],
            _ => [
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..),
                self.rng.u8(..),
            ],
        }
    }

    fn v6(&mut self) -> [u8; 16] {
        let vips = &self.oracle.vips6;
        if !vips.is_empty() && self.chance(60) {
            return vips[self.rng.usize(..vips.len())];
        }
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[15] = self.rng.u8(..);
        if self.chance(30) {
            a.copy_from_slice(&self.bytes(16));
        }
        a
    }

    fn port(&mut self) -> u16 {
        if self.chance(70) {
            self.oracle.ports[self.rng.usize(..self.oracle.ports.len())]
        } else {
            self.rng.u16(..)
        }
    }

    /// A TCP or UDP header (with options or payload); checksum left 0 (nothing reads it).
    fn l4(&mut self, proto: u8) -> Vec<u8> {
        let (sport, dport) = (self.rng.u16(1024..), self.port());
        let mut h = Vec::new();
        h.extend_from_slice(&sport.to_be_bytes());
        h.extend_from_slice(&dport.to_be_bytes());
        if proto == 6 {
            let opts = if self.chance(30) {
                4 * self.rng.usize(1..=10)
            } else {
                0
            };
            h.extend_from_slice(&self.rng.u32(..).to_be_bytes());
            h.extend_from_slice(&self.rng.u32(..).to_be_bytes());
            let doff = if self.chance(5) {
                self.rng.u8(0..16)
            } else {
                ((20 + opts) / 4) as u8
            };
            h.push(doff << 4);
            h.push(match self.rng.u8(0..10) {
                0..=3 => 0x02,
                4..=6 => 0x10,
                7 => 0x12,
                _ => self.rng.u8(..),
            });
            h.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            let o = self.bytes(opts);
            h.extend_from_slice(&o);
        } else {
            let n = self.rng.usize(0..64);
            h.extend_from_slice(&((8 + n) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            let p = self.bytes(n);
            h.extend_from_slice(&p);
        }
        h
    }

    /// An IPv4 packet (header with options, fragment field, length) around `l4`.
    fn ipv4(&mut self, proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let opts = if self.chance(15) {
            let n = 4 * self.rng.usize(1..=10);
            if self.chance(50) {
                vec![1; n] // NOPs
            } else {
                self.bytes(n)
            }
        } else {
            Vec::new()
        };
        let ihl = 20 + opts.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x40 | (ihl / 4) as u8;
        let total = if self.chance(5) {
            self.rng.u16(..)
        } else {
            (ihl + l4.len()) as u16
        };
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let frag: u16 = match self.rng.u8(0..10) {
            0..=6 => 0x4000,
            7 => 0,
            8 => 0x2000, // MF
            _ => self.rng.u16(..),
        };
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip.extend_from_slice(&opts);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip.extend_from_slice(l4);
        ip
    }

    /// ICMP: mostly "fragmentation needed" quoting a packet from a VIP (what a router sends
    /// back about a backend's reply), else another type; the quote sometimes cut short.
    fn icmp4(&mut self) -> Vec<u8> {
        let mut m = vec![3, 4, 0, 0, 0, 0, 0x05, 0xdc];
        if self.chance(30) {
            m[0] = self.rng.u8(..);
            m[1] = self.rng.u8(0..16);
        }
        let inner_proto = if self.chance(50) { 6 } else { 17 };
        let inner_l4 = self.l4(inner_proto);
        let (vip, client) = (self.v4(), self.v4());
        let mut inner = self.ipv4(inner_proto, vip, client, &inner_l4);
        // A quote carries the IP header and at least 8 bytes of L4.
        let keep = (inner[0] & 0x0f) as usize * 4 + 8;
        inner.truncate(if self.chance(15) {
            self.rng.usize(0..=keep.min(inner.len()))
        } else {
            keep.min(inner.len())
        });
        m.extend_from_slice(&inner);
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        m
    }

    /// An IPv6 packet with a chain of extension headers (hop-by-hop, routing, destination
    /// options, fragment) before TCP, UDP, ICMPv6 (Packet Too Big quoting a packet) or junk.
    fn ipv6(&mut self) -> Vec<u8> {
        let (src, dst) = (self.v6(), self.v6());
        let last = match self.rng.u8(0..10) {
            0..=3 => 6,
            4..=6 => 17,
            7 | 8 => 58,
            _ => self.rng.u8(..),
        };
        let mut upper = match last {
            6 | 17 => self.l4(last),
            58 => {
                let mut m = vec![2, 0, 0, 0, 0, 0, 0x05, 0x00];
                if self.chance(30) {
                    m[0] = self.rng.u8(..);
                }
                let p = if self.chance(50) { 6 } else { 17 };
                let l4 = self.l4(p);
                let mut inner = vec![0x60, 0, 0, 0];
                inner.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                inner.extend_from_slice(&[p, 64]);
                inner.extend_from_slice(&dst);
                inner.extend_from_slice(&src);
                inner.extend_from_slice(&l4[..8.min(l4.len())]);
                let keep = self.rng.usize(0..=inner.len());
                if self.chance(15) {
                    inner.truncate(keep);
                }
                m.extend_from_slice(&inner);
                m
            }
            _ => self.junk(0..40),
        };
        // Extension headers, built from the inside out.
        let mut next = last;
        let most = if self.chance(10) { 12 } else { 3 };
        for _ in 0..self.rng.usize(0..=most) {
            let kind = [0u8, 43, 60, 44][self.rng.usize(0..4)];
            let mut h = if kind == 44 {
                // Fragment: offset/M random, 8 bytes.
                let mut f = vec![next, 0];
                f.extend_from_slice(&self.rng.u16(..).to_be_bytes());
                f.extend_from_slice(&self.rng.u32(..).to_be_bytes());
                f
            } else {
                let units = if self.chance(80) {
                    0
                } else {
                    self.rng.u8(0..4)
                };
                let mut h = vec![next, units];
                let body = self.bytes(6 + 8 * units as usize);
                h.extend_from_slice(&body);
                h
            };
            h.extend_from_slice(&upper);
            upper = h;
            next = kind;
        }
        let mut ip = vec![0x60, 0, 0, 0];
        let plen = if self.chance(5) {
            self.rng.u16(..)
        } else {
            upper.len() as u16
        };
        ip.extend_from_slice(&plen.to_be_bytes());
        ip.extend_from_slice(&[next, 64]);
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&upper);
        ip
    }

    /// One well-formed-ish frame and its kind.
    pub fn frame(&mut self) -> (&'static str, Vec<u8>) {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&BALANCER_MAC);
        f.extend_from_slice(&CLIENT_MAC);
        let kind = match self.rng.u8(0..100) {
            0..=49 => {
                let proto = if self.chance(60) { 6 } else { 17 };
                let l4 = self.l4(proto);
                let (src, dst) = ([10, 0, self.rng.u8(..), self.rng.u8(..)], self.v4());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ip = self.ipv4(proto, src, dst, &l4);
                f.extend_from_slice(&ip);
                "ipv4 tcp/udp"
            }
            50..=59 => {
                let m = self.icmp4();
                let (src, dst) = ([192, 0, 2, 1], self.v4());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ip = self.ipv4(1, src, dst, &m);
                f.extend_from_slice(&ip);
                "ipv4 icmp"
            }
            60..=64 => {
                let proto = self.rng.u8(..);
                let body = self.junk(0..40);
                let (src, dst) = (self.v4(), self.v4());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ip = self.ipv4(proto, src, dst, &body);
                f.extend_from_slice(&ip);
                "ipv4 other protocol"
            }
            65..=84 => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ip = self.ipv6();
                f.extend_from_slice(&ip);
                "ipv6"
            }
            85..=91 => {
                let tag = if self.chance(80) { 0x8100u16 } else { 0x88a8 };
                f.extend_from_slice(&tag.to_be_bytes());
                f.extend_from_slice(&self.rng.u16(..).to_be_bytes());
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let l4 = self.l4(6);
                let dst = self.v4();
                let ip = self.ipv4(6, [10, 0, 0, 1], dst, &l4);
                f.extend_from_slice(&ip);
                "vlan"
            }
            92..=95 => {
                f.extend_from_slice(&0x0806u16.to_be_bytes());
                let arp = self.bytes(28);
                f.extend_from_slice(&arp);
                "arp"
            }
            _ => {
                let t = self.rng.u16(..);
                f.extend_from_slice(&t.to_be_bytes());
                let b = self.junk(0..100);
                f.extend_from_slice(&b);
                "random ethertype"
            }
        };
        (kind, f)
    }

    /// Mutates half the frames: truncation, bit flips in the headers, trailing bytes.
    pub fn mutate(&mut self, f: &mut Vec<u8>) {
        match self.rng.u8(0..100) {
            0..=19 => {
                let n = self.rng.usize(14..=f.len().max(14));
                f.truncate(n);
            }
            20..=44 => {
                let span = f.len().min(96);
                for _ in 0..self.rng.usize(1..=4) {
                    let i = self.rng.usize(12..span.max(13));
                    if i < f.len() {
                        f[i] ^= 1 << self.rng.u8(0..8);
                    }
                }
            }
            45..=49 => {
                let extra = self.junk(1..64);
                f.extend_from_slice(&extra);
            }
            _ => {}
        }
    }
}

/// The harness, the oracle and the drop counters, read once per drop verdict.
pub struct Fuzzer<'a> {
    h: &'a XdpHarness,
    oracle: Oracle,
    counters: Counters,
    drops_seen: u64,
}

impl<'a> Fuzzer<'a> {
    pub fn new(h: &'a XdpHarness, plan: &L4Plan) -> Result<Self> {
        let counters = h.counters()?;
        let drops_seen = drops(&counters)?;
        Ok(Fuzzer {
            h,
            oracle: Oracle::new(plan),
            counters,
            drops_seen,
        })
    }

    /// Runs one frame and checks the oracle; returns the verdict's name.
    pub fn check(&mut self, frame: &[u8]) -> Result<&'static str> {
        let r = match self.h.run(frame) {
            Ok(r) => r,
            // The kernel refuses buffers shorter than an Ethernet header: no verdict.
            Err(_) if frame.len() < 14 => return Ok("refused by the kernel (< 14 bytes)"),
            Err(e) => return Err(e),
        };
        let fail = |why: &str| -> Result<&'static str> {
            bail!(
                "{why}: verdict {} for frame {}\noutput {}",
                r.verdict,
                hex(frame),
                hex(&r.frame)
            )
        };
        let o = &self.oracle;
        match r.verdict {
            ABORTED => fail("XDP_ABORTED"),
            PASS if r.frame != frame => fail("XDP_PASS changed the frame"),
            PASS => Ok("pass"),
            DROP => {
                // Drop reasons move only with drop verdicts, so each drop must add one.
                let now = drops(&self.counters)?;
                if now <= self.drops_seen {
                    return fail("XDP_DROP without a documented drop reason counted");
                }
                self.drops_seen = now;
                Ok("drop")
            }
            TX => {
                if r.frame.len() != frame.len() || r.frame[12..] != frame[12..] {
                    return fail("XDP_TX changed more than the MACs");
                }
                if !o.backend_macs.iter().any(|m| r.frame[0..6] == *m) {
                    return fail("XDP_TX to a MAC that is no backend's");
                }
                if r.frame[6..12] != frame[0..6] {
                    return fail("XDP_TX from another source MAC than the frame's destination");
                }
                match ip_destination(frame) {
                    Some(d) if o.vips.contains(&d) => Ok("tx"),
                    _ => fail("XDP_TX of a packet not addressed to a VIP address"),
                }
            }
            _ => fail("unknown verdict"),
        }
    }

    /// Runs `n` generated frames (half mutated) from `seed`, then every truncation of
    /// `truncated` more frames; stops at the first oracle failure. Checks at the end that
    /// no drop reason moved behind a non-drop verdict.
    pub fn run(&mut self, seed: u64, n: u64, truncated: u64) -> Result<Tally> {
        let mut t = Tally::default();
        let record = |t: &mut Tally, kind: &'static str, v: &'static str| {
            t.frames += 1;
            *t.verdicts.entry(v).or_default() += 1;
            *t.kinds.entry(kind).or_default() += 1;
            if v == "tx" {
                *t.forwarded.entry(kind).or_default() += 1;
            }
        };
        // The generator borrows its own copy: `check` borrows `self` mutably.
        let oracle = self.oracle.clone();
        let mut g = Gen::new(seed, &oracle);
        for _ in 0..n {
            let (kind, mut f) = g.frame();
            if g.chance(50) {
                g.mutate(&mut f);
            }
            let v = self.check(&f)?;
            record(&mut t, kind, v);
        }
        for _ in 0..truncated {
            let (kind, f) = g.frame();
            for len in 0..=f.len() {
                let v = self.check(&f[..len])?;
                record(&mut t, kind, v);
            }
        }
        let total = drops(&self.counters)?;
        anyhow::ensure!(
            total == self.drops_seen,
            "drop reasons moved by {} behind verdicts other than XDP_DROP",
            total - self.drops_seen
        );
        Ok(t)
    }
}

/// Sum of the documented drop reasons.
fn drops(c: &Counters) -> Result<u64> {
    Ok(c.reasons()?
        .into_iter()
        .filter(|(n, _)| DROP_REASONS.contains(n))
        .map(|(_, v)| v)
        .sum())
}

/// The outer IP destination of an untagged frame.
fn ip_destination(f: &[u8]) -> Option<IpAddr> {
    match u16::from_be_bytes([*f.get(12)?, *f.get(13)?]) {
        0x0800 => {
            let a: [u8; 4] = f.get(30..34)?.try_into().ok()?;
            Some(a.into())
        }
        0x86dd => {
            let a: [u8; 16] = f.get(38..54)?.try_into().ok()?;
            Some(a.into())
        }
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
