//! The answer to a packet that would exceed the egress MTU once encapsulated: ICMP
//! "fragmentation needed" (type 3 code 4, RFC 1191) or ICMPv6 Packet Too Big (RFC 4443
//! §3.2) back to the client, carrying the MTU left for the inner packet, so the client's
//! path MTU shrinks and its next packets fit. The frame is turned into the answer in place
//! and sent back out of the interface it came in on (XDP_TX), from the VIP the client
//! addressed (the client's stack matches the quote to its socket whatever the source).
//!
//! The quote is fixed-size (the IPv4 header and 8 bytes, RFC 792; 128 bytes for IPv6, more
//! than the fixed header and the ports) so the checksum is a straight-line sum the verifier
//! accepts; a packet too big to fit is always longer than that. Not answered, dropped with
//! `drop_too_big`: IPv4 without DF (a router may only answer DF packets) or with options.

use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{Reason, PROTO_ICMP, PROTO_ICMPV6};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    encap::fold,
    forward::{DROP, TX},
    parse::{frame_len, ptr_at},
};

const IP_DF: u16 = 0x4000;
/// Bytes of the offending packet quoted: IPv4 header without options + 8 (RFC 792).
const QUOTE_V4: usize = 28;
/// Bytes quoted for IPv6 (fixed; RFC 4443 asks for as much as fits in 1280, the client
/// needs the fixed header and the ports).
const QUOTE_V6: usize = 128;
/// IPv6's minimum link MTU (RFC 8200 §5): a Packet Too Big never reports less.
const IPV6_MIN_MTU: usize = 1280;
const TTL: u8 = 64;

/// Answers the client in place; `mtu` is what the inner packet may measure.
#[inline(always)]
pub fn answer(ctx: &XdpContext, v6: bool, mtu: usize) -> (u32, Reason) {
    let done = if v6 {
        answer_v6(ctx, mtu.max(IPV6_MIN_MTU))
    } else {
        answer_v4(ctx, mtu)
    };
    if done {
        (TX, Reason::TX_ICMP_TOO_BIG)
    } else {
        (DROP, Reason::DROP_TOO_BIG)
    }
}

/// Cuts the frame to `len` bytes after `grow` more bytes were made room for in front.
#[inline(always)]
fn reshape(ctx: &XdpContext, grow: usize, len: usize) -> bool {
    // SAFETY: the helpers only move `data`/`data_end`; pointers are derived again after.
    unsafe {
        if bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) != 0 {
            return false;
        }
        let cur = frame_len(ctx) as i32;
        bpf_xdp_adjust_tail(ctx.ctx, len as i32 - cur) == 0
    }
}

/// Reads the frame's Ethernet addresses as six 16-bit words (destination, then source).
#[inline(always)]
fn macs(ctx: &XdpContext) -> Option<[u16; 6]> {
    let e = ptr_at::<[u16; 6]>(ctx, 0)?;
    // SAFETY: bounds checked by `ptr_at`.
    Some(unsafe { *e })
}

/// Writes the answer's Ethernet header: back to where the frame came from.
///
/// # Safety
/// `h` must point at 14 writable, 2-aligned bytes.
#[inline(always)]
unsafe fn write_eth_back(h: *mut u16, macs: &[u16; 6], ether_type: u16) {
    // SAFETY: as the caller guarantees.
    unsafe {
        for i in 0..3 {
            h.add(i).write(macs[3 + i]);
            h.add(3 + i).write(macs[i]);
        }
        h.add(6).write(ether_type.to_be());
    }
}

