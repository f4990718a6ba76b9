//! Serde shapes of the configuration file with the documented defaults (SEMANTICS.md).
//! Names follow Google Cloud's resource fields in snake_case. Every struct refuses unknown
//! fields, so a misspelt key is an error with its place rather than a silently ignored line.

use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::IpAddr, path::PathBuf};

pub use super::url_map::*;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub dataplane: Dataplane,
    #[serde(default)]
    pub admin: Admin,
    /// The L7 request log's destination and format.
    #[serde(default)]
    pub logging: Logging,
    #[serde(default)]
    pub health_checks: BTreeMap<String, HealthCheck>,
    #[serde(default)]
    pub backend_services: BTreeMap<String, BackendService>,
    #[serde(default)]
    pub forwarding_rules: BTreeMap<String, ForwardingRule>,
    #[serde(default)]
    pub url_maps: BTreeMap<String, UrlMap>,
    #[serde(default)]
    pub target_http_proxies: BTreeMap<String, TargetHttpProxy>,
    #[serde(default)]
    pub target_https_proxies: BTreeMap<String, TargetHttpsProxy>,
    #[serde(default)]
    pub ssl_certificates: BTreeMap<String, SslCertificate>,
    /// Connection limits and timeouts of the L7 listeners.
    #[serde(default)]
    pub l7: L7Limits,
    /// VIP announcements to routers through a routing daemon (several balancers behind ECMP).
    #[serde(default)]
    pub announce: Announce,
}

/// How the agent makes a routing daemon announce the VIPs it can serve. Fixed at start (a
/// reload that changes it is refused); which rules are announced follows every change.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Announce {
    /// `none` (default): nothing is announced; `bird`: BIRD 2 announces them.
    pub daemon: AnnounceDaemon,
    /// BIRD: the file the agent writes (atomically) with a static protocol holding one
    /// route per announced prefix; BIRD's configuration includes it.
    /// Default /var/lib/lb/bird-vips.conf (the packaged unit's StateDirectory); absolute.
    pub include_file: Option<PathBuf>,
    /// BIRD: its control socket, for `birdc -s <socket> configure` after each change of the
    /// announced set. Default /run/bird/bird.ctl (Debian's); absolute.
    pub control_socket: Option<PathBuf>,
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            daemon: AnnounceDaemon::None,
            include_file: None,
            control_socket: None,
        }
    }
}

impl Announce {
    pub const DEFAULT_INCLUDE_FILE: &'static str = "/var/lib/lb/bird-vips.conf";
    pub const DEFAULT_CONTROL_SOCKET: &'static str = "/run/bird/bird.ctl";

    /// The include file, with its default.
    pub fn include_file(&self) -> PathBuf {
        self.include_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_INCLUDE_FILE))
    }

    /// The control socket, with its default.
    pub fn control_socket(&self) -> PathBuf {
        self.control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_CONTROL_SOCKET))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceDaemon {
    /// No announcements (a single balancer, or routes set by hand).
    #[default]
    None,
    /// BIRD 2, through a generated include file and `birdc configure`.
    Bird,
}

/// Limits of the L7 tier's client side, for a proxy exposed to untrusted clients. Google
/// Cloud has no fields for these (its front ends apply fixed limits); the names say what
/// they bound. Changes apply to new connections at the next reload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct L7Limits {
    /// A new connection must finish its TLS handshake and send its first complete request
    /// head (HTTP/2: the connection preface and the first request) within this (10 s).
    pub first_request_timeout_sec: f64,
    /// An HTTP/1.1 request head, once its first byte arrived, must be complete within this
    /// (30 s).
    pub header_read_timeout_sec: f64,
    /// Open client connections per listener (10000); more are accepted and closed at once.
    /// All listeners together are also kept below the process's descriptor limit, with
    /// descriptors reserved for backends, health checks, the admin socket and metrics.
    pub max_connections_per_listener: u32,
    /// HTTP/2 streams a client may have open at once on one connection (100).
    pub http2_max_concurrent_streams: u32,
}

impl Default for L7Limits {
    fn default() -> Self {
        L7Limits {
            first_request_timeout_sec: 10.0,
            header_read_timeout_sec: 30.0,
            max_connections_per_listener: 10_000,
            http2_max_concurrent_streams: 100,
        }
    }
}

