//! The L4 dataplane from userspace: loading and pinning the XDP program (`loader`), turning
//! a desired state into map contents (`programmer`), reading counters (`stats`), running the
//! program on fixture frames (`testrun`), finding backend MACs (`neighbor`), and the
//! backend-side decapsulation program of `lb decap` (`decap`).

pub mod alloc;
pub mod conn_tables;
pub mod decap;
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
pub mod vip_addr_set;
pub mod xdp_log;

/// The eBPF object built by build.rs from `lb-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// The backend-side decapsulation program (`lb decap`), built from `lb-ebpf`'s second bin.
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));
