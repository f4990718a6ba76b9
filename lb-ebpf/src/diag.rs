//! Rare-path diagnostics through aya-log: drops, aborts and failed connection-table inserts
//! are logged with the interface and the frame's length. Off unless `lb run --xdp-log`
//! (the loader sets aya-log's `AYA_LOG_LEVEL` global to 0, so each macro is one load of
//! that global and a branch); the verdict reason is checked first, so forwarded and passed
//! packets pay one compare. Counters stay the record of every event: logs are a sample for
//! a person (the ring buffer drops records when it is full).

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{info, warn};
use lb_common::Reason;

/// Logs the packet's verdict when it is a drop or an abort.
#[inline(always)]
pub fn verdict(ctx: &XdpContext, r: Reason) {
    if r.0 < Reason::DROP_FRAGMENT.0 || r.0 > Reason::ABORT_INTERNAL.0 {
        return;
    }
    let (ifindex, len) = (ctx.ingress_ifindex() as u32, frame_len(ctx));
    match r {
        Reason::DROP_FRAGMENT => info!(
            ctx,
            "drop_fragment: IP fragment to a VIP address (if {}, {} bytes)", ifindex, len
        ),
        Reason::DROP_SHORT_L4 => info!(
            ctx,
            "drop_short_l4: truncated TCP/UDP header to a VIP address (if {}, {} bytes)",
            ifindex,
            len
        ),
        Reason::DROP_NO_BACKEND => info!(
            ctx,
            "drop_no_backend: the VIP's service has no usable backend (if {}, {} bytes)",
            ifindex,
            len
        ),
        _ => warn!(
            ctx,
            "abort_internal: a map disagrees with the configuration (if {}, {} bytes)",
            ifindex,
            len
        ),
    }
}

/// Logs a connection-table insert that failed (memory pressure); the packet still goes on.
/// The table code has no context at hand: aya-log's macros only name the context (its
/// records go to one ring buffer), so a unit stands in.
#[inline(always)]
pub fn insert_failed() {
    warn!(
        &(),
        "conn_insert_failed: a connection-table insert failed (memory pressure)"
    );
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u32 {
    (ctx.data_end() - ctx.data()) as u32
}
