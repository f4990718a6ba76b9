//! Encapsulated forwarding to routed backends (IPIP or GUE, `lb_common::encap` has the wire
//! formats). The next hop comes from the kernel's FIB (`bpf_fib_lookup`), so a backend may
//! sit behind any number of routers; the same lookup checks the egress MTU. Outcomes, each
//! counted (README "Routed backends"):
//! - sent: `tx_ipip`/`tx_gue`, XDP_TX when the FIB's egress is the ingress interface,
//!   XDP_REDIRECT to the egress interface otherwise (`seen_encap_redirect` beside);
//! - the next hop's MAC is unknown: `drop_fib_no_neigh` (the agent resolves next hops);
//! - no usable route: `drop_fib_no_route`;
//! - too big once encapsulated: the client is answered with ICMP "fragmentation needed" or
//!   ICMPv6 Packet Too Big (`icmp_too_big`), or the packet is dropped when it may not be
//!   answered (`drop_too_big`).

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use core::{ffi::c_void, mem};
use lb_common::{
    encap::{self, forwarding},
    limits::NEXT_HOP_TTL_NS,
    Backend, NextHop, Reason, ServiceMeta, FAMILY_V6, PROTO_UDP,
};
use network_types::eth::EthHdr;

use crate::{
    counters,
    forward::{DROP, TX},
    icmp_too_big,
    maps::NEXT_HOPS,
    parse::{frame_len, ptr_at},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// Outer TTL / hop limit (the kernel's default for locally sent packets).
const OUTER_TTL: u8 = 64;
/// IPv4 "don't fragment": the outer packet is never fragmented on the way (MTU handling is
/// ours, by the FIB's MTU check).
const IP_DF: u16 = 0x4000;

/// Encapsulates the frame's IP packet toward `be` and sends it to the FIB's next hop.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    be: &Backend,
    id: u32,
    svc: &ServiceMeta,
    hash: u32,
    now: u64,
) -> (u32, Reason) {
    let v6 = be.family == FAMILY_V6;
    let gue = svc.forwarding == forwarding::GUE;
    let overhead = match (v6, gue) {
        (false, false) => encap::IPIP_V4_OVERHEAD,
        (false, true) => encap::GUE_V4_OVERHEAD,
        (true, false) => encap::IPIP_V6_OVERHEAD,
        (true, true) => encap::GUE_V6_OVERHEAD,
    };
    let inner_len = frame_len(ctx) as usize - EthHdr::LEN;
    let outer_proto = if gue {
        PROTO_UDP
    } else if v6 {
        encap::PROTO_IPV6_IN_IP
    } else {
        encap::PROTO_IPIP
    };
    // The flow hash (`hash`, computed by the caller only where it is used: GUE or an IPv6
    // outer header) spreads flows over the backend's receive queues (GUE source port) and
    // over equal-cost paths (IPv6 flow label, and the ports the FIB hashes on).
    let sport_be = encap::gue_source_port(hash).to_be();

    let ingress = ctx.ingress_ifindex() as u32;
    let tot_len = (inner_len + overhead) as u32;
    let ports = if gue {
        (sport_be, svc.gue_port_be)
    } else {
        (0, 0)
    };
    let hop = match next_hop(ctx, be, id, tot_len, outer_proto, ports, now) {
        Ok(hop) => hop,
        Err(NoHop::TooBig(mtu)) => {
            return icmp_too_big::answer(ctx, v6, (mtu as usize).saturating_sub(overhead));
        }
        Err(NoHop::NoNeighbour) => return (DROP, Reason::DROP_FIB_NO_NEIGH),
        Err(NoHop::NoRoute) => return (DROP, Reason::DROP_FIB_NO_ROUTE),
    };

    // The inner header's traffic class is copied to the outer one (DSCP and ECN, RFC 6040's
    // normal mode), read before the headers move.
    let Some(first) = ptr_at::<[u8; 2]>(ctx, EthHdr::LEN) else {
        return (DROP, Reason::DROP_SHORT_L4);
    };
    // SAFETY: bounds checked by `ptr_at`.
    let first = unsafe { *first };
    let tclass = if v6 {
        (first[0] << 4) | (first[1] >> 4)
    } else {
        first[1]
    };
    // SAFETY: the helper only moves `data`; every pointer is derived again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(overhead as i32)) } != 0 {
        return (DROP, Reason::DROP_FIB_NO_ROUTE);
    }
    let outer = Outer {
        proto: outer_proto,
        tclass,
        inner_len,
        hash,
    };
    let written = if v6 {
        write_v6(ctx, &hop, be, &outer)
    } else {
        write_v4(ctx, &hop, be, &outer)
    };
    if !written {
        return (DROP, Reason::DROP_SHORT_L4);
    }
    if gue {
        let udp_off = EthHdr::LEN + if v6 { 40 } else { 20 };
        let Some(udp) = ptr_at::<[u16; 4]>(ctx, udp_off) else {
            return (DROP, Reason::DROP_SHORT_L4);
        };
        // SAFETY: bounds checked by `ptr_at`; 2-aligned like the frame's headers.
        unsafe {
            let u = udp as *mut u16;
            u.write(sport_be);
            u.add(1).write(svc.gue_port_be);
            u.add(2).write(((inner_len + 8) as u16).to_be());
            u.add(3).write(0);
        }
    }
    let reason = if gue { Reason::TX_GUE } else { Reason::TX_IPIP };
    if hop.ifindex == ingress {
        return (TX, reason);
    }
    counters::reason(Reason::SEEN_ENCAP_REDIRECT);
    // SAFETY: the helper has no memory arguments.
    let action = unsafe { bpf_redirect(hop.ifindex, 0) } as u32;
    (action, reason)
}

