//! `lb`: thin entry point; parses arguments and hands off to the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::cli::{self, ClientCmd, Output};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "A local equivalent of Google Cloud's internal load balancers (XDP L4 + L7 proxy)"
)]
struct Cli {
    /// Admin socket of the running agent (client verbs).
    #[arg(long, global = true, default_value = cli::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Output of client verbs: aligned tables, or JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: load (or adopt) the XDP dataplane and program it from the config,
    /// serve the L7 tier, health checks, the admin socket and metrics. Without
    /// `dataplane.interfaces` the XDP tier is off (no root needed for L7 alone).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Start even when the saved admin overrides (drain, maintenance, forced health) next
        /// to the socket cannot be read, dropping them; without it such a file stops the agent.
        #[arg(long)]
        discard_state: bool,
    },
    /// Check a configuration file and report every error with its place.
    Validate { file: PathBuf },
    /// Show the dataplane counters (read from the pinned maps).
    Stats {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_path: PathBuf,
    },
    /// Detach the XDP program and remove every pinned object: flows are forgotten.
    Down {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        pin_path: PathBuf,
    },
    #[command(flatten)]
    Client(ClientCmd),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run {
            config,
            discard_state,
        } => lb_userspace::l7::runtime()?.block_on(lb_userspace::agent::run(
            &config,
            lb_userspace::agent::RunOptions { discard_state },
        )),
        Cmd::Validate { file } => match lb_userspace::model::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {} error(s)\n{e}", file.display(), e.0.len());
                std::process::exit(1);
            }
        },
        Cmd::Stats { pin_path } => {
            print!("{}", lb_userspace::dataplane::stats::report(&pin_path)?);
            Ok(())
        }
        Cmd::Down { pin_path } => {
            let removed = lb_userspace::dataplane::loader::teardown(&pin_path)?;
            println!(
                "removed {} pinned object(s) from {}",
                removed.len(),
                pin_path.display()
            );
            Ok(())
        }
        Cmd::Client(c) => std::process::exit(cli::run(&cli.socket, cli.output, c)?),
    }
}
