//! `lb decap`: the backend side of routed forwarding. Attaches the decapsulation program to
//! an interface (pinned, so it keeps working after the command exits), updates its
//! addresses and GUE port when run again, prints its counters (`--stats`) and removes it
//! (`--down`). No agent is involved: a backend runs only this.

use anyhow::{bail, Result};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::Output;
use crate::dataplane::{
    decap::{self, Desired},
    loader::{self, Attached},
};

#[derive(Debug, clap::Args)]
pub struct DecapArgs {
    /// Interface that receives the encapsulated packets.
    #[arg(long, short, required_unless_present = "stats")]
    pub interface: Option<String>,
    /// Outer destination address to decapsulate for (repeat for several). Default: every
    /// IPv4 and IPv6 address of the interface. The list replaces the previous one.
    #[arg(long = "address", value_name = "ADDR", conflicts_with_all = ["down", "stats"])]
    pub addresses: Vec<IpAddr>,
    /// UDP destination port of GUE packets (the balancer's `gue_port`).
    #[arg(long, default_value_t = lb_common::encap::GUE_DEFAULT_PORT,
          value_parser = clap::value_parser!(u16).range(1..),
          conflicts_with_all = ["down", "stats"])]
    pub gue_port: u16,
    /// Pin folder of the program and its maps. Default: /sys/fs/bpf/lb-decap/<interface>.
    #[arg(long)]
    pub pin_path: Option<PathBuf>,
    /// XDP attach mode: native (driver) mode with a fallback to generic, or one of them.
    #[arg(long, value_enum, default_value_t = Mode::Auto, conflicts_with_all = ["down", "stats"])]
    pub xdp_mode: Mode,
    /// Detach the program and remove its pins.
    #[arg(long, conflicts_with = "stats")]
    pub down: bool,
    /// Print the counters (of every interface `lb decap` attached to, without --interface).
    #[arg(long)]
    pub stats: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Auto,
    Native,
    Generic,
}

impl From<Mode> for crate::config::XdpMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Auto => crate::config::XdpMode::Auto,
            Mode::Native => crate::config::XdpMode::Native,
            Mode::Generic => crate::config::XdpMode::Generic,
        }
    }
}

pub fn run(args: DecapArgs, output: Output) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb decap loads, pins and reads XDP programs: run it as root (sudo lb decap ...)");
    }
    let pin_dir = args
        .pin_path
        .clone()
        .or_else(|| args.interface.as_deref().map(decap::default_pin_dir));
    if args.stats {
        return stats(pin_dir.as_deref(), output);
    }
    let (Some(iface), Some(pin_dir)) = (args.interface.as_deref(), pin_dir) else {
        bail!("--interface is required");
    };
    if args.down {
        return down(iface, &pin_dir, args.pin_path.is_none());
    }
    up(iface, &pin_dir, &args)
}

fn up(iface: &str, pin_dir: &Path, args: &DecapArgs) -> Result<()> {
    if !decap::interface_exists(iface) {
        bail!(
            "no network interface {iface:?} in this network namespace: `ip link` lists the \
             interfaces; run lb decap where the interface is"
        );
    }
    if decap::pins_would_not_last() {
        bail!(
            "/sys/fs/bpf here is not the host's bpffs (this command has a mount namespace of \
             its own, as `ip netns exec` gives): the program would be removed when the command \
             exits; enter only the network namespace: `nsenter --net=/run/netns/NS lb decap ...`"
        );
    }
    let addresses = if args.addresses.is_empty() {
        decap::interface_addresses(iface)?
    } else {
        let mut a = args.addresses.clone();
        a.sort();
        a.dedup();
        a
    };
    if addresses.is_empty() {
        bail!(
            "{iface} has no IPv4 or IPv6 address to decapsulate for: give it the address the \
             balancer sends to (`ip addr add ADDR dev {iface}`), or name it with --address"
        );
    }
    let max = lb_common::decap::MAX_ADDRS as usize;
    if addresses.len() > max {
        bail!(
            "{} addresses, at most {max} fit: name the ones the balancer sends to with --address",
            addresses.len()
        );
    }
    let want = Desired {
        addresses,
        gue_port: args.gue_port,
    };
    let how = decap::up(iface, pin_dir, &want, args.xdp_mode.into()).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nattaching lb-decap to {iface} failed; if the interface already has an XDP \
             program (the balancer's, or another tool's), a host decapsulates only on an \
             interface that carries no other XDP program"
        )
    })?;
    let how = match how {
        Attached::Replaced => "updated the running program",
        Attached::Native => "attached in native mode",
        Attached::Generic => "attached in generic mode",
    };
    let list: Vec<String> = want.addresses.iter().map(IpAddr::to_string).collect();
    println!(
        "lb decap on {iface}: {how}; decapsulating IPIP and GUE (UDP port {}) to {}; pinned at {}",
        want.gue_port,
        list.join(", "),
        pin_dir.display()
    );
    Ok(())
}

