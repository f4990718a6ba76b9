//! IPv6: header sanity, a bounded walk of extension headers to the upper-layer header, the
//! VIP-address check, then the same forwarding as IPv4 (`forward::forward_flow`). ICMPv6
//! "Packet Too Big" about a VIP flow goes to that flow's backend. NDP and every other
//! ICMPv6 message pass untouched. Verdicts: README, "Packet verdicts (L4)".

use aya_ebpf::programs::XdpContext;
use core::ptr::addr_of;
use lb_common::{limits::MAX_IPV6_EXT_HEADERS, Reason, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use network_types::{eth::EthHdr, icmp::Icmpv6Hdr, ip::Ipv6Hdr};

use crate::{
    counters,
    forward::{forward_flow, icmp_error_to_backend, l4_ports, vip_addr_flags, DROP, PASS},
    keys::{v6_flow, vip_addr_key_v6},
    parse::ptr_at,
};

/// Extension headers walked (RFC 8200 §4): each starts with (next header, length in 8-byte
/// units not counting the first 8).
const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_DEST_OPTS: u8 = 60;
/// The fragment header (RFC 8200 §4.5): its packet's ports may be in another fragment.
const NEXT_FRAGMENT: u8 = 44;
/// ICMPv6 Packet Too Big (RFC 4443 §3.2).
const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// Where the extension-header walk ended.
enum Walk {
    /// The upper-layer header: its protocol, its offset in the frame, and whether any
    /// extension header came before it.
    Upper { proto: u8, off: usize, ext: bool },
    /// A fragment header, with the protocol it says follows.
    Fragment { proto: u8 },
    /// More than `MAX_IPV6_EXT_HEADERS` headers, or one cut off by the end of the frame.
    Unwalkable,
}

#[inline(always)]
pub fn process(ctx: &XdpContext, eth: *mut EthHdr) -> (u32, Reason) {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return (PASS, Reason::PASS_SHORT_IP);
    };
    // SAFETY (header reads): `ptr_at` checked the whole header is in the frame.
    let (vcf0, next) = unsafe { ((*ip).vcf[0], (*ip).next_hdr) };
    if vcf0 >> 4 != 6 {
        return (PASS, Reason::PASS_BAD_IP);
    }
    // SAFETY: field addresses inside the checked header (offsets 22 and 38 of the frame).
    let (src, dst) = unsafe { (addr_of!((*ip).src_addr), addr_of!((*ip).dst_addr)) };
    let (proto, off, ext) = match walk(ctx, next) {
        Walk::Upper { proto, off, ext } => (proto, off, ext),
        Walk::Fragment { proto } => return fragment(dst, proto),
        Walk::Unwalkable => return unwalkable(dst),
    };
    if proto == PROTO_ICMPV6 {
        return packet_too_big(ctx, eth, off, dst);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (PASS, Reason::PASS_NOT_TCP_UDP);
    }
    // VIP check first, as for IPv4: one small lookup before any connection-table access.
    // SAFETY: `dst` as above.
    let Some(addr_flags) = vip_addr_flags(unsafe { vip_addr_key_v6(dst, proto) }) else {
        return (PASS, Reason::PASS_NOT_VIP);
    };
    if ext {
        counters::reason(Reason::SEEN_IPV6_EXT);
    }
    let Some((sport, dport, mid_flow)) = l4_ports(ctx, off, proto) else {
        return (DROP, Reason::DROP_SHORT_L4);
    };
    // SAFETY: `src` and `dst` as above.
    let flow = unsafe { v6_flow(src, dst, sport, dport, proto) };
    forward_flow(ctx, eth, &flow, addr_flags, mid_flow)
}

/// Walks at most `MAX_IPV6_EXT_HEADERS` hop-by-hop, routing and destination-options
/// headers from the fixed header's next-header value `first`.
#[inline(always)]
fn walk(ctx: &XdpContext, first: u8) -> Walk {
    let mut next = first;
    let mut off = EthHdr::LEN + Ipv6Hdr::LEN;
    let mut walked = 0;
    while walked <= MAX_IPV6_EXT_HEADERS {
        if next == PROTO_TCP || next == PROTO_UDP {
            break;
        }
        if next == NEXT_FRAGMENT {
            // Two bytes, not one: LLVM turns a one-byte check `p + 1 > end` into
            // `p >= end`, from which the verifier proves no readable byte.
            let Some(h) = ptr_at::<[u8; 2]>(ctx, off) else {
                return Walk::Unwalkable;
            };
            // SAFETY: bounds checked by `ptr_at`.
            return Walk::Fragment {
                proto: unsafe { (*h)[0] },
            };
        }
        if next != NEXT_HOP_BY_HOP && next != NEXT_ROUTING && next != NEXT_DEST_OPTS {
            break;
        }
        if walked == MAX_IPV6_EXT_HEADERS {
            return Walk::Unwalkable;
        }
        let Some(h) = ptr_at::<[u8; 2]>(ctx, off) else {
            return Walk::Unwalkable;
        };
        // SAFETY: bounds checked by `ptr_at`.
        let h = unsafe { *h };
        next = h[0];
        off += (h[1] as usize + 1) * 8;
        walked += 1;
    }
    Walk::Upper {
        proto: next,
        off,
        ext: walked > 0,
    }
}

