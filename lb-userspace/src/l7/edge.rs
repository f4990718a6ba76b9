//! Edge behaviour, pure: which client requests are refused before routing, and the
//! header rewrites every proxied request and response gets (SEMANTICS.md, "Headers" and
//! the illegal-request list).
//!
//! hyper's HTTP/1 parser already answers 400 for an unparseable request line, invalid
//! header-name characters, differing Content-Length values and transfer codings whose last
//! one is not `chunked`, and 431 for headers over its buffer. What it lets through, and what
//! is checked here: repeated (equal) Content-Length values, Content-Length together with
//! Transfer-Encoding (RFC 9112 §6.3 allows a proxy to forward this after dropping
//! Content-Length; SEMANTICS asks for 400, which also closes request-smuggling holes),
//! transfer codings other than `chunked`, and URLs over the limit (414).

use crate::config::HeaderAction;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::net::IpAddr;

/// Why a request is refused at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: a framing problem (Content-Length / Transfer-Encoding).
    BadFraming(&'static str),
    /// 414: the request target is longer than the limit.
    UriTooLong,
    /// 400: a head the seeds' front end blocks (Host, Upgrade, body rules).
    BadRequest(&'static str),
    /// 505: HTTP/1.0 (and older); the internal ALB takes HTTP/1.1 and later from clients.
    VersionNotSupported,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadFraming(_) | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Refusal::BadFraming(r) | Refusal::BadRequest(r) => r,
            Refusal::UriTooLong => "request URL too long",
            Refusal::VersionNotSupported => "HTTP/1.1 or later required",
        }
    }
}

