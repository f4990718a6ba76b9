//! The admin socket's wire protocol, shared by the server (`admin::server`) and the client
//! (`cli`). One JSON object per line each way:
//!
//! ```text
//! → {"version":1,"verb":"drain","service":"web","backend":"b1"}
//! ← {"version":1,"ok":true,"result":{...}}
//! ← {"version":1,"ok":false,"error":{"kind":"not-found","message":"..."}}
//! ```
//!
//! `version` is required so a client and an agent of different releases refuse each other
//! clearly instead of misreading fields. Unknown fields are refused too (a misspelt argument
//! must not silently become a different request).

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Longest request line the server reads; anything longer is refused (a line-based
/// protocol must bound what it buffers for one peer).
pub const MAX_LINE: usize = 64 * 1024;

/// Forced health setting of `force-health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForcedHealth {
    Up,
    Down,
    /// Back to the health checker's verdict.
    Auto,
}

/// Which resources `list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListWhat {
    Rules,
    Services,
    Backends,
}

/// A backend to add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBackend {
    pub address: IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub failover: bool,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// Every request. Reads first, then changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Verb {
    Status,
    List {
        what: ListWhat,
    },
    DescribeService {
        service: String,
    },
    AddBackend {
        service: String,
        backend: NewBackend,
    },
    RemoveBackend {
        service: String,
        backend: String,
    },
    SetWeight {
        service: String,
        backend: String,
        weight: u32,
    },
    Drain {
        service: String,
        backend: String,
    },
    Undrain {
        service: String,
        backend: String,
    },
    Maintenance {
        service: String,
        backend: String,
        on: bool,
    },
    ForceHealth {
        service: String,
        backend: String,
        health: ForcedHealth,
    },
    /// Withdraw every VIP announcement (the dataplane keeps serving).
    NodeDrain,
    /// Announce again.
    NodeUndrain,
    Reload,
}

impl Verb {
    /// Whether the verb changes anything (and so needs a privileged peer).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Verb::Status | Verb::List { .. } | Verb::DescribeService { .. }
        )
    }
}

/// Kinds of refusal, stable for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not JSON, not an object, unknown verb, missing or misspelt field.
    BadRequest,
    /// The client speaks another protocol version.
    UnsupportedVersion,
    /// The peer may not change anything.
    PermissionDenied,
    /// No such backend service or backend.
    NotFound,
    /// The change would make an invalid configuration (message lists every error).
    Invalid,
    /// The dataplane refused the change; nothing was changed.
    Dataplane,
    /// The agent failed in a way it did not expect.
    Internal,
    /// Too many admin connections are open; this one is closed (see `admin.max_connections`).
    Busy,
    /// The peer sent nothing for `admin.idle_timeout_sec`; the connection is closed.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn ok(result: serde_json::Value) -> Self {
        Response {
            version: VERSION,
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(e: ErrorBody) -> Self {
        Response {
            version: VERSION,
            ok: false,
            result: None,
            error: Some(e),
        }
    }
}

/// Encodes a request line (without the newline).
pub fn encode_request(verb: &Verb) -> String {
    let mut v = serde_json::to_value(verb).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("version".into(), VERSION.into());
    }
    v.to_string()
}

