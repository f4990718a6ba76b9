//! `lb`: thin entry point; parses arguments and hands off to the library.

use anyhow::Result;
use clap::{Parser, Subcommand};
use lb_userspace::cli::{self, ClientCmd, Output};
use std::path::PathBuf;

/// jemalloc instead of glibc's allocator: large buffers (hyper's and h2's 8–16 KiB
/// connection buffers) get page-aligned extents whose untouched pages never become
/// resident, and freed pages are returned to the kernel after a decay time (README,
/// "L7: cargo xtask bench-l7", has the measurements).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "A local equivalent of Google Cloud's internal load balancers (XDP L4 + L7 proxy)"
)]
struct Cli {
    /// Admin socket of the running agent (client verbs). Default: `admin.socket` of
    /// /etc/lb/lb.toml when that file exists, else /run/lb/admin.sock.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Output of client verbs: aligned tables, or JSON for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Log lines on stderr: human-readable text (colours only on a terminal) or one JSON
    /// object per line. Filter with RUST_LOG (e.g. `RUST_LOG=info,lb_userspace::health=debug`).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent: load (or adopt) the XDP dataplane and program it from the config,
    /// serve the L7 tier, health checks, the admin socket and metrics. Without
    /// `dataplane.interfaces` the XDP tier is off (no root needed for L7 alone).
    Run {
        #[arg(long, short, default_value = cli::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Start even when the saved admin overrides (drain, maintenance, forced health) next
        /// to the socket cannot be read, dropping them; without it such a file stops the agent.
        #[arg(long)]
        discard_state: bool,
        /// Log the XDP program's rare verdicts (drops, aborts, failed connection-table
        /// inserts) with the interface and frame length; off, they cost nothing measurable.
        #[arg(long)]
        xdp_log: bool,
    },
    /// Check a configuration file and report every error with its place.
    Validate {
        #[arg(default_value = cli::DEFAULT_CONFIG)]
        file: PathBuf,
    },
    /// Show the dataplane counters (read from the pinned maps).
    Stats {
        #[command(flatten)]
        pins: cli::PinArgs,
    },
    /// Withdraw this balancer's VIP announcements (`[announce]` of the configuration), then
    /// detach the XDP program and remove every pinned object: flows are forgotten.
    Down {
        #[command(flatten)]
        pins: cli::PinArgs,
    },
    /// On a backend reached by IPIP or GUE (a routed backend): attach the decapsulation
    /// program to an interface, or update its addresses and port in place (`--down` removes
    /// it, `--stats` prints its counters). The program stays attached after the command exits.
    Decap(cli::decap::DecapArgs),
    /// List connection-table entries (established and first-second flows) from the pinned
    /// maps, like `conntrack -L`.
    Flows {
        #[command(flatten)]
        pins: cli::PinArgs,
        /// Only flows to this VIP: an address, or address:port.
        #[arg(long)]
        vip: Option<VipArg>,
        /// Only flows pinned to this backend address.
        #[arg(long)]
        backend: Option<std::net::IpAddr>,
        /// Only flows from this client address.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// Print only the number of matching flows.
        #[arg(long)]
        count: bool,
    },
    /// Explain the dataplane's decision for one IPv4 or IPv6 flow: the rule and service, the fields
    /// the affinity hashes, the Maglev slot and backend, the connection-table entry, and why
    /// the answer differs from the hash. Read from the pinned maps; changes nothing.
    Explain {
        #[command(flatten)]
        pins: cli::PinArgs,
        #[arg(value_enum)]
        proto: Proto,
        src: std::net::IpAddr,
        sport: u16,
        dst: std::net::IpAddr,
        dport: u16,
    },
    /// A live view of VIPs and backends (rates, health, state) from the agent, redrawn every
    /// interval until Ctrl-C.
    Top {
        /// Seconds between frames (0.2 ..= 60).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many frames (for scripts; the first frame has no rates yet).
        #[arg(long)]
        iterations: Option<u32>,
    },
    /// Print the manual page (roff) on stdout: `lb manpage | man -l -`.
    #[command(hide = true)]
    Manpage,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[command(flatten)]
    Client(ClientCmd),
}

