//! The request path: request id → route match → policies → upstream pick → forward with
//! streaming bodies → response edits → access log (written by the response body).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use kakuremichi_config::net::{Scheme, canonical_ip};
use kakuremichi_router::{Lookup, normalize_host, normalize_path, strip_prefix};

use crate::access_log::AccessRecord;
use crate::body::{ClientBody, RequestBodyState, ResponseBody, UpstreamBody, Upstreamed};
use crate::conn::ConnInfo;
use crate::error::{self, ProxyError};
use crate::forward::{self, ForwardedFacts};
use crate::metrics::{Metrics, RouteMetrics};
use crate::request_id;
use crate::state::{RouteRuntime, Runtime};
use crate::stop_signal::StopSignal;
use crate::upgrade;
use crate::upstream::connector::ConnectError;
use crate::upstream::direct::DirectError;
use crate::upstream::pool::ClientCache;
use kakuremichi_policy::Decision;

/// State shared by every connection of one gateway.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub clients: ClientCache,
    /// Fires at the end of the drain deadline: upgraded connections close then.
    pub hard_stop: StopSignal,
    /// Metrics of requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
    /// Certificates (static and ACME), when the file has `[tls]`.
    pub tls: Option<Arc<crate::tls_setup::TlsRuntime>>,
    /// Shared state of the route policies (JWKS cache, limiter tables, stores).
    pub policy_env: Arc<kakuremichi_policy::PolicyEnv>,
    /// Agents connected to the tunnel listener, when there is one.
    pub tunnel: Option<kakuremichi_tunnel::AgentRegistry>,
}

/// Per-request facts gathered before routing.
struct Ctx {
    shared: Arc<Shared>,
    rt: Arc<Runtime>,
    conn: Arc<ConnInfo>,
    start: Instant,
    request_id: HeaderValue,
    client_ip: std::net::IpAddr,
    method: Method,
    host: String,
    path: String,
    html: bool,
    version: Version,
    bytes_in: Arc<std::sync::atomic::AtomicU64>,
    /// API key name and token subject, once the policies have identified the caller.
    identity: std::sync::OnceLock<Identity>,
}

/// Who the policies found the caller to be (for the access log; never the key itself).
#[derive(Default)]
pub struct Identity {
    pub api_key: Option<String>,
    pub subject: Option<String>,
}

impl Ctx {
    fn record(
        &self,
        status: StatusCode,
        route: Option<&Arc<RouteRuntime>>,
        upstream: Option<Arc<str>>,
        error: Option<&'static str>,
    ) -> AccessRecord {
        let route_metrics = match route {
            Some(r) => r.metrics.clone(),
            None => self.shared.unrouted.clone(),
        };
        let route = route.map(|r| r.name.clone());
        AccessRecord {
            start: self.start,
            request_id: self.request_id.clone(),
            client_ip: self.client_ip,
            method: self.method.clone(),
            host: self.host.clone(),
            path: self.path.clone(),
            route,
            upstream,
            status: status.as_u16(),
            error,
            bytes_in: self.bytes_in.clone(),
            metrics: route_metrics,
            head_seconds: self.start.elapsed().as_secs_f64(),
            api_key: self.identity.get().and_then(|i| i.api_key.clone()),
            subject: self.identity.get().and_then(|i| i.subject.clone()),
        }
    }

