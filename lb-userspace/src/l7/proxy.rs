//! The request pipeline, one phase per function: refuse illegal requests, route (URL map),
//! pick a backend service (weighted split) and a backend (policy + affinity), forward with
//! the timeout, retry per policy, and shape the response (headers, affinity cookie).

use super::{
    access_log::{self, Pending},
    body::{InFlight, ProxyBody, RequestBody, UpstreamBody},
    client, edge,
    outlier::{now_ms, Attempt},
    retry::{self, Outcome},
    router::{self, Action, Forward, RequestView, Routed},
    select::{self, Backend, Key},
    stats::Refused,
    table::{Service, Upstream},
    websocket, Shared,
};
use crate::config::{url_map::HeaderAction, SessionAffinity};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Instant, SystemTime},
};

/// What the proxy knows about the client connection.
#[derive(Debug)]
pub struct ConnInfo {
    pub client: SocketAddr,
    /// The load balancer's address on this connection (X-Forwarded-For's last hop).
    pub local: SocketAddr,
    /// `<client-ip>,<local-ip>` for X-Forwarded-For, made once per connection.
    pub xff_pair: HeaderValue,
    pub scheme: &'static str,
    pub proxy: Arc<str>,
    /// Framing verdicts of the raw HTTP/1.1 stream (see [`super::framing`]).
    pub verdicts: Arc<super::framing::Verdicts>,
    /// Open requests and I/O of the connection, for its timers (see [`super::idle`]).
    pub activity: Arc<super::idle::Activity>,
}

/// The client sent a chunk that does not parse: the connection is closed without an
/// answer (the backend's connection is dropped with the failed request), as the seeds do.
#[derive(Debug, thiserror::Error)]
#[error("unparseable chunk in the request body; closing the client and backend connections")]
pub struct BrokenChunk;

/// The hyper service function: the pipeline, then counters and the access log. The
/// response body counts as being sent until hyper drops it (`park::Tracked`).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<super::park::Tracked>, BrokenChunk> {
    let _open = conn.activity.request();
    let start = Instant::now();
    let log = shared.access_log.load_full();
    let head = log.as_ref().map(|_| LogHead::of(&req, &conn));
    let request_bytes = log.as_ref().map(|_| Arc::new(AtomicU64::new(0)));
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    // Boxed, so this future (moved whole into hyper's slot for every request) stays small.
    let done = Box::pin(proxy(&shared, &conn, req, request_bytes.clone())).await;
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
    let status = done.resp.status().as_u16();
    if let Some(s) = &done.service {
        s.counters.record(status, start.elapsed());
    }
    if let Some(b) = &done.backend {
        b.record_response(status);
    }
    if let Some(r) = done.refused {
        shared.tier.refused(r);
    }
    let rate = done.service.as_ref().map_or(1.0, |s| {
        access_log::sample_rate(s.config.log_config.as_ref())
    });
    let mut resp = done.resp;
    if let (Some(log), Some(head)) = (log, head) {
        if access_log::sampled(rate) {
            let entry = head.entry(
                status,
                done.service.as_deref(),
                done.backend.as_deref(),
                done.attempts,
                done.refused,
            );
            let mut pending = Box::new(Pending {
                entry,
                log,
                start,
                request_bytes,
            });
            match resp.body_mut() {
                ProxyBody::Upstream { log, .. } => *log = Some(pending),
                ProxyBody::Full(b) => {
                    pending.add_response_bytes(b.as_ref().map_or(0, |b| b.len()));
                    drop(pending); // written now: the body is already complete
                }
            }
        }
    }
    if conn.verdicts.chunk_broken() {
        return Err(BrokenChunk);
    }
    Ok(resp.map(|b| super::park::Tracked::new(b, conn.activity.responding())))
}

/// What the access log needs from the request head, taken before the pipeline consumes it
/// (only when the log is on).
struct LogHead {
    time: SystemTime,
    method: http::Method,
    host: String,
    url: String,
    version: Version,
    user_agent: Option<String>,
    client: SocketAddr,
    local: SocketAddr,
    proxy: Arc<str>,
}

