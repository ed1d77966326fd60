//! The HTTP side: dispatch by path and method, admin bearer authentication, and the
//! handlers of `/api/v1/...` (agents and gateways in [`peers`], routes in [`routes`]).
//! `/` serves the web UI, `/api/v1/connect` the push WebSocket.

mod body;
mod error;
mod peers;
mod routes;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use error::ApiError;

use crate::push::Hub;
use crate::store::Store;
use crate::tokens::AdminToken;

/// Shared by every request.
pub(crate) struct App {
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub admin: AdminToken,
    pub public_url: Option<String>,
    /// Serializes route writes on this instance, so that a set checked together is the set
    /// stored.
    pub route_writes: tokio::sync::Mutex<()>,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Resp {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

pub(crate) fn no_content() -> Resp {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

/// The bearer token of a request.
pub(crate) fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn require_admin<B>(app: &App, req: &Request<B>) -> Result<(), ApiError> {
    match bearer(req) {
        Some(t) if app.admin.matches(t) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("wrong admin token")),
        None => Err(ApiError::Unauthorized(
            "send the admin token as Authorization: Bearer adm_...",
        )),
    }
}

/// How peers reach this control plane: `public_url`, else `http://` + the Host header.
fn public_url<B>(app: &App, req: &Request<B>) -> String {
    if let Some(u) = &app.public_url {
        return u.trim_end_matches('/').to_string();
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        });
    match host {
        Some(h) => format!("http://{h}"),
        None => "http://CONTROL_HOST:3000".into(),
    }
}

/// Handles one request; never fails (errors become JSON responses).
pub(crate) async fn handle(app: Arc<App>, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match dispatch(&app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "api");
    resp
}

/// Which methods a path allows, for 405 and `Allow`.
const COLLECTION: &str = "GET, POST";
const AGENT_ITEM: &str = "GET, DELETE";
const ROUTE_ITEM: &str = "GET, PUT, DELETE";
const GET_ONLY: &str = "GET";

async fn dispatch(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let path = req.uri().path().to_string();
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path.as_str()
    };
    let segments: Vec<&str> = trimmed.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        [] | ["index.html"] => {
            if get {
                Ok(crate::ui::page())
            } else {
                Err(ApiError::MethodNotAllowed(GET_ONLY))
            }
        }
        ["healthz"] => {
            if get {
                Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
            } else {
                Err(ApiError::MethodNotAllowed(GET_ONLY))
            }
        }
        ["api", "v1", rest @ ..] => api(app, req, &method, rest).await,
        _ => Err(ApiError::NotFound(format!("no page at {path}"))),
    }
}

async fn api(
    app: &Arc<App>,
    req: Request<Incoming>,
    method: &Method,
    rest: &[&str],
) -> Result<Resp, ApiError> {
    use crate::protocol::Role;
    let is = |m: Method| *method == m;
    match rest {
        ["openapi.json"] if is(Method::GET) => {
            Ok(json(StatusCode::OK, &crate::openapi::document()))
        }
        ["openapi.json"] => Err(ApiError::MethodNotAllowed(GET_ONLY)),
        ["connect"] if is(Method::GET) => crate::push::upgrade(app, req).await,
        ["connect"] => Err(ApiError::MethodNotAllowed(GET_ONLY)),
        ["info"] => {
            if !is(Method::GET) {
                return Err(ApiError::MethodNotAllowed(GET_ONLY));
            }
            require_admin(app, &req)?;
            info(app, &req)
        }
        [kind @ ("agents" | "gateways"), tail @ ..] => {
            let role = if *kind == "agents" {
                Role::Agent
            } else {
                Role::Gateway
            };
            match tail {
                [] if is(Method::GET) || is(Method::POST) => {}
                [_] if is(Method::GET) || is(Method::DELETE) => {}
                [] => return Err(ApiError::MethodNotAllowed(COLLECTION)),
                [_] => return Err(ApiError::MethodNotAllowed(AGENT_ITEM)),
                _ => return Err(ApiError::NotFound(format!("no {kind} endpoint here"))),
            }
            require_admin(app, &req)?;
            match tail {
                [] if is(Method::GET) => peers::list(app, role).await,
                [] => {
                    let url = public_url(app, &req);
                    peers::create(app, role, req, &url).await
                }
                [id] if is(Method::GET) => peers::get(app, role, id).await,
                [id] => peers::delete(app, role, id).await,
                _ => Err(ApiError::NotFound("no such endpoint".into())),
            }
        }
        ["routes", tail @ ..] => {
            match tail {
                [] if is(Method::GET) || is(Method::POST) => {}
                [_] if is(Method::GET) || is(Method::PUT) || is(Method::DELETE) => {}
                [] => return Err(ApiError::MethodNotAllowed(COLLECTION)),
                [_] => return Err(ApiError::MethodNotAllowed(ROUTE_ITEM)),
                _ => return Err(ApiError::NotFound("no routes endpoint here".into())),
            }
            require_admin(app, &req)?;
            match tail {
                [] if is(Method::GET) => routes::list(app).await,
                [] => routes::create(app, req).await,
                [id] if is(Method::GET) => routes::get(app, id).await,
                [id] if is(Method::PUT) => {
                    let id = id.to_string();
                    routes::update(app, &id, req).await
                }
                [id] => routes::delete(app, id).await,
                _ => Err(ApiError::NotFound("no such endpoint".into())),
            }
        }
        _ => Err(ApiError::NotFound(format!(
            "no API endpoint /api/v1/{}; see /api/v1/openapi.json",
            rest.join("/")
        ))),
    }
}

#[derive(Serialize)]
struct Info {
    version: &'static str,
    database: &'static str,
    public_url: String,
    config_version: u64,
    epoch: String,
}

fn info<B>(app: &App, req: &Request<B>) -> Result<Resp, ApiError> {
    let state = app.hub.current();
    Ok(json(
        StatusCode::OK,
        &Info {
            version: env!("CARGO_PKG_VERSION"),
            database: app.store.kind(),
            public_url: public_url(app, req),
            config_version: state.version,
            epoch: state.epoch.clone(),
        },
    ))
}
