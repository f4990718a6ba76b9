//! Header access. `ptr_at` is the one bounds-checked accessor: nothing else computes
//! packet pointers, so the verifier's bounds proof lives in one place.

use aya_ebpf::programs::XdpContext;
use core::mem;

/// A pointer to a `T` at `offset` bytes into the frame, if the whole `T` is inside it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Frame length in bytes (for byte counters).
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    (ctx.data_end() - ctx.data()) as u64
}