impl LogHead {
    fn of(req: &Request<Incoming>, conn: &ConnInfo) -> LogHead {
        let text =
            |v: Option<&HeaderValue>| v.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        LogHead {
            time: SystemTime::now(),
            method: req.method().clone(),
            host: text(req.headers().get(header::HOST))
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            url: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.to_string()),
            version: req.version(),
            user_agent: text(req.headers().get(header::USER_AGENT)),
            client: conn.client,
            local: conn.local,
            proxy: conn.proxy.clone(),
        }
    }

    fn entry(
        self,
        status: u16,
        service: Option<&Service>,
        backend: Option<&Backend>,
        attempts: u32,
        refused: Option<Refused>,
    ) -> access_log::Entry {
        access_log::Entry {
            time: access_log::rfc3339(self.time),
            remote_ip: self.client.ip().to_string(),
            server_ip: self.local.ip().to_string(),
            proxy: self.proxy.to_string(),
            request_method: self.method.to_string(),
            host: self.host,
            request_url: self.url,
            protocol: match self.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            },
            status,
            backend_service: service.map(|s| s.name.clone()),
            backend: backend.map(|b| b.name.clone()),
            attempts,
            status_details: refused.map(Refused::label),
            request_size: 0,
            response_size: 0,
            latency_sec: 0.0,
            user_agent: self.user_agent,
        }
    }
}

/// What one request came to, for the counters and the access log.
struct Done {
    resp: Response<ProxyBody>,
    service: Option<Arc<Service>>,
    /// The backend of the last attempt.
    backend: Option<Arc<Backend>>,
    /// Attempts sent to backends.
    attempts: u32,
    /// Why the proxy answered itself, when it did (not for redirects).
    refused: Option<Refused>,
}

impl Done {
    fn refused(resp: Response<ProxyBody>, why: Refused, service: Option<Arc<Service>>) -> Done {
        Done {
            resp,
            service,
            backend: None,
            attempts: 0,
            refused: Some(why),
        }
    }
}

