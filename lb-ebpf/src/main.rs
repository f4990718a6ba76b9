//! The L4 passthrough dataplane: an XDP program that forwards TCP/UDP packets addressed to a
//! VIP to a backend chosen by Maglev consistent hashing, keeping established flows on their
//! backend through a connection table, by L2 direct server return (only the MACs change).
//!
//! Module map: `parse` reads headers with bounds checks, `maps` declares every map,
//! `forward` is the per-packet decision (`ipv6` its IPv6 half), `encap` sends to routed
//! backends (IPIP, GUE) and `icmp_too_big` answers packets too big once encapsulated, `conntrack` the connection
//! tables, `counters` bumps per-CPU statistics, `diag` logs rare verdicts through aya-log
//! when switched on.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod diag;
mod encap;
mod forward;
mod icmp_too_big;
mod ipv6;
mod keys;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// The balancer. Every outcome is a (verdict, reason) pair; the reason is counted.
/// `inline(always)` reaches the body the `xdp` macro wraps: with IPv6 the body outgrew
/// LLVM's inlining threshold and became a BPF-to-BPF call on every packet.
#[xdp]
#[inline(always)]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let (action, reason) = forward::process(&ctx);
    counters::reason(reason);
    diag::verdict(&ctx, reason);
    action
}

/// A program that only passes: the cost floor for benchmarks, and the program a veth peer
/// needs so that frames sent with XDP_TX are not dropped on arrival (veth delivers XDP_TX
/// frames to the peer's XDP path; with no program there they are discarded).
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    counters::pass_count();
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
