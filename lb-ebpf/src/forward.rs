//! The per-packet decision. Order of checks, each with its documented verdict:
//! 1. Ethernet, then IPv4 or IPv6 (`ipv6` walks extension headers); other ethertypes pass;
//! 2. IPv4 sanity (version, IHL ≥ 5, total length ≥ header): failures pass, so the kernel
//!    applies its own validation exactly as if the balancer were not there;
//! 3. TCP or UDP only;
//! 4. VIP address check (one small lookup) before any connection-table access: traffic not
//!    for a VIP address passes; fragments and truncated L4 headers to a VIP address are
//!    dropped (their ports cannot be read, so no backend can be chosen);
//! 5. fast path: the connection tables by raw 5-tuple (established PER_CONNECTION flows);
//! 6. VIP lookup on (address, port, protocol), then (address, 0, protocol);
//! 7. PER_SESSION entry, else Maglev (new entries go to the young table, `conntrack`);
//!    rewrite MACs; XDP_TX.

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    programs::XdpContext,
};
use lb_common::{
    backend_flags, encap::forwarding, flow_hash::flow_hash, flow_hash::mask_for_hash,
    service_flags, vip_addr_set, Backend, ConnEntry, FlowKey, Reason, ServiceMeta, VipAddrKey,
    VipMeta, KEY_SESSION, NO_BACKEND, PROTO_ICMP, PROTO_TCP, PROTO_UDP, VIP_ADDR_ALL_PORTS,
};
use network_types::{
    eth::{EthHdr, EtherType},
    icmp::Icmpv4Hdr,
    ip::Ipv4Hdr,
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    conntrack::{self, ConnKey},
    counters,
    keys::{addr4, v4_conn, vip_addr_key, vip_key},
    maps::{BACKENDS, CLOCK, MAGLEV, SERVICES, SETTINGS, VIPS, VIP_ADDR_SET, VIP_STATE},
    parse::{frame_len, ptr_at},
};

pub const PASS: u32 = xdp_action::XDP_PASS;
pub const DROP: u32 = xdp_action::XDP_DROP;
pub const TX: u32 = xdp_action::XDP_TX;
const REDIRECT: u32 = xdp_action::XDP_REDIRECT;
const ABORT: u32 = xdp_action::XDP_ABORTED;

/// IPv4 "more fragments" flag and fragment offset (RFC 791 §3.1).
const IP_MF_OFFSET_MASK: u16 = 0x3fff;
/// Offset of the flags byte in the TCP header (RFC 9293 §3.1) and its SYN bit.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;

#[inline(always)]
pub fn process(ctx: &XdpContext) -> (u32, Reason) {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return (PASS, Reason::PASS_SHORT_ETH);
    };
    // SAFETY (all header reads below): `ptr_at` checked the whole header is in the frame.
    let ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ipv4 as u16 {
        return ipv4(ctx, eth);
    }
    if ether_type == EtherType::Ipv6 as u16 {
        return crate::ipv6::process(ctx, eth);
    }
    (PASS, Reason::PASS_NOT_IP)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, eth: *mut EthHdr) -> (u32, Reason) {
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return (PASS, Reason::PASS_SHORT_IP);
    };
    // SAFETY (header reads): bounds checked by `ptr_at`.
    let ip = unsafe { &*ip };
    let version = ip.vihl >> 4;
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    if version != 4 || ihl < Ipv4Hdr::LEN || (u16::from_be_bytes(ip.tot_len) as usize) < ihl {
        return (PASS, Reason::PASS_BAD_IP);
    }
    let proto = ip.proto;
    let fragment = u16::from_be_bytes(ip.frags) & IP_MF_OFFSET_MASK != 0;
    if proto == PROTO_ICMP && !fragment {
        return icmp_frag_needed(ctx, eth, EthHdr::LEN + ihl, ip.dst_addr);
    }
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return (PASS, Reason::PASS_NOT_TCP_UDP);
    }
    // SAFETY: the addresses are in the bounds-checked header, 2-aligned (`addr4`).
    let (src, dst) = unsafe { (addr4(&ip.src_addr), addr4(&ip.dst_addr)) };
    // VIP check first: one small lookup settles all traffic not for a VIP address (most of a
    // host's traffic) before any connection-table access.
    let Some(addr_flags) = vip_addr_flags(vip_addr_key(dst, proto)) else {
        return (PASS, Reason::PASS_NOT_VIP);
    };
    if fragment {
        // Its ports cannot be read (or are in another fragment): no backend can be chosen.
        return (DROP, Reason::DROP_FRAGMENT);
    }
    if ihl > Ipv4Hdr::LEN {
        // Options are skipped by IHL and the packet is forwarded unchanged; counted so an
        // operator can see them.
        counters::reason(Reason::SEEN_IP_OPTIONS);
    }
    let Some((sport, dport, mid_flow)) = l4_ports(ctx, EthHdr::LEN + ihl, proto) else {
        return (DROP, Reason::DROP_SHORT_L4);
    };
    forward_flow(
        ctx,
        eth,
        &v4_conn(src, dst, sport, dport, proto),
        addr_flags,
        mid_flow,
    )
}

