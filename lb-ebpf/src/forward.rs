//! The per-packet decision. Order of checks, each with its documented verdict:
//! 1. Ethernet, then IPv4 (other ethertypes and IPv6 pass untouched);
//! 2. IPv4 sanity (version, IHL ≥ 5, total length ≥ header): failures pass, so the kernel
//!    applies its own validation exactly as if the balancer were not there;
//! 3. TCP or UDP only; fragments and truncated L4 headers are dropped only when addressed to
//!    a VIP address (their ports cannot be read, so no backend can be chosen), else passed;
//! 4. VIP lookup on (address, port, protocol), then (address, 0, protocol);
//! 5. connection table, else Maglev; rewrite MACs; XDP_TX.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::{
    backend_flags, flow_hash::flow_hash, flow_hash::mask_for_hash, service_flags, Backend,
    ConnEntry, FlowKey, Reason, ServiceMeta, VipAddrKey, VipKey, VipMeta, FAMILY_V4, NO_BACKEND,
    PROTO_TCP, PROTO_UDP,
};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    counters,
    maps::{BACKENDS, CONNS, MAGLEV, SERVICES, SETTINGS, VIPS, VIP_ADDRS},
    parse::{frame_len, ptr_at},
};

const PASS: u32 = xdp_action::XDP_PASS;
const DROP: u32 = xdp_action::XDP_DROP;
const TX: u32 = xdp_action::XDP_TX;
const ABORT: u32 = xdp_action::XDP_ABORTED;

/// IPv4 "more fragments" flag and fragment offset (RFC 791 §3.1).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// Connection-table timestamps are refreshed at most this often.
const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn process(ctx: &XdpContext) -> (u32, Reason) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (PASS, Reason::PASS_SHORT_ETH);
    };
    // SAFETY (all header reads below): `ptr_at` checked the whole header is in the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv6 as u16 {
        return (PASS, Reason::PASS_IPV6);
    }
    if ether_type != EtherType::Ipv4 as u16 {
        return (PASS, Reason::PASS_NOT_IP);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return (PASS, Reason::PASS_SHORT_IP);
    };
    let ip = unsafe { &*ip };
    let version = ip.vihl >> 4;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if version != 4 || ihl < Ipv4Hdr::LEN || (u16::from_be_bytes(ip.tot_len) as usize) < ihl {
        return (PASS, Reason::PASS_BAD_IP);
    }
    let proto = ip.proto;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (PASS, Reason::PASS_NOT_TCP_UDP);
    }
    let dst = ip.dst_addr;
    if u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0 {
        return verdict_without_ports(dst, proto, Reason::DROP_FRAGMENT);
    }
    if ihl > Ipv4Hdr::LEN {
        // Options are skipped by IHL and the packet is forwarded unchanged; counted so an
        // operator can see them.
        counters::reason(Reason::SEEN_IP_OPTIONS);
    }
    let l4 = EthHdr::LEN + ihl;
    // Both TCP and UDP start with source and destination ports; require the whole header.
    let ports = if proto == PROTO_TCP {
        ptr_at::<TcpHdr>(ctx, l4).map(|t| unsafe { ((*t).source, (*t).dest) })
    } else {
        ptr_at::<UdpHdr>(ctx, l4).map(|u| unsafe { ((*u).src, (*u).dst) })
    };
    let Some((sport, dport)) = ports else {
        return verdict_without_ports(dst, proto, Reason::DROP_SHORT_L4);
    };
    let mut vk = VipKey {
        addr: v4_addr(dst),
        port_be: u16::from_ne_bytes(dport),
        proto,
        family: FAMILY_V4,
    };
    // SAFETY: map values are plain data; the reference is not kept past this packet.
    let meta: VipMeta = match unsafe { VIPS.get(&vk) } {
        Some(m) => *m,
        None => {
            vk.port_be = 0;
            match unsafe { VIPS.get(&vk) } {
                Some(m) => *m,
                None => return (PASS, Reason::PASS_NOT_VIP),
            }
        }
    };
    let flow = FlowKey {
        src: v4_addr(ip.src_addr),
        dst: vk.addr,
        sport_be: u16::from_ne_bytes(sport),
        dport_be: u16::from_ne_bytes(dport),
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
        vip_id: meta.vip_id,
    };
    balance(ctx, eth, &meta, &flow)
}

