//! Table of URL-map routing cases: one map exercising every rule kind, and one line per
//! request with the expected decision written as text.

use super::*;

const MAP: &str = r#"
default_service = "default"

[[host_rules]]
hosts = ["example.com", "www.example.com"]
path_matcher = "paths"

[[host_rules]]
hosts = ["*.example.com"]
path_matcher = "wild"

[[host_rules]]
hosts = ["*.api.example.com"]
path_matcher = "routes"

[[host_rules]]
hosts = ["ports.test:8080"]
path_matcher = "port8080"

[[host_rules]]
hosts = ["ports.test"]
path_matcher = "anyport"

[[host_rules]]
hosts = ["redirect.test"]
path_matcher = "redir"

[[host_rules]]
hosts = ["split.test"]
path_matcher = "split"

[[path_matchers]]
name = "paths"
default_service = "web"

[[path_matchers.path_rules]]
paths = ["/video/*"]
service = "video"

[[path_matchers.path_rules]]
paths = ["/video/hd/*", "/hd"]
service = "video-hd"

[[path_matchers.path_rules]]
paths = ["/video/exact"]
service = "exact"

[[path_matchers.path_rules]]
paths = ["/static/*"]
service = "static"
route_action = { url_rewrite = { path_prefix_rewrite = "/assets/", host_rewrite = "cdn.internal" } }

[[path_matchers.path_rules]]
paths = ["/old/*"]
url_redirect = { prefix_redirect = "/new/", redirect_response_code = "FOUND" }

[[path_matchers]]
name = "wild"
default_service = "wild"

[[path_matchers]]
name = "port8080"
default_service = "p8080"

[[path_matchers]]
name = "anyport"
default_service = "anyport"

[[path_matchers]]
name = "routes"
default_service = "api-default"

[[path_matchers.route_rules]]
priority = 20
service = "api-v1"
match_rules = [{ prefix_match = "/v1/" }]

[[path_matchers.route_rules]]
priority = 10
service = "api-canary"
match_rules = [{ prefix_match = "/v1/", header_matches = [{ header_name = "x-canary", exact_match = "yes" }] }]

[[path_matchers.route_rules]]
priority = 5
service = "api-exact"
match_rules = [{ full_path_match = "/v1/health", ignore_case = true }]

[[path_matchers.route_rules]]
priority = 30
service = "api-regex"
match_rules = [{ regex_match = "/items/[0-9]+" }]

[[path_matchers.route_rules]]
priority = 40
service = "api-user"
match_rules = [{ path_template_match = "/users/{id}/posts/{post=**}" }]
route_action = { url_rewrite = { path_template_rewrite = "/posts/{post}/by/{id}" } }

[[path_matchers.route_rules]]
priority = 50
service = "api-query"
match_rules = [{ prefix_match = "/search", query_parameter_matches = [{ name = "q", present_match = true }, { name = "lang", exact_match = "en" }] }]

[[path_matchers.route_rules]]
priority = 60
service = "api-hdr-regex"
match_rules = [{ prefix_match = "/h", header_matches = [{ header_name = "user-agent", regex_match = ".*Mobile.*" }] }]

[[path_matchers.route_rules]]
priority = 61
service = "api-hdr-prefix"
match_rules = [{ prefix_match = "/h", header_matches = [{ header_name = "x-ver", prefix_match = "2." }] }]

[[path_matchers.route_rules]]
priority = 62
service = "api-hdr-absent"
match_rules = [{ prefix_match = "/h", header_matches = [{ header_name = "x-debug", present_match = false }] }]

[[path_matchers.route_rules]]
priority = 63
service = "api-hdr-invert"
match_rules = [{ prefix_match = "/h", header_matches = [{ header_name = "x-debug", exact_match = "off", invert_match = true }] }]

[[path_matchers.route_rules]]
priority = 70
service = "api-or"
match_rules = [{ full_path_match = "/a" }, { full_path_match = "/b" }]

[[path_matchers.route_rules]]
priority = 80
match_rules = [{ prefix_match = "/moved" }]
url_redirect = { host_redirect = "new.example.com", https_redirect = true, redirect_response_code = "PERMANENT_REDIRECT" }

[[path_matchers.route_rules]]
priority = 81
match_rules = [{ prefix_match = "/see" }]
url_redirect = { path_redirect = "/other", strip_query = true, redirect_response_code = "SEE_OTHER" }

[[path_matchers.route_rules]]
priority = 82
match_rules = [{ prefix_match = "/temp" }]
url_redirect = { path_redirect = "/t", redirect_response_code = "TEMPORARY_REDIRECT" }

[[path_matchers.route_rules]]
priority = 90
service = "api-rw"
match_rules = [{ prefix_match = "/rw/" }]
route_action = { url_rewrite = { path_prefix_rewrite = "/" } }

[[path_matchers]]
name = "redir"
default_url_redirect = { https_redirect = true }

[[path_matchers]]
name = "split"

[path_matchers.default_route_action]
weighted_backend_services = [
  { backend_service = "blue", weight = 90 },
  { backend_service = "green", weight = 10 },
]
"#;

