//! The routing table: everything a request needs, built from one [`Config`] and swapped
//! whole on reload (arc-swap), so a request sees one configuration from start to end.
//!
//! Backends and counters outlive a table: a [`Registry`] hands the same `Arc<Backend>` and
//! `Arc<ServiceCounters>` to the next table while the service and backend keep their names
//! and addresses, so in-flight counts, outlier state and metrics carry over a reload.

use super::{
    outlier::OutlierPolicy,
    router::Router,
    select::{self, Backend, Selector},
    stats::ServiceCounters,
    tls::{self, CertSet},
    L7Error,
};
use crate::config::{BackendProtocol, BackendService, Config, SessionAffinity};
use crate::model::Model;
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
    /// Backend keep-alive (`keepalive_timeout_sec`, 600 s).
    pub keepalive: Duration,
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
    pub routers: Vec<Arc<Router>>,
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

    /// Forgets backends and counters `table` (about to become the current one) no longer
    /// uses. Called when a table commits, never when one is only prepared.
    pub(super) fn retain(&self, table: &Table) {
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

/// Builds a table; fails without side effects other than new registry entries (forgotten
/// again at the next commit).
pub fn build(model: &Model, generation: u64, registry: &Registry) -> Result<Table, L7Error> {
    let cfg = model.config();
    // URL maps were compiled (and their services checked) by `model::compile`.
    let mut routers = Vec::new();
    let mut router_index = HashMap::new();
    for (name, router) in model.routers() {
        router_index.insert(name.clone(), routers.len());
        routers.push(router.clone());
    }
    let services = services(cfg, registry)?;
    let proxies = proxies(cfg, &router_index)?;
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
    Ok(Table {
        generation,
        routers,
        proxies,
        services,
        listeners,
        routes,
    })
}

/// The L7 backend services, with backends and counters from the registry.
fn services(cfg: &Config, registry: &Registry) -> Result<HashMap<String, Arc<Service>>, L7Error> {
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
                timeout: crate::config::limits::duration(bs.timeout_sec),
                affinity,
                keepalive: Duration::from_secs(u64::from(bs.keepalive_timeout_sec)),
            }),
        );
    }
    Ok(services)
}

/// The target proxies: their URL map and, for HTTPS, certificates read and TLS set up.
fn proxies(
    cfg: &Config,
    router_index: &HashMap<String, usize>,
) -> Result<HashMap<String, Proxy>, L7Error> {
    let mut proxies = HashMap::new();
    for (name, p) in &cfg.target_http_proxies {
        proxies.insert(
            name.clone(),
            Proxy {
                router: router_of(router_index, &p.url_map, name)?,
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
                router: router_of(router_index, &p.url_map, name)?,
                tls: Some(Arc::new(tls::server_config(
                    name,
                    Arc::new(CertSet::new(certs)),
                )?)),
            },
        );
    }
    Ok(proxies)
}

/// Backends of `old` that `new` no longer has, each with its service's connection
/// draining timeout: requests still running on them are closed when it ends.
pub fn removed_backends(old: &Table, new: &Table) -> Vec<(Arc<Backend>, Duration)> {
    let mut out = Vec::new();
    for (name, s) in &old.services {
        let kept = new.services.get(name);
        for b in &s.selector.backends {
            let still = kept.is_some_and(|n| n.selector.backends.iter().any(|x| Arc::ptr_eq(x, b)));
            if !still {
                let t = Duration::from_secs(s.config.connection_draining_timeout_sec.into());
                out.push((b.clone(), t));
            }
        }
    }
    out
}

fn router_of(index: &HashMap<String, usize>, map: &str, proxy: &str) -> Result<usize, L7Error> {
    index.get(map).copied().ok_or_else(|| L7Error::Config {
        place: format!("target proxy {proxy}"),
        message: format!("no URL map named {map:?}"),
    })
}