/// What the outer IP header says besides the addresses.
struct Outer {
    proto: u8,
    tclass: u8,
    inner_len: usize,
    hash: u32,
}

/// Writes the Ethernet header (the FIB's MACs) and the outer IPv4 header at the new start
/// of the frame. `false`: the frame is shorter than the headers (cannot happen after a
/// successful adjust, but the verifier needs the check).
#[inline(always)]
fn write_v4(ctx: &XdpContext, hop: &NextHop, be: &Backend, o: &Outer) -> bool {
    let Some(h) = ptr_at::<[u16; 17]>(ctx, 0) else {
        return false;
    };
    let h = h as *mut u16;
    let extra = if o.proto == PROTO_UDP { 8 } else { 0 };
    let (src, dst) = (
        be.src.as_ptr() as *const u16,
        be.addr.as_ptr() as *const u16,
    );
    // SAFETY: `h` covers 34 bytes (Ethernet + IPv4), 2-aligned; `src`/`dst` 16 readable bytes.
    unsafe {
        write_eth(h, hop, ETH_P_IP);
        let ip = h.add(7);
        let w = [
            u16::from_ne_bytes([0x45, o.tclass]),
            ((o.inner_len + 20 + extra) as u16).to_be(),
            0,
            IP_DF.to_be(),
            u16::from_ne_bytes([OUTER_TTL, o.proto]),
            0,
            src.read(),
            src.add(1).read(),
            dst.read(),
            dst.add(1).read(),
        ];
        let mut sum = 0u32;
        for (i, word) in w.iter().enumerate() {
            ip.add(i).write(*word);
            sum += *word as u32;
        }
        ip.add(5).write(!fold(sum));
    }
    true
}

/// As [`write_v4`] for an outer IPv6 header; the flow label carries the flow hash.
#[inline(always)]
fn write_v6(ctx: &XdpContext, hop: &NextHop, be: &Backend, o: &Outer) -> bool {
    let Some(h) = ptr_at::<[u16; 27]>(ctx, 0) else {
        return false;
    };
    let h = h as *mut u16;
    let extra = if o.proto == PROTO_UDP { 8 } else { 0 };
    let vtcfl: u32 = (6 << 28) | ((o.tclass as u32) << 20) | (o.hash & 0xf_ffff);
    let (src, dst) = (
        be.src.as_ptr() as *const u16,
        be.addr.as_ptr() as *const u16,
    );
    // SAFETY: `h` covers 54 bytes (Ethernet + IPv6), 2-aligned; `src`/`dst` 16 readable bytes.
    unsafe {
        write_eth(h, hop, ETH_P_IPV6);
        let ip = h.add(7);
        ip.write(((vtcfl >> 16) as u16).to_be());
        ip.add(1).write((vtcfl as u16).to_be());
        ip.add(2).write(((o.inner_len + extra) as u16).to_be());
        ip.add(3).write(u16::from_ne_bytes([o.proto, OUTER_TTL]));
        for i in 0..8 {
            ip.add(4 + i).write(src.add(i).read());
            ip.add(12 + i).write(dst.add(i).read());
        }
    }
    true
}

