//! The long-running agent: loads (or adopts) the dataplane, programs it from the
//! configuration, and keeps it in step. One reconcile function turns (configuration,
//! health, overrides) into map contents; every trigger (start, timer, health event, admin
//! change) goes through it.

use anyhow::{Context, Result};
use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};
use tracing::{info, warn};

use crate::{
    config::{self, Config},
    dataplane::{
        loader::{self, Sizes},
        neighbor,
        programmer::Programmer,
    },
    model::{self, BackendState},
};

/// Resolves backend MACs: configured, else the neighbour table, provoking ARP when unknown.
#[derive(Default)]
pub struct MacCache {
    known: BTreeMap<IpAddr, [u8; 6]>,
}

impl MacCache {
    pub fn get(&mut self, addr: IpAddr, configured: Option<&str>) -> Option<[u8; 6]> {
        if let Some(m) = configured.and_then(config::validate::parse_mac) {
            return Some(m);
        }
        let IpAddr::V4(v4) = addr else { return None };
        if let Some(m) = neighbor::lookup(v4) {
            self.known.insert(addr, m);
            return Some(m);
        }
        neighbor::provoke(v4);
        self.known.get(&addr).copied()
    }
}

pub struct L4Dataplane {
    pub pin_dir: PathBuf,
    pub programmer: Programmer,
    _ebpf: aya::Ebpf,
}

/// Loads or adopts the dataplane and attaches it to the configured interfaces.
pub fn start_l4(cfg: &Config) -> Result<L4Dataplane> {
    let d = &cfg.dataplane;
    let sizes = Sizes {
        ring_size: d.ring_size,
        max_services: d.max_services,
        conn_table_size: d.conn_table_size,
    };
    let mut ebpf = loader::load(&d.pin_path, sizes).context("loading the dataplane")?;
    for iface in &d.interfaces {
        let how = loader::attach(&mut ebpf, &d.pin_path, iface, d.xdp_mode)
            .with_context(|| format!("attaching XDP to {iface}"))?;
        info!(iface, mode = ?how, "XDP program attached");
    }
    let programmer = Programmer::open(&d.pin_path, d.ring_size, d.max_services)?;
    Ok(L4Dataplane {
        pin_dir: d.pin_path.clone(),
        programmer,
        _ebpf: ebpf,
    })
}

/// Runs until SIGINT/SIGTERM. The dataplane stays attached after exit (pinned), so a
/// restart keeps flows; `lb down` removes it.
pub async fn run(config_path: &Path) -> Result<()> {
    let mut cfg = config::load(config_path)
        .map_err(|e| anyhow::anyhow!("{}:\n{e}", config_path.display()))?;
    let mut dp = start_l4(&cfg)?;
    let mut macs = MacCache::default();
    let mut last_plan: Option<crate::dataplane::plan::L4Plan> = None;
    let mut lingering = crate::dataplane::linger::Lingering::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        let macs_cell = std::cell::RefCell::new(&mut macs);
        let mut plan = model::l4_plan(&cfg, &|_, _| BackendState::default(), &|a, m| {
            macs_cell.borrow_mut().get(a, m)
        });
        let drain_of = |svc: &str| {
            Duration::from_secs(
                cfg.backend_services
                    .get(svc)
                    .map_or(0, |s| s.connection_draining_timeout_sec as u64),
            )
        };
        lingering.apply(
            last_plan.as_ref(),
            &mut plan,
            &drain_of,
            std::time::Instant::now(),
        );
        if last_plan.as_ref() != Some(&plan) {
            let missing: Vec<&str> = plan
                .services
                .iter()
                .flat_map(|s| s.backends.iter())
                .filter(|b| b.mac.is_none())
                .map(|b| b.name.as_str())
                .collect();
            if !missing.is_empty() {
                warn!(
                    ?missing,
                    "no MAC known yet for some backends (ARP pending); they stay out of rotation"
                );
            }
            match dp.programmer.apply(&plan) {
                Ok(a) => info!(
                    services = a.service_ids.len(),
                    vips = a.vip_ids.len(),
                    backends = a.backend_slots.len(),
                    "dataplane programmed"
                ),
                Err(e) => {
                    warn!(error = %e, "programming the dataplane failed; keeping the previous state")
                }
            }
            last_plan = Some(plan);
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = hup.recv() => match config::load(config_path) {
                // SIGHUP reloads the file; a broken file changes nothing.
                Ok(new) => {
                    info!("configuration reloaded");
                    cfg = new;
                }
                Err(e) => warn!(errors = %e, "reload refused; the running configuration stays"),
            },
        }
    }
    info!(pin = %dp.pin_dir.display(), "agent stopping; the dataplane stays attached (lb down removes it)");
    Ok(())
}
