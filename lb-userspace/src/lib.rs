//! `lb`: a local equivalent of Google Cloud's internal load balancers. This library holds
//! everything the `lb` binary does, so integration tests drive the same code.

pub mod admin;
pub mod agent;
pub mod backend_tls;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod health;
pub mod ids;
pub mod l7;
#[cfg(test)]
mod layers;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod routing;
