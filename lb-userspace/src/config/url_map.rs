//! URL maps (L7 routing), as SEMANTICS.md describes them: host rules select a path matcher;
//! a path matcher has path rules (longest match) or route rules (priority order).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UrlMap {
    pub default_service: Option<String>,
    pub default_url_redirect: Option<UrlRedirect>,
    pub default_route_action: Option<RouteAction>,
    pub host_rules: Vec<HostRule>,
    pub path_matchers: Vec<PathMatcher>,
    pub header_action: Option<HeaderAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostRule {
    /// `host[:port]`, with an optional leading `*` wildcard.
    pub hosts: Vec<String>,
    pub path_matcher: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PathMatcher {
    pub name: String,
    pub default_service: Option<String>,
    pub default_url_redirect: Option<UrlRedirect>,
    pub default_route_action: Option<RouteAction>,
    pub path_rules: Vec<PathRule>,
    pub route_rules: Vec<RouteRule>,
    pub header_action: Option<HeaderAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PathRule {
    /// Paths, each exact or ending in `/*`; the longest match wins.
    pub paths: Vec<String>,
    pub service: Option<String>,
    pub route_action: Option<RouteAction>,
    pub url_redirect: Option<UrlRedirect>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteRule {
    /// Lower numbers are tried first; unique within a path matcher.
    pub priority: u32,
    pub match_rules: Vec<MatchRule>,
    pub service: Option<String>,
    pub route_action: Option<RouteAction>,
    pub url_redirect: Option<UrlRedirect>,
    pub header_action: Option<HeaderAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MatchRule {
    pub prefix_match: Option<String>,
    pub full_path_match: Option<String>,
    pub regex_match: Option<String>,
    pub path_template_match: Option<String>,
    pub ignore_case: bool,
    pub header_matches: Vec<HeaderMatch>,
    pub query_parameter_matches: Vec<QueryParameterMatch>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderMatch {
    pub header_name: String,
    pub exact_match: Option<String>,
    pub prefix_match: Option<String>,
    pub suffix_match: Option<String>,
    pub regex_match: Option<String>,
    pub present_match: Option<bool>,
    pub invert_match: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryParameterMatch {
    pub name: String,
    pub exact_match: Option<String>,
    pub regex_match: Option<String>,
    pub present_match: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RouteAction {
    pub weighted_backend_services: Vec<WeightedBackendService>,
    pub url_rewrite: Option<UrlRewrite>,
    /// Per-route timeout, overriding the backend service's.
    pub timeout_sec: Option<f64>,
    pub retry_policy: Option<RetryPolicy>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WeightedBackendService {
    pub backend_service: String,
    /// 0..=1000; share = weight / sum.
    pub weight: u32,
    pub header_action: Option<HeaderAction>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UrlRewrite {
    pub path_prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub path_template_rewrite: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// `5xx`, `gateway-error`, `connect-failure`, `retriable-4xx`, `refused-stream`, `reset`.
    pub retry_conditions: Vec<String>,
    pub num_retries: Option<u32>,
    pub per_try_timeout_sec: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectResponseCode {
    /// 301.
    #[default]
    MovedPermanentlyDefault,
    /// 302.
    Found,
    /// 303.
    SeeOther,
    /// 307, keeps the method.
    TemporaryRedirect,
    /// 308, keeps the method.
    PermanentRedirect,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UrlRedirect {
    pub host_redirect: Option<String>,
    pub path_redirect: Option<String>,
    pub prefix_redirect: Option<String>,
    pub redirect_response_code: RedirectResponseCode,
    pub https_redirect: bool,
    pub strip_query: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderAction {
    pub request_headers_to_add: Vec<HeaderToAdd>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<HeaderToAdd>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderToAdd {
    pub header_name: String,
    pub header_value: String,
    /// Replace existing values instead of appending.
    pub replace: bool,
}
