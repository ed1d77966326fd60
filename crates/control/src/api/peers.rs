//! `/api/v1/agents` and `/api/v1/gateways`: create (the token is shown once), list and get
//! with health, delete (which closes the peer's push socket at once).

use std::sync::Arc;

use http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use serde::Serialize;

use super::body::{Fields, json_value};
use super::{ApiError, App, Resp, json, no_content};
use crate::clock::{now_ms, rfc3339};
use crate::protocol::{CertificateStatus, Role};
use crate::status::{Health, assess, report_of};
use crate::store::{Peer, StoreError};
use crate::tokens;

#[derive(Serialize)]
struct AgentView {
    id: String,
    name: String,
    status: Health,
    status_reason: Option<String>,
    connected_gateways: Vec<String>,
    last_seen: Option<String>,
    config_version: Option<u64>,
    created_at: String,
}

#[derive(Serialize)]
struct GatewayView {
    id: String,
    name: String,
    address: String,
    status: Health,
    status_reason: Option<String>,
    pin: Option<String>,
    certificates: Vec<CertificateStatus>,
    requests_per_second: Option<f64>,
    last_seen: Option<String>,
    config_version: Option<u64>,
    created_at: String,
}

#[derive(Serialize)]
struct Created {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    /// Shown once; only its hash is stored.
    token: String,
    created_at: String,
    /// A config file for the new peer.
    config: String,
    /// The command that starts it with that file.
    command: String,
}

#[derive(Serialize)]
#[serde(untagged)]
enum View {
    Agent(AgentView),
    Gateway(GatewayView),
}

fn view(peer: &Peer, now: i64, gateways: &[(String, String)]) -> View {
    let report = report_of(peer);
    let a = assess(peer, &report, now, gateways);
    let last_seen = peer.last_seen.map(rfc3339);
    let created_at = rfc3339(peer.created_at);
    match peer.role {
        Role::Agent => View::Agent(AgentView {
            id: peer.id.clone(),
            name: peer.name.clone(),
            status: a.health,
            status_reason: a.reason,
            connected_gateways: if a.health == Health::Down {
                Vec::new()
            } else {
                report.connected_gateways.unwrap_or_default()
            },
            last_seen,
            config_version: report.config_version,
            created_at,
        }),
        Role::Gateway => View::Gateway(GatewayView {
            id: peer.id.clone(),
            name: peer.name.clone(),
            address: peer.address.clone().unwrap_or_default(),
            status: a.health,
            status_reason: a.reason,
            pin: peer.pin.clone(),
            certificates: report.certificates,
            requests_per_second: if a.health == Health::Down {
                None
            } else {
                report.requests_per_second
            },
            last_seen,
            config_version: report.config_version,
            created_at,
        }),
    }
}

async fn gateway_names(app: &App, role: Role) -> Result<Vec<(String, String)>, ApiError> {
    if role != Role::Agent {
        return Ok(Vec::new());
    }
    Ok(app
        .store
        .list_peers(Role::Gateway)
        .await?
        .into_iter()
        .map(|g| (g.name, g.address.unwrap_or_default()))
        .collect())
}

fn noun(role: Role) -> &'static str {
    match role {
        Role::Agent => "agent",
        Role::Gateway => "gateway",
    }
}

pub(crate) async fn list(app: &Arc<App>, role: Role) -> Result<Resp, ApiError> {
    let peers = app.store.list_peers(role).await?;
    let gateways = gateway_names(app, role).await?;
    let now = now_ms();
    let views: Vec<View> = peers.iter().map(|p| view(p, now, &gateways)).collect();
    Ok(json(StatusCode::OK, &views))
}

pub(crate) async fn get(app: &Arc<App>, role: Role, id: &str) -> Result<Resp, ApiError> {
    let peer = app
        .store
        .get_peer(role, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no {} with id \"{id}\"", noun(role))))?;
    let gateways = gateway_names(app, role).await?;
    Ok(json(StatusCode::OK, &view(&peer, now_ms(), &gateways)))
}

pub(crate) async fn delete(app: &Arc<App>, role: Role, id: &str) -> Result<Resp, ApiError> {
    match app.store.delete_peer(role, id).await? {
        Some(_) => {
            app.hub.refresh_or_log().await;
            tracing::info!(role = role.as_str(), id, "api: deleted");
            Ok(no_content())
        }
        None => Err(ApiError::NotFound(format!(
            "no {} with id \"{id}\"",
            noun(role)
        ))),
    }
}