    /// The gateway's own answer for `err`.
    fn error_response(
        &self,
        err: ProxyError,
        route: Option<&Arc<RouteRuntime>>,
        upstream: Option<Arc<str>>,
    ) -> Response<ResponseBody> {
        let status = err.status();
        if status.is_server_error() {
            tracing::warn!(request_id = self.request_id.to_str().unwrap_or("-"), route = route.map_or("-", |r| &*r.name), upstream = upstream.as_deref().unwrap_or("-"), error = %DisplayChain(&err), "answering {status}");
        }
        let (body, content_type) = error::error_body(
            status,
            err.code(),
            &err.to_string(),
            self.request_id.to_str().unwrap_or(""),
            self.html,
        );
        let record = self.record(status, route, upstream, Some(err.code()));
        let mut response = Response::new(ResponseBody::full(
            body,
            Some(record),
            Some(self.conn.phase.clone()),
        ));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        error::set_content_type(headers, content_type);
        headers.insert(
            self.rt.settings.request_id_header.clone(),
            self.request_id.clone(),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let ProxyError::MethodNotAllowed(allow) = &err {
            let list = allow
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&list) {
                headers.insert(header::ALLOW, v);
            }
        }
        if let Some(secs) = err.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // HTTP/2 has no Connection header; the stream ends on its own.
        if self.version <= Version::HTTP_11
            && matches!(
                err,
                ProxyError::BadRequest(_) | ProxyError::BodyTooLarge | ProxyError::ClientBody(_)
            )
        {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl Ctx {
    /// The answer a policy chose (401, 403, 429, a CORS preflight...).
    fn policy_answer(
        &self,
        answer: kakuremichi_policy::Answer,
        route: &Arc<RouteRuntime>,
    ) -> Response<ResponseBody> {
        let _ = self.identity.set(Identity {
            api_key: answer.api_key_name.clone(),
            subject: answer.subject.clone(),
        });
        let status = answer.status;
        let record = self.record(status, Some(route), None, Some(answer.code));
        let body = if answer.has_body() {
            let (body, content_type) = error::error_body(
                status,
                answer.code,
                &answer.message,
                self.request_id.to_str().unwrap_or(""),
                self.html,
            );
            Some((body, content_type))
        } else {
            None
        };
        let mut response = Response::new(ResponseBody::full(
            body.as_ref().map(|(b, _)| b.clone()).unwrap_or_default(),
            Some(record),
            Some(self.conn.phase.clone()),
        ));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        if let Some((_, content_type)) = body {
            error::set_content_type(headers, content_type);
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        for (name, value) in answer.headers.iter() {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(
            self.rt.settings.request_id_header.clone(),
            self.request_id.clone(),
        );
        response
    }

    /// 200 with the key authorization of an ACME HTTP-01 challenge, or `None`.
    fn acme_challenge(&self) -> Option<Response<ResponseBody>> {
        let token = self.path.strip_prefix("/.well-known/acme-challenge/")?;
        let answer = self.shared.tls.as_ref()?.http01_answer(token)?;
        let record = self.record(StatusCode::OK, None, None, None);
        let mut response = Response::new(ResponseBody::full(
            Bytes::from(answer),
            Some(record),
            Some(self.conn.phase.clone()),
        ));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(
            self.rt.settings.request_id_header.clone(),
            self.request_id.clone(),
        );
        Some(response)
    }
}

/// Shows an error with its causes, `a: b: c`.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// Serves one request. Never fails: every problem becomes a response.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<ClientBody>,
) -> Result<Response<ResponseBody>, Infallible> {
    conn.phase.request_started();
    let rt = shared.runtime.load_full();
    let settings = &rt.settings;
    let request_id = request_id::from_request(req.headers().get(&settings.request_id_header));
    let client_ip = forward::client_ip(conn.peer.ip(), req.headers(), &settings.trusted_proxies);
    let host_value = req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let host = host_value
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .map(|h| normalize_host(h).into_owned())
        .unwrap_or_default();
    let ctx = Ctx {
        html: error::prefers_html(req.headers().get(header::ACCEPT)),
        method: req.method().clone(),
        version: req.version(),
        path: req.uri().path().to_string(),
        shared,
        rt,
        conn,
        start: Instant::now(),
        request_id,
        client_ip,
        host,
        bytes_in: Arc::default(),
        identity: std::sync::OnceLock::new(),
    };
    // The route's checks and the forwarding are awaited here rather than in a function of
    // their own: each level of nested futures is copied whole when it starts.
    let (route, prefix, path) = match admit(&ctx, &req) {
        Ok(admitted) => admitted,
        Err(response) => return Ok(*response),
    };
    let name = Some(&route);
    let mut outcome = None;
    let req = match &route.policies {
        None => req,
        Some(policies) => {
            let (mut head, body) = req.into_parts();
            match policies.check(&mut head, ctx.client_ip).await {
                Decision::Continue(o) => {
                    let _ = ctx.identity.set(Identity {
                        api_key: o.api_key_name.clone(),
                        subject: o.subject.clone(),
                    });
                    outcome = Some(o);
                }
                Decision::Respond(answer) => return Ok(ctx.policy_answer(answer, &route)),
            }
            Request::from_parts(head, body)
        }
    };
    let mut response = match forward(&ctx, &route, &prefix, &path, req, host_value).await {
        Ok(response) => response,
        Err((err, upstream)) => ctx.error_response(err, name, upstream),
    };
    if let Some(outcome) = &outcome {
        outcome.apply_to_response(response.headers_mut());
    }
    Ok(response)
}

/// Everything decided before the route's policies: the request is well formed, which
/// route takes it, and the route's own checks. `Err` is the answer when any says no (boxed:
/// the common outcome is `Ok`, and a small result is cheaper to return).
fn admit(
    ctx: &Ctx,
    req: &Request<ClientBody>,
) -> Result<(Arc<RouteRuntime>, String, String), Box<Response<ResponseBody>>> {
    let headers = req.headers();
    // Request smuggling: a message framed two ways is refused and the connection closed.
    // hyper drops one of the two headers, so the connection's head scan reports it too.
    if ctx.conn.phase.take_framing_conflict()
        || (headers.contains_key(header::TRANSFER_ENCODING)
            && headers.contains_key(header::CONTENT_LENGTH))
    {
        return Err(Box::new(ctx.error_response(
            ProxyError::BadRequest("both Content-Length and Transfer-Encoding are present"),
            None,
            None,
        )));
    }
    if headers.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Err(Box::new(ctx.error_response(
            ProxyError::BadRequest("more than one Content-Length"),
            None,
            None,
        )));
    }
    if headers.get_all(header::HOST).iter().count() > 1 {
        return Err(Box::new(ctx.error_response(
            ProxyError::BadRequest("more than one Host header"),
            None,
            None,
        )));
    }
    if req.method() == Method::CONNECT {
        return Err(Box::new(ctx.error_response(
            ProxyError::BadRequest("CONNECT is not supported"),
            None,
            None,
        )));
    }
    if !ctx.conn.https
        && let Some(response) = ctx.acme_challenge()
    {
        return Err(Box::new(response));
    }
    if !ctx.conn.https
        && ctx.rt.settings.redirect_https
        && let Some(https) = ctx.rt.settings.https
        && !ctx.path.starts_with("/.well-known/acme-challenge/")
    {
        return Err(Box::new(redirect_to_https(ctx, https.port(), req.uri())));
    }
    let Ok(path) = normalize_path(&ctx.path) else {
        return Err(Box::new(ctx.error_response(
            ProxyError::BadRequest("the path is not a valid absolute path"),
            None,
            None,
        )));
    };
    let path = path.into_owned();
    let (route, prefix) = match ctx.rt.table.lookup(&ctx.host, &path, &ctx.method) {
        Lookup::Found { value, prefix } => (value.clone(), prefix.to_string()),
        Lookup::MethodNotAllowed { allow } => match preflight_route(ctx, req.headers(), &path) {
            Some(found) => found,
            None => {
                return Err(Box::new(ctx.error_response(
                    ProxyError::MethodNotAllowed(allow),
                    None,
                    None,
                )));
            }
        },
        Lookup::NotFound => {
            return Err(Box::new(ctx.error_response(
                ProxyError::NoRoute,
                None,
                None,
            )));
        }
    };
    let name = Some(&route);
    let config = &route.config;
    if !config.enabled {
        return Err(Box::new(ctx.error_response(
            ProxyError::RouteDisabled,
            name,
            None,
        )));
    }
    if let Some(ip) = &config.ip {
        let denied = ip.deny.iter().any(|c| c.contains(ctx.client_ip));
        let allowed = ip.allow.is_empty() || ip.allow.iter().any(|c| c.contains(ctx.client_ip));
        if denied || !allowed {
            return Err(Box::new(ctx.error_response(
                ProxyError::IpDenied,
                name,
                None,
            )));
        }
    }
    if let Some(max) = config.max_body {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(Box::new(ctx.error_response(
                ProxyError::BodyTooLarge,
                name,
                None,
            )));
        }
    }
    Ok((route, prefix, path))
}

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) to a path
/// whose routes do not list OPTIONS in `methods` goes to the route the actual request would
/// take, when that route answers CORS; its policies answer the preflight.
fn preflight_route(
    ctx: &Ctx,
    headers: &HeaderMap,
    path: &str,
) -> Option<(Arc<RouteRuntime>, String)> {
    if ctx.method != Method::OPTIONS || !headers.contains_key(header::ORIGIN) {
        return None;
    }
    let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
    let requested = Method::from_bytes(requested.as_bytes()).ok()?;
    match ctx.rt.table.lookup(&ctx.host, path, &requested) {
        Lookup::Found { value, prefix }
            if value.policies.as_ref().is_some_and(|p| p.has_cors()) =>
        {
            Some((value.clone(), prefix.to_string()))
        }
        _ => None,
    }
}

/// 308 to the same host, path and query on https.
fn redirect_to_https(ctx: &Ctx, port: u16, uri: &Uri) -> Response<ResponseBody> {
    if ctx.host.is_empty() {
        return ctx.error_response(
            ProxyError::BadRequest("a Host header is required"),
            None,
            None,
        );
    }
    let host = if ctx.host.contains(':') && !ctx.host.starts_with('[') {
        format!("[{}]", ctx.host)
    } else {
        ctx.host.clone()
    };
    let port = if port == 443 {
        String::new()
    } else {
        format!(":{port}")
    };
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{target}");
    let record = ctx.record(StatusCode::PERMANENT_REDIRECT, None, None, None);
    let mut response = Response::new(ResponseBody::full(
        Bytes::new(),
        Some(record),
        Some(ctx.conn.phase.clone()),
    ));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(
        ctx.rt.settings.request_id_header.clone(),
        ctx.request_id.clone(),
    );
    response
}

/// Why sending a request upstream failed.
enum SendError {
    /// No connection could be made; retrying elsewhere is safe.
    Connect(ProxyError),
    /// The connection failed or the upstream's answer was unusable.
    Failed(error::BoxError),
    /// No response head within the route's response timeout.
    TimedOut,
}

impl SendError {
    fn from_hyper(err: hyper_util::client::legacy::Error) -> Self {
        if err.is_connect() {
            SendError::Connect(classify_connect_error(err))
        } else {
            SendError::Failed(Box::new(err))
        }
    }