/// Source and destination ports (as on the wire) of the TCP or UDP header at `l4`, and
/// whether the packet continues a flow (TCP without SYN, for the mid-flow miss counter).
/// Both headers start with the ports; the whole header is required. `None`: truncated.
#[inline(always)]
pub fn l4_ports(ctx: &XdpContext, l4: usize, proto: u8) -> Option<([u8; 2], [u8; 2], bool)> {
    // SAFETY (header reads): bounds checked by `ptr_at`.
    if proto == PROTO_TCP {
        ptr_at::<TcpHdr>(ctx, l4).map(|t| unsafe {
            let flags = (t as *const u8).add(TCP_FLAGS_OFFSET).read();
            ((*t).source, (*t).dest, flags & TCP_SYN == 0)
        })
    } else {
        ptr_at::<UdpHdr>(ctx, l4).map(|u| unsafe { ((*u).src, (*u).dst, false) })
    }
}

/// A TCP/UDP packet to a VIP address, either family (`key` of its family's tables): the
/// connection tables, then the rule.
#[inline(always)]
pub fn forward_flow<K: ConnKey>(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    key: &K,
    addr_flags: u32,
    mid_flow: bool,
) -> (u32, Reason) {
    let now = now_ns();
    let len = frame_len(ctx);
    // Fast path: an established PER_CONNECTION flow finds its entry from its own headers;
    // the entry names its VIP, whose state says whether it still stands. Anything else
    // falls through to the VIP lookup (exact port, then the all-ports rule where one exists).
    let out = Out { ctx, eth, key, now };
    if let Some(verdict) = established(&out, len, true) {
        return verdict;
    }
    let flow = key.flow();
    let Some(meta) = lookup_vip(&flow, addr_flags) else {
        return (PASS, Reason::PASS_NOT_VIP);
    };
    balance(&out, flow, &meta, len, Create::Yes { mid_flow })
}

/// The forwarding rule of a flow: exact port first, then the all-ports rule where the
/// address has one.
#[inline(always)]
fn lookup_vip(flow: &FlowKey, addr_flags: u32) -> Option<VipMeta> {
    // SAFETY: map values are plain data; copied out at once.
    if let Some(m) = unsafe { VIPS.get(vip_key(flow, flow.dport_be)) } {
        return Some(*m);
    }
    if addr_flags & VIP_ADDR_ALL_PORTS == 0 {
        return None;
    }
    unsafe { VIPS.get(vip_key(flow, 0)) }.copied()
}