/// Decodes a request line, with a message that says what is wrong and what to send.
pub fn parse_request(line: &str) -> Result<Verb, ErrorBody> {
    let bad = |m: String| ErrorBody::new(ErrorKind::BadRequest, m);
    let mut v: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
        bad(format!(
            "request is not valid JSON ({e}); send one JSON object per line"
        ))
    })?;
    let o = v.as_object_mut().ok_or_else(|| {
        bad("request must be a JSON object such as {\"version\":1,\"verb\":\"status\"}".into())
    })?;
    match o.remove("version") {
        None => {
            return Err(bad(format!(
                "request has no \"version\"; this agent speaks version {VERSION}"
            )))
        }
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(VERSION as u64) => {}
        Some(other) => {
            return Err(ErrorBody::new(
                ErrorKind::UnsupportedVersion,
                format!(
                "protocol version {other} is not supported; this agent speaks version {VERSION}"
            ),
            ))
        }
    }
    if !o.contains_key("verb") {
        return Err(bad("request has no \"verb\" (status, list, describe-service, add-backend, remove-backend, set-weight, drain, undrain, maintenance, force-health, node-drain, node-undrain, reload)".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(format!("bad request: {e}")))
}

// ---- Results ----

/// `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub agent_version: String,
    pub pid: u32,
    pub config_file: Option<String>,
    pub uptime_sec: u64,
    pub forwarding_rules: usize,
    pub backend_services: usize,
    pub backends: usize,
    pub healthy_backends: usize,
    /// Maglev tables rebuilt (plans applied) since start.
    pub table_rebuilds: u64,
    pub config_changes: u64,
    /// The last reconcile error, if the dataplane is behind the desired state.
    pub last_error: Option<String>,
    /// Set when the maps' contents are unknown (a failed change whose rollback failed too)
    /// until a later reconcile has rewritten them whole.
    #[serde(default)]
    pub dataplane_unknown: Option<String>,
    /// Packets per XDP verdict reason (empty without an L4 dataplane).
    pub reasons: Vec<(String, u64)>,
    /// L7 listeners (empty when the L7 tier does not run).
    #[serde(default)]
    pub l7_listeners: Vec<L7ListenerInfo>,
    /// VIP announcements (absent without an `[announce]` daemon).
    #[serde(default)]
    pub announce: Option<crate::model::announce::AnnounceStatus>,
}

/// One L7 listener as `status` shows it (defined by the L7 tier, which reports it).
pub use crate::l7::stats::L7ListenerInfo;

/// One forwarding rule (`list rules`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub name: String,
    pub address: IpAddr,
    pub protocol: String,
    /// "80,443" or "all".
    pub ports: String,
    pub backend_service: Option<String>,
    pub target: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub no_backend: u64,
}

/// One backend service (`list services`, `describe service`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub protocol: String,
    pub health_check: Option<String>,
    pub session_affinity: String,
    pub failover_ratio: f64,
    pub connection_draining_timeout_sec: u32,
    /// L4: "L2_DSR", "IPIP" or "GUE".
    #[serde(default)]
    pub forwarding: String,
    /// GUE's outer destination port.
    #[serde(default)]
    pub gue_port: Option<u16>,
    pub backends: Vec<BackendInfo>,
}

/// One backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub service: String,
    pub name: String,
    pub address: IpAddr,
    /// Encapsulated forwarding: the outer source address toward this backend (the outer
    /// destination is `address`); `None` until the route is resolved, or for L2 DSR.
    #[serde(default)]
    pub outer_src: Option<IpAddr>,
    pub port: Option<u16>,
    pub weight: u32,
    pub failover: bool,
    /// "healthy", "unhealthy", "unknown" (no verdict yet) or "unchecked" (the service has
    /// no health check); the checker's verdict, before any forced override.
    pub health: String,
    /// "up"/"down" when forced by the admin.
    pub forced: Option<String>,
    /// "ready", "draining", "drained" or "maintenance".
    pub state: String,
    /// Chosen for new flows (in the Maglev table).
    pub in_table: bool,
    /// Seconds left before a draining backend's flows are evicted.
    pub drain_remaining_sec: Option<f64>,
    /// Backend slot in the dataplane (L4 only).
    pub slot: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// L7 services only: the proxy's figures (the L4 columns above stay zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l7: Option<L7BackendFigures>,
}

/// What the L7 proxy says about one backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct L7BackendFigures {
    pub requests: u64,
    /// Requests that got a 5xx from the backend, or no answer.
    pub errors: u64,
    pub in_flight: u64,
    /// Ejected by outlier detection right now.
    pub ejected: bool,
    pub ejections: u32,
}