fn nothing_attached(pin_dir: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "nothing attached: no lb decap program is pinned at {} (attach one with `sudo lb \
         decap --interface IFACE`, or name its pin folder with --pin-path)",
        pin_dir.display()
    )
}

fn down(iface: &str, pin_dir: &Path, default_place: bool) -> Result<()> {
    if !pin_dir.exists() {
        return Err(nothing_attached(pin_dir));
    }
    let removed = loader::teardown(pin_dir)?;
    if default_place {
        // The shared parent goes with its last interface; a non-empty one stays.
        let _ignored = std::fs::remove_dir(decap::PIN_ROOT);
    }
    println!(
        "lb decap on {iface}: detached; removed {} pinned object(s) from {}",
        removed.len(),
        pin_dir.display()
    );
    Ok(())
}

fn stats(pin_dir: Option<&Path>, output: Output) -> Result<()> {
    let dirs = match pin_dir {
        Some(d) if !d.exists() => return Err(nothing_attached(d)),
        Some(d) => vec![d.to_path_buf()],
        None => decap::pinned_dirs(),
    };
    if dirs.is_empty() {
        return Err(nothing_attached(Path::new(decap::PIN_ROOT)));
    }
    let reports = dirs
        .iter()
        .map(|d| decap::report(d))
        .collect::<Result<Vec<_>, _>>()?;
    match output {
        Output::Json => println!("{}", serde_json::to_string(&json(&reports))?),
        Output::Table => print!("{}", decap::table(&reports)),
    }
    Ok(())
}

/// `-o json`: one object per interface, counters by name.
fn json(reports: &[decap::Report]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let counters: serde_json::Map<String, serde_json::Value> = r
                .counters
                .iter()
                .map(|(n, v)| (n.to_string(), (*v).into()))
                .collect();
            serde_json::json!({
                "interface": r.interface,
                "pin_path": r.pin_path,
                "gue_port": r.gue_port,
                "addresses": r.addresses,
                "counters": counters,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

#[cfg(test)]
mod tests {
    use super::DecapArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        decap: DecapArgs,
    }

    fn parse(args: &[&str]) -> Result<DecapArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("decap").chain(args.iter().copied())).map(|c| c.decap)
    }

    #[test]
    fn arguments_that_cannot_go_together_are_refused() {
        let a = parse(&["-i", "eth0"]).unwrap();
        assert_eq!(a.gue_port, lb_common::encap::GUE_DEFAULT_PORT);
        assert!(a.addresses.is_empty() && !a.down && !a.stats);
        let a = parse(&[
            "-i",
            "eth0",
            "--address",
            "10.0.0.1",
            "--address",
            "fd00::1",
        ])
        .unwrap();
        assert_eq!(a.addresses.len(), 2);
        assert!(
            parse(&["--stats"]).is_ok(),
            "--stats alone reads every interface"
        );
        for bad in [
            &[][..],                            // no interface
            &["--down"],                        // down without interface
            &["-i", "eth0", "--gue-port", "0"], // port 0 is no UDP port
            &["-i", "eth0", "--down", "--address", "10.0.0.1"],
            &["-i", "eth0", "--down", "--stats"],
            &["-i", "eth0", "--stats", "--gue-port", "7000"],
            &["-i", "eth0", "--address", "not-an-address"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
