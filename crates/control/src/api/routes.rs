//! `/api/v1/routes`: the fields of a `[[routes]]` entry as JSON, checked with the gateway's
//! own validator (one route, then the whole set), `via` checked against control's agents.

use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::body::json_value;
use super::{ApiError, App, Resp, json, no_content};
use crate::clock::now_ms;
use crate::protocol::Role;
use crate::store::{RouteRow, StoreError};
use crate::tokens;
use crate::validate::{RouteProblem, check_route, check_set, route_object};

fn invalid(p: RouteProblem) -> ApiError {
    ApiError::Invalid {
        code: "invalid_route",
        message: p.message,
        field: p.field,
    }
}

fn conflict(p: RouteProblem) -> ApiError {
    ApiError::Conflict {
        message: p.message,
        field: p.field,
    }
}

fn spec_of(row: &RouteRow) -> Result<Map<String, Value>, ApiError> {
    serde_json::from_str(&row.spec)
        .map_err(|e| ApiError::Internal(format!("stored route {} is unreadable: {e}", row.id)))
}

/// `{id, ...fields}` as the API returns a route.
fn body_of(id: &str, mut spec: Map<String, Value>) -> Value {
    spec.insert("id".into(), Value::String(id.to_string()));
    Value::Object(spec)
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no route with id \"{id}\""))
}

pub(crate) async fn list(app: &Arc<App>) -> Result<Resp, ApiError> {
    let rows = app.store.list_routes().await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(body_of(&r.id, spec_of(r)?));
    }
    Ok(json(StatusCode::OK, &out))
}

pub(crate) async fn get(app: &Arc<App>, id: &str) -> Result<Resp, ApiError> {
    let row = app
        .store
        .get_route(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(json(StatusCode::OK, &body_of(&row.id, spec_of(&row)?)))
}

pub(crate) async fn delete(app: &Arc<App>, id: &str) -> Result<Resp, ApiError> {
    let _guard = app.route_writes.lock().await;
    match app.store.delete_route(id).await? {
        Some(_) => {
            app.hub.refresh_or_log().await;
            tracing::info!(id, "api: deleted route");
            Ok(no_content())
        }
        None => Err(not_found(id)),
    }
}

/// Checks a new or replaced route: alone, its `via`, then together with the other routes.
async fn checked(
    app: &App,
    req: Request<Incoming>,
    id: Option<&str>,
) -> Result<(String, Map<String, Value>), ApiError> {
    let body = json_value(req).await?;
    let mut obj = route_object(body, id).map_err(invalid)?;
    let name = check_route(&mut obj).map_err(invalid)?;
    if let Some(via) = obj.get("via").and_then(Value::as_str) {
        let agents = app.store.list_peers(Role::Agent).await?;
        if !agents.iter().any(|a| a.name == via) {
            return Err(invalid(RouteProblem::new(
                format!(
                    "route \"{name}\": via = \"{via}\" names no agent; create it first (POST /api/v1/agents)"
                ),
                Some("via"),
            )));
        }
    }
    Ok((name, obj))
}

/// Checks `obj` together with every stored route but the one with `replacing`.
async fn check_with_others(
    app: &App,
    obj: &Map<String, Value>,
    replacing: Option<&str>,
) -> Result<(), ApiError> {
    let rows = app.store.list_routes().await?;
    let mut others = Vec::with_capacity(rows.len());
    for r in rows.iter().filter(|r| Some(r.id.as_str()) != replacing) {
        others.push(spec_of(r)?);
    }
    check_set(others.iter().chain(std::iter::once(obj))).map_err(conflict)
}

fn duplicate(name: &str) -> ApiError {
    ApiError::Conflict {
        message: format!("duplicate route name \"{name}\"; route names must be unique"),
        field: Some("name".into()),
    }
}

fn encode(obj: &Map<String, Value>) -> Result<String, ApiError> {
    serde_json::to_string(obj).map_err(|e| ApiError::Internal(e.to_string()))
}

pub(crate) async fn create(app: &Arc<App>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let (name, obj) = checked(app, req, None).await?;
    let _guard = app.route_writes.lock().await;
    check_with_others(app, &obj, None).await?;
    let id = tokens::new_id().map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_ms();
    let row = RouteRow {
        id: id.clone(),
        name: name.clone(),
        spec: encode(&obj)?,
        created_at: now,
        updated_at: now,
    };
    match app.store.insert_route(row).await {
        Ok(_) => {}
        Err(StoreError::Duplicate { .. }) => return Err(duplicate(&name)),
        Err(e) => return Err(e.into()),
    }
    app.hub.refresh_or_log().await;
    tracing::info!(%name, %id, "api: created route");
    let mut resp = json(StatusCode::CREATED, &body_of(&id, obj));
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/routes/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub(crate) async fn update(
    app: &Arc<App>,
    id: &str,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    if app.store.get_route(id).await?.is_none() {
        return Err(not_found(id));
    }
    let (name, obj) = checked(app, req, Some(id)).await?;
    let _guard = app.route_writes.lock().await;
    check_with_others(app, &obj, Some(id)).await?;
    let row = RouteRow {
        id: id.to_string(),
        name: name.clone(),
        spec: encode(&obj)?,
        created_at: 0,
        updated_at: now_ms(),
    };
    match app.store.update_route(row).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(not_found(id)),
        Err(StoreError::Duplicate { .. }) => return Err(duplicate(&name)),
        Err(e) => return Err(e.into()),
    }
    app.hub.refresh_or_log().await;
    tracing::info!(%name, id, "api: updated route");
    Ok(json(StatusCode::OK, &body_of(id, obj)))
}
