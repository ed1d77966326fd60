//! SQLite storage: one file, WAL mode, one connection used from blocking tasks.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use super::{
    BoxFuture, MIGRATIONS, PEER_COLUMNS, Peer, ROUTE_COLUMNS, RouteRow, SCHEMA_VERSION, StateData,
    Store, StoreError, role_from_str,
};
use crate::protocol::Role;

/// Storage in one SQLite file.
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn peer_row(row: &Row<'_>) -> rusqlite::Result<Peer> {
    Ok(Peer {
        id: row.get(0)?,
        role: role_from_str(&row.get::<_, String>(1)?),
        name: row.get(2)?,
        address: row.get(3)?,
        token_sha256: row.get(4)?,
        pin: row.get(5)?,
        created_at: row.get(6)?,
        last_seen: row.get(7)?,
        disconnected_at: row.get(8)?,
        report: row.get(9)?,
    })
}

fn route_row(row: &Row<'_>) -> rusqlite::Result<RouteRow> {
    Ok(RouteRow {
        id: row.get(0)?,
        name: row.get(1)?,
        spec: row.get(2)?,
        created_at: row.get(3)?,
        updated_at: row.get(4)?,
    })
}

fn bump(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    let v: i64 = tx.query_row(
        "UPDATE meta SET version = version + 1 WHERE id = 1 RETURNING version",
        [],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Maps a unique-constraint failure to [`StoreError::Duplicate`].
fn unique(e: rusqlite::Error, what: &'static str) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, Some(msg)) = &e
        && f.code == rusqlite::ErrorCode::ConstraintViolation
    {
        let field = if msg.contains("token_sha256") {
            "token"
        } else {
            "name"
        };
        return StoreError::Duplicate { what, field };
    }
    StoreError::Sqlite(e)
}

fn migrate(conn: &mut Connection, epoch: &str) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS meta (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            schema_version INTEGER NOT NULL,
            version INTEGER NOT NULL,
            epoch TEXT NOT NULL
        );",
    )?;
    conn.execute(
        "INSERT INTO meta (id, schema_version, version, epoch) VALUES (1, 0, 0, ?1)
         ON CONFLICT (id) DO NOTHING",
        params![epoch],
    )?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found: i64 = tx.query_row("SELECT schema_version FROM meta WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let start = usize::try_from(found).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        tx.execute_batch(sql)?;
        tx.execute(
            "UPDATE meta SET schema_version = ?1 WHERE id = 1",
            params![i as i64 + 1],
        )?;
        tracing::info!(schema = i + 1, "sqlite: applied migration");
    }
    tx.commit()?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the file and applies migrations.
    pub async fn open(path: PathBuf) -> Result<Self, StoreError> {
        let epoch = crate::tokens::new_id().map_err(StoreError::Random)?;
        let conn = tokio::task::spawn_blocking(move || -> Result<Connection, StoreError> {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let mut conn = Connection::open(&path)?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            migrate(&mut conn, &epoch)?;
            Ok(conn)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))??;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection in a blocking task.
    fn with<T, F>(&self, f: F) -> BoxFuture<'_, Result<T, StoreError>>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn
                    .lock()
                    .map_err(|_| StoreError::Worker("the connection lock was poisoned".into()))?;
                f(&mut guard)
            })
            .await
            .map_err(|e| StoreError::Worker(e.to_string()))?
        })
    }
}

impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn insert_peer(&self, p: Peer) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                &format!("INSERT INTO peers ({PEER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
                params![
                    p.id,
                    p.role.as_str(),
                    p.name,
                    p.address,
                    p.token_sha256,
                    p.pin,
                    p.created_at,
                    p.last_seen,
                    p.disconnected_at,
                    p.report
                ],
            )
            .map_err(|e| unique(e, p.role.as_str()))?;
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn delete_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM peers WHERE id = ?1 AND role = ?2",
                params![id, role.as_str()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(Some(v))
        })
    }

    fn list_peers(&self, role: Role) -> BoxFuture<'_, Result<Vec<Peer>, StoreError>> {
        self.with(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {PEER_COLUMNS} FROM peers WHERE role = ?1 ORDER BY name"
            ))?;
            let rows = stmt.query_map(params![role.as_str()], peer_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_peer(&self, role: Role, id: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {PEER_COLUMNS} FROM peers WHERE id = ?1 AND role = ?2"),
                params![id, role.as_str()],
                peer_row,
            )
            .optional()?)
        })
    }

    fn peer_by_token(&self, token_sha256: &str) -> BoxFuture<'_, Result<Option<Peer>, StoreError>> {
        let hash = token_sha256.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {PEER_COLUMNS} FROM peers WHERE token_sha256 = ?1"),
                params![hash],
                peer_row,
            )
            .optional()?)
        })
    }

    fn record_seen(
        &self,
        id: &str,
        at: i64,
        report: Option<String>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE peers SET last_seen = ?2, report = COALESCE(?3, report) WHERE id = ?1",
                params![id, at, report],
            )?;
            Ok(())
        })
    }

    fn record_disconnect(&self, id: &str, at: i64) -> BoxFuture<'_, Result<(), StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE peers SET disconnected_at = ?2 WHERE id = ?1",
                params![id, at],
            )?;
            Ok(())
        })
    }

    fn set_pin(&self, id: &str, pin: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let (id, pin) = (id.to_string(), pin.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE peers SET pin = ?2 WHERE id = ?1 AND role = 'gateway' AND (pin IS NULL OR pin <> ?2)",
                params![id, pin],
            )?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(Some(v))
        })
    }

    fn insert_route(&self, r: RouteRow) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                &format!("INSERT INTO routes ({ROUTE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5)"),
                params![r.id, r.name, r.spec, r.created_at, r.updated_at],
            )
            .map_err(|e| unique(e, "route"))?;
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(v)
        })
    }

    fn update_route(&self, r: RouteRow) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx
                .execute(
                    "UPDATE routes SET name = ?2, spec = ?3, updated_at = ?4 WHERE id = ?1",
                    params![r.id, r.name, r.spec, r.updated_at],
                )
                .map_err(|e| unique(e, "route"))?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(Some(v))
        })
    }

    fn delete_route(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM routes WHERE id = ?1", params![id])?;
            if n == 0 {
                return Ok(None);
            }
            let v = bump(&tx)?;
            tx.commit()?;
            Ok(Some(v))
        })
    }

    fn list_routes(&self) -> BoxFuture<'_, Result<Vec<RouteRow>, StoreError>> {
        self.with(|c| {
            let mut stmt =
                c.prepare(&format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY name"))?;
            let rows = stmt.query_map([], route_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_route(&self, id: &str) -> BoxFuture<'_, Result<Option<RouteRow>, StoreError>> {
        let id = id.to_string();
        self.with(move |c| {
            Ok(c.query_row(
                &format!("SELECT {ROUTE_COLUMNS} FROM routes WHERE id = ?1"),
                params![id],
                route_row,
            )
            .optional()?)
        })
    }

    fn version(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.with(|c| {
            let v: i64 = c.query_row("SELECT version FROM meta WHERE id = 1", [], |r| r.get(0))?;
            Ok(u64::try_from(v).unwrap_or(0))
        })
    }

    fn state(&self) -> BoxFuture<'_, Result<StateData, StoreError>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let (epoch, version): (String, i64) =
                tx.query_row("SELECT epoch, version FROM meta WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let peers = {
                let mut stmt = tx.prepare(&format!(
                    "SELECT {PEER_COLUMNS} FROM peers ORDER BY role, name"
                ))?;
                let rows = stmt.query_map([], peer_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            let routes = {
                let mut stmt =
                    tx.prepare(&format!("SELECT {ROUTE_COLUMNS} FROM routes ORDER BY name"))?;
                let rows = stmt.query_map([], route_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            };
            tx.commit()?;
            Ok(StateData {
                epoch,
                version: u64::try_from(version).unwrap_or(0),
                peers,
                routes,
            })
        })
    }
}
