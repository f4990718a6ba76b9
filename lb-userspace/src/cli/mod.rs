//! Client verbs of the `lb` binary: each builds one admin request, sends it to the agent's
//! socket and prints the answer as a table (default) or as the raw JSON result (`-o json`,
//! for scripts). A refused request prints the agent's message and exits with status 1.

pub mod client;
pub mod decap;
pub mod table;
pub mod top;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::admin::protocol::{ForcedHealth, ListWhat, NewBackend, Verb};

/// Default admin socket (the config's `admin.socket` default).
pub const DEFAULT_SOCKET: &str = "/run/lb/admin.sock";

/// Where `lb run`, `lb validate` and `lb reload` look for the configuration without
/// `--config` (the packaged unit's file).
pub const DEFAULT_CONFIG: &str = "/etc/lb/lb.toml";

/// The configuration's shapes (not validated: only a path is read from it). `None` when
/// the default file is absent or unreadable; an explicit file must be readable.
fn config_shapes(explicit: Option<&Path>) -> Result<Option<crate::config::Config>> {
    let (path, required) = match explicit {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    if !required && !path.exists() {
        return Ok(None);
    }
    let parsed = crate::config::read(path).and_then(|text| crate::config::from_toml(&text));
    match parsed {
        Ok(c) => Ok(Some(c)),
        Err(e) if required => anyhow::bail!(
            "{}: {e}\nfix the file (`lb validate {}` lists every error) or pass --pin-path / --socket",
            path.display(),
            path.display()
        ),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "default configuration unreadable; using built-in defaults");
            Ok(None)
        }
    }
}

/// The admin socket a client verb talks to: `--socket`, else `admin.socket` of the
/// configuration (`lb reload --config FILE`, or /etc/lb/lb.toml when it exists), else the
/// default socket.
pub fn socket_for(explicit: Option<PathBuf>, cmd: &ClientCmd) -> Result<PathBuf> {
    if let Some(s) = explicit {
        return Ok(s);
    }
    let config = match cmd {
        ClientCmd::Reload { config } => config.as_deref(),
        _ => None,
    };
    Ok(config_shapes(config)?
        .map(|c| c.admin.socket)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))
}

/// Where a verb that reads the pinned maps finds them.
#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// Folder of the pinned dataplane. Default: `dataplane.pin_path` of the configuration.
    #[arg(long, conflicts_with = "config")]
    pub pin_path: Option<PathBuf>,
    /// Configuration whose `dataplane.pin_path` to use (default /etc/lb/lb.toml when it
    /// exists, else /sys/fs/bpf/lb).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl PinArgs {
    pub fn resolve(&self) -> Result<PathBuf> {
        if let Some(p) = &self.pin_path {
            return Ok(p.clone());
        }
        Ok(config_shapes(self.config.as_deref())?
            .map(|c| c.dataplane.pin_path)
            .unwrap_or_else(|| crate::config::Dataplane::default().pin_path))
    }

    /// The `[announce]` section of the configuration (`--config`, else /etc/lb/lb.toml when
    /// it exists), for `lb down` to withdraw; none without a file.
    pub fn announce(&self) -> Result<crate::config::Announce> {
        Ok(config_shapes(self.config.as_deref())?
            .map(|c| c.announce)
            .unwrap_or_default())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// Aligned tables.
    #[default]
    Table,
    /// The JSON result, one line (for scripts).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HealthArg {
    Up,
    Down,
    Auto,
}