    fn from_direct(err: DirectError) -> Self {
        match err {
            DirectError::Connect(ConnectError::Timeout { .. }) => {
                SendError::Connect(ProxyError::UpstreamConnectTimeout)
            }
            DirectError::Connect(e) => SendError::Connect(ProxyError::UpstreamConnect(Box::new(e))),
            DirectError::TimedOut => SendError::TimedOut,
            other => SendError::Failed(Box::new(other)),
        }
    }
}

/// What a failed connection means for the client: 503 when no agent of the group is
/// connected, 504 for timeouts, 502 otherwise.
fn classify_connect_error(err: hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        match e.downcast_ref::<ConnectError>() {
            Some(ConnectError::Timeout { .. }) => return ProxyError::UpstreamConnectTimeout,
            Some(ConnectError::Tunnel(open)) => {
                return match open.http_status() {
                    503 => ProxyError::NoAgent,
                    504 => ProxyError::UpstreamConnectTimeout,
                    _ => ProxyError::UpstreamConnect(Box::new(err)),
                };
            }
            _ => {}
        }
        source = e.source();
    }
    ProxyError::UpstreamConnect(Box::new(err))
}

type Failure = (ProxyError, Option<Arc<str>>);

async fn forward(
    ctx: &Ctx,
    route: &Arc<RouteRuntime>,
    prefix: &str,
    path: &str,
    mut req: Request<ClientBody>,
    host_value: Option<HeaderValue>,
) -> Result<Response<ResponseBody>, Failure> {
    let config = &route.config;
    let settings = &ctx.rt.settings;
    let upgrading = req.version() == Version::HTTP_11 && forward::wants_upgrade(req.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();

    let upstream_path = if config.strip_path {
        strip_prefix(prefix, path)
    } else {
        std::borrow::Cow::Borrowed(path)
    };
    let query = parts.uri.query();

    let mut headers = parts.headers;
    forward::strip_hop_by_hop(&mut headers, upgrading);
    let peer_ip = canonical_ip(ctx.conn.peer.ip());
    forward::set_forwarded(
        &mut headers,
        &ForwardedFacts {
            peer: peer_ip,
            peer_text: &ctx.conn.peer_text,
            client: ctx.client_ip,
            peer_trusted: settings.trusted_proxies.iter().any(|c| c.contains(peer_ip)),
            https: ctx.conn.https,
            host: host_value.as_ref(),
            port: &ctx.conn.port_text,
        },
    );
    headers.insert(settings.request_id_header.clone(), ctx.request_id.clone());
    match (&config.host_header, &host_value) {
        (Some(h), _) => {
            headers.insert(header::HOST, h.clone());
        }
        // HTTP/2 clients send `:authority` instead of Host; HTTP/1.1 upstreams need Host.
        (None, Some(h)) if !headers.contains_key(header::HOST) => {
            headers.insert(header::HOST, h.clone());
        }
        _ => {}
    }
    if let Some(edits) = &route.header_edits {
        edits.request.apply(&mut headers);
    }

    // Only a request with nothing to send after its head may take the direct client.
    let bodyless = http_body::Body::is_end_stream(&body);
    let slot = Arc::new(Mutex::new(Some(body)));
    let body_state = Arc::new(RequestBodyState {
        bytes: ctx.bytes_in.clone(),
        ..Default::default()
    });
    let several = route.upstreams.members().len() > 1;
    // Through a tunnel, another attempt opens a stream on another agent of the group, so even
    // a single upstream URL is worth a retry.
    let via = config.via.is_some();
    let idempotent = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let max_attempts = route.upstreams.members().len() + if via { 2 } else { 0 };
    let mut attempts = 0;
    let mut spare_headers = (several || via).then(|| headers.clone());
    let mut headers = Some(headers);
    let mut tried: Vec<usize> = Vec::new();
    let mut last_error: Option<Failure> = None;

    let (response, member, in_flight) = loop {
        let mut picked = route.upstreams.pick(&tried);
        if picked.is_none() && via && attempts > 0 && attempts < max_attempts {
            tried.clear();
            picked = route.upstreams.pick(&tried);
        }
        let Some((index, member, in_flight)) = picked else {
            return Err(last_error.unwrap_or((ProxyError::NoHealthyUpstream, None)));
        };
        tried.push(index);
        attempts += 1;
        let label = Some(member.label.clone());
        let mut attempt_headers = match headers.take() {
            Some(h) => h,
            None => spare_headers.clone().unwrap_or_default(),
        };
        if !attempt_headers.contains_key(header::HOST)
            && let Ok(v) = HeaderValue::from_str(&member.url.authority())
        {
            attempt_headers.insert(header::HOST, v);
        }
        let direct = route
            .client
            .direct()
            .filter(|_| bodyless && !upgrading && member.url.scheme == Scheme::Http);
        // The hyper client takes an absolute URI; the direct one only the origin-form target.
        let mut target = String::with_capacity(
            member.origin.len()
                + member.url.base_path.len()
                + upstream_path.len()
                + query.map_or(0, |q| q.len() + 2),
        );
        if direct.is_none() {
            target.push_str(&member.origin);
        }
        target.push_str(&member.url.base_path);
        target.push_str(&upstream_path);
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        let sent = match direct {
            Some(direct) => {
                // As an absolute URI would: an empty path is `/`.
                if !target.starts_with('/') {
                    target.insert(0, '/');
                }
                if !forward::is_request_target(&target) {
                    return Err((
                        ProxyError::BadRequest("the request target cannot be forwarded"),
                        label,
                    ));
                }
                // The direct client keeps the response timeout itself (a timer per
                // connection instead of one per request).
                direct
                    .send(
                        &parts.method,
                        &member.origin,
                        &target,
                        &attempt_headers,
                        config.response_timeout,
                    )
                    .await
                    .map(|resp| resp.map(Upstreamed::Direct))
                    .map_err(SendError::from_direct)
            }
            None => {
                let Ok(uri) = Uri::try_from(target) else {
                    return Err((
                        ProxyError::BadRequest("the request target cannot be forwarded"),
                        label,
                    ));
                };
                let mut outgoing = Request::new(UpstreamBody::new(
                    slot.clone(),
                    body_state.clone(),
                    config.max_body,
                ));
                *outgoing.method_mut() = parts.method.clone();
                *outgoing.uri_mut() = uri;
                *outgoing.version_mut() = Version::HTTP_11;
                *outgoing.headers_mut() = attempt_headers;
                match tokio::time::timeout(config.response_timeout, route.client.request(outgoing))
                    .await
                {
                    Ok(sent) => sent
                        .map(|resp| resp.map(Upstreamed::Hyper))
                        .map_err(SendError::from_hyper),
                    Err(_) => Err(SendError::TimedOut),
                }
            }
        };
        match sent {
            Err(SendError::TimedOut) => return Err((ProxyError::UpstreamTimeout, label)),
            Ok(response) => break (response, member, in_flight),
            Err(_) if body_state.too_large.load(Ordering::Relaxed) => {
                return Err((ProxyError::BodyTooLarge, label));
            }
            Err(SendError::Connect(failure)) => {
                if !matches!(failure, ProxyError::NoAgent) {
                    route.upstreams.mark_failed(index);
                }
                let untouched = body_state.bytes.load(Ordering::Relaxed) == 0
                    && slot.lock().map(|s| s.is_some()).unwrap_or(false);
                let no_agent = matches!(failure, ProxyError::NoAgent);
                if untouched && (several || via) && !no_agent && attempts < max_attempts {
                    tracing::info!(request_id = ctx.request_id.to_str().unwrap_or("-"), upstream = %member.label, error = %DisplayChain(&failure), "upstream unreachable; trying another");
                    last_error = Some((failure, label));
                    if spare_headers.is_none() {
                        spare_headers = Some(HeaderMap::new());
                    }
                    continue;
                }
                return Err((failure, label));
            }
            Err(SendError::Failed(e)) => {
                if body_state.client_error.load(Ordering::Relaxed) {
                    return Err((ProxyError::ClientBody(e), label));
                }
                // A pooled connection that died under us (an agent killed, an upstream
                // restarted): an idempotent request whose body was not read yet is safe to
                // send again.
                let untouched = body_state.bytes.load(Ordering::Relaxed) == 0;
                if idempotent && untouched && (several || via) && attempts < max_attempts {
                    tracing::info!(request_id = ctx.request_id.to_str().unwrap_or("-"), upstream = %member.label, error = %e, "upstream connection failed before answering; retrying the idempotent request");
                    last_error = Some((ProxyError::UpstreamFailed(e), label));
                    continue;
                }
                return Err((ProxyError::UpstreamFailed(e), label));
            }
        }
    };

    let mut response = response;
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (Some(client_upgrade), true) = (client_upgrade, switching) {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        ctx.conn.phase.upgraded();
        upgrade::spawn_splice(
            client_upgrade,
            upstream_upgrade,
            config.idle_timeout,
            ctx.shared.hard_stop.token().clone(),
            ctx.shared.metrics.clone(),
            route.name.clone(),
            ctx.conn.hold.clone(),
        );
    }
    let (mut rparts, rbody) = response.into_parts();
    // The client connection has its own version; hyper downgrades for HTTP/1.0 clients.
    rparts.version = Version::HTTP_11;
    forward::strip_hop_by_hop(&mut rparts.headers, upgrading && switching);
    if let Some(edits) = &route.header_edits {
        edits.response.apply(&mut rparts.headers);
    }
    rparts
        .headers
        .insert(settings.request_id_header.clone(), ctx.request_id.clone());
    let record = ctx.record(rparts.status, Some(route), Some(member.label.clone()), None);
    let body = if switching {
        ResponseBody::full(Bytes::new(), Some(record), Some(ctx.conn.phase.clone()))
    } else {
        ResponseBody::upstream(rbody, record, ctx.conn.phase.clone(), in_flight)
    };
    Ok(Response::from_parts(rparts, body))
}
