//! 20,000 generated and mutated frames, plus every truncation of 100 more, through the
//! balancer with BPF_PROG_TEST_RUN, each checked by the oracle of `lb_tests::fuzz`: passes
//! leave the frame unchanged, drops count a documented reason, forwards change only the
//! MACs, go to a backend and carry a packet addressed to a VIP; nothing aborts. The full
//! run is `cargo xtask fuzz-xdp` (README, "Packet verdicts").

use lb_tests::{fuzz, root_or_skip, xdp::XdpHarness, xdp_cases::RING};

#[test]
fn generated_and_mutated_frames_meet_the_oracle() {
    if !root_or_skip("xdp fuzz") {
        return;
    }
    let mut h = XdpHarness::with_services(RING, fuzz::SERVICES).unwrap();
    let plan = fuzz::plan();
    h.apply(&plan).unwrap();
    // A fixed seed: a failure here reproduces with the same frames.
    let mut f = fuzz::Fuzzer::new(&h, &plan).unwrap();
    let t = f.run(0x1b_f022, 20_000, 100).unwrap();
    eprintln!("{t:#?}");
    assert!(t.frames >= 20_000);
    // The generator reaches every verdict and forwards each kind that can be.
    for v in ["pass", "drop", "tx"] {
        assert!(t.verdicts.get(v).copied().unwrap_or(0) >= 100, "{v}: {t:?}");
    }
    for k in ["ipv4 tcp/udp", "ipv4 icmp", "ipv6"] {
        assert!(t.forwarded.get(k).copied().unwrap_or(0) >= 10, "{k}: {t:?}");
    }
}