/// A response generated by the proxy itself.
pub fn local(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::text(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The header actions that apply to one request, from the outside in.
type Actions<'t> = [Option<&'t HeaderAction>; 4];

/// Where the URL map sends a request that goes to a backend service.
struct Route<'t> {
    forward: &'t Forward,
    /// The rewritten path and query, when a URL rewrite applies.
    path: Option<String>,
    header_actions: [Option<&'t HeaderAction>; 3],
    /// HTTP/2 clients send `:authority`, not Host; HTTP/1.1 backends need Host.
    original_host: Option<String>,
}

/// The pipeline, one phase per function: refuse, route, choose the service and the
/// affinity key, shape the request head, forward with retries, shape the response. (About
/// 90 lines: what is left is the order of the phases and the values they hand on.)
async fn proxy(
    shared: &Shared,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    request_bytes: Option<Arc<AtomicU64>>,
) -> Done {
    if let Some(done) = refuse(shared, conn, &req) {
        return done;
    }
    let table = shared.table.load();
    let Some(proxy) = table.proxies.get(&*conn.proxy) else {
        let r = local(
            StatusCode::SERVICE_UNAVAILABLE,
            "no target proxy for this listener\n",
        );
        return Done::refused(r, Refused::Internal, None);
    };
    let upgrade = req.version() == Version::HTTP_11 && edge::is_upgrade(req.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let route = match route(&table.routers[proxy.router], conn, &parts) {
        Ok(r) => r,
        Err(done) => return *done,
    };
    let ws = if route.forward.services.len() == 1 {
        &route.forward.services[0]
    } else {
        let f = route.forward;
        router::pick_weighted(
            &f.services,
            f.total_weight,
            fastrand::u32(0..f.total_weight),
        )
    };
    let Some(service) = table.services.get(&ws.service).cloned() else {
        let r = local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "route names an unknown backend service\n",
        );
        return Done::refused(r, Refused::Internal, None);
    };
    let affinity = if service.affinity {
        let mut rng = fastrand::Rng::new();
        select::affinity(&service.config, &parts.headers, conn.client.ip(), &mut rng)
    } else {
        select::Affinity {
            key: Key::None,
            new_cookie_value: None,
        }
    };
    // Header actions from the outside in (URL map, path matcher, rule, weighted service);
    // an array, not a Vec: no allocation per request.
    let [a, b, c] = route.header_actions;
    let actions: Actions<'_> = [a, b, c, ws.header_action.as_ref()];
    let Some(pq) = request_head(&mut parts, conn, &route, &actions, upgrade) else {
        let r = local(
            StatusCode::INTERNAL_SERVER_ERROR,
            "URL rewrite produced an invalid path\n",
        );
        return Done::refused(r, Refused::Internal, Some(service));
    };
    let body = RequestBody {
        inner: body,
        counted: request_bytes,
    };
    let (resp, last, attempts) = forward_with_retries(
        shared,
        &service,
        route.forward,
        &mut parts,
        pq,
        body,
        affinity.key,
    )
    .await;
    let answered = |resp: Response<ProxyBody>, refused: Option<Refused>| Done {
        resp,
        service: Some(service.clone()),
        backend: last.clone(),
        attempts,
        refused,
    };
    let (resp, backend) = match resp {
        Ok(x) => x,
        Err(r) => {
            let why = Refused::of_status(r.status().as_u16());
            return answered(r, Some(why));
        }
    };
    let (r, why) = respond(resp, &service, &actions, &affinity, backend, on_upgrade);
    answered(r, why)
}

/// Framing, semantics and size rules of the edge: a refused request gets its answer and
/// nothing reaches a backend.
fn refuse(shared: &Shared, conn: &ConnInfo, req: &Request<Incoming>) -> Option<Done> {
    let framing = if req.version() < Version::HTTP_2 {
        conn.verdicts.pop()
    } else {
        None
    };
    let refusal = framing
        .map(edge::Refusal::BadFraming)
        .or_else(|| edge::check_semantics(req.version(), req.method(), req.uri(), req.headers()))
        .or_else(|| edge::check_request(req.uri(), req.headers(), shared.opts.max_url_bytes))?;
    let mut r = local(refusal.status(), refusal.reason());
    if req.version() < Version::HTTP_2 {
        // The body's framing is unknown, so the connection cannot be reused.
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Some(Done::refused(
        r,
        Refused::of_status(refusal.status().as_u16()),
        None,
    ))
}

/// Matches the URL map: a route to forward, or the answer (404, a redirect).
fn route<'t>(
    router: &'t router::Router,
    conn: &ConnInfo,
    parts: &http::request::Parts,
) -> Result<Route<'t>, Box<Done>> {
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    let view = RequestView {
        host,
        path: parts.uri.path(),
        query: parts.uri.query(),
        headers: &parts.headers,
        scheme: conn.scheme,
    };
    let routed: Routed<'t> = router.route(&view);
    match routed.action {
        Action::NotFound => Err(Box::new(Done::refused(
            local(StatusCode::NOT_FOUND, "no route\n"),
            Refused::NoRoute,
            None,
        ))),
        Action::Redirect(rd) => {
            let (status, location) = router::redirect(rd, routed.matched, &view);
            let mut r = Response::new(ProxyBody::empty());
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            Err(Box::new(Done {
                resp: r,
                service: None,
                backend: None,
                attempts: 0,
                refused: None,
            }))
        }
        Action::Forward(f) => {
            let path = f.url_rewrite.as_ref().and_then(|rw| {
                let p = router::rewrite_path(rw, routed.matched, view.path)?;
                Some(match view.query {
                    Some(q) => format!("{p}?{q}"),
                    None => p,
                })
            });
            let original_host =
                (!parts.headers.contains_key(header::HOST)).then(|| host.to_string());
            Ok(Route {
                forward: f,
                path,
                header_actions: routed.header_actions,
                original_host,
            })
        }
    }
}

