//! The configuration compiled into what runs, and the pure decisions made from it.
//!
//! [`compile`] is the one gate from a parsed file (or an admin change) to a running
//! configuration: every rule of `config::validate` plus the URL maps compiled into
//! routers, each error with its dotted place (and line, through [`parse`]/[`load`]). The
//! result, a [`Model`], carries the compiled routers so the L7 table never compiles or
//! checks them again. [`desired`] turns a model, health and admin overrides into the L4
//! plan and the L7 admission, with no I/O.

pub mod announce;
pub mod desired;
#[cfg(test)]
mod tests;
pub mod validate_l7;
#[cfg(test)]
mod validate_tests;

pub use desired::*;
pub use validate_l7::Routers;

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::ids::{parse_mac, BackendKey, Mac};
use std::{ops::Deref, path::Path};

/// A configuration that passed every check, with its compiled URL maps.
#[derive(Debug, Clone)]
pub struct Model {
    config: Config,
    routers: Routers,
    /// Configured backend MACs (L4), parsed once.
    macs: std::collections::BTreeMap<BackendKey, Mac>,
}

impl Model {
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// The compiled URL map of that name.
    pub fn router(&self, url_map: &str) -> Option<&std::sync::Arc<crate::routing::router::Router>> {
        self.routers.get(url_map)
    }
    pub fn routers(&self) -> &Routers {
        &self.routers
    }
    /// The MAC configured for a backend, if any.
    pub fn mac(&self, service: &str, backend: &str) -> Option<Mac> {
        self.macs.get(&BackendKey::new(service, backend)).copied()
    }
}

/// Reading a model reads its configuration: `model.backend_services`, `model.admin`, ...
impl Deref for Model {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl PartialEq for Model {
    /// Two models are the same when their configurations are: routers are a function of it.
    fn eq(&self, other: &Model) -> bool {
        self.config == other.config
    }
}

/// Checks `cfg` completely and compiles it; every error, not just the first.
pub fn compile(cfg: Config) -> Result<Model, ConfigErrors> {
    let mut errs = match config::validate::validate(&cfg) {
        Ok(()) => Vec::new(),
        Err(e) => e.0,
    };
    let (routers, l7_errs) = validate_l7::validate_l7(&cfg);
    errs.extend(l7_errs);
    let macs = macs(&cfg, &mut errs);
    if errs.is_empty() {
        Ok(Model {
            config: cfg,
            routers,
            macs,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

/// Every configured backend MAC, parsed; an unparseable one is an error at its place.
fn macs(cfg: &Config, errs: &mut Vec<ConfigError>) -> std::collections::BTreeMap<BackendKey, Mac> {
    let mut out = std::collections::BTreeMap::new();
    for (name, bs) in &cfg.backend_services {
        for (i, b) in bs.backends.iter().enumerate() {
            let Some(m) = &b.mac else { continue };
            match parse_mac(m) {
                Some(mac) => {
                    out.insert(BackendKey::new(name.clone(), b.display_name()), mac);
                }
                None => errs.push(ConfigError::new(
                    format!("backend_services.{name}.backends[{i}].mac"),
                    format!("{m:?} is not a MAC address like 02:00:00:00:00:01"),
                )),
            }
        }
    }
    out
}

/// Parses configuration text and compiles it; errors carry their line.
pub fn parse(text: &str) -> Result<Model, ConfigErrors> {
    let cfg = config::from_toml(text)?;
    compile(cfg).map_err(|errs| errs.with_lines(text))
}

/// Reads, parses and compiles a configuration file.
pub fn load(path: &Path) -> Result<Model, ConfigErrors> {
    parse(&config::read(path)?)
}
