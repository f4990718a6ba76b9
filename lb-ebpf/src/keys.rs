//! Map keys built with word stores. Zero-filling a `[u8; 16]` address (alignment 1) compiles
//! in BPF to calls of a byte-loop `memset`, and copying one to a `memmove` loop; on the fast
//! path those calls cost more than the hash lookup they feed. Every key type here is
//! 4-aligned with its addresses at 4-aligned offsets, so whole-word stores are exact.

use core::{mem::MaybeUninit, ptr::addr_of_mut};
use lb_common::{FlowKey, FlowKeyV4, VipAddrKey, VipKey, FAMILY_V4, FAMILY_V6, KEY_FLOW};

/// Writes an IPv4 address into a 16-byte address field: first word, then three zero words.
///
/// # Safety
/// `field` must be valid for writes and 4-aligned.
#[inline(always)]
unsafe fn put_v4(field: *mut [u8; 16], a: [u8; 4]) {
    let w = field as *mut u32;
    // SAFETY: the caller guarantees a writable, 4-aligned 16-byte field.
    unsafe {
        w.write(u32::from_ne_bytes(a));
        w.add(1).write(0);
        w.add(2).write(0);
        w.add(3).write(0);
    }
}

/// Copies an IPv6 address out of the frame with eight 16-bit moves.
///
/// # Safety
/// `field` must be valid for writes and 4-aligned; `a` must point at 16 readable bytes of
/// the frame, 2-aligned: IPv6 addresses sit at offsets 22 and 38 (plus multiples of 8) from
/// the frame start, which XDP keeps at least 2-aligned. Word loads would be misaligned and
/// byte loads cost four times the instructions.
#[inline(always)]
unsafe fn put_v6(field: *mut [u8; 16], a: *const [u8; 16]) {
    let (t, f) = (field as *mut u16, a as *const u16);
    // SAFETY: the caller guarantees both fields; 2-aligned 16-bit accesses.
    unsafe {
        t.write(f.read());
        t.add(1).write(f.add(1).read());
        t.add(2).write(f.add(2).read());
        t.add(3).write(f.add(3).read());
        t.add(4).write(f.add(4).read());
        t.add(5).write(f.add(5).read());
        t.add(6).write(f.add(6).read());
        t.add(7).write(f.add(7).read());
    }
}

/// Copies a 16-byte address field word by word.
///
/// # Safety
/// Both fields must be valid and 4-aligned.
#[inline(always)]
unsafe fn copy_addr(to: *mut [u8; 16], from: *const [u8; 16]) {
    let (t, f) = (to as *mut u32, from as *const u32);
    // SAFETY: the caller guarantees valid, 4-aligned 16-byte fields.
    unsafe {
        t.write(f.read());
        t.add(1).write(f.add(1).read());
        t.add(2).write(f.add(2).read());
        t.add(3).write(f.add(3).read());
    }
}

/// An IPv4 address from the frame as one word (network byte order in memory), with two
/// 16-bit loads: addresses sit at 2-aligned offsets (26 and 30 from the frame start, which
/// XDP keeps at least 2-aligned), and a `[u8; 4]` read compiles to four byte loads, shifts
/// and ors.
///
/// # Safety
/// `a` must point at 4 readable, 2-aligned bytes.
#[inline(always)]
pub unsafe fn addr4(a: *const [u8; 4]) -> [u8; 4] {
    let h = a as *const u16;
    // SAFETY: as the caller guarantees.
    let (lo, hi) = unsafe { (h.read(), h.add(1).read()) };
    let (lo, hi) = (lo.to_ne_bytes(), hi.to_ne_bytes());
    [lo[0], lo[1], hi[0], hi[1]]
}