/// The request head towards the backend: hop-by-hop headers out, Host, header actions,
/// X-Forwarded-For/-Proto and Via; returns the path to request (None: a rewrite made an
/// invalid one).
fn request_head(
    parts: &mut http::request::Parts,
    conn: &ConnInfo,
    route: &Route<'_>,
    actions: &Actions<'_>,
    upgrade: bool,
) -> Option<http::uri::PathAndQuery> {
    let h = &mut parts.headers;
    edge::strip_hop_by_hop(h, upgrade);
    if let Some(host) = &route.original_host {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
    }
    let host_rewrite = route.forward.url_rewrite.as_ref();
    if let Some(hr) = host_rewrite.and_then(|r| r.host_rewrite.as_deref()) {
        if let Ok(v) = HeaderValue::from_str(hr) {
            h.insert(header::HOST, v);
        }
    }
    for a in actions.iter().flatten() {
        edge::apply_request_action(h, a);
    }
    edge::add_forwarded_pair(h, &conn.xff_pair, conn.scheme);
    edge::add_via(h, parts.version);
    match &route.path {
        Some(p) => p.parse().ok(),
        None => Some(
            parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        ),
    }
}

/// The response towards the client: hop-by-hop headers out, header actions, the affinity
/// cookie, Via; a 101 starts the tunnel; a declined upgrade closes the connection.
fn respond(
    resp: ForwardedResponse,
    service: &Service,
    actions: &Actions<'_>,
    affinity: &select::Affinity,
    backend: u64,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> (Response<ProxyBody>, Option<Refused>) {
    let (mut rparts, rbody) = resp.0.into_parts();
    let guard = resp.1;
    let switching = rparts.status == StatusCode::SWITCHING_PROTOCOLS;
    edge::strip_hop_by_hop(&mut rparts.headers, switching && on_upgrade.is_some());
    if on_upgrade.is_some() && !switching {
        // The backend declined the upgrade: the seeds close the client connection.
        rparts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    for a in actions.iter().flatten() {
        edge::apply_response_action(&mut rparts.headers, a);
    }
    add_affinity_cookie(&mut rparts.headers, service, affinity, backend);
    edge::add_via(&mut rparts.headers, rparts.version);
    if switching {
        let Some(client_side) = on_upgrade else {
            let r = local(
                StatusCode::BAD_GATEWAY,
                "backend switched protocols unasked\n",
            );
            return (r, Some(Refused::BackendUnreachable));
        };
        let mut backend_resp = Response::from_parts(rparts, rbody);
        let backend_side = hyper::upgrade::on(&mut backend_resp);
        websocket::spawn_tunnel(client_side, backend_side, service.timeout, guard);
        let (rparts, _) = backend_resp.into_parts();
        return (Response::from_parts(rparts, ProxyBody::empty()), None);
    }
    let mut pooled = resp.3;
    if http_body::Body::is_end_stream(&rbody) {
        // An empty body is never polled: the connection is free already.
        if let Some(p) = pooled.take() {
            p.release();
        }
    }
    let body = ProxyBody::Upstream {
        inner: rbody,
        deadline: Some(resp.2),
        guard: Some(guard),
        pooled,
        evict: None,
        log: None,
    };
    (Response::from_parts(rparts, body), None)
}

/// Sets the affinity cookie when the client does not already hold the right one.
fn add_affinity_cookie(
    h: &mut http::HeaderMap,
    service: &Service,
    aff: &select::Affinity,
    backend_id: u64,
) {
    let cfg = &service.config;
    let path = cfg
        .consistent_hash
        .http_cookie
        .as_ref()
        .and_then(|c| c.path.as_deref())
        .unwrap_or("/");
    let value = match cfg.session_affinity {
        SessionAffinity::GeneratedCookie if aff.key != Key::Backend(backend_id) => {
            select::set_cookie(
                select::cookie_name(cfg),
                &format!("{backend_id:016x}"),
                path,
                cfg.affinity_cookie_ttl_sec,
            )
        }
        SessionAffinity::HttpCookie => match &aff.new_cookie_value {
            Some(v) => {
                let ttl = cfg
                    .consistent_hash
                    .http_cookie
                    .as_ref()
                    .map_or(0, |c| c.ttl_sec);
                select::set_cookie(select::cookie_name(cfg), v, path, ttl)
            }
            None => return,
        },
        _ => return,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.append(header::SET_COOKIE, v);
    }
}

/// The backend's response, the in-flight guard, the timer of the overall deadline (reused by
/// the response body, so a request costs one timer), the pooled backend connection (plain
/// HTTP/1.1), and the backend's id.
type ForwardedResponse = (
    Response<Incoming>,
    InFlight,
    std::pin::Pin<Box<tokio::time::Sleep>>,
    Option<client::Pooled>,
);
type Forwarded = (ForwardedResponse, u64);

/// The request of one attempt towards a backend.
fn upstream_request(
    method: &http::Method,
    version: Version,
    pq: &http::uri::PathAndQuery,
    headers: http::HeaderMap,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut ureq = Request::new(body);
    *ureq.method_mut() = method.clone();
    *ureq.version_mut() = version;
    *ureq.uri_mut() = Uri::from(pq.clone());
    *ureq.headers_mut() = headers;
    ureq
}

/// The deadlines of one attempt: its own (`per_try`, when shorter than what is left) or
/// the request's overall timer.
struct Try<'a> {
    per_try: Option<std::time::Duration>,
    overall: std::pin::Pin<&'a mut tokio::time::Sleep>,
}

/// One attempt: `Err(())` on a timeout, `Ok(None)` when the backend was evicted (its
/// draining ended) before it answered, else the client's result.
async fn send_once(
    shared: &Shared,
    service: &Service,
    backend: &Backend,
    ureq: Request<UpstreamBody>,
    t: Try<'_>,
) -> Result<Option<Result<(Response<Incoming>, Option<client::Pooled>), client::ClientError>>, ()> {
    // Boxed: the client's future is the largest part of a request's state; inline, every
    // future around it (this one, the retry loop, the pipeline, the service future hyper
    // boxes) would be as large and be copied whole each time it moves (memmove was lb's
    // top user-space frame in `cargo xtask profile-l7`).
    let fut = Box::pin(shared.clients.request(
        service.upstream,
        backend.addr,
        &backend.authority,
        service.keepalive,
        ureq,
    ));
    let fut = async {
        tokio::select! {
            biased;
            r = fut => Some(r),
            _ = backend.wait_evicted() => None,
        }
    };
    match t.per_try {
        Some(p) => tokio::time::timeout(p, fut).await.map_err(|_| ()),
        None => {
            let mut overall = t.overall;
            tokio::select! {
                biased;
                r = fut => Ok(r),
                _ = overall.as_mut() => Err(()),
            }
        }
    }
}

/// The answer when the last attempt got no response.
fn failed(service: &Service, backend: &Backend, e: &client::ClientError) -> Response<ProxyBody> {
    tracing::debug!(service = %service.name, backend = %backend.name, error = %e, "backend request failed");
    local(StatusCode::BAD_GATEWAY, "backend unreachable or reset\n")
}

/// Feeds outlier detection with an attempt's result.
fn record_outlier(service: &Service, backend: &Backend, kind: Attempt, now: u64, roll: u32) {
    let selector = &service.selector;
    let ejected_now = if kind != Attempt::Success {
        selector
            .backends
            .iter()
            .filter(|b| b.outlier.is_ejected(now))
            .count()
    } else {
        0
    };
    let n = selector.backends.len();
    if backend
        .outlier
        .record(&service.outlier, kind, now, ejected_now, n, roll)
    {
        tracing::warn!(service = %service.name, backend = %backend.name, "backend ejected by outlier detection");
    }
}

fn classify(e: &client::ClientError) -> Outcome {
    if e.is_connect() {
        return Outcome::ConnectFailure;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::RefusedStream;
            }
        }
        src = s.source();
    }
    Outcome::Reset
}

