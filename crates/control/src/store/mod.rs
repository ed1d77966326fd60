//! Storage of agents, gateways ("peers") and routes behind one trait, with SQLite
//! (`sqlite://file.db`, the default) and PostgreSQL (`postgres://...`) implementations.
//!
//! Every change bumps one global version in the same transaction; heartbeat bookkeeping
//! (`last_seen`, reports) does not. Schema migrations are applied by [`open`].

mod postgres;
mod sqlite;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::protocol::Role;

/// A boxed future, so that `dyn Store` works.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An agent or a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    pub role: Role,
    pub name: String,
    /// Gateways: the `host:port` agents dial.
    pub address: Option<String>,
    pub token_sha256: String,
    /// Gateways: the tunnel pin they reported.
    pub pin: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub last_seen: Option<i64>,
    pub disconnected_at: Option<i64>,
    /// The last status report, as JSON.
    pub report: Option<String>,
}

/// A route: its name (unique) and the JSON object of its `[[routes]]` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub id: String,
    pub name: String,
    pub spec: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Everything pushed to peers, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateData {
    pub epoch: String,
    pub version: u64,
    pub peers: Vec<Peer>,
    pub routes: Vec<RouteRow>,
}

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    InvalidUrl(String),
    #[error("a {what} with that {field} already exists")]
    Duplicate {
        what: &'static str,
        field: &'static str,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("creating the folder of the database file {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database was migrated by a newer kakuremichi (schema {found}, this one knows {known})"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("random number generator: {0}")]
    Random(#[source] std::io::Error),
    #[error("the database worker stopped: {0}")]
    Worker(String),
}

impl StoreError {
    /// Whether the database could not be reached (the request may be retried later).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.is_closed() || e.as_db_error().is_none(),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ),
            _ => false,
        }
    }
}

/// Storage of control's state. Methods that change what peers receive return the new
/// global version.
pub trait Store: Send + Sync + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn kind(&self) -> &'static str;

    fn insert_peer(&self, peer: Peer) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// `None` when there is no such peer.
    fn delete_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    fn list_peers(&self, role: Role) -> BoxFuture<'_, Result<Vec<Peer>, StoreError>>;
    fn get_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>>;
    fn peer_by_token(&self, token_sha256: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>>;
    /// Heartbeat bookkeeping: `last_seen = at`, and the report when one is given.
    fn record_seen(
        &self,
        id: &str,
        at: i64,
        report: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;
    fn record_disconnect(&self, id: &str, at: i64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Stores a gateway's tunnel pin; `Some(version)` when it changed.
    fn set_pin(&self, id: &str, pin: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;

    fn insert_route(&self, route: RouteRow) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Replaces name and spec; `None` when there is no such route.
    fn update_route(&self, route: RouteRow) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    fn delete_route(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>>;
    fn list_routes(&self) -> BoxFuture<'_, Result<Vec<RouteRow>, StoreError>>;
    fn get_route(&self, id: &str) -> BoxFuture<'_, Result<Option<RouteRow>, StoreError>>;

    /// The current version (cheap; polled every second).
    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Epoch, version, peers and routes, consistent with each other.
    fn state(&self) -> BoxFuture<'_, Result<StateData, StoreError>>;
}

/// The path in a `sqlite://path` (or `sqlite:path`) URL.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    Some(PathBuf::from(rest))
}

/// The URL with any password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Opens the database a URL names and applies migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = sqlite_path(url) {
        if path.as_os_str().is_empty() {
            return Err(StoreError::InvalidUrl(
                "database = \"sqlite://\" names no file; write sqlite://kakuremichi.db".into(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(path).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    Err(StoreError::InvalidUrl(format!(
        "unsupported database \"{}\": write sqlite://FILE or postgres://USER@HOST/DB",
        redact_url(url)
    )))
}

pub(crate) fn role_from_str(s: &str) -> Role {
    if s == "gateway" {
        Role::Gateway
    } else {
        Role::Agent
    }
}

/// Schema version this build knows: one per migration.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migrations, in order; `MIGRATIONS[n]` brings the schema from version n to n + 1. One text
/// for both databases: `BIGINT` is PostgreSQL's 64-bit integer and has INTEGER affinity in
/// SQLite (the same storage as the `INTEGER` that SQLite databases made before were
/// created with).
pub(crate) const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE peers (
    id TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('agent', 'gateway')),
    name TEXT NOT NULL,
    address TEXT,
    token_sha256 TEXT NOT NULL UNIQUE,
    pin TEXT,
    created_at BIGINT NOT NULL,
    last_seen BIGINT,
    disconnected_at BIGINT,
    report TEXT,
    UNIQUE (role, name)
);
CREATE TABLE routes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
"#];

/// Column lists, in the order the row readers expect.
pub(crate) const PEER_COLUMNS: &str =
    "id, role, name, address, token_sha256, pin, created_at, last_seen, disconnected_at, report";
pub(crate) const ROUTE_COLUMNS: &str = "id, name, spec, created_at, updated_at";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            sqlite_path("sqlite://a/b.db"),
            Some(PathBuf::from("a/b.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///abs.db"),
            Some(PathBuf::from("/abs.db"))
        );
        assert_eq!(sqlite_path("postgres://x"), None);
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
    }
}
