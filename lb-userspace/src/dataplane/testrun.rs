//! `BPF_PROG_TEST_RUN` (bpf command 10): runs a loaded program on a frame in the kernel
//! and returns the verdict and the output frame. aya 0.14 has no public call for it, so this
//! is the raw syscall with the kernel's `bpf_attr.test` layout (include/uapi/linux/bpf.h).

use std::os::fd::{AsFd, AsRawFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// The outcome of one test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// XDP verdict (`XDP_PASS` = 2, `XDP_TX` = 3, ...).
    pub verdict: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Average nanoseconds per run reported by the kernel.
    pub duration_ns: u32,
}

/// `struct xdp_md` (the program's context), given to the kernel to set the receiving
/// interface: data and data_end are offsets into the frame, the rest ifindexes and queue.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Runs `prog` on `frame`, `repeat` times (the kernel reruns on the same buffer).
pub fn run(prog: impl AsFd, frame: &[u8], repeat: u32) -> std::io::Result<RunResult> {
    run_on(prog, frame, repeat, None)
}

/// [`run`] as if the frame arrived on interface `ingress` (an ifindex of the calling
/// thread's network namespace), which FIB lookups and `ingress_ifindex` then see; `None`:
/// the kernel's default, loopback.
pub fn run_on(
    prog: impl AsFd,
    frame: &[u8],
    repeat: u32,
    ingress: Option<u32>,
) -> std::io::Result<RunResult> {
    let mut out = vec![0u8; frame.len() + 256];
    let md = ingress.map(|ifindex| XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..Default::default()
    });
    let (ctx_in, ctx_size_in) = md.as_ref().map_or((0, 0), |m| {
        (
            m as *const XdpMd as u64,
            std::mem::size_of::<XdpMd>() as u32,
        )
    });
    let mut attr = TestAttr {
        ctx_in,
        ctx_size_in,
        prog_fd: prog.as_fd().as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: attr points to valid buffers of the sizes given, alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok(RunResult {
        verdict: attr.retval,
        frame: out,
        duration_ns: attr.duration,
    })
}