/// ICMP "fragmentation needed" (type 3, code 4; RFC 792, RFC 1191) about a VIP flow goes
/// to that flow's backend: the backend sent the too-big packet (direct server return), so
/// only it can lower its path MTU. The quoted header is the backend's reply (VIP → client);
/// reversed, it is the client's flow, looked up like any packet of that flow. Other ICMP,
/// or a quote that is not a VIP flow, passes untouched. No connection entry is created.
#[inline(always)]
fn icmp_frag_needed(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    off: usize,
    outer_dst: [u8; 4],
) -> (u32, Reason) {
    let not_ours = (PASS, Reason::PASS_NOT_TCP_UDP);
    let Some(icmp) = ptr_at::<Icmpv4Hdr>(ctx, off) else {
        return not_ours;
    };
    // SAFETY (header reads): bounds checked by `ptr_at`.
    let (ty, code) = unsafe { ((*icmp).type_, (*icmp).code) };
    if ty != 3 || code != 4 {
        return not_ours;
    }
    let inner_off = off + Icmpv4Hdr::LEN;
    let Some(inner) = ptr_at::<Ipv4Hdr>(ctx, inner_off) else {
        return not_ours;
    };
    let inner = unsafe { &*inner };
    let ihl = ((inner.vihl & 0x0f) as usize) * 4;
    if inner.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || inner.src_addr != outer_dst {
        return not_ours;
    }
    if inner.proto != PROTO_TCP && inner.proto != PROTO_UDP {
        return not_ours;
    }
    // RFC 792 quotes at least the first 8 bytes of the datagram: both ports are there.
    let Some(ports) = ptr_at::<[u8; 4]>(ctx, inner_off + ihl) else {
        return not_ours;
    };
    let ports = unsafe { *ports };
    let key = v4_conn(
        inner.dst_addr,
        inner.src_addr,
        [ports[2], ports[3]],
        [ports[0], ports[1]],
        inner.proto,
    );
    let Some(flags) = vip_addr_flags(vip_addr_key(inner.src_addr, inner.proto)) else {
        return not_ours;
    };
    icmp_error_to_backend(ctx, eth, &key, flags)
}

/// An ICMP error about the VIP flow `key` (the quoted reply, reversed) goes where the
/// flow's packets go, without creating or refreshing an entry; `flags` are the flags of
/// the flow's VIP address. Anything that is not a VIP flow passes untouched.
#[inline(always)]
pub fn icmp_error_to_backend<K: ConnKey>(
    ctx: &XdpContext,
    eth: *mut EthHdr,
    key: &K,
    flags: u32,
) -> (u32, Reason) {
    let now = now_ns();
    let len = frame_len(ctx);
    let out = Out { ctx, eth, key, now };
    let verdict = match established(&out, len, false) {
        Some(v) => v,
        None => {
            let flow = key.flow();
            let Some(meta) = lookup_vip(&flow, flags) else {
                return (PASS, Reason::PASS_NOT_TCP_UDP);
            };
            balance(&out, flow, &meta, len, Create::No)
        }
    };
    if verdict.0 == TX || verdict.0 == REDIRECT {
        counters::reason(Reason::SEEN_ICMP_TO_BACKEND);
    }
    verdict
}

/// The connection-table fast path for PER_CONNECTION flows; `None` sends the packet down the
/// full path (no entry, stale entry, or a service now tracking sessions). `is_flow_packet`
/// is false for ICMP errors about the flow, which neither refresh nor promote its entry.
#[inline(always)]
fn established<K: ConnKey>(out: &Out<K>, len: u64, is_flow_packet: bool) -> Option<(u32, Reason)> {
    let (key, now) = (out.key, out.now);
    let proto = key.proto();
    let mut buf = MaybeUninit::uninit();
    let found = conntrack::find(key, &mut buf, |e| {
        let state = VIP_STATE.get(e.vip_id)?;
        if state.generation != e.vip_generation {
            return None;
        }
        let svc = SERVICES.get(state.service)?;
        if svc.flags & service_flags::PER_SESSION != 0 {
            return None;
        }
        Some((usable_entry(e, svc, proto, now)?, svc))
    })?;
    let vstats = counters::vip(found.entry.vip_id)?;
    vstats.packets += 1;
    vstats.bytes += len;
    vstats.conn_hits += 1;
    counters::backend(found.entry.backend, len, false);
    let (be, svc) = found.backend;
    let id = found.entry.backend;
    if is_flow_packet {
        conntrack::touch(key, found, now);
    }
    Some(out.transmit(be, id, svc))
}