#[inline(always)]
fn answer_v4(ctx: &XdpContext, mtu: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return false;
    };
    // SAFETY: bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    if ip.vihl != 0x45 || u16::from_be_bytes(ip.frags) & IP_DF == 0 {
        return false;
    }
    let (client, vip) = (ip.src_addr, ip.dst_addr);
    let Some(macs) = macs(ctx) else {
        return false;
    };
    const LEN: usize = EthHdr::LEN + Ipv4Hdr::LEN + 8 + QUOTE_V4;
    if frame_len(ctx) < (EthHdr::LEN + QUOTE_V4) as u64 || !reshape(ctx, Ipv4Hdr::LEN + 8, LEN) {
        return false;
    }
    let Some(h) = ptr_at::<[u16; LEN / 2]>(ctx, 0) else {
        return false;
    };
    let h = h as *mut u16;
    let w = |b: [u8; 2]| u16::from_ne_bytes(b);
    // SAFETY: `h` covers the whole answer, 2-aligned.
    unsafe {
        write_eth_back(h, &macs, 0x0800);
        let ip = h.add(7);
        let words = [
            w([0x45, 0]),
            ((LEN - EthHdr::LEN) as u16).to_be(),
            0,
            0,
            w([TTL, PROTO_ICMP]),
            0,
            w([vip[0], vip[1]]),
            w([vip[2], vip[3]]),
            w([client[0], client[1]]),
            w([client[2], client[3]]),
        ];
        let mut sum = 0u32;
        for (i, word) in words.iter().enumerate() {
            ip.add(i).write(*word);
            sum += *word as u32;
        }
        ip.add(5).write(!fold(sum));
        // ICMP: type, code, checksum, unused, next-hop MTU; then the quote, in place.
        let icmp = h.add(17);
        let head = [w([3, 4]), 0, 0, (mtu as u16).to_be()];
        let mut sum = 0u32;
        for (i, word) in head.iter().enumerate() {
            icmp.add(i).write(*word);
            sum += *word as u32;
        }
        for i in 0..QUOTE_V4 / 2 {
            sum += icmp.add(4 + i).read() as u32;
        }
        icmp.add(1).write(!fold(sum));
    }
    true
}

#[inline(always)]
fn answer_v6(ctx: &XdpContext, mtu: usize) -> bool {
    let Some(ip) = ptr_at::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return false;
    };
    // SAFETY: bounds checked by `ptr_at`; addresses are 2-aligned in the frame.
    let (client, vip) = unsafe {
        (
            *((*ip).src_addr.as_ptr() as *const [u16; 8]),
            *((*ip).dst_addr.as_ptr() as *const [u16; 8]),
        )
    };
    let Some(macs) = macs(ctx) else {
        return false;
    };
    const LEN: usize = EthHdr::LEN + Ipv6Hdr::LEN + 8 + QUOTE_V6;
    const PAYLOAD: u16 = (8 + QUOTE_V6) as u16;
    if frame_len(ctx) < (EthHdr::LEN + QUOTE_V6) as u64 || !reshape(ctx, Ipv6Hdr::LEN + 8, LEN) {
        return false;
    }
    let Some(h) = ptr_at::<[u16; LEN / 2]>(ctx, 0) else {
        return false;
    };
    let h = h as *mut u16;
    let w = |b: [u8; 2]| u16::from_ne_bytes(b);
    // SAFETY: `h` covers the whole answer, 2-aligned.
    unsafe {
        write_eth_back(h, &macs, 0x86dd);
        let ip = h.add(7);
        ip.write(w([0x60, 0]));
        ip.add(1).write(0);
        ip.add(2).write(PAYLOAD.to_be());
        ip.add(3).write(w([PROTO_ICMPV6, TTL]));
        // Pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header.
        let mut sum = PAYLOAD.to_be() as u32 + w([0, PROTO_ICMPV6]) as u32;
        for i in 0..8 {
            ip.add(4 + i).write(vip[i]);
            ip.add(12 + i).write(client[i]);
            sum += vip[i] as u32 + client[i] as u32;
        }
        // ICMPv6: type, code, checksum, MTU (32 bits); then the quote, in place.
        let icmp = h.add(27);
        let m = (mtu as u32).to_be_bytes();
        let head = [w([2, 0]), 0, w([m[0], m[1]]), w([m[2], m[3]])];
        for (i, word) in head.iter().enumerate() {
            icmp.add(i).write(*word);
            sum += *word as u32;
        }
        for i in 0..QUOTE_V6 / 2 {
            sum += icmp.add(4 + i).read() as u32;
        }
        icmp.add(1).write(!fold(sum));
    }
    true
}
