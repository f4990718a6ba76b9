//! Route-rule match conditions, pure: path (prefix, full path, regex, template), header
//! and query-parameter matchers (SEMANTICS.md, "route rules"; Google Cloud's
//! `routeRules[].matchRules[]`). Within one match rule every condition must hold.

use super::router::{compile_template, Matched, RequestView, RouterError};
use crate::config::url_map::MatchRule;
use regex::Regex;

fn err(place: &str, message: impl Into<String>) -> RouterError {
    RouterError {
        place: place.to_string(),
        message: message.into(),
    }
}

#[derive(Debug)]
pub(super) enum PathCond {
    Any,
    Prefix(String),
    Full(String),
    Regex(Regex),
    Template(Regex),
}

#[derive(Debug)]
pub(super) struct CompiledMatch {
    path: PathCond,
    ignore_case: bool,
    headers: Vec<CompiledHeaderMatch>,
    query: Vec<CompiledQueryMatch>,
}

#[derive(Debug)]
pub(super) enum ValueCond {
    Present(bool),
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

#[derive(Debug)]
pub(super) struct CompiledHeaderMatch {
    name: http::HeaderName,
    cond: ValueCond,
    invert: bool,
}

#[derive(Debug)]
pub(super) struct CompiledQueryMatch {
    name: String,
    cond: ValueCond,
}

/// Compiles a regex that must match the whole subject (Google Cloud uses RE2 full matches).
pub(super) fn full_regex(place: &str, re: &str, ignore_case: bool) -> Result<Regex, RouterError> {
    let flags = if ignore_case { "(?i)" } else { "" };
    Regex::new(&format!("{flags}^(?:{re})$"))
        .map_err(|e| err(place, format!("invalid regular expression {re:?}: {e}")))
}

fn value_cond(
    place: &str,
    present: Option<bool>,
    exact: &Option<String>,
    prefix: Option<&String>,
    suffix: Option<&String>,
    regex: &Option<String>,
) -> Result<ValueCond, RouterError> {
    Ok(if let Some(e) = exact {
        ValueCond::Exact(e.clone())
    } else if let Some(p) = prefix {
        ValueCond::Prefix(p.clone())
    } else if let Some(s) = suffix {
        ValueCond::Suffix(s.clone())
    } else if let Some(r) = regex {
        ValueCond::Regex(full_regex(place, r, false)?)
    } else {
        ValueCond::Present(present.unwrap_or(true))
    })
}

pub(super) fn compile_match(place: &str, m: &MatchRule) -> Result<CompiledMatch, RouterError> {
    let lc = |s: &str| {
        if m.ignore_case {
            s.to_ascii_lowercase()
        } else {
            s.to_string()
        }
    };
    let path = if let Some(p) = &m.prefix_match {
        PathCond::Prefix(lc(p))
    } else if let Some(p) = &m.full_path_match {
        PathCond::Full(lc(p))
    } else if let Some(r) = &m.regex_match {
        PathCond::Regex(full_regex(place, r, m.ignore_case)?)
    } else if let Some(t) = &m.path_template_match {
        PathCond::Template(compile_template(place, t)?)
    } else {
        PathCond::Any
    };
    let mut headers = Vec::new();
    for (i, h) in m.header_matches.iter().enumerate() {
        let hp = format!("{place}.header_matches[{i}]");
        let name = http::HeaderName::from_bytes(h.header_name.as_bytes())
            .map_err(|_| err(&hp, format!("{:?} is not a header name", h.header_name)))?;
        let cond = value_cond(
            &hp,
            h.present_match,
            &h.exact_match,
            h.prefix_match.as_ref(),
            h.suffix_match.as_ref(),
            &h.regex_match,
        )?;
        headers.push(CompiledHeaderMatch {
            name,
            cond,
            invert: h.invert_match,
        });
    }
    let mut query = Vec::new();
    for (i, q) in m.query_parameter_matches.iter().enumerate() {
        let qp = format!("{place}.query_parameter_matches[{i}]");
        let cond = value_cond(
            &qp,
            q.present_match,
            &q.exact_match,
            None,
            None,
            &q.regex_match,
        )?;
        query.push(CompiledQueryMatch {
            name: q.name.clone(),
            cond,
        });
    }
    Ok(CompiledMatch {
        path,
        ignore_case: m.ignore_case,
        headers,
        query,
    })
}

impl ValueCond {
    fn holds(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (ValueCond::Present(p), v) => v.is_some() == *p,
            (_, None) => false,
            (ValueCond::Exact(e), Some(v)) => v == e,
            (ValueCond::Prefix(p), Some(v)) => v.starts_with(p.as_str()),
            (ValueCond::Suffix(s), Some(v)) => v.ends_with(s.as_str()),
            (ValueCond::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

/// The value of query parameter `name` (`Some("")` for `?name` or `?name=`).
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

impl CompiledMatch {
    pub(super) fn matches<'a>(&'a self, req: &RequestView<'_>) -> Option<Matched<'a>> {
        let lower;
        let path =
            if self.ignore_case && matches!(self.path, PathCond::Prefix(_) | PathCond::Full(_)) {
                lower = req.path.to_ascii_lowercase();
                lower.as_str()
            } else {
                req.path
            };
        let matched = match &self.path {
            PathCond::Any => Matched::Whole,
            PathCond::Prefix(p) => {
                if !path.starts_with(p.as_str()) {
                    return None;
                }
                Matched::Prefix(p)
            }
            PathCond::Full(f) => {
                if path != f {
                    return None;
                }
                Matched::Whole
            }
            PathCond::Regex(r) => {
                if !r.is_match(path) {
                    return None;
                }
                Matched::Whole
            }
            PathCond::Template(r) => {
                if !r.is_match(path) {
                    return None;
                }
                Matched::Template(r)
            }
        };
        for h in &self.headers {
            let mut values = req.headers.get_all(&h.name).iter().peekable();
            let joined;
            let value = match values.next() {
                None => None,
                Some(first) if values.peek().is_none() => first.to_str().ok(),
                Some(first) => {
                    // Several lines of one header are matched as one comma-joined value
                    // (RFC 9110 §5.3).
                    let mut s = first.to_str().unwrap_or("").to_string();
                    for v in values {
                        s.push(',');
                        s.push_str(v.to_str().unwrap_or(""));
                    }
                    joined = s;
                    Some(joined.as_str())
                }
            };
            if h.cond.holds(value) == h.invert {
                return None;
            }
        }
        for q in &self.query {
            if !q.cond.holds(query_param(req.query, &q.name)) {
                return None;
            }
        }
        Some(matched)
    }
}
