//! PostgreSQL storage: one connection per control instance, reopened when it drops.
//! Several control instances may share the database; migrations run under an advisory
//! lock, and the version row serializes writers.

use std::str::FromStr;

use tokio::sync::{Mutex, MutexGuard};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Row, Transaction};

use super::{
    BoxFuture, MIGRATIONS, PEER_COLUMNS, Peer, ROUTE_COLUMNS, RouteRow, SCHEMA_VERSION, StateData,
    Store, StoreError, role_from_str,
};
use crate::protocol::Role;

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6b616b75_72656d69;

/// Storage in a PostgreSQL database.
pub struct PostgresStore {
    config: tokio_postgres::Config,
    client: Mutex<Option<Client>>,
}

fn peer_row(row: &Row) -> Result<Peer, tokio_postgres::Error> {
    Ok(Peer {
        id: row.try_get(0)?,
        role: role_from_str(row.try_get::<_, &str>(1)?),
        name: row.try_get(2)?,
        address: row.try_get(3)?,
        token_sha256: row.try_get(4)?,
        pin: row.try_get(5)?,
        created_at: row.try_get(6)?,
        last_seen: row.try_get(7)?,
        disconnected_at: row.try_get(8)?,
        report: row.try_get(9)?,
    })
}

fn route_row(row: &Row) -> Result<RouteRow, tokio_postgres::Error> {
    Ok(RouteRow {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        spec: row.try_get(2)?,
        created_at: row.try_get(3)?,
        updated_at: row.try_get(4)?,
    })
}

async fn bump(tx: &Transaction<'_>) -> Result<u64, StoreError> {
    let row = tx
        .query_one(
            "UPDATE meta SET version = version + 1 WHERE id = 1 RETURNING version",
            &[],
        )
        .await?;
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
}

fn unique(e: tokio_postgres::Error, what: &'static str) -> StoreError {
    if let Some(db) = e.as_db_error()
        && *db.code() == SqlState::UNIQUE_VIOLATION
    {
        let field = if db.constraint().is_some_and(|c| c.contains("token")) {
            "token"
        } else {
            "name"
        };
        return StoreError::Duplicate { what, field };
    }
    StoreError::Postgres(e)
}

impl PostgresStore {
    /// Connects and applies migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::InvalidUrl(format!(
                "invalid PostgreSQL URL \"{}\": {e}",
                super::redact_url(url)
            ))
        })?;
        let store = PostgresStore {
            config,
            client: Mutex::new(None),
        };
        let epoch = crate::tokens::new_id().map_err(StoreError::Random)?;
        let mut guard = store.client().await?;
        let client = guard.as_mut().ok_or_else(not_connected)?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS meta (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                schema_version BIGINT NOT NULL,
                version BIGINT NOT NULL,
                epoch TEXT NOT NULL
            );",
        )
        .await?;
        tx.execute(
            "INSERT INTO meta (id, schema_version, version, epoch) VALUES (1, 0, 0, $1)
             ON CONFLICT (id) DO NOTHING",
            &[&epoch],
        )
        .await?;
        let found: i64 = tx
            .query_one("SELECT schema_version FROM meta WHERE id = 1", &[])
            .await?
            .try_get(0)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        let start = usize::try_from(found).unwrap_or(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "UPDATE meta SET schema_version = $1 WHERE id = 1",
                &[&(i as i64 + 1)],
            )
            .await?;
            tracing::info!(schema = i + 1, "postgres: applied migration");
        }
        tx.commit().await?;
        drop(guard);
        Ok(store)
    }

    /// The connection, opened again if it dropped.
    async fn client(&self) -> Result<MutexGuard<'_, Option<Client>>, StoreError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let (client, connection) = self.config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "postgres: connection closed");
                }
            });
            *guard = Some(client);
        }
        Ok(guard)
    }
}

fn not_connected() -> StoreError {
    StoreError::Worker("no PostgreSQL connection".into())
}

/// Runs an async block with `client: &mut Client` bound, boxed.
macro_rules! with_client {
    ($self:ident, |$c:ident| $body:expr) => {
        Box::pin(async move {
            let mut guard = $self.client().await?;
            let $c = guard.as_mut().ok_or_else(not_connected)?;
            $body
        })
    };
}