/// The backend of a connection-table entry, if the flow may stay there: not idle past the
/// service's timeout, and the backend keeps the flow (see `keeps_flow`).
#[inline(always)]
fn usable_entry(
    entry: &ConnEntry,
    svc: &ServiceMeta,
    proto: u8,
    now: u64,
) -> Option<&'static Backend> {
    let idle_ns = svc.idle_timeout_s as u64 * 1_000_000_000;
    if now.wrapping_sub(entry.last_seen_ns) > idle_ns {
        return None;
    }
    let be = BACKENDS.get(entry.backend)?;
    if !keeps_flow(be, entry.generation, svc, proto) {
        return None;
    }
    Some(be)
}

/// Flags of the VIP address and protocol of `key`, or `None` when no VIP uses them: a
/// probe of the array-based address set from the address's home slot, ended by an empty
/// slot (`lb_common::vip_addr_set`; the agent places addresses, `dataplane::vip_addr_set`).
#[inline(always)]
pub fn vip_addr_flags(key: VipAddrKey) -> Option<u32> {
    // `VipAddrKey` and `VipAddrSlot` are 4-aligned with the address at offset 0.
    let kw = key.addr.as_ptr() as *const u32;
    // SAFETY: 16 readable, 4-aligned bytes.
    let w = unsafe {
        [
            kw.read(),
            kw.add(1).read(),
            kw.add(2).read(),
            kw.add(3).read(),
        ]
    };
    let home = vip_addr_set::home(w);
    for i in 0..vip_addr_set::PROBES {
        let s = VIP_ADDR_SET.get((home + i) & (vip_addr_set::SLOTS - 1))?;
        if s.family == 0 {
            return None;
        }
        let sw = s.addr.as_ptr() as *const u32;
        // SAFETY: as above, in the map value.
        let same = unsafe {
            (sw.read() ^ w[0])
                | (sw.add(1).read() ^ w[1])
                | (sw.add(2).read() ^ w[2])
                | (sw.add(3).read() ^ w[3])
                == 0
        };
        if same && s.family == key.family {
            let f = if key.proto == PROTO_TCP { s.tcp } else { s.udp };
            return if f == 0 { None } else { Some(f as u32) };
        }
    }
    None
}

/// The coarse monotonic clock: tick resolution (a few ms) is plenty for idle timeouts
/// counted in seconds. It only moves when the tick advances `jiffies`, so each CPU keeps
/// its last reading with the `jiffies` it was taken at and reuses it within the same tick:
/// `bpf_jiffies64` is inlined by the verifier into one load, where the coarse clock is a
/// helper call (about 3 ns a packet here).
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY (both helpers): no preconditions.
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's element of a per-CPU array, valid for the program's run.
    let c = unsafe { &mut *c };
    if c[0] == j && c[1] != 0 {
        return c[1];
    }
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    *c = [j, ns];
    ns
}

/// Whether the full path records its choice: yes for packets of the flow (`mid_flow`: a TCP
/// packet without SYN, counted when it finds no entry), no for ICMP errors about it, which
/// are not flows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes { mid_flow: bool },
    No,
}

