//! The configuration file: the resource model of SEMANTICS.md in TOML.
//!
//! `types` holds the serde shapes with their documented defaults; `validate` turns a parsed
//! file into a checked [`Config`] or a list of errors, each with its place in the file.
//! Admin changes produce a new `Config` and go through the same validation.

pub mod types;
pub mod url_map;
pub mod validate;
pub mod validate_balancing;
pub mod validate_l7;
#[cfg(test)]
mod validate_tests;

pub use types::*;
pub use validate::{ConfigError, ConfigErrors};

use std::path::Path;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::single(ConfigError::new(
            path.display().to_string(),
            format!("cannot read the file: {e}"),
        ))
    })?;
    parse(&text)
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let cfg: Config = toml::from_str(text).map_err(|e| ConfigErrors::from_toml(text, &e))?;
    validate::validate(&cfg).map_err(|errs| errs.with_lines(text))?;
    Ok(cfg)
}
