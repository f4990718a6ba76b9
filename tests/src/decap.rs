//! Support for the decapsulation program's tests (`lb decap`): a harness that loads the
//! `lb-decap` object into a private pin folder and runs it on frames with
//! `BPF_PROG_TEST_RUN`, and builders of IPIP and GUE frames as the balancer sends them
//! (`lb_common::encap`): outer IPv4 or IPv6 header, for GUE a UDP header with a zero
//! checksum, then the inner packet unchanged.

use anyhow::{Context, Result};
use aya::programs::Xdp;
use lb_common::decap::names;
use lb_userspace::dataplane::{
    decap::{self, Desired},
    loader,
    testrun::{self, RunResult},
};
use std::{net::IpAddr, path::PathBuf};

use crate::packet::checksum;

/// Destination MAC of encapsulated test frames (the backend's NIC).
pub const BACKEND_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbe];
/// Source MAC of encapsulated test frames (the balancer or the last router).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];

pub struct DecapHarness {
    pub ebpf: aya::Ebpf,
    pub pin_dir: PathBuf,
}

impl DecapHarness {
    /// Loads the decapsulation object with `addresses` and `gue_port` configured.
    pub fn new(addresses: &[IpAddr], gue_port: u16) -> Result<Self> {
        Self::with_object(addresses, gue_port, lb_userspace::dataplane::DECAP_OBJECT)
    }

    /// Loads another build of the object (e.g. for before/after figures).
    pub fn with_object(addresses: &[IpAddr], gue_port: u16, object: &[u8]) -> Result<Self> {
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(crate::unique("lbdecap-"));
        let loaded = (|| -> Result<aya::Ebpf> {
            let mut ebpf = decap::load(&pin_dir, object).context("loading lb-decap")?;
            let prog: &mut Xdp = ebpf
                .program_mut(names::PROG_DECAP)
                .context("program")?
                .try_into()?;
            prog.load().context("verifier")?;
            Ok(ebpf)
        })();
        // Maps are pinned before the program loads: a refusal must not leave them behind.
        let ebpf = loaded.inspect_err(|_| {
            let _ignored = loader::teardown(&pin_dir);
        })?;
        let mut h = DecapHarness { ebpf, pin_dir };
        h.configure(addresses, gue_port)?;
        Ok(h)
    }

    /// Rewrites the address list and the GUE port in place (as a second `lb decap` does).
    pub fn configure(&mut self, addresses: &[IpAddr], gue_port: u16) -> Result<()> {
        let want = Desired {
            addresses: addresses.to_vec(),
            gue_port,
        };
        Ok(decap::configure(&mut self.ebpf, &want)?)
    }

    /// Runs the program `repeat` times on the same buffer.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<RunResult> {
        let prog: &Xdp = self
            .ebpf
            .program(names::PROG_DECAP)
            .context("program")?
            .try_into()?;
        Ok(testrun::run(prog.fd()?, frame, repeat)?)
    }

    pub fn run(&self, frame: &[u8]) -> Result<RunResult> {
        self.run_repeat(frame, 1)
    }

    /// Every counter by name, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>> {
        Ok(decap::report(&self.pin_dir)?.counters)
    }

    /// Packets counted under one verdict name.
    pub fn count(&self, name: &str) -> Result<u64> {
        self.counters()?
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .with_context(|| format!("no counter {name}"))
    }
}

impl Drop for DecapHarness {
    fn drop(&mut self) {
        let _ignored = loader::teardown(&self.pin_dir);
    }
}

/// How a packet is encapsulated.
#[derive(Clone, Copy, Debug)]
pub enum Encap {
    /// IPIP: protocol 4 for an IPv4 inner packet, 41 for IPv6.
    Ipip,
    /// GUE variant 1: UDP from `sport` to `dport`, checksum zero, then the inner packet.
    Gue { sport: u16, dport: u16 },
}

/// An IPv4 header (no options, DF unset) for `payload_len` bytes, checksum computed.
pub fn ipv4_header(src: [u8; 4], dst: [u8; 4], proto: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// A fixed IPv6 header for `payload_len` bytes.
pub fn ipv6_header(src: [u8; 16], dst: [u8; 16], next: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload_len as u16).to_be_bytes());
    ip.push(next);
    ip.push(64);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    ip
}

/// An Ethernet header from [`ROUTER_MAC`] to [`BACKEND_MAC`].
pub fn eth(ether_type: u16) -> Vec<u8> {
    let mut f = BACKEND_MAC.to_vec();
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&ether_type.to_be_bytes());
    f
}

/// The ethertype of an IP packet, from its first nibble.
pub fn ether_type_of(packet: &[u8]) -> u16 {
    if packet[0] >> 4 == 6 {
        0x86dd
    } else {
        0x0800
    }
}

/// The outer IP packet (no Ethernet header) carrying `inner` from `src` to `dst`.
pub fn encap_packet(how: Encap, src: IpAddr, dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let (proto, payload) = match how {
        Encap::Ipip => {
            let proto = if inner[0] >> 4 == 6 { 41 } else { 4 };
            (proto, inner.to_vec())
        }
        Encap::Gue { sport, dport } => {
            let mut u = sport.to_be_bytes().to_vec();
            u.extend_from_slice(&dport.to_be_bytes());
            u.extend_from_slice(&((8 + inner.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(inner);
            (17, u)
        }
    };
    let mut p = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => ipv4_header(s.octets(), d.octets(), proto, payload.len()),
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6_header(s.octets(), d.octets(), proto, payload.len()),
        _ => panic!("outer addresses of different families"),
    };
    p.extend_from_slice(&payload);
    p
}

/// The whole frame: Ethernet header, then [`encap_packet`].
pub fn encap_frame(how: Encap, src: IpAddr, dst: IpAddr, inner: &[u8]) -> Vec<u8> {
    let mut f = eth(if src.is_ipv6() { 0x86dd } else { 0x0800 });
    f.extend_from_slice(&encap_packet(how, src, dst, inner));
    f
}

/// What the stack must see after decapsulation: the same MACs, the inner packet's
/// ethertype, the inner packet byte for byte.
pub fn decapsulated(inner: &[u8]) -> Vec<u8> {
    let mut f = eth(ether_type_of(inner));
    f.extend_from_slice(inner);
    f
}
