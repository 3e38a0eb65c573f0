//! The shared store of several hub replicas, in PostgreSQL.
//!
//! Every write that decides who holds an account is transactional:
//! [`PgStore::claim`] locks the accounts it is about (advisory locks, taken
//! in one order, so that two replicas claiming the same new name queue
//! instead of both inserting it), reads their rows, lets the caller decide,
//! and writes the new holder with the account's epoch raised by one. The
//! holder's later writes ([`PgStore::flush`], [`PgStore::release`],
//! [`PgStore::remove`]) name the epoch they were claimed at and change
//! nothing when another claim came since: a replica that lost an account
//! cannot write over its new holder.
//!
//! A claim also notifies (`LISTEN scale_agent_claims`) so that the replica
//! that held the account lets it go at once rather than at its next check
//! ([`PgStore::listen`]).
//!
//! By what the queries do: `claims.rs` (who holds an account), `writes.rs`
//! (write-behind of a held account's cache), `liveness.rs` (heartbeats, the
//! leader's sweep), `accounts.rs` (reading accounts), `operations.rs`
//! (operations in flight); here the pool, the bounds and the migrations.
//!
//! Every call is bounded by [`CALL_TIMEOUT`]: a database that does not answer
//! is an error like one that refuses, never a hung registration.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt as _;
use prost::Message as _;
use scale_agent_proto::v1 as pb;
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, Row};

mod accounts;
mod claims;
mod liveness;
mod operations;
pub mod tls;
mod writes;

pub use accounts::*;
pub use claims::*;
pub use liveness::*;
pub use operations::*;
pub use writes::*;

use super::migrations;
use super::{StoreError, redact};
use crate::core::cache::{Changes, KindKey, ObjectKey, Resume, StoredObject};
use crate::core::registry::{Binding, ShardRef};

/// The longest any call to the database may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel claims are announced on.
pub const CLAIMS_CHANNEL: &str = "scale_agent_claims";

/// The shared PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    connect: Connect,
    location: String,
}

/// How the store connects: `config` and its TLS, the password re-read from
/// `--store-password-file` for each new connection (a password rotated in the file,
/// as a Kubernetes Secret is, is used from the next connection on, without a
/// restart).
#[derive(Clone)]
struct Connect {
    config: tokio_postgres::Config,
    tls: tls::Connector,
    password_file: Option<PathBuf>,
}

impl Connect {
    /// The settings of the next connection: `config`, with the password the file
    /// holds now (the one read before stays when it cannot be read, with a warning).
    fn config(&self) -> tokio_postgres::Config {
        let mut config = self.config.clone();
        if let Some(file) = &self.password_file {
            match read_password(file) {
                Ok(password) => {
                    config.password(password);
                }
                Err(why) => {
                    tracing::warn!(%why, "cannot read --store-password-file again; connecting with the password read before");
                }
            }
        }
        config
    }
}

impl deadpool_postgres::Connect for Connect {
    fn connect(
        &self,
        _: &tokio_postgres::Config,
    ) -> futures::future::BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = self.config();
        let tls = self.tls.clone();
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await?;
            let task = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::warn!(%err, "a connection to the store broke off");
                }
            });
            Ok((client, task))
        })
    }
}

/// The password `file` holds (`--store-password-file`: one line, its line end
/// dropped), or why not.
fn read_password(file: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return Err(format!("{} is empty", file.display()));
    }
    Ok(password.to_owned())
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// The advisory lock key of an account name: two claims of the same name
/// queue on it, also when no row exists yet.
pub fn lock_key(name: &str) -> i64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A count or epoch column (`bigint`); a negative one, which no write of
/// ours makes, reads as 0.
fn u64_of(row: &Row, column: &str) -> u64 {
    u64::try_from(row.get::<_, i64>(column)).unwrap_or_default()
}

/// The first column of every row.
fn first_column<T: for<'a> FromSql<'a>>(rows: &[Row]) -> Vec<T> {
    rows.iter().map(|r| r.get(0)).collect()
}

