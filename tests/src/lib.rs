//! Test support for whole-system and eBPF tests: frame builders (`packet`), a harness that
//! loads the XDP program into a private pin folder and runs it on frames (`xdp`), and
//! network-namespace topologies with guards that always clean up (`netns`).

pub mod bench_encap;
pub mod decap;
pub mod fib;
pub mod fuzz;
pub mod ha;
pub mod interrupt;
pub mod lbrun;
pub mod netns;
pub mod packet;
pub mod routed;
pub mod xdp;
pub mod xdp_cases;

/// A name unique to this process and call, for namespaces, links and pin folders, so two
/// test runs (or two tests in one run) never collide.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}{n}", std::process::id() % 100_000)
}

/// Whether the tests can use BPF and namespaces (root). Tests that need it skip with a
/// message otherwise, so `cargo test` without root still runs the pure tests.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The `lb` binary built alongside the tests (target/<profile>/lb).
pub fn lb_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, binaries (the demo) from target/<profile>/.
    let dir = exe.parent().expect("target dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let lb = dir.join("lb");
    assert!(
        lb.exists(),
        "{} not built: run `cargo build -p lb-userspace` (the xtask test command does)",
        lb.display()
    );
    lb
}

/// Returns false (and says so) when a root-only test cannot run. With `LB_REQUIRE_ROOT=1`
/// (set by the project's test command) a missing privilege is a failure, not a skip.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("LB_REQUIRE_ROOT").as_deref() != Ok("1"),
        "{test} needs root (LB_REQUIRE_ROOT=1)"
    );
    eprintln!("skipping {test}: needs root");
    false
}
