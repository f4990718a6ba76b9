//! How much of the kernel verifier's budget the balancer takes (1,000,000 instructions
//! processed per program load). The program is one large inlined function; a change that
//! multiplies the verifier's states (a branch whose sides leave different pointers live
//! through the rest of the program) can take it past the limit, and the program would no
//! longer load. This keeps a margin visible before that happens.

use lb_tests::{root_or_skip, xdp::XdpHarness};

/// Fails well before the kernel's own limit, so a change that approaches it is noticed
/// while there is still room to restructure.
const BUDGET: u32 = 850_000;

#[test]
fn the_balancer_verifies_within_budget() {
    if !root_or_skip("xdp verifier budget") {
        return;
    }
    let h = XdpHarness::new(65537).expect("load");
    let prog = h
        .ebpf
        .program(lb_common::names::PROG_LB)
        .expect("the balancer program");
    let info = prog.info().expect("program info");
    let n = info
        .verified_instruction_count()
        .expect("kernel reports verified instructions");
    eprintln!("verified instructions: {n} (budget {BUDGET}, kernel limit 1000000)");
    assert!(n < BUDGET, "{n} instructions verified, budget {BUDGET}");
}