/// One `text[]` column of `items`, for `unnest`.
fn column<'a, T>(items: &'a [T], field: impl Fn(&'a T) -> &'a str) -> Vec<&'a str> {
    items.iter().map(field).collect()
}

/// Runs `statement` on `account` only while `me` still holds it at `epoch`,
/// so that a replica that lost the account to a later claim changes nothing:
/// `statement WHERE name = $1 AND holder = $2 AND epoch = $3 also`, with
/// `more` as `$4`, ... True when it changed a row.
async fn fenced(
    client: &impl GenericClient,
    statement: &str,
    also: &str,
    (account, me, epoch): (&str, &str, u64),
    more: &[&(dyn ToSql + Sync)],
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!("{statement} WHERE name = $1 AND holder = $2 AND epoch = $3 {also}");
    let epoch = to_i64(epoch);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&account, &me, &epoch];
    params.extend_from_slice(more);
    Ok(client.execute(&sql, &params).await? > 0)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The environment variable the database password is read from when neither the URL
/// nor `--store-password-file` gives one (libpq's name for it): a Kubernetes Secret
/// becomes it with `secretKeyRef`, and it appears on no command line.
pub const PASSWORD_ENV: &str = "PGPASSWORD";

impl PgStore {
    /// A store on the database at `url` (TLS as [`tls::parse`] reads it); its
    /// password, when the URL has none, from [`PASSWORD_ENV`]. Nothing is connected
    /// yet: the first call connects (and [`PgStore::migrate`] must come first).
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open(url, None)
    }

    /// [`PgStore::new`], the password read from `password_file` when given
    /// (`--store-password-file`; a password in the URL still wins, with a warning).
    pub fn open(url: &str, password_file: Option<&Path>) -> Result<PgStore, StoreError> {
        let location = redact(url);
        let invalid = |what: &'static str, message: String| StoreError::Postgres {
            location: location.clone(),
            what,
            message,
        };
        let (url, tls) =
            tls::parse(url).map_err(|m| invalid("reading the URL's TLS settings", m))?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| invalid("reading the URL", e.to_string()))?;
        match &tls {
            tls::PgTls::Disable => {
                tracing::warn!(store = %location, "sslmode=disable: the hub reaches PostgreSQL in the clear (the password, every account's objects and the operations cross the network readable); use sslmode=verify-full with sslrootcert=<CA file>");
                config.ssl_mode(SslMode::Disable);
            }
            tls::PgTls::VerifyFull { root } => {
                tracing::info!(store = %location, sslrootcert = ?root, "PostgreSQL over TLS, its certificate checked against sslrootcert (the system's CAs when unset) and the host");
                config.ssl_mode(SslMode::Require);
            }
        }
        let connector = tls::Connector::new(&tls).map_err(|m| invalid("setting up TLS", m))?;
        let mut reread = None;
        if config.get_password().is_some() {
            tracing::warn!(store = %location, "the --store URL holds the database password, which any local user may read on the hub's command line: give it in --store-password-file or the environment (PGPASSWORD) instead");
        } else if let Some(file) = password_file {
            let password =
                read_password(file).map_err(|m| invalid("reading --store-password-file", m))?;
            config.password(password);
            reread = Some(file.to_owned());
        } else if let Some(password) = std::env::var_os(PASSWORD_ENV).filter(|p| !p.is_empty()) {
            config.password(password.as_encoded_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("scale-agent-hub");
        }
        let connect = Connect {
            config: config.clone(),
            tls: connector,
            password_file: reread,
        };
        let manager = Manager::from_connect(
            config,
            connect.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(16)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| invalid("building the connection pool", e.to_string()))?;
        Ok(PgStore {
            pool,
            connect,
            location,
        })
    }

    /// The database, password hidden.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn error(&self, what: &'static str, message: impl ToString) -> StoreError {
        StoreError::Postgres {
            location: self.location.clone(),
            what,
            message: message.to_string(),
        }
    }

    /// Runs `call` within [`CALL_TIMEOUT`].
    async fn bounded<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(self.error(
                what,
                format!("no answer within {}s", CALL_TIMEOUT.as_secs()),
            )),
        }
    }

    async fn client(&self, what: &'static str) -> Result<deadpool_postgres::Client, StoreError> {
        // The causes too: a refused TLS handshake says why only in its cause.
        self.pool
            .get()
            .await
            .map_err(|e| self.error(what, crate::error::chain(&e)))
    }

    /// Runs one statement on a connection of its own, within
    /// [`CALL_TIMEOUT`]. Returns how many rows it changed.
    async fn execute(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.bounded(what, async {
            let client = self.client(what).await?;
            client
                .execute(sql, params)
                .await
                .map_err(|e| self.error(what, e))
        })
        .await
    }

    /// [`fenced`] on a connection of its own, within [`CALL_TIMEOUT`].
    async fn fenced(
        &self,
        what: &'static str,
        statement: &str,
        also: &str,
        held: (&str, &str, u64),
        more: &[&(dyn ToSql + Sync)],
    ) -> Result<bool, StoreError> {
        self.bounded(what, async {
            let client = self.client(what).await?;
            fenced(&client, statement, also, held, more)
                .await
                .map_err(|e| self.error(what, e))
        })
        .await
    }

    /// Applies the migrations this database lacks (see [`migrations`]).
    /// Returns the versions it applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, StoreError> {
        const WHAT: &str = "migrating the schema";
        self.bounded(WHAT, async {
            let mut client = self.client(WHAT).await?;
            let err = |e: tokio_postgres::Error| self.error(WHAT, e);
            client
                .execute("SELECT pg_advisory_lock($1)", &[&migrations::LOCK_KEY])
                .await
                .map_err(err)?;
            let result = async {
                client.batch_execute(migrations::TABLE).await.map_err(err)?;
                let applied: Vec<i32> = first_column(
                    &client
                        .query("SELECT version FROM scale_agent_migrations", &[])
                        .await
                        .map_err(err)?,
                );
                let pending =
                    migrations::pending(&applied).map_err(|message| StoreError::Corrupt {
                        location: self.location.clone(),
                        what: "schema version",
                        message,
                    })?;
                let mut done = Vec::new();
                for migration in pending {
                    let tx = client.transaction().await.map_err(err)?;
                    tx.batch_execute(migration.sql).await.map_err(err)?;
                    tx.execute(
                        "INSERT INTO scale_agent_migrations (version, name) VALUES ($1, $2)",
                        &[&migration.version, &migration.name],
                    )
                    .await
                    .map_err(err)?;
                    tx.commit().await.map_err(err)?;
                    done.push(migration.version);
                }
                Ok(done)
            }
            .await;
            // Released with the connection too, should this fail.
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&migrations::LOCK_KEY])
                .await;
            result
        })
        .await
    }

    /// Listens for claims: each item is the name of an account some replica
    /// just claimed. The stream ends when the connection breaks (listen
    /// again).
    pub async fn listen(&self) -> Result<mpsc::Receiver<String>, StoreError> {
        const WHAT: &str = "listening for claims";
        self.bounded(WHAT, async {
            let (client, mut connection) = self
                .connect
                .config()
                .connect(self.connect.tls.clone())
                .await
                .map_err(|e| self.error(WHAT, crate::error::chain(&e)))?;
            let (tx, rx) = mpsc::channel(1024);
            let client = Arc::new(client);
            let alive = Arc::clone(&client);
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            tokio::spawn(async move {
                // The client lives as long as the connection is polled.
                let _alive = alive;
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(AsyncMessage::Notification(n)) => {
                            if tx.send(n.payload().to_owned()).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
            client
                .batch_execute(&format!("LISTEN {CLAIMS_CHANNEL}"))
                .await
                .map_err(|e| self.error(WHAT, e))?;
            Ok(rx)
        })
        .await
    }
}
