//! What a matched route does to a request, pure: weighted picks, URL rewrites (prefix,
//! path template) and redirects (SEMANTICS.md, "Route actions").

use super::router::{Matched, RequestView, RouterError, WeightedService};
use crate::config::url_map::{RedirectResponseCode, UrlRedirect, UrlRewrite};
use regex::Regex;

fn err(place: &str, message: impl Into<String>) -> RouterError {
    RouterError {
        place: place.to_string(),
        message: message.into(),
    }
}

/// Compiles a path template (`/users/{id}/*`, `/static/**`, `{rest=**}`) to a regex with
/// one named group per variable. `*` is one path segment, `**` any number of segments.
pub fn compile_template(place: &str, t: &str) -> Result<Regex, RouterError> {
    if !t.starts_with('/') {
        return Err(err(
            place,
            format!("path template {t:?} must start with '/'"),
        ));
    }
    let mut re = String::from("^");
    for seg in t[1..].split('/') {
        re.push('/');
        let piece = match seg {
            "*" => "[^/]+".to_string(),
            "**" => ".*".to_string(),
            s if s.starts_with('{') && s.ends_with('}') => {
                let inner = &s[1..s.len() - 1];
                let (name, pat) = inner.split_once('=').unwrap_or((inner, "*"));
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err(
                        place,
                        format!("bad variable name {name:?} in template {t:?}"),
                    ));
                }
                let body = match pat {
                    "*" => "[^/]+",
                    "**" => ".*",
                    _ => {
                        return Err(err(
                            place,
                            format!(
                            "variable {name:?} must be {{{name}}}, {{{name}=*}} or {{{name}=**}}"
                        ),
                        ))
                    }
                };
                format!("(?P<{name}>{body})")
            }
            s if s.contains(['{', '}', '*']) => {
                return Err(err(
                    place,
                    format!("segment {s:?} of template {t:?} mixes literals and wildcards"),
                ))
            }
            s => regex::escape(s),
        };
        re.push_str(&piece);
    }
    re.push('$');
    Regex::new(&re).map_err(|e| err(place, format!("template {t:?}: {e}")))
}

/// Fills `{var}` references of a `path_template_rewrite` from the template's captures.
pub fn apply_template_rewrite(template: &Regex, rewrite: &str, path: &str) -> Option<String> {
    let caps = template.captures(path)?;
    let mut out = String::with_capacity(rewrite.len() + path.len());
    let mut rest = rewrite;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        out.push_str(caps.name(&rest[open + 1..close])?.as_str());
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Picks one of `services` for a draw uniform in `0..total` (share = weight / total).
pub fn pick_weighted(services: &[WeightedService], total: u32, draw: u32) -> &WeightedService {
    debug_assert!(draw < total, "draw {draw} outside 0..{total}");
    let mut acc = 0u32;
    for s in services {
        acc += s.weight;
        if draw < acc {
            return s;
        }
    }
    // Only reachable with draw ≥ total; keep the last one rather than panic.
    &services[services.len() - 1]
}

/// The path sent to the backend after a URL rewrite, or `None` to keep it.
pub fn rewrite_path(rw: &UrlRewrite, matched: Matched<'_>, path: &str) -> Option<String> {
    if let (Some(t), Matched::Template(re)) = (&rw.path_template_rewrite, matched) {
        return apply_template_rewrite(re, t, path);
    }
    let new_prefix = rw.path_prefix_rewrite.as_ref()?;
    Some(match matched {
        Matched::Prefix(p) if path.starts_with(p) => format!("{new_prefix}{}", &path[p.len()..]),
        // A full-path (or default) match has the whole path as its prefix.
        _ => new_prefix.clone(),
    })
}

/// The status and Location of a redirect (RFC 9110 §15.4). 301 by default; 307 and 308
/// tell the client to repeat the same method and body.
pub fn redirect(r: &UrlRedirect, matched: Matched<'_>, req: &RequestView<'_>) -> (u16, String) {
    let status = match r.redirect_response_code {
        RedirectResponseCode::MovedPermanentlyDefault => 301,
        RedirectResponseCode::Found => 302,
        RedirectResponseCode::SeeOther => 303,
        RedirectResponseCode::TemporaryRedirect => 307,
        RedirectResponseCode::PermanentRedirect => 308,
    };
    let scheme = if r.https_redirect {
        "https"
    } else {
        req.scheme
    };
    let host = r.host_redirect.as_deref().unwrap_or(req.host);
    let path = if let Some(p) = &r.path_redirect {
        p.clone()
    } else if let Some(p) = &r.prefix_redirect {
        match matched {
            Matched::Prefix(m) if req.path.starts_with(m) => format!("{p}{}", &req.path[m.len()..]),
            _ => p.clone(),
        }
    } else {
        req.path.to_string()
    };
    let mut loc = format!("{scheme}://{host}{path}");
    if let (false, Some(q)) = (r.strip_query, req.query) {
        loc.push('?');
        loc.push_str(q);
    }
    (status, loc)
}