/// Fragments and truncated L4 headers: dropped when addressed to a VIP address, else passed.
#[inline(always)]
fn verdict_without_ports(dst: [u8; 4], proto: u8, drop_reason: Reason) -> (u32, Reason) {
    let key = VipAddrKey {
        addr: v4_addr(dst),
        proto,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    if unsafe { VIP_ADDRS.get(&key) }.is_some() {
        (DROP, drop_reason)
    } else {
        (PASS, Reason::PASS_NOT_VIP)
    }
}

#[inline(always)]
fn v4_addr(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

#[inline(always)]
fn balance(ctx: &XdpContext, eth: *mut EthHdr, meta: &VipMeta, flow: &FlowKey) -> (u32, Reason) {
    let len = frame_len(ctx);
    let Some(vstats) = counters::vip(meta.vip_id) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    vstats.packets += 1;
    vstats.bytes += len;
    let Some(svc) = SERVICES.get(meta.service) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    let mut hashed = *flow;
    mask_for_hash(&mut hashed, svc.hash_mode);
    // PER_SESSION tracking keys the table by the affinity fields, so a session shares one
    // entry; PER_CONNECTION (default) keys it by the 5-tuple.
    let conn_key = if svc.flags & service_flags::PER_SESSION != 0 {
        &hashed
    } else {
        flow
    };
    let now = unsafe { bpf_ktime_get_ns() };

    if let Some(entry) = CONNS.get_ptr_mut(conn_key) {
        let entry = unsafe { &mut *entry };
        let idle_ns = svc.idle_timeout_s as u64 * 1_000_000_000;
        if now.wrapping_sub(entry.last_seen_ns) <= idle_ns {
            if let Some(be) = BACKENDS.get(entry.backend) {
                if keeps_flow(be, entry.generation, svc, flow.proto) {
                    vstats.conn_hits += 1;
                    if now.wrapping_sub(entry.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                        entry.last_seen_ns = now;
                    }
                    counters::backend(entry.backend, len, false);
                    return rewrite(eth, be);
                }
            }
        }
    }
    vstats.conn_misses += 1;

    let Some(settings) = SETTINGS.get(0) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    let ring = settings.ring_size;
    if ring == 0 {
        return (ABORT, Reason::ABORT_INTERNAL);
    }
    let slot = (meta.service * 2 + (svc.active & 1)) * ring + flow_hash(&hashed) % ring;
    let id = match MAGLEV.get(slot) {
        Some(id) => *id,
        None => return (ABORT, Reason::ABORT_INTERNAL),
    };
    let be = if id == NO_BACKEND {
        None
    } else {
        BACKENDS.get(id)
    };
    let Some(be) = be.filter(|b| b.flags & backend_flags::IN_USE != 0) else {
        vstats.no_backend += 1;
        return (DROP, Reason::DROP_NO_BACKEND);
    };
    let entry = ConnEntry {
        backend: id,
        generation: be.generation,
        last_seen_ns: now,
    };
    // A failed insert (only possible under memory pressure) still forwards this packet;
    // the next one is hashed again to the same backend.
    let _ = CONNS.insert(conn_key, &entry, 0);
    vstats.new_flows += 1;
    counters::backend(id, len, true);
    rewrite(eth, be)
}

/// Whether a flow pinned to `be` stays there (SEMANTICS: connection persistence).
#[inline(always)]
fn keeps_flow(be: &Backend, generation: u32, svc: &ServiceMeta, proto: u8) -> bool {
    let f = be.flags;
    if f & backend_flags::IN_USE == 0 || be.generation != generation || f & backend_flags::EVICT != 0
    {
        return false;
    }
    if f & backend_flags::HEALTHY != 0 {
        return true;
    }
    let persist = if proto == PROTO_TCP {
        service_flags::PERSIST_TCP
    } else {
        service_flags::PERSIST_UDP
    };
    svc.flags & persist != 0
}

/// L2 direct server return: the frame goes back out of the interface it came in on, to the
/// backend's MAC, from ours (the destination the client's frame was addressed to). The IP
/// header is untouched, so the backend sees the client and answers it directly.
#[inline(always)]
fn rewrite(eth: *mut EthHdr, be: &Backend) -> (u32, Reason) {
    unsafe {
        (*eth).src_addr = (*eth).dst_addr;
        (*eth).dst_addr = be.mac;
    }
    (TX, Reason::TX)
}
