//! The L7 Application Load Balancer tier (SEMANTICS.md, "L7").

pub mod router;
