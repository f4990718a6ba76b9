//! `lb-decap`: the backend-side decapsulation program (`lb decap`), a separate eBPF object
//! from the balancer so a backend carries only its three small maps, not the balancer's
//! connection tables. It strips the IPIP or GUE encapsulation the balancer adds
//! (`lb_common::encap`) from packets addressed to this host and passes the inner packet,
//! byte for byte as the client sent it, to the stack. Everything else passes untouched.
//!
//! Module map: `decide` is the per-packet decision and the strip, `maps` its maps; header
//! access is the balancer's own `parse` module (one bounds-checked accessor for both).
#![no_std]
#![no_main]

mod decide;
mod maps;
// Shared with the balancer (`lb-ebpf/src/main.rs`), compiled into this object too.
#[path = "../parse.rs"]
#[allow(dead_code)] // `frame_len` serves the balancer's byte counters only.
mod parse;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Every outcome is a (verdict, reason) pair; the reason is counted per CPU.
/// `inline(always)` reaches the body the `xdp` macro wraps, so it is not a BPF-to-BPF call.
#[xdp]
#[inline(always)]
pub fn lb_decap(ctx: XdpContext) -> u32 {
    let (action, reason) = decide::process(&ctx);
    if let Some(p) = maps::DECAP_COUNTS.get_ptr_mut(reason.0) {
        // SAFETY: the pointer is to this CPU's element of a per-CPU array.
        unsafe { *p += 1 };
    }
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
