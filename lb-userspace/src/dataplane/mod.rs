//! The L4 dataplane from userspace: loading and pinning the XDP program (`loader`), turning
//! a desired state into map contents (`programmer`), reading counters (`stats`), running the
//! program on fixture frames (`testrun`) and finding backend MACs (`neighbor`).

pub mod alloc;
pub mod explain;
pub mod flows;
pub mod iface;
pub mod linger;
pub mod loader;
pub mod maps;
pub mod neighbor;
pub mod plan;
pub mod programmer;
pub mod stats;
pub mod testrun;
pub mod xdp_log;

/// The eBPF object built by build.rs from `lb-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
