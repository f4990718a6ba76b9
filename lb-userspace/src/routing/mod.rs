//! URL maps compiled for matching (SEMANTICS.md, "URL maps" and "Route actions"): host and
//! path rules, route rules with their matchers, redirects, rewrites, weighted services and
//! retry plans. Compiled once per configuration by `model::compile` (which reports every
//! error with its place) and read by the L7 proxy per request; pure, with no I/O.
//!
//! A module of its own so that neither `config` (the file's shapes) nor `l7` (the proxy
//! runtime) has to import the other to validate or to route.

pub mod actions;
pub mod retry;
pub mod route_match;
pub mod router;