/// A fragment of a TCP/UDP packet to a VIP address is dropped like an IPv4 fragment (its
/// ports may be in another fragment, so no backend can be chosen); anything else passes.
#[inline(always)]
fn fragment(dst: *const [u8; 16], proto: u8) -> (u32, Reason) {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (PASS, Reason::PASS_NOT_TCP_UDP);
    }
    // SAFETY: `dst` points into the checked fixed header.
    match vip_addr_flags(unsafe { vip_addr_key_v6(dst, proto) }) {
        Some(_) => (DROP, Reason::DROP_FRAGMENT),
        None => (PASS, Reason::PASS_NOT_VIP),
    }
}

/// An extension-header chain the walk cannot finish hides the protocol and the ports: to an
/// address with a TCP or UDP VIP it is dropped (it cannot be forwarded correctly); to any
/// other address it passes untouched.
#[inline(always)]
fn unwalkable(dst: *const [u8; 16]) -> (u32, Reason) {
    // SAFETY: `dst` points into the checked fixed header.
    let vip = unsafe {
        vip_addr_flags(vip_addr_key_v6(dst, PROTO_TCP)).is_some()
            || vip_addr_flags(vip_addr_key_v6(dst, PROTO_UDP)).is_some()
    };
    if vip {
        (DROP, Reason::DROP_EXT_HEADERS)
    } else {
        (PASS, Reason::PASS_NOT_VIP)
    }
}

/// ICMPv6 Packet Too Big (type 2, code 0) about a VIP flow goes to that flow's backend, as
/// ICMP "fragmentation needed" does for IPv4 (`forward::icmp_frag_needed`): the quoted
/// packet is the backend's reply (VIP → client), reversed it is the client's flow. A quote
/// whose fixed header is not followed directly by TCP/UDP (quoted extension headers are not
/// walked), or that is not a VIP flow, passes untouched, as does every other ICMPv6 message
/// (NDP included).
#[inline(always)]
fn packet_too_big(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    off: usize,
    outer_dst: *const [u8; 16],
) -> (u32, Reason) {
    let not_ours = (PASS, Reason::PASS_NOT_TCP_UDP);
    let Some(icmp) = ptr_at::<Icmpv6Hdr>(ctx, off) else {
        return not_ours;
    };
    // SAFETY (header reads): bounds checked by `ptr_at`.
    let (ty, code) = unsafe { ((*icmp).type_, (*icmp).code) };
    if ty != ICMPV6_PACKET_TOO_BIG || code != 0 {
        return not_ours;
    }
    let inner_off = off + Icmpv6Hdr::LEN;
    let Some(inner) = ptr_at::<Ipv6Hdr>(ctx, inner_off) else {
        return not_ours;
    };
    let (vcf0, proto) = unsafe { ((*inner).vcf[0], (*inner).next_hdr) };
    if vcf0 >> 4 != 6 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return not_ours;
    }
    // SAFETY: addresses inside the checked inner header, 2-aligned like the outer ones.
    let (isrc, idst) = unsafe { (addr_of!((*inner).src_addr), addr_of!((*inner).dst_addr)) };
    if !unsafe { same_addr(isrc, outer_dst) } {
        return not_ours;
    }
    // RFC 4443 quotes as much of the packet as fits: both ports are there.
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, inner_off + Ipv6Hdr::LEN) else {
        return not_ours;
    };
    let ports = unsafe { *ports };
    let Some(flags) = vip_addr_flags(unsafe { vip_addr_key_v6(isrc, proto) }) else {
        return not_ours;
    };
    let flow = unsafe {
        v6_flow(
            idst,
            isrc,
            [ports[2], ports[3]],
            [ports[0], ports[1]],
            proto,
        )
    };
    icmp_error_to_backend(ctx, eth, &flow, flags)
}

/// Whether two IPv6 addresses in the frame are equal, by 16-bit words (an array `==`
/// compiles to a `memcmp` call, which BPF does not have).
///
/// # Safety
/// Both must point at 16 readable, 2-aligned bytes.
#[inline(always)]
unsafe fn same_addr(a: *const [u8; 16], b: *const [u8; 16]) -> bool {
    let (a, b) = (a as *const u16, b as *const u16);
    let mut diff = 0u16;
    // SAFETY: as the caller guarantees.
    unsafe {
        for i in 0..8 {
            diff |= a.add(i).read() ^ b.add(i).read();
        }
    }
    diff == 0
}