impl Store for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn insert_peer(&self, p: Peer) -> BoxFuture<'_, Result<u64, StoreError>> {
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            tx.execute(
                &format!("INSERT INTO peers ({PEER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"),
                &[
                    &p.id,
                    &p.role.as_str(),
                    &p.name,
                    &p.address,
                    &p.token_sha256,
                    &p.pin,
                    &p.created_at,
                    &p.last_seen,
                    &p.disconnected_at,
                    &p.report,
                ],
            )
            .await
            .map_err(|e| unique(e, p.role.as_str()))?;
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(v)
        })
    }

    fn delete_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "DELETE FROM peers WHERE id = $1 AND role = $2",
                    &[&id, &role.as_str()],
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(Some(v))
        })
    }

    fn list_peers(&self, role: Role) -> BoxFuture<'_, Result<Vec<Peer>, StoreError>> {
        with_client!(self, |c| {
            let rows = c
                .query(
                    &format!("SELECT {PEER_COLUMNS} FROM peers WHERE role = $1 ORDER BY name COLLATE \"C\""),
                    &[&role.as_str()],
                )
                .await?;
            Ok(rows.iter().map(peer_row).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            let row = c
                .query_opt(
                    &format!("SELECT {PEER_COLUMNS} FROM peers WHERE id = $1 AND role = $2"),
                    &[&id, &role.as_str()],
                )
                .await?;
            Ok(row.as_ref().map(peer_row).transpose()?)
        })
    }

    fn peer_by_token(&self, token_sha256: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>> {
        let hash = token_sha256.to_string();
        with_client!(self, |c| {
            let row = c
                .query_opt(
                    &format!("SELECT {PEER_COLUMNS} FROM peers WHERE token_sha256 = $1"),
                    &[&hash],
                )
                .await?;
            Ok(row.as_ref().map(peer_row).transpose()?)
        })
    }

    fn record_seen(
        &self,
        id: &str,
        at: i64,
        report: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            c.execute(
                "UPDATE peers SET last_seen = $2, report = COALESCE($3, report) WHERE id = $1",
                &[&id, &at, &report],
            )
            .await?;
            Ok(())
        })
    }

    fn record_disconnect(&self, id: &str, at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            c.execute(
                "UPDATE peers SET disconnected_at = $2 WHERE id = $1",
                &[&id, &at],
            )
            .await?;
            Ok(())
        })
    }

    fn set_pin(&self, id: &str, pin: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let (id, pin) = (id.to_string(), pin.to_string());
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE peers SET pin = $2 WHERE id = $1 AND role = 'gateway' AND (pin IS NULL OR pin <> $2)",
                    &[&id, &pin],
                )
                .await?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(Some(v))
        })
    }

    fn insert_route(&self, r: RouteRow) -> BoxFuture<'_, Result<u64, StoreError>> {
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            tx.execute(
                &format!("INSERT INTO routes ({ROUTE_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"),
                &[&r.id, &r.name, &r.spec, &r.created_at, &r.updated_at],
            )
            .await
            .map_err(|e| unique(e, "route"))?;
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(v)
        })
    }

    fn update_route(&self, r: RouteRow) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            let n = tx
                .execute(
                    "UPDATE routes SET name = $2, spec = $3, updated_at = $4 WHERE id = $1",
                    &[&r.id, &r.name, &r.spec, &r.updated_at],
                )
                .await
                .map_err(|e| unique(e, "route"))?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(Some(v))
        })
    }

    fn delete_route(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            let tx = c.transaction().await?;
            let n = tx
                .execute("DELETE FROM routes WHERE id = $1", &[&id])
                .await?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx).await?;
            tx.commit().await?;
            Ok(Some(v))
        })
    }

    fn list_routes(&self) -> BoxFuture<'_, Result<Vec<RouteRow>, StoreError>> {
        with_client!(self, |c| {
            let rows = c
                .query(
                    &format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY name COLLATE \"C\""),
                    &[],
                )
                .await?;
            Ok(rows.iter().map(route_row).collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_route(&self, id: &str) -> BoxFuture<'_, Result<Option<RouteRow>, StoreError>> {
        let id = id.to_string();
        with_client!(self, |c| {
            let row = c
                .query_opt(
                    &format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = $1"),
                    &[&id],
                )
                .await?;
            Ok(row.as_ref().map(route_row).transpose()?)
        })
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        with_client!(self, |c| {
            let row = c
                .query_one("SELECT version FROM meta WHERE id = 1", &[])
                .await?;
            Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<StateData, StoreError>> {
        with_client!(self, |c| {
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let meta = tx
                .query_one("SELECT epoch, version FROM meta WHERE id = 1", &[])
                .await?;
            let epoch: String = meta.try_get(0)?;
            let version: i64 = meta.try_get(1)?;
            let peers = tx
                .query(
                    &format!("SELECT {PEER_COLUMNS} FROM peers ORDER BY role, name COLLATE \"C\""),
                    &[],
                )
                .await?
                .iter()
                .map(peer_row)
                .collect::<Result<Vec<_>, _>>()?;
            let routes = tx
                .query(
                    &format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY name COLLATE \"C\""),
                    &[],
                )
                .await?
                .iter()
                .map(route_row)
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit().await?;
            Ok(StateData {
                epoch,
                version: u64::try_from(version).unwrap_or(0),
                peers,
                routes,
            })
        })
    }
}