/// The full path: a packet of `flow` (the [`FlowKey`] of `out.key`, masked here in place
/// for the hash) for a VIP that had no usable fast-path entry.
#[inline(always)]
fn balance<K: ConnKey>(
    out: &Out<K>,
    mut flow: FlowKey,
    meta: &VipMeta,
    len: u64,
    create: Create,
) -> (u32, Reason) {
    let now = out.now;
    let Some(vstats) = counters::vip(meta.vip_id) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    vstats.packets += 1;
    vstats.bytes += len;
    let Some(svc) = SERVICES.get(meta.service) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    let proto = out.key.proto();
    let hashed = &mut flow;
    mask_for_hash(hashed, svc.hash_mode);
    // PER_SESSION tracking keys the table by the affinity fields, so a session shares one
    // entry; PER_CONNECTION (default) keys it by the raw 5-tuple (the fast path's key).
    let per_session = svc.flags & service_flags::PER_SESSION != 0;
    if per_session {
        // The affinity fields are the session: mark the key and scope it to its VIP.
        hashed.kind = KEY_SESSION;
        hashed.vip_id = meta.vip_id;
    }
    let hashed = &*hashed;
    if per_session {
        let mut buf = MaybeUninit::uninit();
        let found = conntrack::find(hashed, &mut buf, |e| {
            if e.vip_id != meta.vip_id || e.vip_generation != meta.generation {
                return None;
            }
            usable_entry(e, svc, proto, now)
        });
        if let Some(found) = found {
            vstats.conn_hits += 1;
            counters::backend(found.entry.backend, len, false);
            let (be, id) = (found.backend, found.entry.backend);
            if create != Create::No {
                conntrack::touch(hashed, found, now);
            }
            return out.transmit(be, id, svc);
        }
    }
    vstats.conn_misses += 1;
    if create == (Create::Yes { mid_flow: true }) {
        counters::reason(Reason::CONN_MISS_MID_FLOW);
    }

    let Some(settings) = SETTINGS.get(0) else {
        return (ABORT, Reason::ABORT_INTERNAL);
    };
    let ring = settings.ring_size;
    if ring == 0 {
        return (ABORT, Reason::ABORT_INTERNAL);
    }
    let slot = (meta.service * 2 + (svc.active & 1)) * ring + flow_hash(hashed) % ring;
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
        vip_id: meta.vip_id,
        vip_generation: meta.generation,
        last_seen_ns: now,
    };
    let created = create != Create::No;
    if created {
        // A session's entry is keyed by its affinity fields (`FlowKey` tables, either
        // family); a flow's by its own key.
        if per_session {
            conntrack::insert_young(hashed, &entry);
        } else {
            conntrack::insert_young(out.key, &entry);
        }
        vstats.new_flows += 1;
    }
    counters::backend(id, len, created);
    out.transmit(be, id, svc)
}

/// Whether a flow pinned to `be` stays there (SEMANTICS: connection persistence).
#[inline(always)]
fn keeps_flow(be: &Backend, generation: u32, svc: &ServiceMeta, proto: u8) -> bool {
    let f = be.flags;
    if f & backend_flags::IN_USE == 0
        || be.generation != generation
        || f & backend_flags::EVICT != 0
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

/// Where a packet of the flow `key` leaves once its backend is chosen.
struct Out<'a, K> {
    ctx: &'a XdpContext,
    eth: *mut EthHdr,
    key: &'a K,
    /// The packet's clock reading (idle timeouts, the next-hop cache).
    now: u64,
}

impl<K: ConnKey> Out<'_, K> {
    /// Sends the packet to `be` the way its service says: L2 direct server return, or
    /// encapsulated toward a routed backend (`encap`).
    #[inline(always)]
    fn transmit(&self, be: &Backend, id: u32, svc: &ServiceMeta) -> (u32, Reason) {
        if svc.forwarding == forwarding::L2_DSR {
            return rewrite(self.eth, be);
        }
        let hashed = svc.forwarding == forwarding::GUE || be.family == lb_common::FAMILY_V6;
        let hash = if hashed { self.key.hash() } else { 0 };
        crate::encap::send(self.ctx, be, id, svc, hash, self.now)
    }
}

/// L2 direct server return: the frame goes back out of the interface it came in on, to the
/// backend's MAC, from ours (the destination the client's frame was addressed to). The IP
/// header is untouched, so the backend sees the client and answers it directly.
#[inline(always)]
fn rewrite(eth: *mut EthHdr, be: &Backend) -> (u32, Reason) {
    // Three 16-bit moves per MAC: EthHdr and `Backend::mac` (offset 16 of a 4-aligned value)
    // are 2-aligned, and a plain array assignment from map memory compiles to a call of a
    // byte-loop `memmove` in BPF.
    let e = eth as *mut u16;
    let m = be.mac.as_ptr() as *const u16;
    // SAFETY: `eth` covers the 14-byte Ethernet header (bounds-checked by the caller) and
    // `m` the 6-byte MAC; both 2-aligned.
    unsafe {
        e.add(3).write(e.read());
        e.add(4).write(e.add(1).read());
        e.add(5).write(e.add(2).read());
        e.write(m.read());
        e.add(1).write(m.add(1).read());
        e.add(2).write(m.add(2).read());
    }
    (TX, Reason::TX)
}
