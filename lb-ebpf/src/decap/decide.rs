//! The per-packet decision. Order of checks, each with its verdict (README, "Routed
//! backends"):
//! 1. Ethernet with IPv4 or IPv6 (no VLAN tag); anything else passes;
//! 2. a valid outer header (else pass: the kernel validates), carrying IPIP (protocol 4 or
//!    41, either outer family) or UDP, straight after the fixed header (IPv6 extension
//!    headers pass: the balancer never adds them); anything else passes;
//! 3. the outer destination is in `DECAP_ADDRS`; else pass (another host's tunnel);
//! 4. IPv4 without options and not a fragment; else pass (the balancer sends neither);
//! 5. UDP must be to the GUE port; else pass (ordinary UDP);
//! 6. the inner packet has a whole IP header of the version the encapsulation announces
//!    (IPIP: 4 for protocol 4, 6 for 41; GUE: its first nibble, 4 or 6); else drop;
//! 7. strip: the MACs move up to just before the inner packet, the ethertype follows the
//!    inner version, `bpf_xdp_adjust_head` drops the outer headers; pass.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{
    decap::{AddrKey, Reason},
    encap::{PROTO_IPIP, PROTO_IPV6_IN_IP},
    FAMILY_V4, FAMILY_V6, PROTO_UDP,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    udp::UdpHdr,
};

use crate::{
    maps::{DECAP_ADDRS, DECAP_SETTINGS},
    parse::ptr_at,
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const ABORT: u32 = xdp_action::XDP_ABORTED;

/// IPv4 "more fragments" flag and fragment offset (RFC 791 §3.1).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

#[inline(always)]
pub fn process(ctx: &XdpContext) -> (u32, Reason) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (PASS, Reason::PASS_NOT_IP);
    };
    // SAFETY (all header reads below): `ptr_at` checked the whole header is in the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        return ipv4(ctx);
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return ipv6(ctx);
    }
    (PASS, Reason::PASS_NOT_IP)
}

#[inline(always)]
fn is_encap(proto: u8) -> bool {
    proto == PROTO_IPIP || proto == PROTO_IPV6_IN_IP || proto == PROTO_UDP
}

#[inline(always)]
fn ours(key: &AddrKey) -> bool {
    // SAFETY: the value is only tested for presence.
    unsafe { DECAP_ADDRS.get(key).is_some() }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext) -> (u32, Reason) {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return (PASS, Reason::PASS_BAD_IP);
    };
    let ip = unsafe { &*ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN {
        return (PASS, Reason::PASS_BAD_IP);
    }
    let proto = ip.proto;
    if !is_encap(proto) {
        return (PASS, Reason::PASS_NOT_ENCAP);
    }
    let mut key = AddrKey {
        family: FAMILY_V4,
        ..AddrKey::default()
    };
    // One word store: a slice copy compiles to a byte loop in BPF.
    // SAFETY: `AddrKey` is 4-aligned with its address at offset 0.
    unsafe { (key.addr.as_mut_ptr() as *mut u32).write(u32::from_ne_bytes(ip.dst_addr)) };
    if !ours(&key) {
        return (PASS, Reason::PASS_OTHER_HOST);
    }
    if ihl != Ipv4Hdr::LEN {
        return (PASS, Reason::PASS_IP_OPTIONS);
    }
    if u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0 {
        return (PASS, Reason::PASS_FRAGMENT);
    }
    strip(ctx, EthHdr::LEN + Ipv4Hdr::LEN, proto)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext) -> (u32, Reason) {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return (PASS, Reason::PASS_BAD_IP);
    };
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return (PASS, Reason::PASS_BAD_IP);
    }
    let proto = ip.next_hdr;
    if !is_encap(proto) {
        return (PASS, Reason::PASS_NOT_ENCAP);
    }
    let mut key = AddrKey {
        family: FAMILY_V6,
        ..AddrKey::default()
    };
    // Eight 16-bit moves (the address is 2-aligned in the frame; an array copy compiles to a
    // byte loop in BPF).
    // SAFETY: the address lies inside the checked header; `AddrKey` is 4-aligned.
    unsafe {
        let from = ip.dst_addr.as_ptr() as *const u16;
        let to = key.addr.as_mut_ptr() as *mut u16;
        for i in 0..8 {
            to.add(i).write(from.add(i).read());
        }
    }
    if !ours(&key) {
        return (PASS, Reason::PASS_OTHER_HOST);
    }
    strip(ctx, EthHdr::LEN + Ipv6Hdr::LEN, proto)
}

/// Finds the inner packet after the outer IP header (which ends at `outer_end`), checks it
/// and removes everything between the Ethernet header and it.
#[inline(always)]
fn strip(ctx: &XdpContext, outer_end: usize, proto: u8) -> (u32, Reason) {
    let (inner, announced, counted) = if proto == PROTO_UDP {
        let Some(udp) = ptr_at::<UdpHdr>(ctx, outer_end) else {
            return (PASS, Reason::PASS_BAD_IP);
        };
        let port = DECAP_SETTINGS.get(0).map_or(0, |s| s.gue_port_be);
        if port == 0 || u16::from_ne_bytes(unsafe { (*udp).dst }) != port {
            return (PASS, Reason::PASS_UDP_OTHER_PORT);
        }
        (outer_end + UdpHdr::LEN, 0, Reason::DECAP_GUE)
    } else if proto == PROTO_IPIP {
        (outer_end, 4, Reason::DECAP_IPIP)
    } else {
        (outer_end, 6, Reason::DECAP_IPIP)
    };
    let Some(first) = ptr_at::<u8>(ctx, inner) else {
        return (DROP, Reason::DROP_BAD_INNER);
    };
    let version = unsafe { *first } >> 4;
    if announced != 0 && version != announced {
        return (DROP, Reason::DROP_BAD_INNER);
    }
    let ether_type = if version == 4 {
        if ptr_at::<Ipv4Hdr>(ctx, inner).is_none() {
            return (DROP, Reason::DROP_BAD_INNER);
        }
        EtherType::Ipv4 as u16
    } else if version == 6 {
        if ptr_at::<Ipv6Hdr>(ctx, inner).is_none() {
            return (DROP, Reason::DROP_BAD_INNER);
        }
        EtherType::Ipv6 as u16
    } else {
        return (DROP, Reason::DROP_BAD_INNER);
    };
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (ABORT, Reason::ABORT_ADJUST);
    };
    // The MACs as six 16-bit words (EthHdr is 2-aligned; an array copy compiles to a byte
    // loop in BPF).
    // SAFETY: `eth` covers the 14-byte header.
    let macs = unsafe { *(eth as *const [u16; 6]) };
    let shift = (inner - EthHdr::LEN) as i32;
    // SAFETY: the helper takes the program's own context; it moves `data` forward by
    // `shift` bytes, all inside the frame (checked above: the inner header follows them).
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, shift) } != 0 {
        return (ABORT, Reason::ABORT_ADJUST);
    }
    // Every packet pointer is invalid after the helper: bounds are checked again.
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (ABORT, Reason::ABORT_ADJUST);
    };
    // SAFETY: bounds checked by `ptr_at`; 2-aligned.
    unsafe {
        *(eth as *mut [u16; 6]) = macs;
        (*eth).ether_type = ether_type;
    }
    (PASS, counted)
}
