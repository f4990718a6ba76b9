//! The decapsulation program's maps; names match `lb_common::decap::names`. All small: a
//! backend pays a few kilobytes for them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use lb_common::decap::{AddrKey, Reason, Settings, MAX_ADDRS};

/// Outer destination addresses to decapsulate for (this interface's addresses, or the
/// `--address` list of `lb decap`).
#[map]
pub static DECAP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(MAX_ADDRS, 0);

/// `DECAP_SETTINGS[0]`: the GUE port.
#[map]
pub static DECAP_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Packets by verdict (`lb_common::decap::Reason`).
#[map]
pub static DECAP_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);
