//! Messages on the push WebSocket `GET /api/v1/connect`, JSON text frames with a `type`.
//!
//! Server → peer: `snapshot` (the whole state this peer needs, with a version; sent on
//! connect and after every change that alters what this peer sees), `current` (the version
//! moved on but nothing this peer sees changed, or a resume point is still current: nothing
//! to apply, remember the version) and `heartbeat`. Peer → server: `heartbeat` and `status`.
//! Both sides send a heartbeat every [`HEARTBEAT_INTERVAL`] and drop a connection that was
//! silent for [`SILENCE_LIMIT`].
//!
//! A peer reconnects with `?since=VERSION&epoch=EPOCH` from its last snapshot; the epoch
//! names the database, so a version from another database is never mistaken for current.
//! A deleted peer's socket is closed with code [`CLOSE_REVOKED`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::toml_text::{RenderError, TomlWriter};

/// Path of the push WebSocket.
pub const CONNECT_PATH: &str = "/api/v1/connect";
/// How often each side sends a heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A connection silent this long is considered dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// WebSocket close code sent when the peer's token was deleted.
pub const CLOSE_REVOKED: u16 = 4401;

/// Which kind of peer a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Gateway,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Agent => "agent",
        }
    }
}

/// Everything a gateway or an agent needs, at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Global version: grows by one with every change in control.
    pub version: u64,
    /// Names the database the version belongs to.
    pub epoch: String,
    /// Who this snapshot is for.
    pub role: Role,
    /// The peer's own name (an agent's name is its group for `via`).
    pub name: String,
    /// Gateways: every route, with the fields of a `[[routes]]` entry. Empty for agents.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Gateways: the agents allowed on the tunnel. Empty for agents.
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// Agents: the gateways to dial. Empty for gateways.
    #[serde(default)]
    pub gateways: Vec<GatewayEntry>,
}

/// A route as stored in control: its id plus the fields of a `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub id: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

impl RouteSpec {
    pub fn name(&self) -> &str {
        self.fields
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// An agent a gateway accepts on its tunnel (an `[[agents]]` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    pub name: String,
    /// Lowercase hex SHA-256 of the agent's token.
    pub token_sha256: String,
}

/// A gateway an agent dials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEntry {
    pub name: String,
    /// `host:port` of the gateway's tunnel listener.
    pub address: String,
    /// `sha256:...` pin of the gateway's tunnel certificate, once the gateway reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

impl Snapshot {
    /// The `[[agents]]` and `[[routes]]` tables of a gateway file for this snapshot. Append
    /// them to the gateway's own file (which has `[gateway]` and `[control]`) and parse the
    /// result with `kakuremichi_config::parse_gateway` to reuse the file loader.
    pub fn to_gateway_toml(&self) -> Result<String, RenderError> {
        let mut w = TomlWriter::new();
        w.raw_line(&format!(
            "# pushed by control: version {} (epoch {})",
            self.version, self.epoch
        ));
        w.raw_line("");
        for a in &self.agents {
            let mut obj = Map::new();
            obj.insert("name".into(), Value::String(a.name.clone()));
            obj.insert("token_sha256".into(), Value::String(a.token_sha256.clone()));
            w.array_table("agents", &obj)?;
        }
        for r in &self.routes {
            w.array_table("routes", &r.fields)?;
        }
        Ok(w.into_text())
    }

    /// The gateway file for this snapshot: `local` (the gateway's own file text, with
    /// `[gateway]`, `[control]` and maybe `[tls]`) followed by [`Self::to_gateway_toml`].
    pub fn gateway_file(&self, local: &str) -> Result<String, RenderError> {
        let mut text = local.trim_end().to_string();
        text.push_str("\n\n");
        text.push_str(&self.to_gateway_toml()?);
        Ok(text)
    }
}

/// A resume point: the epoch and version of the last snapshot a peer applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub epoch: String,
    pub version: u64,
}

impl From<&Snapshot> for Resume {
    fn from(s: &Snapshot) -> Self {
        Resume {
            epoch: s.epoch.clone(),
            version: s.version,
        }
    }
}

/// Server → peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Snapshot(Snapshot),
    /// Nothing to apply; the version to resume from is now this one.
    Current {
        epoch: String,
        version: u64,
    },
    Heartbeat,
}

/// Peer → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Heartbeat,
    Status(StatusReport),
}

/// What a peer tells control about itself; every field optional. Gateways fill `pin`,
/// `certificates` and `requests_per_second`; agents fill `connected_gateways`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Gateways: `sha256:` + hex pin of the tunnel certificate (pushed to agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
    /// Agents: names (or addresses) of the gateways with a live tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_gateways: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<f64>,
    /// The snapshot version the peer is running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<u64>,
    /// Problems operators should see (a refused snapshot, a failing listener, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One certificate a gateway holds or is obtaining. `state` is `valid`, `pending`,
/// `renewing`, `expired` or `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub hosts: Vec<String>,
    pub state: String,
    /// RFC 3339 expiry time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_format() {
        let m = ServerMessage::Snapshot(Snapshot {
            version: 3,
            epoch: "e".into(),
            role: Role::Agent,
            name: "home".into(),
            routes: vec![],
            agents: vec![],
            gateways: vec![GatewayEntry {
                name: "gw".into(),
                address: "gw:7844".into(),
                pin: None,
            }],
        });
        let v = serde_json::to_value(&m).expect("json");
        assert_eq!(v["type"], "snapshot");
        assert_eq!(v["gateways"][0]["address"], "gw:7844");
        let back: ServerMessage = serde_json::from_value(v).expect("parse");
        assert_eq!(back, m);
        let status: ClientMessage = serde_json::from_value(
            json!({"type": "status", "pin": "sha256:00", "certificates": []}),
        )
        .expect("status");
        assert!(matches!(
            status,
            ClientMessage::Status(StatusReport { pin: Some(_), .. })
        ));
    }

    #[test]
    fn gateway_toml_parses_with_the_gateway_loader() {
        let mut fields = Map::new();
        fields.insert("name".into(), json!("app"));
        fields.insert("upstream".into(), json!("http://127.0.0.1:9"));
        fields.insert("via".into(), json!("home"));
        fields.insert(
            "cors".into(),
            json!({"allow_origins": ["https://a.example"]}),
        );
        let s = Snapshot {
            version: 7,
            epoch: "e".into(),
            role: Role::Gateway,
            name: "gw".into(),
            routes: vec![RouteSpec {
                id: "r1".into(),
                fields,
            }],
            agents: vec![AgentEntry {
                name: "home".into(),
                token_sha256: "a".repeat(64),
            }],
            gateways: vec![],
        };
        let local =
            "[gateway]\nhttp = \"127.0.0.1:0\"\n[control]\nurl = \"http://c\"\ntoken = \"gtw_x\"\n";
        let text = s.gateway_file(local).expect("render");
        let cfg =
            kakuremichi_config::parse_gateway(std::path::Path::new("gw.toml"), &text).expect(&text);
        assert_eq!(cfg.routes.len(), 1);
        assert_eq!(cfg.routes[0].via.as_deref(), Some("home"));
        assert_eq!(cfg.agents.len(), 1);
    }
}