/// Names are what `via` refers to and appear in shell commands: keep them plain.
fn check_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "name",
            format!(
                "invalid name \"{name}\": use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}

/// `host:port` of a gateway's tunnel listener.
fn check_address(address: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::invalid(
            "address",
            format!(
                "invalid address \"{address}\": {why}; write host:port, like \"gw1.example.com:7844\""
            ),
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be a number from 1 to 65535")),
    }
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    };
    if host_ok {
        Ok(())
    } else {
        Err(bad("the host is not a name or an IP address"))
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

pub(crate) async fn create(
    app: &Arc<App>,
    role: Role,
    req: Request<Incoming>,
    public_url: &str,
) -> Result<Resp, ApiError> {
    let value = json_value(req).await?;
    let (name, address) = match role {
        Role::Agent => {
            let mut f = Fields::new(value, &["name"])?;
            let name = f.string("name")?;
            f.finish()?;
            (name, None)
        }
        Role::Gateway => {
            let mut f = Fields::new(value, &["name", "address"])?;
            let name = f.string("name")?;
            let address = f.string("address")?;
            f.finish()?;
            (name, Some(address))
        }
    };
    let name = name.trim().to_string();
    check_name(&name)?;
    if let Some(a) = &address {
        check_address(a)?;
    }
    let prefix = match role {
        Role::Agent => tokens::AGENT_PREFIX,
        Role::Gateway => tokens::GATEWAY_PREFIX,
    };
    let token = tokens::generate(prefix).map_err(|e| ApiError::Internal(e.to_string()))?;
    let id = tokens::new_id().map_err(|e| ApiError::Internal(e.to_string()))?;
    let now = now_ms();
    let peer = Peer {
        id: id.clone(),
        role,
        name: name.clone(),
        address: address.clone(),
        token_sha256: tokens::sha256_hex(&token),
        pin: None,
        created_at: now,
        last_seen: None,
        disconnected_at: None,
        report: None,
    };
    match app.store.insert_peer(peer).await {
        Ok(_) => {}
        Err(StoreError::Duplicate { field: "name", .. }) => {
            return Err(ApiError::Conflict {
                message: format!(
                    "{} named \"{name}\" already exists",
                    match role {
                        Role::Agent => "an agent",
                        Role::Gateway => "a gateway",
                    }
                ),
                field: Some("name".into()),
            });
        }
        Err(e) => return Err(e.into()),
    }
    app.hub.refresh_or_log().await;
    tracing::info!(role = role.as_str(), %name, %id, "api: created");
    let (config, command) = match role {
        Role::Agent => (
            format!(
                "# agent.toml: everything else comes from control\n[control]\nurl = {}\ntoken = {}\n",
                toml_string(public_url),
                toml_string(&token)
            ),
            "kakuremichi agent --config agent.toml".to_string(),
        ),
        Role::Gateway => {
            let port = address
                .as_deref()
                .and_then(|a| a.rsplit_once(':'))
                .map(|(_, p)| p)
                .unwrap_or("7844");
            (
                format!(
                    "# gateway.toml: routes and agents come from control\n[gateway]\nhttp = \"0.0.0.0:80\"\ntunnel = \"0.0.0.0:{port}\"\nstate_dir = \"/var/lib/kakuremichi\"\n\n[control]\nurl = {}\ntoken = {}\n",
                    toml_string(public_url),
                    toml_string(&token)
                ),
                "kakuremichi gateway --config gateway.toml".to_string(),
            )
        }
    };
    let body = Created {
        id: id.clone(),
        name,
        address,
        token,
        created_at: rfc3339(now),
        config,
        command,
    };
    let mut resp = json(StatusCode::CREATED, &body);
    let kind = match role {
        Role::Agent => "agents",
        Role::Gateway => "gateways",
    };
    if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/{kind}/{id}")) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert!(check_name("home-1.a_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
        assert!(check_address("gw1.example.com:7844").is_ok());
        assert!(check_address("127.0.0.1:7844").is_ok());
        assert!(check_address("[::1]:7844").is_ok());
        assert!(check_address("gw1").is_err());
        assert!(check_address("gw1:0").is_err());
        assert!(check_address(":7844").is_err());
        assert!(check_address("a/b:1").is_err());
    }
}
