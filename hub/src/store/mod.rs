//! What the hub keeps beyond its memory.
//!
//! One hub keeps its account bindings in SQLite ([`sqlite`], or in memory):
//! the binding is what makes "an account name can never silently point at
//! another cluster" hold across a restart, and the cache is rebuilt from the
//! agents' resync.
//!
//! Several hub replicas share a PostgreSQL database ([`postgres`], schema in
//! [`migrations`]): the bindings, which replica holds which account's stream
//! (with an epoch that fences the holder's writes), the replicas and their
//! heartbeats, every held account's objects and resume points (written
//! behind the cache), and the operations in flight. the replicas (`hub/src/replicas/`)
//! drives it.
//!
//! [`Store`] is what both kinds answer: the bindings a hub enforces from its
//! start and keeps up to date. A shared store keeps its bindings in the
//! registry it shares, written in the same transaction as the claim that
//! decides who holds an account, so it has nothing to load or write here.

pub mod migrations;
pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::PathBuf;

use crate::core::registry::Binding;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Where the hub keeps its state (`--store`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum StoreLocation {
    /// Nowhere: bindings last as long as the process (one replica).
    #[default]
    Memory,
    /// A SQLite file: bindings survive a restart (one replica).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://...` URL) that several replicas
    /// share.
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://` or `postgresql://` URL is a shared PostgreSQL store;
    /// anything else is the path of a SQLite file.
    pub fn parse(text: &str) -> StoreLocation {
        let lower = text.trim().to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            StoreLocation::Postgres(text.trim().to_owned())
        } else {
            StoreLocation::Sqlite(PathBuf::from(text))
        }
    }

    /// True for a store several replicas share.
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

/// The location without a password: `postgres://user:***@host/db`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            let tail = redact_query(tail);
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => format!("{scheme}://{authority}{}", redact_query(tail)),
    }
}

/// A `password=` query parameter, hidden.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Memory => f.write_str("memory"),
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Postgres(url) => f.write_str(&redact(url)),
        }
    }
}

impl fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreLocation({self})")
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite could not open, read or write its file.
    #[error("binding store {path}: {source}")]
    Sqlite {
        /// The database file, or `:memory:`.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// PostgreSQL could not be reached, or a statement failed.
    #[error("shared store {location}: {what}: {message}")]
    Postgres {
        /// The database, password hidden.
        location: String,
        /// What the hub was doing.
        what: &'static str,
        /// What the client or the server said.
        message: String,
    },
    /// A stored row cannot be used (written by a newer hub, or damaged).
    #[error("shared store {location}: {what}: {message}")]
    Corrupt {
        /// The database, password hidden.
        location: String,
        /// Which data.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The bindings a hub enforces from its start and keeps up to date.
pub trait Store: Send + Sync + fmt::Debug {
    /// Where the store is, for logs (never with a password).
    fn location(&self) -> String;

    /// The bindings to enforce from the start, by account name: each is a
    /// Disconnected account whose grace period starts now.
    fn load(&self) -> Result<Vec<(String, Binding)>, StoreError>;

    /// Records (or replaces) the binding of `name`.
    fn put(&self, name: &str, binding: &Binding) -> Result<(), StoreError>;

    /// Forgets the binding of `name` (the account was removed).
    fn remove(&self, name: &str) -> Result<(), StoreError>;
}

/// Opens the store of one replica at `location`: SQLite, or memory. A
/// PostgreSQL location is opened by [`PgStore::new`] and driven by
/// the replicas (`hub/src/replicas/`); here it gets a store with nothing to load or write.
pub fn open(location: &StoreLocation) -> Result<Box<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Memory => Box::new(SqliteStore::open(None)?),
        StoreLocation::Sqlite(path) => Box::new(SqliteStore::open(Some(path))?),
        StoreLocation::Postgres(url) => Box::new(SharedBindings {
            location: redact(url),
        }),
    })
}

/// The [`Store`] of a replica that shares a PostgreSQL store: its bindings
/// live in the shared registry, read at every registration and written with
/// the claim, so there is nothing to load at the start nor to write
/// afterwards.
#[derive(Debug)]
struct SharedBindings {
    location: String,
}

impl Store for SharedBindings {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn load(&self) -> Result<Vec<(String, Binding)>, StoreError> {
        Ok(Vec::new())
    }

    fn put(&self, _name: &str, _binding: &Binding) -> Result<(), StoreError> {
        Ok(())
    }

    fn remove(&self, _name: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_shared_anything_else_is_a_sqlite_file() {
        assert_eq!(
            StoreLocation::parse("postgres://hub@db:5432/hub"),
            StoreLocation::Postgres("postgres://hub@db:5432/hub".into())
        );
        assert!(StoreLocation::parse("PostgreSQL://db/hub").is_shared());
        assert_eq!(
            StoreLocation::parse("/var/lib/hub.db"),
            StoreLocation::Sqlite("/var/lib/hub.db".into())
        );
        assert!(!StoreLocation::parse("postgres.db").is_shared());
    }

    #[test]
    fn passwords_never_show() {
        for (url, shown) in [
            (
                "postgres://hub:s3cret@db:5432/hub?sslmode=require",
                "postgres://hub:***@db:5432/hub?sslmode=require",
            ),
            ("postgres://hub@db/hub", "postgres://hub@db/hub"),
            (
                "postgres://db/hub?user=hub&password=s3cret",
                "postgres://db/hub?user=hub&password=***",
            ),
            ("postgresql://u:p@h", "postgresql://u:***@h"),
        ] {
            assert_eq!(redact(url), shown);
            let location = StoreLocation::Postgres(url.into());
            assert!(!format!("{location} {location:?}").contains("s3cret"));
        }
    }
}
