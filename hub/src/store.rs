//! Durable account bindings: account name → cluster id and shard, in SQLite.
//!
//! The binding is what makes "an account name can never silently point at
//! another cluster" hold across hub restarts. Only bindings are stored; the
//! object cache is rebuilt from the agents' resync after a restart.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use crate::error::Error;
use crate::registry::{Binding, ShardKey};

/// The binding store: a SQLite file, or an in-memory database when no path is
/// given (bindings then last as long as the process).
pub struct Store {
    path: String,
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
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

impl Store {
    /// Opens (creating when needed) the database at `path`, or an in-memory
    /// one when `path` is `None`.
    pub fn open(path: Option<&Path>) -> Result<Store, Error> {
        let label = path.map_or_else(|| ":memory:".to_owned(), |p| p.display().to_string());
        let err = |source| Error::Store {
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
        Ok(Store {
            path: label,
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, source: rusqlite::Error) -> Error {
        Error::Store {
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

    /// Every stored binding, by account name.
    pub fn load(&self) -> Result<Vec<(String, Binding)>, Error> {
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
                        shard: ShardKey {
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

    /// Records (or replaces) the binding of `name`.
    pub fn put(&self, name: &str, binding: &Binding) -> Result<(), Error> {
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

    /// Forgets the binding of `name` (the account was removed).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
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
            shard: ShardKey {
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
            let store = Store::open(Some(&path)).expect("open");
            store.put("prod-1", &binding("uid-a")).expect("put");
            store.put("prod-2", &binding("uid-b")).expect("put");
            store.put("prod-2", &binding("uid-c")).expect("replace");
            store.put("gone", &binding("uid-d")).expect("put");
            store.remove("gone").expect("remove");
        }
        let store = Store::open(Some(&path)).expect("reopen");
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
        let store = Store::open(None).expect("open");
        store.put("a", &binding("x")).expect("put");
        assert_eq!(store.load().expect("load").len(), 1);
        store.remove("a").expect("remove");
        store.remove("never-there").expect("remove is idempotent");
        assert!(store.load().expect("load").is_empty());
    }
}
