//! The routing table: everything a request needs, built from one [`Config`] and swapped
//! whole on reload (arc-swap), so a request sees one configuration from start to end.
//!
//! Backends and counters outlive a table: a [`Registry`] hands the same `Arc<Backend>` and
//! `Arc<ServiceCounters>` to the next table while the service and backend keep their names
//! and addresses, so in-flight counts, outlier state and metrics carry over a reload.

use super::{
    outlier::OutlierPolicy,
    router::{Router, RouterError},
    select::{self, Backend, Selector},
    stats::ServiceCounters,
    tls::{self, CertSet},
    L7Error,
};
use crate::config::{BackendProtocol, BackendService, Config, SessionAffinity};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// How the proxy talks to a service's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// HTTP/1.1 over TCP.
    Http1,
    /// HTTP/2 with prior knowledge over TCP (RFC 9113 §3.3).
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS (ALPN h2).
    Http2,
}

/// One backend service at run time.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub config: BackendService,
    pub upstream: Upstream,
    pub selector: Selector,
    pub counters: Arc<ServiceCounters>,
    pub outlier: OutlierPolicy,
    /// Backend-service timeout (SEMANTICS: 30 s, first byte sent to last byte received).
    pub timeout: Duration,
    /// Whether session affinity derives a key (hash or cookie) for requests.
    pub affinity: bool,
}

/// Where an L7 forwarding rule listens and which target proxy serves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    /// Target HTTP(S) proxy name.
    pub proxy: String,
    pub tls: bool,
}

/// A target proxy: its URL map (index into `routers`) and, for HTTPS, its TLS settings.
#[derive(Debug)]
pub struct Proxy {
    pub router: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// What a listener serves: read per connection from the current table.
#[derive(Debug, Clone)]
pub struct ListenerRoute {
    pub proxy: Arc<str>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Everything a request reads, from one configuration.
#[derive(Debug)]
pub struct Table {
    pub generation: u64,
    pub routers: Vec<Router>,
    pub proxies: HashMap<String, Proxy>,
    pub services: HashMap<String, Arc<Service>>,
    pub listeners: Vec<ListenerSpec>,
    /// Bound address → what it serves.
    pub routes: HashMap<SocketAddr, ListenerRoute>,
}

/// Backends and counters that outlive one table.
#[derive(Debug, Default)]
pub struct Registry {
    backends: Mutex<HashMap<(String, String, SocketAddr), Arc<Backend>>>,
    counters: Mutex<HashMap<String, Arc<ServiceCounters>>>,
}

impl Registry {
    fn backend(&self, service: &str, name: &str, addr: SocketAddr) -> Arc<Backend> {
        let mut m = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((service.to_string(), name.to_string(), addr))
            .or_insert_with(|| Arc::new(Backend::new(service, name.to_string(), addr)))
            .clone()
    }

    fn counters(&self, service: &str) -> Arc<ServiceCounters> {
        let mut m = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(service.to_string()).or_default().clone()
    }