/// Where and how the XDP program runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Dataplane {
    /// Interfaces the XDP program is attached to (empty: L4 tier off).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    /// Maglev table size M, a prime (Maglev's default 65537; M > 100·N keeps imbalance ~1%).
    pub ring_size: u32,
    /// Backend services the Maglev map has room for.
    pub max_services: u32,
    /// Entries of each connection table (LRU): established and young, for IPv4 flows and for
    /// IPv6 flows and sessions.
    pub conn_table_size: u32,
    /// Young flows promoted into the connection table per second per CPU, at most; above
    /// it (a flood of flows that live past a second) promotion is skipped and counted.
    pub conn_promotions_per_sec: u32,
    /// bpffs folder where the program and maps are pinned, so a restarted agent adopts them.
    pub pin_path: PathBuf,
}

impl Default for Dataplane {
    fn default() -> Self {
        Dataplane {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Auto,
            ring_size: lb_common::limits::DEFAULT_RING_SIZE,
            max_services: lb_common::limits::DEFAULT_MAX_SERVICES,
            conn_table_size: lb_common::limits::DEFAULT_CONN_TABLE_SIZE,
            conn_promotions_per_sec: lb_common::limits::DEFAULT_CONN_PROMOTIONS_PER_SEC,
            pin_path: PathBuf::from("/sys/fs/bpf/lb"),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a warning.
    #[default]
    Auto,
    Native,
    Generic,
}

/// The agent's local control surfaces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Unix socket of the admin API (mode 0600).
    pub socket: PathBuf,
    /// Prometheus text metrics listen address, e.g. "127.0.0.1:9100" (off when absent).
    pub metrics_listen: Option<String>,
    /// Seconds an admin connection may stay silent (between or within requests) before the
    /// agent closes it.
    pub idle_timeout_sec: std::num::NonZeroU32,
    /// Admin connections served at once per class of peer (those that may change: root and
    /// the agent's user; and everyone else); more are answered `busy` and closed.
    pub max_connections: std::num::NonZeroU32,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            socket: PathBuf::from("/run/lb/admin.sock"),
            metrics_listen: None,
            idle_timeout_sec: std::num::NonZeroU32::new(30).expect("non-zero"),
            max_connections: std::num::NonZeroU32::new(64).expect("non-zero"),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum HealthCheckProtocol {
    Tcp,
    Http,
    Https,
    Http2,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PortSpecification {
    /// `port` of the health check (80 when absent).
    #[default]
    UseFixedPort,
    /// The backend's own serving port.
    UseServingPort,
}

/// A health check, shared by backend services of both tiers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub protocol: HealthCheckProtocol,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub port_specification: PortSpecification,
    #[serde(default = "default_request_path")]
    pub request_path: String,
    /// Host header of HTTP probes (the backend's address when absent).
    #[serde(default)]
    pub host: Option<String>,
    /// Text that must appear in the first 1024 bytes of a 200 response.
    #[serde(default)]
    pub response: Option<String>,
    /// Seconds between probes (5). Fractions are allowed, an extension over Google Cloud's
    /// whole seconds, so tests and latency-sensitive users can probe faster.
    #[serde(default = "five")]
    pub check_interval_sec: f64,
    /// Seconds a probe may take (5); never more than the interval.
    #[serde(default = "five")]
    pub timeout_sec: f64,
    #[serde(default = "two")]
    pub healthy_threshold: u32,
    #[serde(default = "two")]
    pub unhealthy_threshold: u32,
}

fn default_request_path() -> String {
    "/".into()
}
fn five() -> f64 {
    5.0
}
fn two() -> u32 {
    2
}
fn thirty() -> f64 {
    30.0
}
fn six_hundred() -> u32 {
    600
}
fn one() -> u32 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn three_hundred() -> u32 {
    300
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum BackendProtocol {
    /// L4 passthrough, TCP.
    Tcp,
    /// L4 passthrough, UDP.
    Udp,
    /// L7, HTTP/1.1 to backends.
    Http,
    /// L7, HTTP over TLS to backends.
    Https,
    /// L7, HTTP/2 to backends (TLS).
    Http2,
    /// L7, HTTP/2 without TLS (prior knowledge) to backends.
    H2c,
}

impl BackendProtocol {
    pub fn is_l4(self) -> bool {
        matches!(self, BackendProtocol::Tcp | BackendProtocol::Udp)
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SessionAffinity {
    #[default]
    None,
    ClientIpPortProto,
    ClientIpProto,
    ClientIp,
    ClientIpNoDestination,
    GeneratedCookie,
    HeaderField,
    HttpCookie,
}

/// How an L4 service's packets reach its backends (README "Routed backends").
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// Only the MACs change: backends share the balancer's L2 segment.
    #[default]
    #[serde(rename = "L2_DSR")]
    L2Dsr,
    /// IPv4 in IPv4 / IPv6 in IPv6 to the backend's address.
    #[serde(rename = "IPIP")]
    Ipip,
    /// GUE variant 1 (the IP packet directly in UDP) to the backend's address.
    #[serde(rename = "GUE")]
    Gue,
}

impl Forwarding {
    /// The value the program reads (`lb_common::encap::forwarding`).
    pub fn code(self) -> u32 {
        use lb_common::encap::forwarding;
        match self {
            Forwarding::L2Dsr => forwarding::L2_DSR,
            Forwarding::Ipip => forwarding::IPIP,
            Forwarding::Gue => forwarding::GUE,
        }
    }

    /// The name used in the configuration and by `lb describe`.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::L2Dsr => "L2_DSR",
            Forwarding::Ipip => "IPIP",
            Forwarding::Gue => "GUE",
        }
    }

    pub fn is_routed(self) -> bool {
        self != Forwarding::L2Dsr
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TrackingMode {
    #[default]
    PerConnection,
    PerSession,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Persistence {
    #[default]
    DefaultForProtocol,
    NeverPersist,
    AlwaysPersist,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionTrackingPolicy {
    pub tracking_mode: TrackingMode,
    /// Idle timeout of a tracked flow (600 s; up to 16 h only for PER_SESSION with
    /// less-than-5-tuple affinity).
    pub idle_timeout_sec: u32,
    pub connection_persistence_on_unhealthy_backends: Persistence,
}

impl Default for ConnectionTrackingPolicy {
    fn default() -> Self {
        ConnectionTrackingPolicy {
            tracking_mode: TrackingMode::PerConnection,
            idle_timeout_sec: 600,
            connection_persistence_on_unhealthy_backends: Persistence::DefaultForProtocol,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverPolicy {
    /// Failover backends take over when the healthy share of primaries is below this (0..1).
    pub failover_ratio: f64,
    pub drop_traffic_if_unhealthy: bool,
    pub disable_connection_drain_on_failover: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LocalityLbPolicy {
    RoundRobin,
    LeastRequest,
    RingHash,
    Random,
    Maglev,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BalancingMode {
    /// Requests per second (`max_rate_per_endpoint`), L7.
    #[default]
    Rate,
    /// Requests in flight against `max_connections_per_endpoint`, L7.
    Utilization,
    /// Connections: what an L4 passthrough service does (and the only mode it accepts).
    Connection,
}

/// A backend service's request log (Google Cloud's `logConfig`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Whether this service's requests are logged (when `logging.access_log` is not "off").
    pub enable: bool,
    /// Share of requests logged, 0.0..=1.0 (1.0).
    #[serde(default = "one_f")]
    pub sample_rate: f64,
}

/// Where request-log lines go (global; each service opts in or out with `log_config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Logging {
    /// "off" (default), "stderr", or a file path (appended to).
    pub access_log: String,
    pub access_log_format: AccessLogFormat,
}

impl Default for Logging {
    fn default() -> Self {
        Logging {
            access_log: "off".into(),
            access_log_format: AccessLogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// One `key=value` line per request.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Outlier detection (SEMANTICS defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    pub consecutive_gateway_failure: u32,
    pub enforcing_consecutive_gateway_failure: u32,
    pub consecutive_errors: u32,
    pub enforcing_consecutive_errors: u32,
    pub interval_sec: f64,
    pub base_ejection_time_sec: f64,
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_gateway_failure: 3,
            enforcing_consecutive_gateway_failure: 100,
            consecutive_errors: 5,
            enforcing_consecutive_errors: 0,
            interval_sec: 1.0,
            base_ejection_time_sec: 30.0,
            max_ejection_percent: 50,
        }
    }
}

/// HTTP_COOKIE affinity's cookie, or GENERATED_COOKIE's name override.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpCookie {
    pub name: Option<String>,
    pub path: Option<String>,
    pub ttl_sec: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistentHash {
    /// HEADER_FIELD affinity: the header hashed.
    pub http_header_name: Option<String>,
    /// HTTP_COOKIE affinity.
    pub http_cookie: Option<HttpCookie>,
    /// RING_HASH ring size.
    pub minimum_ring_size: Option<u32>,
}

/// A backend service: its backends, health check, affinity and policies. The protocol
/// decides the tier: TCP/UDP are L4 passthrough (XDP), HTTP/HTTPS/HTTP2/H2C are L7.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendService {
    pub protocol: BackendProtocol,
    #[serde(default)]
    pub health_check: Option<String>,
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    #[serde(default)]
    pub connection_tracking_policy: ConnectionTrackingPolicy,
    #[serde(default)]
    pub failover_policy: FailoverPolicy,
    /// L4: how packets reach the backends: L2 direct server return (default), or IPIP / GUE
    /// encapsulation toward backends on any routed subnet.
    #[serde(default)]
    pub forwarding: Forwarding,
    /// L4 with `forwarding = "GUE"`: the outer UDP destination port (6080).
    #[serde(default)]
    pub gue_port: Option<u16>,
    /// Connection draining timeout, 0..3600 s (300 s, Google Cloud's console default).
    #[serde(default = "three_hundred")]
    pub connection_draining_timeout_sec: u32,
    // ---- L7 only ----
    /// First byte sent to last byte received (30 s).
    #[serde(default = "thirty")]
    pub timeout_sec: f64,
    /// Default: ROUND_ROBIN without affinity, MAGLEV with affinity.
    #[serde(default)]
    pub locality_lb_policy: Option<LocalityLbPolicy>,
    /// RATE (default) or UTILIZATION on L7 services; CONNECTION (or nothing) on L4 ones.
    #[serde(default)]
    pub balancing_mode: Option<BalancingMode>,
    /// RATE/UTILIZATION target: requests per second per backend (× its capacity scaler).
    #[serde(default)]
    pub max_rate_per_endpoint: Option<f64>,
    /// UTILIZATION: a backend's in-flight capacity (requests in progress at 100%).
    #[serde(default)]
    pub max_connections_per_endpoint: Option<u32>,
    /// UTILIZATION target, 0.0..=1.0 of the in-flight capacity (0.8).
    #[serde(default)]
    pub max_utilization: Option<f64>,
    /// Request logging of this service (see `[logging]` for where lines go).
    #[serde(default)]
    pub log_config: Option<LogConfig>,
    /// GENERATED_COOKIE lifetime (0: session cookie).
    #[serde(default)]
    pub affinity_cookie_ttl_sec: u32,
    #[serde(default)]
    pub consistent_hash: ConsistentHash,
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Keep-alive idle timeout towards backends (600 s).
    #[serde(default = "six_hundred")]
    pub keepalive_timeout_sec: u32,
}

/// One backend: an address, optionally a port, a weight, primary or failover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Name used by the CLI and metrics (the address, or address:port, when absent).
    #[serde(default)]
    pub name: Option<String>,
    pub address: IpAddr,
    /// Serving port (L7: required; L4: the VIP's port is kept, this is for health checks).
    #[serde(default)]
    pub port: Option<u16>,
    /// Relative weight (capacity), 1..=1000; shares are weight / sum.
    #[serde(default = "one")]
    pub weight: u32,
    /// Capacity scaler 0 (drained) or 0.1..=1.0 (L7).
    #[serde(default = "one_f")]
    pub capacity_scaler: f64,
    #[serde(default)]
    pub failover: bool,
    /// L4: the backend's MAC for L2 direct server return (resolved from the neighbour
    /// table when absent).
    #[serde(default)]
    pub mac: Option<String>,
}

impl BackendConfig {
    /// The name the CLI, logs and metrics use.
    pub fn display_name(&self) -> String {
        match (&self.name, self.port) {
            (Some(n), _) => n.clone(),
            (None, Some(p)) => format!("{}:{}", self.address, p),
            (None, None) => self.address.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "UPPERCASE")]
pub enum IpProtocol {
    Tcp,
    Udp,
}

/// A forwarding rule: a VIP. With `backend_service` it is an L4 passthrough rule; with
/// `target` (a target HTTP or HTTPS proxy) it is an L7 listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ForwardingRule {
    pub ip_address: IpAddr,
    #[serde(default = "tcp")]
    pub ip_protocol: IpProtocol,
    /// Up to 5 ports; empty with `all_ports = true` for every port.
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub all_ports: bool,
    #[serde(default)]
    pub backend_service: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    /// L4 rules: whether this balancer announces the address to its routers (`[announce]`)
    /// while the rule can be served. Absent means yes; `false` opts the rule out. Refused
    /// on L7 rules, whose listeners are not announced.
    #[serde(default)]
    pub announce: Option<bool>,
}

fn tcp() -> IpProtocol {
    IpProtocol::Tcp
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetHttpProxy {
    pub url_map: String,
    /// Client keep-alive: an idle client connection (no request open, no bytes either way)
    /// is closed after this many seconds (600, the internal ALB's value; 5..=1200).
    #[serde(default = "six_hundred")]
    pub http_keep_alive_timeout_sec: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetHttpsProxy {
    pub url_map: String,
    /// Certificates, chosen by SNI; the first is the default.
    pub ssl_certificates: Vec<String>,
    /// Client keep-alive, as for [`TargetHttpProxy`] (600 s; 5..=1200).
    #[serde(default = "six_hundred")]
    pub http_keep_alive_timeout_sec: u32,
}

/// A certificate and key in PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SslCertificate {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}
