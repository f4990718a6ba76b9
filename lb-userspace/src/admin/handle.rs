//! Carries out one admin request on the agent. Reads build views; changes build a candidate
//! configuration or candidate overrides and hand them to [`Agent::change`], which is the
//! one all-or-nothing path shared with reloads.

use std::time::Instant;
use tracing::info;

use super::{
    protocol::{ChangeInfo, ErrorBody, ErrorKind, ForcedHealth, NewBackend, Response, Verb},
    view,
};
use crate::agent::state::{Agent, ChangeError};
use crate::config::BackendConfig;

/// Runs `verb` and builds the response line. Permission is checked by the server.
pub fn handle(agent: &mut Agent, verb: Verb, now: Instant) -> Response {
    let describe = format!("{verb:?}");
    let result = match verb {
        Verb::Status => Ok(to_json(&view::status(agent))),
        Verb::List { what } => Ok(view::list(agent, what, now)),
        Verb::DescribeService { service } => view::service(agent, &service, now)
            .map(|s| to_json(&s))
            .map_err(change_error),
        change => run_change(agent, change, now).map(|m| {
            info!(request = %describe, "admin change applied: {m}");
            to_json(&ChangeInfo { message: m })
        }),
    };
    match result {
        Ok(v) => Response::ok(v),
        Err(e) => {
            info!(request = %describe, error = %e.message, "admin request refused");
            Response::err(e)
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn change_error(e: ChangeError) -> ErrorBody {
    let kind = match &e {
        ChangeError::NoService { .. } | ChangeError::NoBackend { .. } => ErrorKind::NotFound,
        ChangeError::Invalid(_)
        | ChangeError::NeedsRestart(_)
        | ChangeError::NoFile
        | ChangeError::NothingAnnounced => ErrorKind::Invalid,
        ChangeError::Dataplane(_) | ChangeError::DataplaneUnknown(_) | ChangeError::L7(_) => {
            ErrorKind::Dataplane
        }
    };
    ErrorBody::new(kind, e.to_string())
}

fn run_change(agent: &mut Agent, verb: Verb, now: Instant) -> Result<String, ErrorBody> {
    let r = match verb {
        Verb::AddBackend { service, backend } => add_backend(agent, &service, backend, now),
        Verb::RemoveBackend { service, backend } => {
            let i = agent.find(&service, &backend).map_err(change_error)?;
            let mut cfg = agent.config().clone();
            if let Some(bs) = cfg.backend_services.get_mut(&service) {
                bs.backends.remove(i);
            }
            agent
                .change(cfg, agent.overrides().clone(), now)
                .map(|()| format!("removed backend {backend} from {service}"))
        }
        Verb::SetWeight {
            service,
            backend,
            weight,
        } => {
            let i = agent.find(&service, &backend).map_err(change_error)?;
            let mut cfg = agent.config().clone();
            if let Some(bs) = cfg.backend_services.get_mut(&service) {
                bs.backends[i].weight = weight;
            }
            agent
                .change(cfg, agent.overrides().clone(), now)
                .map(|()| format!("{service}/{backend} weight is now {weight}"))
        }
        Verb::Drain { service, backend } => agent
            .change_override(&service, &backend, now, |o| {
                // Draining again keeps the original start: the timeout is from the first drain.
                o.drain_started.get_or_insert(now);
            })
            .map(|()| {
                let t = agent.drain_timeout(&service).as_secs();
                format!("{service}/{backend} is draining: no new flows; existing flows are evicted after {t} s")
            }),
        Verb::Undrain { service, backend } => agent
            .change_override(&service, &backend, now, |o| o.drain_started = None)
            .map(|()| format!("{service}/{backend} takes new flows again")),
        Verb::Maintenance {
            service,
            backend,
            on,
        } => agent
            .change_override(&service, &backend, now, |o| o.maintenance = on)
            .map(|()| {
                if on {
                    format!("{service}/{backend} is in maintenance: out of rotation, its flows moved")
                } else {
                    format!("{service}/{backend} is out of maintenance")
                }
            }),
        Verb::ForceHealth {
            service,
            backend,
            health,
        } => {
            let (forced, word) = match health {
                ForcedHealth::Up => (Some(true), "forced up"),
                ForcedHealth::Down => (Some(false), "forced down"),
                ForcedHealth::Auto => (None, "decided by the health checker"),
            };
            agent
                .change_override(&service, &backend, now, |o| o.forced = forced)
                .map(|()| format!("{service}/{backend} health is {word}"))
        }
        Verb::NodeDrain => agent.set_node_drained(true, now).map(|()| {
            "node drained: every announcement is withdrawn; the dataplane keeps forwarding the flows that still arrive".to_string()
        }),
        Verb::NodeUndrain => agent
            .set_node_drained(false, now)
            .map(|()| "node undrained: VIPs with a usable backend are announced again".to_string()),
        Verb::Reload => agent.reload(now).map(|()| {
            let p = agent.config_path().map(|p| p.display().to_string()).unwrap_or_default();
            format!("reloaded {p}")
        }),
        Verb::Status | Verb::List { .. } | Verb::DescribeService { .. } => {
            return Err(ErrorBody::new(ErrorKind::Internal, "a read was routed as a change"))
        }
    };
    r.map_err(change_error)
}

fn add_backend(
    agent: &mut Agent,
    service: &str,
    nb: NewBackend,
    now: Instant,
) -> Result<String, ChangeError> {
    agent.find_service(service)?;
    let b = BackendConfig {
        name: nb.name,
        address: nb.address,
        port: nb.port,
        weight: nb.weight.unwrap_or(1),
        capacity_scaler: 1.0,
        failover: nb.failover,
        mac: nb.mac,
    };
    let name = b.display_name();
    let mut cfg = agent.config().clone();
    if let Some(bs) = cfg.backend_services.get_mut(service) {
        bs.backends.push(b);
    }
    agent
        .change(cfg, agent.overrides().clone(), now)
        .map(|()| format!("added backend {name} to {service}"))
}
