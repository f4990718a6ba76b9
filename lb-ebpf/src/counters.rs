//! Per-CPU counters. Per-CPU arrays need no atomics: each CPU writes only its own copy and
//! userspace sums them.

use crate::maps::{BACKEND_STATS, PASS_COUNT, REASONS, VIP_STATS};
use lb_common::{BackendStats, Reason, VipStats};

#[inline(always)]
pub fn reason(r: Reason) {
    if let Some(p) = REASONS.get_ptr_mut(r.0) {
        // SAFETY: the pointer is to this CPU's element of a per-CPU array.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn pass_count() {
    if let Some(p) = PASS_COUNT.get_ptr_mut(0) {
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn vip(vip_id: u32) -> Option<&'static mut VipStats> {
    // SAFETY: per-CPU element, valid for the program's run.
    VIP_STATS.get_ptr_mut(vip_id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn backend(id: u32, bytes: u64, new_flow: bool) {
    if let Some(p) = BACKEND_STATS.get_ptr_mut(id) {
        let s: &mut BackendStats = unsafe { &mut *p };
        s.packets += 1;
        s.bytes += bytes;
        if new_flow {
            s.new_flows += 1;
        }
    }
}
