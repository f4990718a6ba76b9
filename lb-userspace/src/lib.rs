//! `lb`: a local equivalent of Google Cloud's internal load balancers. This library holds
//! everything the `lb` binary does, so integration tests drive the same code.

pub mod config;
pub mod dataplane;
pub mod maglev;
pub mod model;
pub mod agent;
pub mod health;
pub mod metrics;
