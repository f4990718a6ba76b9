//! URL map matching, pure (no I/O): a configured [`UrlMap`] is compiled once per
//! configuration into a [`Router`] (regexes and templates compiled, rules sorted), and each
//! request is matched against it by [`Router::route`].
//!
//! Semantics (SEMANTICS.md, "URL map", after Google Cloud's URL map reference):
//! - host rules match `host[:port]`; an exact host beats a `*` wildcard, a longer wildcard
//!   suffix beats a shorter one, and a Host with a port that matches nothing is retried
//!   without its port; no host rule → the map's defaults;
//! - path rules: the longest matching path wins, `/x/*` matches `/x/` and below, query and
//!   fragment are ignored;
//! - route rules: lowest priority number first, first match wins; within a rule any
//!   match rule may match, and all conditions of one match rule must hold.

pub use super::actions::{
    apply_template_rewrite, compile_template, pick_weighted, redirect, rewrite_path,
};
use super::retry::RetryPlan;
pub use super::route_match::query_param;
use super::route_match::{compile_match, CompiledMatch};
use crate::config::url_map::*;
use http::HeaderMap;
use regex::Regex;
use std::{collections::HashMap, time::Duration};

/// A URL map that cannot be compiled (bad regex or template); validation reports these
/// with their place before a configuration is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {message}")]
pub struct RouterError {
    /// Dotted place in the configuration, e.g. `url_maps.web.path_matchers[0].route_rules[1]`.
    pub place: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

/// What the router needs to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// Host header (HTTP/1.1) or `:authority` (HTTP/2), as the client sent it.
    pub host: &'a str,
    /// Path without query or fragment.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// `http` or `https`, for redirects that keep the scheme.
    pub scheme: &'a str,
}

/// One backend service of a (possibly weighted) forward action.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedService {
    pub service: String,
    pub weight: u32,
    pub header_action: Option<HeaderAction>,
}

/// Forward to backend services, with the route action's rewrites and policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    pub services: Vec<WeightedService>,
    /// Sum of weights (≥ 1 for a single service).
    pub total_weight: u32,
    pub url_rewrite: Option<UrlRewrite>,
    /// Per-route timeout, overriding the backend service's.
    pub timeout: Option<Duration>,
    /// The route's retry policy, or the default one (SEMANTICS: one retry).
    pub retry: RetryPlan,
}

/// What a matched rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Forward(Forward),
    Redirect(UrlRedirect),
    /// A path matcher or map without any default: 404.
    NotFound,
}