/// Sends the request to backends until one answers or the retry policy stops: one loop
/// (about 100 lines) because every attempt shares the deadline, the body (sent once), the
/// backends already tried and the attempt count; each step of it is a function.
async fn forward_with_retries(
    shared: &Shared,
    service: &Arc<Service>,
    forward: &Forward,
    parts: &mut http::request::Parts,
    pq: http::uri::PathAndQuery,
    body: RequestBody,
    key: Key,
) -> (
    Result<Forwarded, Response<ProxyBody>>,
    Option<Arc<Backend>>,
    u32,
) {
    let start = std::time::Instant::now();
    let deadline = start + forward.timeout.unwrap_or(service.timeout);
    let mut overall = Box::pin(tokio::time::sleep_until(deadline.into()));
    let has_body = retry::has_body(&parts.headers, http_body::Body::is_end_stream(&body.inner));
    let mut body = has_body.then_some(body);
    let plan = forward.retry;
    let version = match service.upstream {
        Upstream::Http1 | Upstream::Https => Version::HTTP_11,
        Upstream::H2c | Upstream::Http2 => Version::HTTP_2,
    };
    let selector = &service.selector;
    let mut rng = fastrand::Rng::new();
    let mut tried: Vec<usize> = Vec::new();
    let mut attempt = 0u32;
    loop {
        let now = now_ms();
        let Some(idx) = selector.pick(key, now, &tried, &mut rng) else {
            let last = tried.last().map(|i| selector.backends[*i].clone());
            return (
                Err(local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no healthy backend\n",
                )),
                last,
                attempt,
            );
        };
        let backend = &selector.backends[idx];
        let guard = InFlight::new(backend.clone());
        let ubody: UpstreamBody = match body.take() {
            Some(b) => http_body_util::Either::Left(b),
            None => http_body_util::Either::Right(http_body_util::Empty::new()),
        };
        let last = attempt >= plan.num_retries || has_body;
        // The last attempt takes the headers; earlier ones send a copy.
        let headers = if last {
            std::mem::take(&mut parts.headers)
        } else {
            parts.headers.clone()
        };
        let ureq = upstream_request(&parts.method, version, &pq, headers, ubody);
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        let tries = Try {
            per_try: plan.per_try_timeout.filter(|p| *p < remaining),
            overall: overall.as_mut(),
        };
        let result = match send_once(shared, service, backend, ureq, tries).await {
            Ok(None) => {
                backend.errors.fetch_add(1, Ordering::Relaxed);
                let r = local(
                    StatusCode::BAD_GATEWAY,
                    "backend drained before it answered\n",
                );
                return (Err(r), Some(backend.clone()), attempt + 1);
            }
            Ok(Some(r)) => Ok(r),
            Err(()) => Err(()),
        };
        let outcome = match &result {
            Err(_) => Outcome::Timeout,
            Ok(Ok((r, _))) => Outcome::Status(r.status().as_u16()),
            Ok(Err(e)) => classify(e),
        };
        let result_kind = match outcome {
            Outcome::Status(s) if s < 500 => Attempt::Success,
            Outcome::Status(s) if !(502..=504).contains(&s) => Attempt::ServerError,
            _ => Attempt::GatewayFailure,
        };
        record_outlier(service, backend, result_kind, now, rng.u32(0..100));
        if !last
            && plan.should_retry(outcome, attempt, has_body)
            && std::time::Instant::now() < deadline
        {
            tracing::debug!(service = %service.name, backend = %backend.name, ?outcome, "retrying on another backend");
            service.counters.record_retry();
            tried.push(idx);
            attempt += 1;
            continue;
        }
        if result_kind != Attempt::Success {
            backend.errors.fetch_add(1, Ordering::Relaxed);
        }
        let answer = match result {
            Ok(Ok((r, pooled))) => Ok(((r, guard, overall, pooled), backend.id)),
            Err(()) => Err(local(StatusCode::GATEWAY_TIMEOUT, "backend timeout\n")),
            Ok(Err(e)) => Err(failed(service, backend, &e)),
        };
        return (answer, Some(backend.clone()), attempt + 1);
    }
}