/// Verbs that talk to a running agent.
#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Show the agent's state: uptime, resources, health totals, verdict counters.
    Status,
    /// List forwarding rules, backend services or backends.
    List {
        #[arg(value_enum)]
        what: ListArg,
    },
    /// Show one resource in detail.
    Describe {
        #[command(subcommand)]
        what: DescribeArg,
    },
    /// Add or remove backends of a backend service.
    Backend {
        #[command(subcommand)]
        cmd: BackendCmd,
    },
    /// Set a backend's weight (1..=1000); a reload returns to the file's weight.
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// Drain a backend: no new flows; existing ones stay until the draining timeout.
    Drain { service: String, backend: String },
    /// End a drain: the backend takes new flows again.
    Undrain { service: String, backend: String },
    /// Maintenance: out of rotation and its flows moved at once (on), or back (off).
    Maintenance {
        service: String,
        backend: String,
        #[arg(value_enum)]
        state: OnOff,
    },
    /// Force a backend's health up or down, or return it to the health checker (auto).
    Health {
        service: String,
        backend: String,
        #[arg(value_enum)]
        health: HealthArg,
    },
    /// This balancer's announcements: `drain` withdraws every VIP from the routers (the
    /// dataplane keeps serving what still arrives), `undrain` announces them again.
    Node {
        #[arg(value_enum)]
        action: NodeAction,
    },
    /// Re-read the configuration file; nothing changes if it is invalid. The agent re-reads
    /// the file it was started with; `--config` only tells where to find its socket.
    Reload {
        /// Configuration whose `admin.socket` to reach (default /etc/lb/lb.toml when it exists).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeAction {
    Drain,
    Undrain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListArg {
    Rules,
    Services,
    Backends,
}

#[derive(Debug, Subcommand)]
pub enum DescribeArg {
    /// A backend service with its backends.
    Service { name: String },
}

#[derive(Debug, Subcommand)]
pub enum BackendCmd {
    /// Add a backend to a backend service.
    Add {
        service: String,
        #[arg(long)]
        address: IpAddr,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        weight: Option<u32>,
        #[arg(long)]
        failover: bool,
        #[arg(long)]
        name: Option<String>,
        /// MAC for L2 direct server return (resolved by ARP when absent).
        #[arg(long)]
        mac: Option<String>,
    },
    /// Remove a backend (by name) from a backend service.
    Remove { service: String, backend: String },
}

impl ClientCmd {
    pub fn verb(self) -> Verb {
        match self {
            ClientCmd::Status => Verb::Status,
            ClientCmd::List { what } => Verb::List {
                what: match what {
                    ListArg::Rules => ListWhat::Rules,
                    ListArg::Services => ListWhat::Services,
                    ListArg::Backends => ListWhat::Backends,
                },
            },
            ClientCmd::Describe {
                what: DescribeArg::Service { name },
            } => Verb::DescribeService { service: name },
            ClientCmd::Backend {
                cmd:
                    BackendCmd::Add {
                        service,
                        address,
                        port,
                        weight,
                        failover,
                        name,
                        mac,
                    },
            } => Verb::AddBackend {
                service,
                backend: NewBackend {
                    address,
                    port,
                    weight,
                    failover,
                    name,
                    mac,
                },
            },
            ClientCmd::Backend {
                cmd: BackendCmd::Remove { service, backend },
            } => Verb::RemoveBackend { service, backend },
            ClientCmd::Weight {
                service,
                backend,
                weight,
            } => Verb::SetWeight {
                service,
                backend,
                weight,
            },
            ClientCmd::Drain { service, backend } => Verb::Drain { service, backend },
            ClientCmd::Undrain { service, backend } => Verb::Undrain { service, backend },
            ClientCmd::Maintenance {
                service,
                backend,
                state,
            } => Verb::Maintenance {
                service,
                backend,
                on: state == OnOff::On,
            },
            ClientCmd::Health {
                service,
                backend,
                health,
            } => Verb::ForceHealth {
                service,
                backend,
                health: match health {
                    HealthArg::Up => ForcedHealth::Up,
                    HealthArg::Down => ForcedHealth::Down,
                    HealthArg::Auto => ForcedHealth::Auto,
                },
            },
            ClientCmd::Node {
                action: NodeAction::Drain,
            } => Verb::NodeDrain,
            ClientCmd::Node {
                action: NodeAction::Undrain,
            } => Verb::NodeUndrain,
            ClientCmd::Reload { .. } => Verb::Reload,
        }
    }
}

/// Runs a client verb; returns the process exit status (0 ok, 1 refused).
pub fn run(socket: &Path, output: Output, cmd: ClientCmd) -> Result<i32> {
    let verb = cmd.verb();
    let resp = client::call(socket, &verb)?;
    if !resp.ok {
        let e = resp.error.unwrap_or_else(|| {
            crate::admin::protocol::ErrorBody::new(
                crate::admin::protocol::ErrorKind::Internal,
                "refused without a reason",
            )
        });
        match output {
            Output::Json => println!("{}", serde_json::json!({"error": e})),
            Output::Table => eprintln!(
                "error ({}): {}",
                serde_json::to_value(e.kind)?.as_str().unwrap_or("?"),
                e.message
            ),
        }
        return Ok(1);
    }
    let result = resp.result.unwrap_or_default();
    if output == Output::Json {
        println!("{result}");
        return Ok(0);
    }
    let text = match verb {
        Verb::Status => table::status(&serde_json::from_value(result)?),
        Verb::List {
            what: ListWhat::Rules,
        } => table::rules(&serde_json::from_value::<Vec<_>>(result)?),
        Verb::List {
            what: ListWhat::Services,
        } => table::services(&serde_json::from_value::<Vec<_>>(result)?),
        Verb::List {
            what: ListWhat::Backends,
        } => table::backends(&serde_json::from_value::<Vec<_>>(result)?),
        Verb::DescribeService { .. } => table::service(&serde_json::from_value(result)?),
        _ => format!(
            "{}\n",
            result
                .get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("ok")
        ),
    };
    print!("{text}");
    Ok(0)
}