/// The Ethernet header: destination and source MACs of the next hop, then the ethertype.
///
/// # Safety
/// `h` must point at 14 writable, 2-aligned bytes.
#[inline(always)]
unsafe fn write_eth(h: *mut u16, hop: &NextHop, ether_type: u16) {
    // `NextHop` is 4-aligned with the MACs at offsets 0 and 6: 16-bit reads.
    let (d, s) = (
        hop.dmac.as_ptr() as *const u16,
        hop.smac.as_ptr() as *const u16,
    );
    // SAFETY: as the caller guarantees; the MACs are 6 bytes each.
    unsafe {
        for i in 0..3 {
            h.add(i).write(d.add(i).read());
            h.add(3 + i).write(s.add(i).read());
        }
        h.add(6).write(ether_type.to_be());
    }
}

/// Why no next hop was found.
enum NoHop {
    /// The outer packet exceeds the route's MTU (the MTU).
    TooBig(u32),
    NoNeighbour,
    NoRoute,
}

/// The next hop toward routed backend `be` (slot `id`) for an outer packet of `tot_len`
/// bytes: this CPU's cached FIB answer while it is younger than `NEXT_HOP_TTL_NS` and the
/// packet fits its MTU, else a FIB lookup (which also decides "too big"). `now` is the
/// packet's clock reading (the forwarding path's, not read again).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    be: &Backend,
    id: u32,
    tot_len: u32,
    proto: u8,
    ports: (u16, u16),
    now: u64,
) -> Result<NextHop, NoHop> {
    let cached = NEXT_HOPS.get_ptr_mut(id);
    if let Some(c) = cached {
        // SAFETY: this CPU's element, valid for the program's run.
        let c = unsafe { &*c };
        if c.generation == be.generation
            && c.checked_ns != 0
            && now.wrapping_sub(c.checked_ns) < NEXT_HOP_TTL_NS
            && tot_len <= c.mtu
        {
            return Ok(*c);
        }
    }
    let hop = fib_lookup(ctx, be, tot_len, proto, ports, now)?;
    if let Some(c) = cached {
        // SAFETY: as above.
        unsafe { *c = hop };
    }
    Ok(hop)
}

/// Asks the kernel's FIB for the route and neighbour toward `be` from the interface the
/// frame came in on, with the outer packet's length for its MTU check.
#[inline(always)]
fn fib_lookup(
    ctx: &XdpContext,
    be: &Backend,
    tot_len: u32,
    proto: u8,
    (sport_be, dport_be): (u16, u16),
    now: u64,
) -> Result<NextHop, NoHop> {
    // SAFETY: a plain C struct of integers; all-zero is its documented "no input" value.
    let mut fib: FibParams = unsafe { mem::zeroed() };
    fib.l4_protocol = proto;
    // The ports feed the kernel's multipath hash (GUE; zero for IPIP).
    fib.sport = sport_be;
    fib.dport = dport_be;
    fib.__bindgen_anon_1.tot_len = tot_len as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY (address copies): `Backend` is 4-aligned, so its 16-byte addresses read as
    // four u32 words; the union members written are the ones `family` selects.
    unsafe {
        let (src, dst) = (
            be.src.as_ptr() as *const u32,
            be.addr.as_ptr() as *const u32,
        );
        if be.family == FAMILY_V6 {
            fib.family = AF_INET6;
            for i in 0..4 {
                fib.__bindgen_anon_3.ipv6_src[i] = src.add(i).read();
                fib.__bindgen_anon_4.ipv6_dst[i] = dst.add(i).read();
            }
        } else {
            fib.family = AF_INET;
            fib.__bindgen_anon_3.ipv4_src = src.read();
            fib.__bindgen_anon_4.ipv4_dst = dst.read();
        }
    }
    // SAFETY: `fib` is a valid, writable parameter block of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut c_void,
            &mut fib,
            mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    // SAFETY (union reads): the kernel writes `mtu_result` on success and on FRAG_NEEDED.
    let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return Err(NoHop::TooBig(mtu));
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        return Err(NoHop::NoNeighbour);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return Err(NoHop::NoRoute);
    }
    Ok(NextHop {
        dmac: fib.dmac,
        smac: fib.smac,
        ifindex: fib.ifindex,
        mtu,
        generation: be.generation,
        checked_ns: now,
    })
}

/// Folds a 32-bit one's-complement sum of 16-bit words to 16 bits (RFC 1071).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