    /// Forgets backends and counters the current table no longer uses.
    fn retain(&self, table: &Table) {
        let mut b = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|(s, n, _), _| {
            table
                .services
                .get(s)
                .is_some_and(|svc| svc.selector.backends.iter().any(|x| &x.name == n))
        });
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        c.retain(|s, _| table.services.contains_key(s));
    }
}

fn upstream_of(p: BackendProtocol) -> Option<Upstream> {
    match p {
        BackendProtocol::Http => Some(Upstream::Http1),
        BackendProtocol::H2c => Some(Upstream::H2c),
        BackendProtocol::Https => Some(Upstream::Https),
        BackendProtocol::Http2 => Some(Upstream::Http2),
        BackendProtocol::Tcp | BackendProtocol::Udp => None,
    }
}

/// The L7 forwarding rules of a configuration, one listener per (address, port).
pub fn listeners(cfg: &Config) -> Vec<ListenerSpec> {
    let mut out = Vec::new();
    for fr in cfg.forwarding_rules.values() {
        let Some(t) = &fr.target else { continue };
        let tls = cfg.target_https_proxies.contains_key(t);
        for p in &fr.ports {
            out.push(ListenerSpec {
                addr: SocketAddr::new(fr.ip_address, *p),
                proxy: t.clone(),
                tls,
            });
        }
    }
    out.sort();
    out
}

/// Whether a configuration has anything for the L7 tier to serve.
pub fn has_l7(cfg: &Config) -> bool {
    cfg.forwarding_rules.values().any(|f| f.target.is_some())
}

/// Builds a table; fails without side effects other than registry entries.
pub fn build(cfg: &Config, generation: u64, registry: &Registry) -> Result<Table, L7Error> {
    let mut routers = Vec::new();
    let mut router_index = HashMap::new();
    for (name, map) in &cfg.url_maps {
        router_index.insert(name.clone(), routers.len());
        routers.push(Router::compile(name, map).map_err(L7Error::Router)?);
    }
    let mut services = HashMap::new();
    for (name, bs) in &cfg.backend_services {
        let Some(upstream) = upstream_of(bs.protocol) else {
            continue;
        };
        let mut members = Vec::new();
        for b in &bs.backends {
            let port = b.port.ok_or_else(|| L7Error::Config {
                place: format!("backend_services.{name}"),
                message: format!("backend {} has no port", b.display_name()),
            })?;
            let backend =
                registry.backend(name, &b.display_name(), SocketAddr::new(b.address, port));
            members.push((
                backend,
                select::effective_weight(b.weight, b.capacity_scaler),
            ));
        }
        let affinity = bs.session_affinity != SessionAffinity::None;
        let policy = select::policy_of(bs);
        let selector = Selector::new(
            policy,
            affinity,
            members,
            bs.consistent_hash.minimum_ring_size,
        )
        .with_capacity(super::capacity::Capacity::of(bs));
        services.insert(
            name.clone(),
            Arc::new(Service {
                name: name.clone(),
                config: bs.clone(),
                upstream,
                selector,
                counters: registry.counters(name),
                outlier: OutlierPolicy::from(&bs.outlier_detection),
                timeout: Duration::from_secs_f64(bs.timeout_sec),
                affinity,
            }),
        );
    }
    for (i, router) in routers.iter().enumerate() {
        for s in router.services() {
            if !services.contains_key(s) {
                let map = cfg.url_maps.keys().nth(i).cloned().unwrap_or_default();
                return Err(L7Error::Router(RouterError {
                    place: format!("url_maps.{map}"),
                    message: format!("backend service {s:?} does not exist or is not an L7 (HTTP/HTTPS/HTTP2/H2C) service"),
                }));
            }
        }
    }
    let mut proxies = HashMap::new();
    for (name, p) in &cfg.target_http_proxies {
        proxies.insert(
            name.clone(),
            Proxy {
                router: router_of(&router_index, &p.url_map, name)?,
                tls: None,
            },
        );
    }
    for (name, p) in &cfg.target_https_proxies {
        let mut certs = Vec::new();
        for c in &p.ssl_certificates {
            let sc = cfg.ssl_certificates.get(c).ok_or_else(|| L7Error::Config {
                place: format!("target_https_proxies.{name}.ssl_certificates"),
                message: format!("no certificate named {c:?}"),
            })?;
            certs.push(tls::load_certificate(c, sc)?);
        }
        proxies.insert(
            name.clone(),
            Proxy {
                router: router_of(&router_index, &p.url_map, name)?,
                tls: Some(Arc::new(tls::server_config(
                    name,
                    Arc::new(CertSet::new(certs)),
                )?)),
            },
        );
    }
    let listeners = listeners(cfg);
    let routes = listeners
        .iter()
        .map(|l| {
            let tls = proxies.get(&l.proxy).and_then(|p| p.tls.clone());
            (
                l.addr,
                ListenerRoute {
                    proxy: l.proxy.as_str().into(),
                    tls,
                },
            )
        })
        .collect();
    let table = Table {
        generation,
        routers,
        proxies,
        services,
        listeners,
        routes,
    };
    registry.retain(&table);
    Ok(table)
}

fn router_of(index: &HashMap<String, usize>, map: &str, proxy: &str) -> Result<usize, L7Error> {
    index.get(map).copied().ok_or_else(|| L7Error::Config {
        place: format!("target proxy {proxy}"),
        message: format!("no URL map named {map:?}"),
    })
}
