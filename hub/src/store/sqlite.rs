//! The store of one hub: account bindings (name → cluster id and shard) in a
//! SQLite file. Only bindings are stored; the object cache is rebuilt from
//! the agents' resync after a restart.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use super::{Store, StoreError};
use crate::core::registry::{Binding, ShardRef};

/// The binding store: a SQLite file, or an in-memory database when no path is
/// given (bindings then last as long as the process).
pub struct SqliteStore {
    path: String,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS bindings (
    name            TEXT PRIMARY KEY NOT NULL,
    cluster_id      TEXT NOT NULL,
    shard_namespace TEXT NOT NULL,
    shard_name      TEXT NOT NULL,
    server_url      TEXT NOT NULL DEFAULT '',
    updated_at      INTEGER NOT NULL
);
";

impl SqliteStore {
    /// Opens (creating when needed) the database at `path`, or an in-memory
    /// one when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<SqliteStore, StoreError> {
        let label = path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
        let err = |source| StoreError::Sqlite {
            path: label.clone(),
            source,
        };
        let conn = match path {
            Some(path) => Connection::open(path).map_err(err)?,
            None => Connection::open_in_memory().map_err(err)?,
        };
        if path.is_some() {
            // WAL: a crash never leaves a half-written binding; readers (sqlite3
            // CLI while debugging) do not block the hub.
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(err)?;
            conn.pragma_update(None, "synchronous", "NORMAL")
                .map_err(err)?;
        }
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(SqliteStore {
            path: label,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (each
        // statement is atomic), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for SqliteStore {
    fn location(&self) -> String {
        if self.path == ":memory:" {
            "memory".to_owned()
        } else {
            format!("sqlite:{}", self.path)
        }
    }

    /// Every stored binding, by account name.
    fn load(&self) -> Result<Vec<(String, Binding)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT name, cluster_id, shard_namespace, shard_name, server_url
                 FROM bindings ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    Binding {
                        cluster_id: row.get(1)?,
                        shard: ShardRef {
                            namespace: row.get(2)?,
                            name: row.get(3)?,
                        },
                        server_url: row.get(4)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn put(&self, name: &str, binding: &Binding) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.lock()
            .execute(
                "INSERT INTO bindings (name, cluster_id, shard_namespace, shard_name, server_url, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET
                   cluster_id = excluded.cluster_id,
                   shard_namespace = excluded.shard_namespace,
                   shard_name = excluded.shard_name,
                   server_url = excluded.server_url,
                   updated_at = excluded.updated_at",
                params![
                    name,
                    binding.cluster_id,
                    binding.shard.namespace,
                    binding.shard.name,
                    binding.server_url,
                    now
                ],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM bindings WHERE name = ?1", params![name])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(cluster: &str) -> Binding {
        Binding {
            cluster_id: cluster.into(),
            shard: ShardRef {
                namespace: "spinnaker".into(),
                name: "east".into(),
            },
            server_url: "https://east.example:6443".into(),
        }
    }

    #[test]
    fn bindings_persist_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hub.db");
        {
            let store = SqliteStore::open(Some(&path)).expect("open");
            store.put("prod-1", &binding("uid-a")).expect("put");
            store.put("prod-2", &binding("uid-b")).expect("put");
            store.put("prod-2", &binding("uid-c")).expect("replace");
            store.put("gone", &binding("uid-d")).expect("put");
            store.remove("gone").expect("remove");
        }
        let store = SqliteStore::open(Some(&path)).expect("reopen");
        let loaded = store.load().expect("load");
        assert_eq!(
            loaded,
            vec![
                ("prod-1".to_owned(), binding("uid-a")),
                ("prod-2".to_owned(), binding("uid-c")),
            ]
        );
    }

    #[test]
    fn in_memory_store_works() {
        let store = SqliteStore::open(None).expect("open");
        store.put("a", &binding("x")).expect("put");
        assert_eq!(store.load().expect("load").len(), 1);
        store.remove("a").expect("remove");
        store.remove("never-there").expect("remove is idempotent");
        assert!(store.load().expect("load").is_empty());
    }
}
