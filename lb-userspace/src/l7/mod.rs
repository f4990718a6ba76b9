//! The L7 Application Load Balancer tier (SEMANTICS.md, "L7").

pub mod outlier;
pub mod retry;
pub mod router;
pub mod select;
pub mod stats;
