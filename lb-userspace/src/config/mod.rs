//! The configuration file: the resource model of SEMANTICS.md in TOML.
//!
//! `types` holds the serde shapes with their documented defaults; `validate` checks what can
//! be checked on the shapes alone, each error with its place in the file. The whole check,
//! URL maps compiled included, is `model::compile`: the only way to a running
//! configuration (`model::load`, `model::parse`). Admin changes produce a new `Config` and
//! go through the same compile.

pub mod fields;
pub mod limits;
pub mod types;
pub mod url_map;
pub mod validate;
pub mod validate_announce;
pub mod validate_balancing;
pub mod validate_forwarding;
pub mod validate_ranges;

pub use types::*;
pub use validate::{ConfigError, ConfigErrors};

use std::path::Path;

/// Reads a configuration file's text.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        let next = match e.kind() {
            std::io::ErrorKind::NotFound => {
                "; name the configuration with --config, or start from the commented example \
                 (packaging/lb.toml in the repository, /etc/lb/lb.toml from the package)"
            }
            std::io::ErrorKind::PermissionDenied => "; run the command as root (sudo)",
            _ => "",
        };
        ConfigErrors::single(ConfigError::new(
            path.display().to_string(),
            format!("cannot read the file: {e}{next}"),
        ))
    })
}

/// The file's shapes only (TOML syntax, field names and types): not validated. Use
/// `model::parse` for a configuration to run.
pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
    toml::from_str(text).map_err(|e| ConfigErrors::from_toml(text, &e))
}