fn router() -> Router {
    let map: UrlMap = toml::from_str(MAP).expect("fixture parses");
    Router::compile("m", &map).expect("fixture compiles")
}

/// Describes a routing decision as text: `svc` (or `a|b` for a split), `svc path=/x
/// host=h` with rewrites, `301 https://...` for redirects.
fn decide(r: &Router, host: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.split('#').next().unwrap_or(path);
    let mut hm = HeaderMap::new();
    for (k, v) in headers {
        hm.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = RequestView {
        host,
        path,
        query,
        headers: &hm,
        scheme: "http",
    };
    let routed = r.route(&req);
    match routed.action {
        Action::NotFound => "404".into(),
        Action::Redirect(rd) => {
            let (s, l) = redirect(rd, routed.matched, &req);
            format!("{s} {l}")
        }
        Action::Forward(f) => {
            let mut out = f
                .services
                .iter()
                .map(|s| s.service.as_str())
                .collect::<Vec<_>>()
                .join("|");
            if let Some(rw) = &f.url_rewrite {
                if let Some(p) = rewrite_path(rw, routed.matched, path) {
                    out.push_str(&format!(" path={p}"));
                }
                if let Some(h) = &rw.host_rewrite {
                    out.push_str(&format!(" host={h}"));
                }
            }
            out
        }
    }
}

/// (host, path and query, request headers, expected decision).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[test]
fn routing_table() {
    let r = router();
    #[rustfmt::skip]
    let cases: &[Case] = &[
        // Host rules.
        ("unknown.test", "/", &[], "default"),
        ("example.com", "/", &[], "web"),
        ("EXAMPLE.com", "/", &[], "web"),
        ("www.example.com", "/anything", &[], "web"),
        ("example.com:8443", "/", &[], "web"),
        ("a.example.com", "/", &[], "wild"),
        ("a.b.example.com", "/", &[], "wild"),
        ("x.api.example.com", "/", &[], "api-default"),
        ("api.example.com", "/", &[], "wild"),
        ("notexample.com", "/", &[], "default"),
        ("ports.test:8080", "/", &[], "p8080"),
        ("ports.test:9090", "/", &[], "anyport"),
        ("ports.test", "/", &[], "anyport"),
        // Path rules: longest match, `/*` suffix, query and fragment ignored.
        ("example.com", "/video", &[], "web"),
        ("example.com", "/video/", &[], "video"),
        ("example.com", "/video/x", &[], "video"),
        ("example.com", "/video/hd/1", &[], "video-hd"),
        ("example.com", "/video/hd", &[], "video"),
        ("example.com", "/hd", &[], "video-hd"),
        ("example.com", "/hd/", &[], "web"),
        ("example.com", "/video/exact", &[], "exact"),
        ("example.com", "/video/exact?x=1", &[], "exact"),
        ("example.com", "/video/exact#frag", &[], "exact"),
        ("example.com", "/video/exact/", &[], "video"),
        ("example.com", "/static/css/a.css", &[], "static path=/assets/css/a.css host=cdn.internal"),
        ("example.com", "/old/page?x=1", &[], "302 http://example.com/new/page?x=1"),
        // Route rules: priority order, first match wins.
        ("x.api.example.com", "/v1/users", &[], "api-v1"),
        ("x.api.example.com", "/v1/users", &[("x-canary", "yes")], "api-canary"),
        ("x.api.example.com", "/v1/users", &[("x-canary", "no")], "api-v1"),
        ("x.api.example.com", "/v1/health", &[("x-canary", "yes")], "api-exact"),
        ("x.api.example.com", "/V1/HEALTH", &[], "api-exact"),
        ("x.api.example.com", "/v1/healthz", &[], "api-v1"),
        ("x.api.example.com", "/items/42", &[], "api-regex"),
        ("x.api.example.com", "/items/42/x", &[], "api-default"),
        ("x.api.example.com", "/items/abc", &[], "api-default"),
        ("x.api.example.com", "/users/7/posts/2024/05", &[], "api-user path=/posts/2024/05/by/7"),
        ("x.api.example.com", "/users/7/comments", &[], "api-default"),
        // Query-parameter matchers.
        ("x.api.example.com", "/search?q=rust&lang=en", &[], "api-query"),
        ("x.api.example.com", "/search?lang=en&q", &[], "api-query"),
        ("x.api.example.com", "/search?q=rust&lang=fr", &[], "api-default"),
        ("x.api.example.com", "/search?lang=en", &[], "api-default"),
        // Header matchers: regex, prefix, absent, inverted.
        ("x.api.example.com", "/h", &[("user-agent", "Foo Mobile Bar"), ("x-debug", "1")], "api-hdr-regex"),
        ("x.api.example.com", "/h", &[("x-ver", "2.1"), ("x-debug", "1")], "api-hdr-prefix"),
        ("x.api.example.com", "/h", &[("x-ver", "3.0")], "api-hdr-absent"),
        ("x.api.example.com", "/h", &[("x-debug", "on")], "api-hdr-invert"),
        ("x.api.example.com", "/h", &[("x-debug", "off")], "api-default"),
        // Several match rules are alternatives.
        ("x.api.example.com", "/a", &[], "api-or"),
        ("x.api.example.com", "/b", &[], "api-or"),
        ("x.api.example.com", "/c", &[], "api-default"),
        // Redirects: codes, https, host, path, strip query; rewrites.
        ("x.api.example.com", "/moved/x?y=1", &[], "308 https://new.example.com/moved/x?y=1"),
        ("x.api.example.com", "/see?y=1", &[], "303 http://x.api.example.com/other"),
        ("x.api.example.com", "/temp", &[], "307 http://x.api.example.com/t"),
        ("redirect.test", "/p?q=1", &[], "301 https://redirect.test/p?q=1"),
        ("x.api.example.com", "/rw/deep/path", &[], "api-rw path=/deep/path"),
        // Weighted split default.
        ("split.test", "/", &[], "blue|green"),
    ];
    // Coverage rather than a count: every service the map names is some case's outcome.
    let named: std::collections::BTreeSet<&str> = MAP
        .split("service = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    let reached: std::collections::BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| c.3.split(' ').next().unwrap_or("").split('|'))
        .collect();
    let missed: Vec<_> = named.difference(&reached).collect();
    assert!(
        missed.is_empty(),
        "services of the map no case reaches: {missed:?}"
    );
    let mut failures = Vec::new();
    for (host, target, headers, want) in cases {
        let got = decide(&r, host, target, headers);
        if got != *want {
            failures.push(format!(
                "{host}{target} {headers:?}: got {got:?}, want {want:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn route_rules_are_sorted_by_priority() {
    let r = router();
    let prios = r.route_priorities();
    let routes = prios.iter().find(|p| !p.is_empty()).unwrap();
    assert!(routes.windows(2).all(|w| w[0] < w[1]), "{routes:?}");
}

#[test]
fn weighted_split_shares_within_two_percent() {
    let r = router();
    let hm = HeaderMap::new();
    let req = RequestView {
        host: "split.test",
        path: "/",
        query: None,
        headers: &hm,
        scheme: "http",
    };
    let Action::Forward(f) = r.route(&req).action else {
        panic!("split routes to a forward")
    };
    let mut rng = fastrand::Rng::with_seed(7);
    let draws = 10_000;
    let blue = (0..draws)
        .filter(|_| {
            pick_weighted(&f.services, f.total_weight, rng.u32(0..f.total_weight)).service == "blue"
        })
        .count();
    let share = blue as f64 / draws as f64;
    assert!((share - 0.9).abs() < 0.02, "blue share {share}");
}

#[test]
fn three_way_split_shares() {
    let services: Vec<WeightedService> = [("a", 500), ("b", 300), ("c", 200), ("z", 0)]
        .iter()
        .map(|(n, w)| WeightedService {
            service: n.to_string(),
            weight: *w,
            header_action: None,
        })
        .collect();
    let total = 1000;
    let mut counts = std::collections::HashMap::new();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..10_000 {
        *counts
            .entry(
                pick_weighted(&services, total, rng.u32(0..total))
                    .service
                    .clone(),
            )
            .or_insert(0) += 1;
    }
    for (n, w) in [("a", 0.5), ("b", 0.3), ("c", 0.2)] {
        let share = counts[n] as f64 / 10_000.0;
        assert!((share - w).abs() < 0.02, "{n}: {share}");
    }
    assert!(!counts.contains_key("z"), "weight 0 never chosen");
}

#[test]
fn bad_maps_are_refused_with_places() {
    let bad = [
        (
            r#"[[path_matchers]]
name = "p"
default_service = "s"
[[path_matchers.route_rules]]
priority = 1
service = "s"
match_rules = [{ regex_match = "(" }]"#,
            "route_rules[0].match_rules[0]",
        ),
        (
            r#"[[host_rules]]
hosts = ["a"]
path_matcher = "nope""#,
            "host_rules[0]",
        ),
        (
            r#"[[path_matchers]]
name = "p"
[[path_matchers.path_rules]]
paths = ["/a*"]
service = "s""#,
            "path_rules[0]",
        ),
        (
            r#"[[path_matchers]]
name = "p"
[[path_matchers.route_rules]]
priority = 1
service = "s"
match_rules = [{ path_template_match = "/x/{a=b}" }]"#,
            "route_rules[0]",
        ),
    ];
    for (text, place) in bad {
        let map: UrlMap = toml::from_str(text).unwrap();
        let e = Router::compile("m", &map).expect_err(text);
        assert!(e.place.contains(place), "{e}");
    }
}

#[test]
fn template_rewrite_keeps_variables() {
    let re = compile_template("t", "/a/{x}/b/{rest=**}").unwrap();
    assert_eq!(
        apply_template_rewrite(&re, "/{rest}/{x}", "/a/1/b/c/d").as_deref(),
        Some("/c/d/1")
    );
    assert!(apply_template_rewrite(&re, "/{x}", "/z/1/b/c").is_none());
}