/// Checks a parsed request head; `None` means it may be routed.
pub fn check_request(
    uri: &http::Uri,
    headers: &HeaderMap,
    max_url_bytes: usize,
) -> Option<Refusal> {
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > max_url_bytes {
        return Some(Refusal::UriTooLong);
    }
    let mut cls = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = cls.next() {
        if cls.next().is_some() || first.as_bytes().contains(&b',') {
            return Some(Refusal::BadFraming("several Content-Length values"));
        }
    }
    let mut te_seen = false;
    for te in headers.get_all(header::TRANSFER_ENCODING) {
        te_seen = true;
        let Ok(s) = te.to_str() else {
            return Some(Refusal::BadFraming("unreadable Transfer-Encoding"));
        };
        for coding in s.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some(Refusal::BadFraming("unknown transfer coding"));
            }
        }
    }
    if te_seen && headers.contains_key(header::CONTENT_LENGTH) {
        return Some(Refusal::BadFraming(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    None
}

/// Methods whose requests may not carry a body here: RFC 9110 gives content of GET and HEAD
/// no meaning and forbids it on TRACE, and a body the next hop does not expect is a
/// request-smuggling vector (seed 003: "the request method does not allow a body").
const BODYLESS_METHODS: [http::Method; 3] =
    [http::Method::GET, http::Method::HEAD, http::Method::TRACE];

/// The seeds' front-end rules on a parsed head (both HTTP versions): HTTP/1.1 or later,
/// exactly one Host (RFC 9112 §3.2; HTTP/2 may use `:authority` instead), no Upgrade other
/// than WebSocket, no body on a method that allows none. `None`: may be routed.
pub fn check_semantics(
    version: http::Version,
    method: &http::Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> Option<Refusal> {
    if version < http::Version::HTTP_11 {
        return Some(Refusal::VersionNotSupported);
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Some(Refusal::BadRequest("more than one Host header"));
    }
    let authority = version == http::Version::HTTP_2 && uri.authority().is_some();
    if hosts == 0 && !authority {
        return Some(Refusal::BadRequest("missing Host header"));
    }
    let mut upgrades = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .peekable();
    if upgrades.peek().is_some() && !upgrades.all(|t| t.eq_ignore_ascii_case(b"websocket")) {
        return Some(Refusal::BadRequest(
            "Upgrade to a protocol other than WebSocket",
        ));
    }
    if BODYLESS_METHODS.contains(method) {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if length > 0 || headers.contains_key(header::TRANSFER_ENCODING) {
            return Some(Refusal::BadRequest("a body on a method that allows none"));
        }
    }
    None
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), removed in both directions. `Upgrade` and
/// `Connection: upgrade` are kept for WebSocket handshakes by the caller.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including those named in `Connection`. With `upgrade`,
/// `Connection: upgrade` and `Upgrade` survive (RFC 9110 §7.8).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Every Connection header counts (a client may split the list over several lines).
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.eq_ignore_ascii_case(b"upgrade") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in &HOP_BY_HOP {
        headers.remove(h);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket, RFC 6455 §4.1).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Appends `<client-ip>,<load-balancer-ip>` to X-Forwarded-For, after any value the client
/// sent (Google Cloud's documented format), and sets X-Forwarded-Proto.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, lb: IpAddr, scheme: &'static str) {
    add_forwarded_pair(headers, &forwarded_pair(client, lb), scheme);
}

/// `<client-ip>,<load-balancer-ip>`, the same for every request of a connection.
pub fn forwarded_pair(client: IpAddr, lb: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&format!("{client},{lb}")).expect("IP addresses are valid header text")
}

/// [`add_forwarded`] with the connection's [`forwarded_pair`] made once.
pub fn add_forwarded_pair(headers: &mut HeaderMap, pair: &HeaderValue, scheme: &'static str) {
    let name = HeaderName::from_static("x-forwarded-for");
    let mut xff = String::new();
    for v in headers.get_all(&name) {
        if let Ok(s) = v.to_str() {
            if !xff.is_empty() {
                xff.push(',');
            }
            xff.push_str(s);
        }
    }
    if xff.is_empty() {
        headers.insert(name, pair.clone());
    } else {
        xff.push(',');
        xff.push_str(pair.to_str().unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(name, v);
        }
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static(scheme),
    );
}

/// The Via value this proxy adds (RFC 9110 §7.6.3), like Google's `1.1 google`.
pub const VIA: &str = "1.1 lb";

/// Appends this proxy to Via.
pub fn add_via(headers: &mut HeaderMap, version: http::Version) {
    let me = match version {
        http::Version::HTTP_2 => "2 lb",
        http::Version::HTTP_10 => "1.0 lb",
        _ => VIA,
    };
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {me}")) {
                headers.insert(header::VIA, v);
            }
        }
        None => {
            headers.insert(header::VIA, HeaderValue::from_static(me));
        }
    }
}

/// Applies the request side of a header action: removals, then additions (append, or
/// replace when `replace`).
pub fn apply_request_action(headers: &mut HeaderMap, a: &HeaderAction) {
    apply(
        headers,
        &a.request_headers_to_remove,
        &a.request_headers_to_add,
    );
}

/// Applies the response side of a header action.
pub fn apply_response_action(headers: &mut HeaderMap, a: &HeaderAction) {
    apply(
        headers,
        &a.response_headers_to_remove,
        &a.response_headers_to_add,
    );
}

