//! `cargo xtask <command>`: project automation, one module per command.

mod bench_l7;

use clap::Parser;

#[derive(Parser)]
#[command(name = "xtask")]
enum Cmd {
    /// Benchmark lb's L7 proxy against nginx and HAProxy on loopback (wrk, h2load).
    BenchL7(bench_l7::Options),
}

fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::BenchL7(o) => bench_l7::run(o),
    }
}