/// Result of a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeInfo {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_verb() {
        let verbs = vec![
            Verb::Status,
            Verb::List {
                what: ListWhat::Backends,
            },
            Verb::DescribeService {
                service: "web".into(),
            },
            Verb::AddBackend {
                service: "web".into(),
                backend: NewBackend {
                    address: "10.0.0.9".parse().unwrap(),
                    port: Some(80),
                    weight: Some(3),
                    failover: true,
                    name: Some("b9".into()),
                    mac: None,
                },
            },
            Verb::RemoveBackend {
                service: "web".into(),
                backend: "b9".into(),
            },
            Verb::SetWeight {
                service: "web".into(),
                backend: "b1".into(),
                weight: 5,
            },
            Verb::Drain {
                service: "web".into(),
                backend: "b1".into(),
            },
            Verb::Undrain {
                service: "web".into(),
                backend: "b1".into(),
            },
            Verb::Maintenance {
                service: "web".into(),
                backend: "b1".into(),
                on: true,
            },
            Verb::ForceHealth {
                service: "web".into(),
                backend: "b1".into(),
                health: ForcedHealth::Auto,
            },
            Verb::NodeDrain,
            Verb::NodeUndrain,
            Verb::Reload,
        ];
        for v in verbs {
            let line = encode_request(&v);
            assert_eq!(parse_request(&line).unwrap(), v, "{line}");
        }
    }

    #[test]
    fn wire_shape_is_flat_and_versioned() {
        let line = encode_request(&Verb::Drain {
            service: "web".into(),
            backend: "b1".into(),
        });
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["version"], 1);
        assert_eq!(v["verb"], "drain");
        assert_eq!(v["backend"], "b1");
        let v = parse_request(
            r#"{"version":1,"verb":"force-health","service":"s","backend":"b","health":"down"}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            Verb::ForceHealth {
                service: "s".into(),
                backend: "b".into(),
                health: ForcedHealth::Down
            }
        );
    }

    fn refused(line: &str) -> ErrorBody {
        parse_request(line).expect_err(line)
    }

    #[test]
    fn malformed_requests_are_refused_clearly() {
        let e = refused("{not json");
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("not valid JSON"), "{e}");
        let e = refused("[1,2]");
        assert!(e.message.contains("JSON object"), "{e}");
        let e = refused(r#"{"verb":"status"}"#);
        assert!(e.message.contains("no \"version\""), "{e}");
        let e = refused(r#"{"version":2,"verb":"status"}"#);
        assert_eq!(e.kind, ErrorKind::UnsupportedVersion);
        assert!(
            e.message.contains("version 2") && e.message.contains("speaks version 1"),
            "{e}"
        );
        let e = refused(r#"{"version":1}"#);
        assert!(e.message.contains("no \"verb\""), "{e}");
        let e = refused(r#"{"version":1,"verb":"explode"}"#);
        assert!(e.message.contains("unknown variant `explode`"), "{e}");
        let e = refused(r#"{"version":1,"verb":"drain","service":"web"}"#);
        assert!(e.message.contains("missing field `backend`"), "{e}");
        let e = refused(r#"{"version":1,"verb":"drain","service":"web","backend":"b","extra":1}"#);
        assert!(e.message.contains("unknown field `extra`"), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused_by_the_parser() {
        let e =
            refused(r#"{"version":1,"verb":"set-weight","service":"s","backend":"b","weight":-1}"#);
        assert!(e.message.contains("invalid value"), "{e}");
        let e = refused(
            r#"{"version":1,"verb":"set-weight","service":"s","backend":"b","weight":99999999999}"#,
        );
        assert!(
            e.message.contains("invalid value") || e.message.contains("u32"),
            "{e}"
        );
        let e = refused(
            r#"{"version":1,"verb":"add-backend","service":"s","backend":{"address":"10.0.0.300"}}"#,
        );
        assert!(e.message.contains("invalid IP address"), "{e}");
        let e = refused(
            r#"{"version":1,"verb":"add-backend","service":"s","backend":{"address":"10.0.0.3","port":70000}}"#,
        );
        assert!(e.message.contains("invalid value"), "{e}");
        let e = refused(
            r#"{"version":1,"verb":"force-health","service":"s","backend":"b","health":"sideways"}"#,
        );
        assert!(e.message.contains("unknown variant `sideways`"), "{e}");
    }

    #[test]
    fn only_reads_are_not_changes() {
        assert!(!Verb::Status.is_change());
        assert!(!Verb::List {
            what: ListWhat::Rules
        }
        .is_change());
        assert!(!Verb::DescribeService {
            service: "s".into()
        }
        .is_change());
        assert!(Verb::Reload.is_change());
        assert!(Verb::Drain {
            service: "s".into(),
            backend: "b".into()
        }
        .is_change());
    }
}
