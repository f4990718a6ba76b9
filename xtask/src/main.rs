//! Project tasks: `cargo xtask <command>`. Each command installs what it needs first
//! (scripts/bootstrap.sh, idempotent and quick when everything is present).

mod bench;
mod bench_l7;
mod bootstrap;
mod deb;
mod demo;
mod lab;
mod profile_l7;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lb project tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install toolchain pieces and packages (nightly rust-src, bpf-linker, Debian packages).
    Bootstrap,
    /// Bootstrap, then fmt and clippy checks (userspace and eBPF), then every test.
    Test,
    /// Bootstrap, then the demo: a namespace topology with a client, `lb` and three backends.
    Demo,
    /// Bootstrap, then the high-availability demo: a router running BIRD with ECMP, two
    /// balancers (`lb` + BIRD over eBGP), three backends; spread, a balancer killed, flows
    /// carrying on.
    DemoHa,
    /// The prime-number lab (GSP041): health check, the 10x10 table of primes through the
    /// VIP, and the frontend on 127.0.0.1:8080 for a browser until Ctrl-C.
    Lab,
    /// The Debian package (cargo-deb, installed on first use): binary, systemd unit, example
    /// /etc/lb/lb.toml and shell completions, in target/debian/.
    Deb,
    /// Nanoseconds per packet of the XDP program from BPF_PROG_TEST_RUN, beside a trivial
    /// pass program built by the project.
    BenchXdp,
    /// Generated and mutated frames (default 1,000,000) through the XDP program with
    /// BPF_PROG_TEST_RUN, each checked by an oracle: `fuzz-xdp [N] [--seed S]`.
    FuzzXdp {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// lb's L7 proxy against nginx and HAProxy on loopback (wrk, h2load), side by side.
    BenchL7(bench_l7::Options),
    /// perf profiles (flame graphs and a breakdown per request) of lb, nginx and HAProxy
    /// under the same HTTP/1.1 load.
    ProfileL7(profile_l7::Options),
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Bootstrap => bootstrap::run(),
        Cmd::Test => test::run(),
        Cmd::Demo => demo::run(),
        Cmd::DemoHa => demo::run_ha(),
        Cmd::Deb => deb::run(),
        Cmd::Lab => lab::run(),
        Cmd::BenchXdp => bench::xdp(),
        Cmd::FuzzXdp { args } => bench::fuzz_xdp(&args),
        Cmd::BenchL7(o) => bench_l7::run(o),
        Cmd::ProfileL7(o) => profile_l7::run(o),
    }
}