fn apply(headers: &mut HeaderMap, remove: &[String], add: &[crate::config::HeaderToAdd]) {
    for r in remove {
        if let Ok(n) = HeaderName::from_bytes(r.as_bytes()) {
            headers.remove(n);
        }
    }
    for h in add {
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.header_name.as_bytes()),
            HeaderValue::from_str(&h.header_value),
        ) else {
            continue;
        };
        if h.replace {
            headers.insert(n, v);
        } else {
            headers.append(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn refusals() {
        let u: http::Uri = "/x".parse().unwrap();
        assert_eq!(
            check_request(&u, &hm(&[("content-length", "3")]), 100),
            None
        );
        assert_eq!(
            check_request(&u, &hm(&[("transfer-encoding", "chunked")]), 100),
            None
        );
        for bad in [
            hm(&[("content-length", "3"), ("content-length", "3")]),
            hm(&[("content-length", "3, 3")]),
            hm(&[("content-length", "3"), ("transfer-encoding", "chunked")]),
            hm(&[("transfer-encoding", "gzip, chunked")]),
            hm(&[("transfer-encoding", "foo")]),
        ] {
            assert_eq!(
                check_request(&u, &bad, 100).map(Refusal::status),
                Some(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
        let long: http::Uri = format!("/{}", "a".repeat(200)).parse().unwrap();
        assert_eq!(
            check_request(&long, &HeaderMap::new(), 100),
            Some(Refusal::UriTooLong)
        );
    }

    #[test]
    fn semantic_refusals() {
        use http::{Method, Version};
        let u: http::Uri = "/x".parse().unwrap();
        let check =
            |v, m: &Method, h: &HeaderMap| check_semantics(v, m, &u, h).map(Refusal::status);
        let ok = hm(&[("host", "a")]);
        assert_eq!(check(Version::HTTP_11, &Method::GET, &ok), None);
        assert_eq!(
            check(Version::HTTP_10, &Method::GET, &ok),
            Some(StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        );
        for bad in [
            hm(&[]),
            hm(&[("host", "a"), ("host", "b")]),
            hm(&[("host", "a"), ("upgrade", "h2c"), ("connection", "upgrade")]),
            hm(&[("host", "a"), ("upgrade", "websocket, h2c")]),
            hm(&[("host", "a"), ("content-length", "3")]),
            hm(&[("host", "a"), ("transfer-encoding", "chunked")]),
        ] {
            assert_eq!(
                check(Version::HTTP_11, &Method::GET, &bad),
                Some(StatusCode::BAD_REQUEST),
                "{bad:?}"
            );
        }
        let ws = hm(&[
            ("host", "a"),
            ("upgrade", "WebSocket"),
            ("connection", "upgrade"),
        ]);
        assert_eq!(check(Version::HTTP_11, &Method::GET, &ws), None);
        let post = hm(&[("host", "a"), ("content-length", "3")]);
        assert_eq!(check(Version::HTTP_11, &Method::POST, &post), None);
        // HTTP/2 may carry the host in :authority.
        let abs: http::Uri = "https://a/x".parse().unwrap();
        assert_eq!(
            check_semantics(Version::HTTP_2, &Method::GET, &abs, &HeaderMap::new()),
            None
        );
    }

    #[test]
    fn forwarded_headers() {
        let mut h = hm(&[("x-forwarded-for", "1.2.3.4")]);
        add_forwarded(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            "https",
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4,10.0.0.9,10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut h = HeaderMap::new();
        add_forwarded(
            &mut h,
            "10.0.0.9".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            "http",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.9,10.0.0.1");
        add_via(&mut h, http::Version::HTTP_11);
        add_via(&mut h, http::Version::HTTP_2);
        assert_eq!(h["via"], "1.1 lb, 2 lb");
    }

    #[test]
    fn hop_by_hop_and_upgrade() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("x-ok", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut two = hm(&[
            ("connection", "x-a"),
            ("connection", "x-b, close"),
            ("x-a", "1"),
            ("x-b", "1"),
            ("x-ok", "1"),
        ]);
        strip_hop_by_hop(&mut two, false);
        assert_eq!(two.len(), 1, "every Connection header's tokens go: {two:?}");
        let mut ws = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["connection"], "upgrade");
    }

    #[test]
    fn header_actions() {
        let mut h = hm(&[("x-a", "1"), ("x-b", "1")]);
        let a: HeaderAction = toml::from_str(
            r#"request_headers_to_remove = ["x-a"]
request_headers_to_add = [{ header_name = "x-b", header_value = "2" }, { header_name = "x-c", header_value = "3", replace = true }]"#,
        )
        .unwrap();
        apply_request_action(&mut h, &a);
        assert!(!h.contains_key("x-a"));
        assert_eq!(h.get_all("x-b").iter().count(), 2);
        assert_eq!(h["x-c"], "3");
    }
}