/// The raw 5-tuple key of an IPv4 flow in the IPv4 tables' layout (ports as on the wire).
#[inline(always)]
pub fn v4_conn(src: [u8; 4], dst: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> FlowKeyV4 {
    let mut k = MaybeUninit::<FlowKeyV4>::uninit();
    let p = k.as_mut_ptr();
    // SAFETY: every field of the repr(C) FlowKeyV4 (4-aligned, addresses at offsets 0 and
    // 4) is written before `assume_init`.
    unsafe {
        (addr_of_mut!((*p).src) as *mut u32).write(u32::from_ne_bytes(src));
        (addr_of_mut!((*p).dst) as *mut u32).write(u32::from_ne_bytes(dst));
        addr_of_mut!((*p).sport_be).write(u16::from_ne_bytes(sport));
        addr_of_mut!((*p).dport_be).write(u16::from_ne_bytes(dport));
        // Protocol and padding as one word (offset 12): a `[u8; 3]` store compiles to a
        // call of `memset`.
        (addr_of_mut!((*p).proto) as *mut u32).write(u32::from_ne_bytes([proto, 0, 0, 0]));
        k.assume_init()
    }
}

/// The [`FlowKey`] an IPv4 table key stands for (the flow hash's input).
#[inline(always)]
pub fn widen_v4(k: &FlowKeyV4) -> FlowKey {
    let mut f = MaybeUninit::<FlowKey>::uninit();
    let p = f.as_mut_ptr();
    // SAFETY: every field of the repr(C) FlowKey (4-aligned, addresses at offsets 0 and 16)
    // is written before `assume_init`; `k`'s addresses are 4-aligned words.
    unsafe {
        let src = (k.src.as_ptr() as *const u32).read();
        let dst = (k.dst.as_ptr() as *const u32).read();
        put_v4(addr_of_mut!((*p).src), src.to_ne_bytes());
        put_v4(addr_of_mut!((*p).dst), dst.to_ne_bytes());
        addr_of_mut!((*p).sport_be).write(k.sport_be);
        addr_of_mut!((*p).dport_be).write(k.dport_be);
        addr_of_mut!((*p).proto).write(k.proto);
        addr_of_mut!((*p).family).write(FAMILY_V4);
        addr_of_mut!((*p).kind).write(KEY_FLOW);
        addr_of_mut!((*p)._pad).write(0);
        addr_of_mut!((*p).vip_id).write(0);
        f.assume_init()
    }
}

/// The raw 5-tuple key of an IPv6 flow; `src` and `dst` point at the header's addresses.
///
/// # Safety
/// As [`put_v6`]: 16 readable, 2-aligned bytes at each of `src` and `dst`.
#[inline(always)]
pub unsafe fn v6_flow(
    src: *const [u8; 16],
    dst: *const [u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> FlowKey {
    let mut k = MaybeUninit::<FlowKey>::uninit();
    let p = k.as_mut_ptr();
    // SAFETY: every field written before `assume_init`; addresses as the caller guarantees.
    unsafe {
        put_v6(addr_of_mut!((*p).src), src);
        put_v6(addr_of_mut!((*p).dst), dst);
        addr_of_mut!((*p).sport_be).write(u16::from_ne_bytes(sport));
        addr_of_mut!((*p).dport_be).write(u16::from_ne_bytes(dport));
        addr_of_mut!((*p).proto).write(proto);
        addr_of_mut!((*p).family).write(FAMILY_V6);
        addr_of_mut!((*p).kind).write(KEY_FLOW);
        addr_of_mut!((*p)._pad).write(0);
        addr_of_mut!((*p).vip_id).write(0);
        k.assume_init()
    }
}

/// The `VIPS` key of a flow's destination, with `port_be` as given.
#[inline(always)]
pub fn vip_key(flow: &FlowKey, port_be: u16) -> VipKey {
    let mut k = MaybeUninit::<VipKey>::uninit();
    let p = k.as_mut_ptr();
    // SAFETY: all fields written; VipKey is 4-aligned with its address at offset 0.
    unsafe {
        copy_addr(addr_of_mut!((*p).addr), &flow.dst);
        addr_of_mut!((*p).port_be).write(port_be);
        addr_of_mut!((*p).proto).write(flow.proto);
        addr_of_mut!((*p).family).write(flow.family);
        k.assume_init()
    }
}

/// The VIP-address-set key of an IPv4 address and protocol.
#[inline(always)]
pub fn vip_addr_key(addr: [u8; 4], proto: u8) -> VipAddrKey {
    let mut k = MaybeUninit::<VipAddrKey>::uninit();
    let p = k.as_mut_ptr();
    // SAFETY: all fields written; VipAddrKey is 4-aligned with its address at offset 0.
    unsafe {
        put_v4(addr_of_mut!((*p).addr), addr);
        addr_of_mut!((*p).proto).write(proto);
        addr_of_mut!((*p).family).write(FAMILY_V4);
        addr_of_mut!((*p)._pad).write([0; 2]);
        k.assume_init()
    }
}

/// The VIP-address-set key of an IPv6 address (in the frame) and protocol.
///
/// # Safety
/// As [`put_v6`]: 16 readable, 2-aligned bytes at `addr`.
#[inline(always)]
pub unsafe fn vip_addr_key_v6(addr: *const [u8; 16], proto: u8) -> VipAddrKey {
    let mut k = MaybeUninit::<VipAddrKey>::uninit();
    let p = k.as_mut_ptr();
    // SAFETY: all fields written; the address as the caller guarantees.
    unsafe {
        put_v6(addr_of_mut!((*p).addr), addr);
        addr_of_mut!((*p).proto).write(proto);
        addr_of_mut!((*p).family).write(FAMILY_V6);
        addr_of_mut!((*p)._pad).write([0; 2]);
        k.assume_init()
    }
}