/// How the path was matched, for prefix and template rewrites and prefix redirects.
#[derive(Debug, Clone, Copy)]
pub enum Matched<'a> {
    /// Nothing to replace (defaults, full-path and regex matches).
    Whole,
    /// The literal prefix that matched (`/x/` for `/x/*`, or a route rule's prefix).
    Prefix(&'a str),
    /// A path template; its captures feed `path_template_rewrite`.
    Template(&'a Regex),
}

/// The result of routing one request.
#[derive(Debug, Clone)]
pub struct Routed<'a> {
    pub action: &'a Action,
    pub matched: Matched<'a>,
    /// Header actions from the outside in: URL map, path matcher, rule.
    pub header_actions: [Option<&'a HeaderAction>; 3],
}

/// A compiled URL map.
#[derive(Debug)]
pub struct Router {
    default: Action,
    header_action: Option<HeaderAction>,
    exact_hosts: HashMap<String, usize>,
    /// (suffix without `*`, matcher), longest suffix first.
    wildcard_hosts: Vec<(String, usize)>,
    matchers: Vec<Matcher>,
}

#[derive(Debug)]
struct Matcher {
    default: Option<Action>,
    header_action: Option<HeaderAction>,
    path_rules: Vec<CompiledPathRule>,
    route_rules: Vec<CompiledRouteRule>,
}

#[derive(Debug)]
struct CompiledPathRule {
    /// (literal, is `/*` wildcard) — for a wildcard the literal keeps its trailing `/`.
    paths: Vec<(String, bool)>,
    action: Action,
}

#[derive(Debug)]
struct CompiledRouteRule {
    priority: u32,
    matches: Vec<CompiledMatch>,
    action: Action,
    header_action: Option<HeaderAction>,
}

fn err(place: &str, message: impl Into<String>) -> RouterError {
    RouterError {
        place: place.to_string(),
        message: message.into(),
    }
}

fn compile_action(
    place: &str,
    service: &Option<String>,
    route_action: &Option<RouteAction>,
    redirect: &Option<UrlRedirect>,
) -> Result<Option<Action>, RouterError> {
    if let Some(r) = redirect {
        return Ok(Some(Action::Redirect(r.clone())));
    }
    let ra = route_action.clone().unwrap_or_default();
    let services: Vec<WeightedService> = match service {
        Some(s) => vec![WeightedService {
            service: s.clone(),
            weight: 1,
            header_action: None,
        }],
        None => ra
            .weighted_backend_services
            .iter()
            .map(|w| WeightedService {
                service: w.backend_service.clone(),
                weight: w.weight,
                header_action: w.header_action.clone(),
            })
            .collect(),
    };
    if services.is_empty() {
        return Ok(None);
    }
    if services.iter().any(|s| s.weight > 1000) {
        // Also keeps the sum far from u32 overflow.
        return Err(err(
            place,
            "weighted backend service weights must be 0..=1000",
        ));
    }
    let total_weight: u32 = services.iter().map(|s| s.weight).sum();
    if total_weight == 0 {
        return Err(err(
            place,
            "weighted backend services all have weight 0; give at least one a weight",
        ));
    }
    let timeout = match ra.timeout_sec {
        Some(t) if t > 0.0 && t.is_finite() => Some(crate::config::limits::duration(t)),
        Some(_) => return Err(err(place, "route_action.timeout_sec must be positive")),
        None => None,
    };
    Ok(Some(Action::Forward(Forward {
        services,
        total_weight,
        url_rewrite: ra.url_rewrite,
        timeout,
        retry: RetryPlan::from_policy(ra.retry_policy.as_ref())
            .map_err(|e| err(place, e.to_string()))?,
    })))
}

/// One path matcher of a URL map: its path rules or route rules (not both) and default.
fn compile_matcher(mp: &str, pm: &PathMatcher) -> Result<Matcher, RouterError> {
    let mp = mp.to_string();
    let mut path_rules = Vec::new();
    for (i, pr) in pm.path_rules.iter().enumerate() {
        let pp = format!("{mp}.path_rules[{i}]");
        let action = compile_action(&pp, &pr.service, &pr.route_action, &pr.url_redirect)?
            .ok_or_else(|| {
                err(
                    &pp,
                    "needs service, route_action.weighted_backend_services or url_redirect",
                )
            })?;
        let mut paths = Vec::new();
        for p in &pr.paths {
            if !p.starts_with('/') {
                return Err(err(&pp, format!("path {p:?} must start with '/'")));
            }
            match p.strip_suffix('*') {
                Some(lit) if lit.ends_with('/') => paths.push((lit.to_string(), true)),
                Some(_) => {
                    return Err(err(
                        &pp,
                        format!("{p:?}: '*' is only allowed as a final '/*'"),
                    ))
                }
                None if p.contains(['*', '?', '#']) => {
                    return Err(err(&pp, format!("{p:?}: no '*', '?' or '#' inside a path")))
                }
                None => paths.push((p.clone(), false)),
            }
        }
        path_rules.push(CompiledPathRule { paths, action });
    }
    let mut route_rules = Vec::new();
    for (i, rr) in pm.route_rules.iter().enumerate() {
        let rp = format!("{mp}.route_rules[{i}]");
        let action = compile_action(&rp, &rr.service, &rr.route_action, &rr.url_redirect)?
            .ok_or_else(|| {
                err(
                    &rp,
                    "needs service, route_action.weighted_backend_services or url_redirect",
                )
            })?;
        let matches = rr
            .match_rules
            .iter()
            .enumerate()
            .map(|(j, m)| compile_match(&format!("{rp}.match_rules[{j}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        route_rules.push(CompiledRouteRule {
            priority: rr.priority,
            matches,
            action,
            header_action: rr.header_action.clone(),
        });
    }
    route_rules.sort_by_key(|r| r.priority);
    if !path_rules.is_empty() && !route_rules.is_empty() {
        return Err(err(&mp, "use either path_rules or route_rules, not both"));
    }
    Ok(Matcher {
        default: compile_action(
            &mp,
            &pm.default_service,
            &pm.default_route_action,
            &pm.default_url_redirect,
        )?,
        header_action: pm.header_action.clone(),
        path_rules,
        route_rules,
    })
}

impl Router {
    /// Compiles a URL map; `name` is used in error places.
    pub fn compile(name: &str, map: &UrlMap) -> Result<Router, RouterError> {
        let place = format!("url_maps.{name}");
        let default = compile_action(
            &place,
            &map.default_service,
            &map.default_route_action,
            &map.default_url_redirect,
        )?
        .unwrap_or(Action::NotFound);
        let mut matchers = Vec::new();
        let mut index = HashMap::new();
        for (mi, pm) in map.path_matchers.iter().enumerate() {
            let mp = format!("{place}.path_matchers[{mi}]");
            index.insert(pm.name.clone(), mi);

            matchers.push(compile_matcher(&mp, pm)?);
        }
        let mut exact_hosts = HashMap::new();
        let mut wildcard_hosts = Vec::new();
        for (i, hr) in map.host_rules.iter().enumerate() {
            let hp = format!("{place}.host_rules[{i}]");
            let &m = index
                .get(&hr.path_matcher)
                .ok_or_else(|| err(&hp, format!("no path matcher named {:?}", hr.path_matcher)))?;
            for h in &hr.hosts {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) if !suffix.contains('*') => {
                        wildcard_hosts.push((suffix.to_string(), m))
                    }
                    Some(_) => {
                        return Err(err(&hp, format!("{h:?}: only one leading '*' is allowed")))
                    }
                    None if h.contains('*') => {
                        return Err(err(&hp, format!("{h:?}: '*' only at the start")))
                    }
                    None => {
                        if exact_hosts.insert(h.clone(), m).is_some() {
                            return Err(err(&hp, format!("host {h:?} appears in two host rules")));
                        }
                    }
                }
            }
        }
        wildcard_hosts.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        Ok(Router {
            default,
            header_action: map.header_action.clone(),
            exact_hosts,
            wildcard_hosts,
            matchers,
        })
    }

    fn matcher_for_host(&self, host: &str) -> Option<usize> {
        let lower;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = host.to_ascii_lowercase();
            lower.as_str()
        } else {
            host
        };
        let find = |h: &str| {
            self.exact_hosts.get(h).copied().or_else(|| {
                self.wildcard_hosts
                    .iter()
                    // `*` alone matches anything; `*.x.com` needs at least one character
                    // before its suffix `.x.com`, so it does not match `x.com` itself.
                    .find(|(s, _)| s.is_empty() || (h.len() > s.len() && h.ends_with(s.as_str())))
                    .map(|(_, m)| *m)
            })
        };
        if let Some(m) = find(host) {
            return Some(m);
        }
        // A Host with a port that matched nothing is tried without its port (rules written
        // as a bare host match every port). IPv6 literals keep their brackets.
        match host.rsplit_once(':') {
            Some((h, port))
                if !port.is_empty()
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !h.is_empty() =>
            {
                find(h)
            }
            _ => None,
        }
    }

    /// Routes one request. Never fails: with no rule matching, the defaults apply.
    pub fn route<'a>(&'a self, req: &RequestView<'_>) -> Routed<'a> {
        let top = self.header_action.as_ref();
        let Some(mi) = self.matcher_for_host(req.host) else {
            return Routed {
                action: &self.default,
                matched: Matched::Whole,
                header_actions: [top, None, None],
            };
        };
        let m = &self.matchers[mi];
        let mid = m.header_action.as_ref();
        let fallback = Routed {
            action: m.default.as_ref().unwrap_or(&self.default),
            matched: Matched::Whole,
            header_actions: [top, mid, None],
        };
        if !m.path_rules.is_empty() {
            // Longest match wins; at equal length an exact path beats a wildcard because
            // a wildcard's literal (`/a/`) is one shorter than the exact path (`/a/b` ...).
            let mut best: Option<(usize, &CompiledPathRule, &str, bool)> = None;
            for rule in &m.path_rules {
                for (lit, wildcard) in &rule.paths {
                    let hit = if *wildcard {
                        req.path.starts_with(lit.as_str())
                    } else {
                        req.path == lit
                    };
                    let len = lit.len() + usize::from(!*wildcard);
                    if hit && best.is_none_or(|(l, ..)| len > l) {
                        best = Some((len, rule, lit, *wildcard));
                    }
                }
            }
            return match best {
                Some((_, rule, lit, wildcard)) => Routed {
                    action: &rule.action,
                    matched: if wildcard {
                        Matched::Prefix(lit)
                    } else {
                        Matched::Whole
                    },
                    header_actions: [top, mid, None],
                },
                None => fallback,
            };
        }
        for rule in &m.route_rules {
            for cm in &rule.matches {
                if let Some(matched) = cm.matches(req) {
                    return Routed {
                        action: &rule.action,
                        matched,
                        header_actions: [top, mid, rule.header_action.as_ref()],
                    };
                }
            }
        }
        fallback
    }

    /// Every backend service a forward action of this map names (for reference checks).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        let actions = std::iter::once(&self.default).chain(self.matchers.iter().flat_map(|m| {
            m.default
                .iter()
                .chain(m.path_rules.iter().map(|r| &r.action))
                .chain(m.route_rules.iter().map(|r| &r.action))
        }));
        actions.flat_map(|a| match a {
            Action::Forward(f) => f
                .services
                .iter()
                .map(|s| s.service.as_str())
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
    }

    /// Priorities of the route rules of each path matcher, in evaluation order (for tests
    /// and `describe`).
    pub fn route_priorities(&self) -> Vec<Vec<u32>> {
        self.matchers
            .iter()
            .map(|m| m.route_rules.iter().map(|r| r.priority).collect())
            .collect()
    }
}

#[cfg(test)]
#[path = "router_tests.rs"]
mod tests;