/// Logs go to stderr, filtered by RUST_LOG (default `info`); colour codes only when stderr
/// is a terminal, so files and journald get plain text.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => fmt.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => fmt.json().with_ansi(false).init(),
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

/// `--vip 10.0.0.100` or `--vip 10.0.0.100:80`.
#[derive(Clone, Copy)]
struct VipArg(std::net::IpAddr, Option<u16>);

impl std::str::FromStr for VipArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(a) = s.parse::<std::net::SocketAddr>() {
            return Ok(VipArg(a.ip(), Some(a.port())));
        }
        s.parse()
            .map(|ip| VipArg(ip, None))
            .map_err(|_| format!("{s:?} is neither an address nor address:port"))
    }
}

fn flows(
    pins: &cli::PinArgs,
    filter: &lb_userspace::dataplane::flows::Filter,
    count: bool,
    output: Output,
) -> Result<()> {
    use lb_userspace::dataplane::flows;
    let list = flows::list(&pins.resolve()?, filter)?;
    match (count, output) {
        (true, Output::Json) => println!("{}", serde_json::json!({ "count": list.len() })),
        (true, Output::Table) => println!("{}", list.len()),
        (false, Output::Json) => println!("{}", serde_json::to_string(&list)?),
        (false, Output::Table) => print!("{}", flows::table(&list)),
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.cmd {
        Cmd::Run {
            config,
            discard_state,
            xdp_log,
        } => lb_userspace::l7::runtime()?.block_on(lb_userspace::agent::run(
            &config,
            lb_userspace::agent::RunOptions {
                discard_state,
                xdp_log,
            },
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
        Cmd::Stats { pins } => {
            let pin_path = pins.resolve()?;
            print!("{}", lb_userspace::dataplane::stats::report(&pin_path)?);
            Ok(())
        }
        Cmd::Flows {
            pins,
            vip,
            backend,
            client,
            count,
        } => {
            let filter = lb_userspace::dataplane::flows::Filter {
                vip: vip.map(|v| v.0),
                vip_port: vip.and_then(|v| v.1),
                backend,
                client,
            };
            flows(&pins, &filter, count, cli.output)
        }
        Cmd::Explain {
            pins,
            proto,
            src,
            sport,
            dst,
            dport,
        } => {
            use lb_userspace::dataplane::explain;
            anyhow::ensure!(
                src.is_ipv6() == dst.is_ipv6(),
                "{src} and {dst} are of different address families"
            );
            let t = explain::Tuple {
                proto: match proto {
                    Proto::Tcp => lb_common::PROTO_TCP,
                    Proto::Udp => lb_common::PROTO_UDP,
                },
                src,
                sport,
                dst,
                dport,
            };
            let x = explain::explain(&pins.resolve()?, t)?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string(&x)?),
                Output::Table => print!("{}", explain::report(&x)),
            }
            Ok(())
        }
        Cmd::Top {
            interval,
            iterations,
        } => {
            if !(0.2..=60.0).contains(&interval) {
                anyhow::bail!("--interval {interval}: choose between 0.2 and 60 seconds");
            }
            let socket = match cli.socket {
                Some(s) => s,
                None => cli::socket_for(None, &cli::ClientCmd::Status)?,
            };
            cli::top::run(
                &socket,
                std::time::Duration::from_secs_f64(interval),
                iterations,
            )
        }
        Cmd::Manpage => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "lb", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Down { pins } => {
            let pin_path = pins.resolve()?;
            // Routers first: withdrawn VIPs stop arriving before the dataplane goes.
            match lb_userspace::agent::announce::withdraw_all(&pins.announce()?) {
                Ok(Some(file)) => println!("withdrew every announcement ({})", file.display()),
                Ok(None) => {}
                Err(e) => eprintln!("warning: withdrawing the announcements failed: {e}"),
            }
            let removed = lb_userspace::dataplane::loader::teardown(&pin_path)?;
            println!(
                "removed {} pinned object(s) from {}",
                removed.len(),
                pin_path.display()
            );
            Ok(())
        }
        Cmd::Decap(args) => cli::decap::run(args, cli.output),
        Cmd::Client(c) => {
            let socket = cli::socket_for(cli.socket, &c)?;
            std::process::exit(cli::run(&socket, cli.output, c)?)
        }
    }
}
