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
//! Every call is bounded by [`CALL_TIMEOUT`]: a database that does not answer
//! is an error like one that refuses, never a hung registration.

use std::collections::{HashMap, HashSet};
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
use tokio_postgres::types::{FromSql, ToSql};
use tokio_postgres::{AsyncMessage, NoTls, Row};

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
    config: tokio_postgres::Config,
    location: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

/// This replica, as the others find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its id (the hub id it announces to agents).
    pub id: String,
    /// The base URL of its HTTP API, where others forward requests.
    pub api_url: String,
    /// The base URL of its Kubernetes API, when it serves one.
    pub kube_api_url: String,
}

/// One shared account, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRow {
    /// The account name.
    pub name: String,
    /// What the name is bound to.
    pub binding: Binding,
    /// The cluster's Kubernetes version.
    pub kubernetes_version: String,
    /// The agent replica that streams (or last streamed) it.
    pub agent_replica: String,
    /// The hub replica that holds (or last held) its stream.
    pub holder: String,
    /// The session on the holder; `None` when Disconnected.
    pub session: Option<String>,
    /// Raised by every claim.
    pub epoch: u64,
    /// When it last changed state.
    pub since: SystemTime,
    /// Its objects, as the holder last wrote them.
    pub objects: u64,
    /// Whether the holder's heartbeat is recent.
    pub holder_alive: bool,
    /// The holder's HTTP API, when it is a known replica.
    pub holder_api_url: Option<String>,
    /// The holder's Kubernetes API, when it serves one.
    pub holder_kube_api_url: Option<String>,
}

/// What a claim is decided on: the stored rows of the accounts it is about
/// (locked until the claim ends), and the stored caches of those the
/// claiming replica must take over.
#[derive(Debug, Default)]
pub struct ClaimView {
    /// Stored accounts, by name; a name without a row is new.
    pub rows: HashMap<String, AccountRow>,
    /// Stored caches of the accounts whose cache the claimer lacks.
    pub caches: HashMap<String, StoredCache>,
}

/// An account's cache as the store kept it.
#[derive(Debug, Default)]
pub struct StoredCache {
    /// Its objects.
    pub objects: Vec<StoredObject>,
    /// Its kinds' resume points.
    pub resume: Vec<Resume>,
    /// Objects whose body did not parse: dropped, and their kinds left
    /// without a resume point (the agent relists them).
    pub unreadable: usize,
}

/// One account a claim takes.
#[derive(Debug, Clone)]
pub struct ClaimWrite {
    /// The account.
    pub name: String,
    /// Its binding.
    pub binding: Binding,
    /// The session that streams it.
    pub session: String,
    /// The agent replica of that session.
    pub agent_replica: String,
    /// The cluster's Kubernetes version.
    pub kubernetes_version: String,
}

/// A claim that did not commit.
#[derive(Debug)]
pub struct ClaimFailed<T> {
    /// What the caller decided, when it got that far: its acceptances did
    /// not happen and must be undone.
    pub decided: Option<T>,
    /// Why.
    pub error: StoreError,
}

/// Why a flush did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The account was claimed by someone else since (or removed): this
    /// replica does not hold it any more.
    #[error("the account is no longer held by this replica at this epoch")]
    Lost,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Default)]
pub struct Beat {
    /// This replica holds the leader lease.
    pub leader: bool,
}

/// What the leader's sweep did.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// Accounts of replicas that stopped heartbeating, now Disconnected.
    pub disconnected: Vec<String>,
    /// Accounts whose grace period ran out, removed with their objects.
    pub expired: Vec<String>,
    /// Operations nobody will answer, failed.
    pub failed_operations: u64,
}

/// An operation sent to an agent, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredOperation {
    /// The id the agent sees.
    pub wire_id: String,
    /// The account.
    pub account: String,
    /// The caller's id.
    pub caller_id: String,
    /// The frame sent to the agent.
    pub frame: pb::Operation,
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

/// Ends every session `me` holds (its accounts become Disconnected, their
/// grace period starting now) and hands its operations in flight to the
/// accounts' next holders. Returns how many accounts it let go.
async fn let_go_of_everything(
    client: &impl GenericClient,
    me: &str,
) -> Result<u64, tokio_postgres::Error> {
    let released = client
        .execute(
            "UPDATE accounts SET session = NULL, since = now()
             WHERE holder = $1 AND session IS NOT NULL",
            &[&me],
        )
        .await?;
    client
        .execute(
            "UPDATE operations SET owner = NULL WHERE owner = $1 AND outcome IS NULL",
            &[&me],
        )
        .await?;
    Ok(released)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Selects the columns [`account_row`] reads, from `accounts a` joined with
/// their holders `r`, followed by `rest` (`WHERE ...`, `ORDER BY ...`);
/// parameter `$<timeout>` is the replica timeout in seconds.
fn select_accounts(timeout: u8, rest: &str) -> String {
    format!(
        "SELECT a.name, a.cluster_id, a.shard_namespace, a.shard_name, a.server_url,
         a.kubernetes_version, a.agent_replica, a.holder, a.session, a.epoch, a.since, a.objects,
         COALESCE(r.heartbeat_at > now() - make_interval(secs => ${timeout}), false) AS holder_alive,
         r.api_url, r.kube_api_url
         FROM accounts a LEFT JOIN replicas r ON r.id = a.holder {rest}"
    )
}

fn account_row(row: &Row) -> AccountRow {
    AccountRow {
        name: row.get("name"),
        binding: Binding {
            cluster_id: row.get("cluster_id"),
            shard: ShardRef {
                namespace: row.get("shard_namespace"),
                name: row.get("shard_name"),
            },
            server_url: row.get("server_url"),
        },
        kubernetes_version: row.get("kubernetes_version"),
        agent_replica: row.get("agent_replica"),
        holder: row.get("holder"),
        session: row.get("session"),
        epoch: u64_of(row, "epoch"),
        since: row.get("since"),
        objects: u64_of(row, "objects"),
        holder_alive: row.get("holder_alive"),
        holder_api_url: row.get("api_url"),
        holder_kube_api_url: row.get("kube_api_url"),
    }
}

impl PgStore {
    /// A store on the database at `url`. Nothing is connected yet: the
    /// first call connects (and [`PgStore::migrate`] must come first).
    pub fn new(url: &str) -> Result<PgStore, StoreError> {
        let location = redact(url);
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Postgres {
                location: location.clone(),
                what: "reading the URL",
                message: e.to_string(),
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("scale-agent-hub");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
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
            .map_err(|e| StoreError::Postgres {
                location: location.clone(),
                what: "building the connection pool",
                message: e.to_string(),
            })?;
        Ok(PgStore {
            pool,
            config,
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
        self.pool.get().await.map_err(|e| self.error(what, e))
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

    /// Records that `me` is alive (and where it is reached), and takes or
    /// renews the leader lease for `lease`.
    pub async fn heartbeat(&self, me: &ReplicaInfo, lease: Duration) -> Result<Beat, StoreError> {
        const WHAT: &str = "heartbeat";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let err = |e| self.error(WHAT, e);
            client
                .execute(
                    "INSERT INTO replicas (id, api_url, kube_api_url) VALUES ($1, $2, $3)
                     ON CONFLICT (id) DO UPDATE SET api_url = excluded.api_url,
                         kube_api_url = excluded.kube_api_url, heartbeat_at = now()",
                    &[&me.id, &me.api_url, &me.kube_api_url],
                )
                .await
                .map_err(err)?;
            let leader = client
                .query_opt(
                    "INSERT INTO leader (id, replica, until)
                     VALUES (1, $1, now() + make_interval(secs => $2))
                     ON CONFLICT (id) DO UPDATE SET replica = excluded.replica, until = excluded.until
                     WHERE leader.replica = excluded.replica OR leader.until < now()
                     RETURNING replica",
                    &[&me.id, &secs(lease)],
                )
                .await
                .map_err(err)?
                .is_some();
            Ok(Beat { leader })
        })
        .await
    }

    /// The leader's round: accounts of replicas silent for longer than
    /// `timeout` become Disconnected (their grace period counted from the
    /// replica's last heartbeat) — when `judge_liveness`: not right after the
    /// store itself was out, when everyone's heartbeat is old; accounts
    /// Disconnected for longer than `grace` are removed with their objects
    /// and resume points; operations of removed accounts, and operations
    /// nobody waits for whose deadline passed, are failed with a message
    /// saying why.
    pub async fn sweep(
        &self,
        grace: Duration,
        timeout: Duration,
        judge_liveness: bool,
    ) -> Result<Sweep, StoreError> {
        const WHAT: &str = "enforcing grace periods";
        self.bounded(WHAT, async {
            let mut client = self.client(WHAT).await?;
            let err = |e| self.error(WHAT, e);
            let tx = client.transaction().await.map_err(err)?;
            let disconnected: Vec<String> = if !judge_liveness {
                Vec::new()
            } else {
                first_column(&tx
                .query(
                    "UPDATE accounts a SET session = NULL,
                         since = COALESCE((SELECT r.heartbeat_at FROM replicas r WHERE r.id = a.holder), now())
                     WHERE a.session IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM replicas r
                         WHERE r.id = a.holder AND r.heartbeat_at > now() - make_interval(secs => $1))
                     RETURNING a.name",
                    &[&secs(timeout)],
                )
                .await
                .map_err(err)?)
            };
            let expired: Vec<String> = first_column(
                &tx.query(
                    "DELETE FROM accounts
                     WHERE session IS NULL AND since < now() - make_interval(secs => $1)
                     RETURNING name",
                    &[&secs(grace)],
                )
                .await
                .map_err(err)?,
            );
            let removed = tx
                .execute(
                    "UPDATE operations SET owner = NULL, finished_at = now(),
                         outcome = jsonb_build_object('id', caller_id, 'success', false, 'result', NULL,
                             'errorCode', 'UNKNOWN_ACCOUNT',
                             'message', 'the account was removed (its agent did not come back within the grace period) before the operation was answered; it may or may not have taken effect')
                     WHERE outcome IS NULL AND account = ANY($1)",
                    &[&expired],
                )
                .await
                .map_err(err)?;
            let abandoned = if !judge_liveness {
                0
            } else {
                tx.execute(
                    "UPDATE operations o SET owner = NULL, finished_at = now(),
                         outcome = jsonb_build_object('id', caller_id, 'success', false, 'result', NULL,
                             'errorCode', 'DEADLINE_EXCEEDED',
                             'message', 'no replica received a result before the deadline (the replica that sent it stopped); the operation may or may not have taken effect')
                     WHERE o.outcome IS NULL AND o.deadline < now() - make_interval(secs => $1)
                       AND NOT EXISTS (SELECT 1 FROM replicas r
                           WHERE r.id = o.owner AND r.heartbeat_at > now() - make_interval(secs => $1))",
                    &[&secs(timeout)],
                )
                .await
                .map_err(err)?
            };
            tx.execute(
                "DELETE FROM operations WHERE finished_at < now() - interval '15 minutes'",
                &[],
            )
            .await
            .map_err(err)?;
            tx.execute(
                "DELETE FROM replicas r
                 WHERE r.heartbeat_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.holder = r.id)",
                &[&secs(grace + timeout)],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok(Sweep {
                disconnected,
                expired,
                failed_operations: removed + abandoned,
            })
        })
        .await
    }

    /// A replica stopping: its sessions are over (its accounts are
    /// Disconnected, their grace period starting now), it gives the leader
    /// lease up and leaves the list of replicas.
    pub async fn leave(&self, me: &str) -> Result<(), StoreError> {
        const WHAT: &str = "leaving";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let err = |e| self.error(WHAT, e);
            let_go_of_everything(&client, me).await.map_err(err)?;
            client
                .execute("DELETE FROM leader WHERE replica = $1", &[&me])
                .await
                .map_err(err)?;
            client
                .execute("DELETE FROM replicas WHERE id = $1", &[&me])
                .await
                .map_err(err)?;
            Ok(())
        })
        .await
    }

    /// Replica `me` starts: what a previous run under the same id held is
    /// not held any more (its sessions died with it). Its accounts are
    /// Disconnected, their grace period starting now, and its operations go
    /// to the accounts' next holders.
    pub async fn restart(&self, me: &str) -> Result<u64, StoreError> {
        const WHAT: &str = "starting";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let_go_of_everything(&client, me)
                .await
                .map_err(|e| self.error(WHAT, e))
        })
        .await
    }

    /// Claims accounts `names` for replica `me`.
    ///
    /// In one transaction: locks the names, reads their rows into a
    /// [`ClaimView`] (with the stored cache of every account whose cache
    /// `me` lacks: any account not in `current`, which maps the accounts
    /// whose cache `me` holds to the epoch it claimed them at), asks
    /// `decide`, and writes each [`ClaimWrite`] it returns with the
    /// account's epoch raised. Returns what `decide` returned and the new
    /// epochs.
    pub async fn claim<T>(
        &self,
        me: &str,
        names: &[String],
        current: &HashMap<String, u64>,
        replica_timeout: Duration,
        decide: impl FnOnce(ClaimView) -> (T, Vec<ClaimWrite>),
    ) -> Result<(T, Vec<(String, u64)>), ClaimFailed<T>> {
        const WHAT: &str = "claiming accounts";
        let failed = |error| ClaimFailed {
            decided: None,
            error,
        };
        let mut client = match self.bounded(WHAT, self.client(WHAT)).await {
            Ok(c) => c,
            Err(e) => return Err(failed(e)),
        };
        let err = |e| self.error(WHAT, e);
        let read = async {
            let tx = client.transaction().await.map_err(err)?;
            let mut keys: Vec<i64> = names.iter().map(|n| lock_key(n)).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&key])
                    .await
                    .map_err(err)?;
            }
            let rows = tx
                .query(
                    &select_accounts(2, "WHERE a.name = ANY($1) FOR UPDATE OF a"),
                    &[&names, &secs(replica_timeout)],
                )
                .await
                .map_err(err)?;
            let mut view = ClaimView::default();
            for row in &rows {
                let row = account_row(row);
                let mine = row.holder == me && current.get(&row.name) == Some(&row.epoch);
                if !mine {
                    let cache = self.load_cache(&tx, &row.name).await?;
                    view.caches.insert(row.name.clone(), cache);
                }
                view.rows.insert(row.name.clone(), row);
            }
            Ok::<_, StoreError>((tx, view))
        };
        let (tx, view) = match tokio::time::timeout(CALL_TIMEOUT, read).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => return Err(failed(e)),
            Err(_) => {
                return Err(failed(
                    self.error(WHAT, "no answer within the call timeout"),
                ));
            }
        };
        let (decided, writes) = decide(view);
        let write = async {
            let mut epochs = Vec::with_capacity(writes.len());
            for w in &writes {
                let row = tx
                    .query_one(
                        "INSERT INTO accounts (name, cluster_id, shard_namespace, shard_name, server_url,
                             kubernetes_version, agent_replica, holder, session, epoch, since)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, now())
                         ON CONFLICT (name) DO UPDATE SET cluster_id = excluded.cluster_id,
                             shard_namespace = excluded.shard_namespace, shard_name = excluded.shard_name,
                             server_url = excluded.server_url, kubernetes_version = excluded.kubernetes_version,
                             agent_replica = excluded.agent_replica, holder = excluded.holder,
                             session = excluded.session, epoch = accounts.epoch + 1,
                             since = CASE WHEN accounts.session IS DISTINCT FROM excluded.session
                                 THEN now() ELSE accounts.since END
                         RETURNING epoch",
                        &[
                            &w.name,
                            &w.binding.cluster_id,
                            &w.binding.shard.namespace,
                            &w.binding.shard.name,
                            &w.binding.server_url,
                            &w.kubernetes_version,
                            &w.agent_replica,
                            &me,
                            &w.session,
                        ],
                    )
                    .await
                    .map_err(err)?;
                epochs.push((w.name.clone(), u64_of(&row, "epoch")));
            }
            let claimed: Vec<&str> = writes.iter().map(|w| w.name.as_str()).collect();
            tx.execute(
                "SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n",
                &[&CLAIMS_CHANNEL, &claimed],
            )
            .await
            .map_err(err)?;
            tx.commit().await.map_err(err)?;
            Ok::<_, StoreError>(epochs)
        };
        match tokio::time::timeout(CALL_TIMEOUT, write).await {
            Ok(Ok(epochs)) => Ok((decided, epochs)),
            Ok(Err(error)) => Err(ClaimFailed {
                decided: Some(decided),
                error,
            }),
            Err(_) => Err(ClaimFailed {
                decided: Some(decided),
                error: self.error(WHAT, "no answer within the call timeout"),
            }),
        }
    }

    /// The objects and resume points stored for `account`.
    async fn load_cache(
        &self,
        client: &impl GenericClient,
        account: &str,
    ) -> Result<StoredCache, StoreError> {
        let err = |e| self.error("reading an account's cache", e);
        let mut cache = StoredCache::default();
        let mut unreadable_kinds = HashSet::new();
        for row in client
            .query(
                "SELECT api_group, kind, namespace, name, version, uid, resource_version, body
                 FROM objects WHERE account = $1",
                &[&account],
            )
            .await
            .map_err(err)?
        {
            let key = ObjectKey {
                group: row.get("api_group"),
                kind: row.get("kind"),
                namespace: row.get("namespace"),
                name: row.get("name"),
            };
            match RawValue::from_string(row.get("body")) {
                Ok(body) => cache.objects.push(StoredObject {
                    key,
                    version: row.get("version"),
                    uid: row.get("uid"),
                    resource_version: row.get("resource_version"),
                    body: Arc::from(body),
                }),
                Err(_) => {
                    cache.unreadable += 1;
                    unreadable_kinds.insert(key.kind_key());
                }
            }
        }
        for row in client
            .query(
                "SELECT api_group, kind, version, resource_version, selection FROM resume_points WHERE account = $1",
                &[&account],
            )
            .await
            .map_err(err)?
        {
            let kind = KindKey {
                group: row.get("api_group"),
                kind: row.get("kind"),
            };
            if !unreadable_kinds.contains(&kind) {
                cache.resume.push(Resume {
                    kind,
                    version: row.get("version"),
                    resource_version: row.get("resource_version"),
                    selection: row.get("selection"),
                });
            }
        }
        Ok(cache)
    }

    /// Writes `changes` of `account`, held by `me` since `epoch`, in one
    /// transaction; [`FlushError::Lost`] when another claim came since.
    pub async fn flush(
        &self,
        me: &str,
        account: &str,
        epoch: u64,
        changes: &Changes,
    ) -> Result<(), FlushError> {
        const WHAT: &str = "writing an account's cache";
        let result = self
            .bounded(WHAT, async {
                let mut client = self.client(WHAT).await?;
                let err = |e| self.error(WHAT, e);
                let tx = client.transaction().await.map_err(err)?;
                let held = fenced(
                    &tx,
                    "UPDATE accounts SET objects = $4",
                    "",
                    (account, me, epoch),
                    &[&to_i64(changes.objects as u64)],
                )
                .await
                .map_err(err)?;
                if !held {
                    return Ok(false);
                }
                if !changes.deletes.is_empty() {
                    let (groups, kinds, namespaces, names) = key_columns(changes.deletes.iter());
                    tx.execute(
                        "DELETE FROM objects o USING unnest($2::text[], $3::text[], $4::text[], $5::text[])
                             AS d(api_group, kind, namespace, name)
                         WHERE o.account = $1 AND o.api_group = d.api_group AND o.kind = d.kind
                           AND o.namespace = d.namespace AND o.name = d.name",
                        &[&account, &groups, &kinds, &namespaces, &names],
                    )
                    .await
                    .map_err(err)?;
                }
                if !changes.upserts.is_empty() {
                    let (groups, kinds, namespaces, names) =
                        key_columns(changes.upserts.iter().map(|(k, _)| k));
                    let versions = column(&changes.upserts, |(_, o)| o.version.as_str());
                    let uids = column(&changes.upserts, |(_, o)| o.uid.as_str());
                    let rvs = column(&changes.upserts, |(_, o)| o.resource_version.as_str());
                    let bodies = column(&changes.upserts, |(_, o)| o.body.get());
                    tx.execute(
                        "INSERT INTO objects (account, api_group, kind, namespace, name, version, uid, resource_version, body)
                         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[], $9::text[])
                         ON CONFLICT (account, api_group, kind, namespace, name) DO UPDATE SET
                             version = excluded.version, uid = excluded.uid,
                             resource_version = excluded.resource_version, body = excluded.body",
                        &[&account, &groups, &kinds, &namespaces, &names, &versions, &uids, &rvs, &bodies],
                    )
                    .await
                    .map_err(err)?;
                }
                tx.execute("DELETE FROM resume_points WHERE account = $1", &[&account])
                    .await
                    .map_err(err)?;
                if !changes.resume.is_empty() {
                    let groups = column(&changes.resume, |r| r.kind.group.as_str());
                    let kinds = column(&changes.resume, |r| r.kind.kind.as_str());
                    let versions = column(&changes.resume, |r| r.version.as_str());
                    let rvs = column(&changes.resume, |r| r.resource_version.as_str());
                    let selections = column(&changes.resume, |r| r.selection.as_str());
                    tx.execute(
                        "INSERT INTO resume_points (account, api_group, kind, version, resource_version, selection)
                         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])",
                        &[&account, &groups, &kinds, &versions, &rvs, &selections],
                    )
                    .await
                    .map_err(err)?;
                }
                tx.commit().await.map_err(err)?;
                Ok(true)
            })
            .await?;
        if result {
            Ok(())
        } else {
            Err(FlushError::Lost)
        }
    }

    /// The session of `account`, held by `me` since `epoch`, ended: the
    /// account is Disconnected and its grace period starts. Nothing happens
    /// when another claim came since. True when it was released.
    pub async fn release(&self, me: &str, account: &str, epoch: u64) -> Result<bool, StoreError> {
        self.fenced(
            "releasing an account",
            "UPDATE accounts SET session = NULL, since = now()",
            "AND session IS NOT NULL",
            (account, me, epoch),
            &[],
        )
        .await
    }

    /// `account`, held by `me` since `epoch`, is streamed on `session` here
    /// although the store has it Disconnected (the leader took this replica
    /// for dead while it could not heartbeat): the store says so again.
    pub async fn reassert(
        &self,
        me: &str,
        account: &str,
        epoch: u64,
        session: &str,
    ) -> Result<bool, StoreError> {
        self.fenced(
            "recording a held account again",
            "UPDATE accounts SET session = $4, since = now()",
            "AND session IS NULL",
            (account, me, epoch),
            &[&session],
        )
        .await
    }

    /// Removes `account` (its agent said it is gone), held by `me` since
    /// `epoch`, with its objects; nothing happens when another claim came
    /// since. True when it was removed.
    pub async fn remove(&self, me: &str, account: &str, epoch: u64) -> Result<bool, StoreError> {
        self.fenced(
            "removing an account",
            "DELETE FROM accounts",
            "",
            (account, me, epoch),
            &[],
        )
        .await
    }

    /// Every stored account, by name.
    pub async fn accounts(&self, replica_timeout: Duration) -> Result<Vec<AccountRow>, StoreError> {
        self.rows("listing accounts", None, replica_timeout).await
    }

    /// The stored rows of `names`.
    pub async fn accounts_named(
        &self,
        names: &[String],
        replica_timeout: Duration,
    ) -> Result<Vec<AccountRow>, StoreError> {
        self.rows("reading accounts", Some(names), replica_timeout)
            .await
    }

    async fn rows(
        &self,
        what: &'static str,
        names: Option<&[String]>,
        replica_timeout: Duration,
    ) -> Result<Vec<AccountRow>, StoreError> {
        self.bounded(what, async {
            let client = self.client(what).await?;
            let timeout = secs(replica_timeout);
            let rows = match names {
                Some(names) => {
                    let sql = select_accounts(2, "WHERE a.name = ANY($1) ORDER BY a.name");
                    client.query(&sql, &[&names, &timeout]).await
                }
                None => {
                    let sql = select_accounts(1, "ORDER BY a.name");
                    client.query(&sql, &[&timeout]).await
                }
            }
            .map_err(|e| self.error(what, e))?;
            Ok(rows.iter().map(account_row).collect())
        })
        .await
    }

    /// Records an operation `owner` sends to an agent, before it is sent:
    /// should `owner` die, the account's next holder sends it again.
    pub async fn record_operation(
        &self,
        owner: &str,
        op: &StoredOperation,
        deadline: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        self.execute(
            "recording an operation",
            "INSERT INTO operations (wire_id, account, caller_id, frame, owner, deadline)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account, wire_id) DO UPDATE SET owner = excluded.owner,
                 deadline = excluded.deadline, frame = excluded.frame
             WHERE operations.outcome IS NULL",
            &[
                &op.wire_id,
                &op.account,
                &op.caller_id,
                &op.frame.encode_to_vec(),
                &owner,
                &deadline,
            ],
        )
        .await?;
        Ok(())
    }

    /// Records the outcome of operation `wire_id` on `account` (the first
    /// one wins).
    pub async fn finish_operation(
        &self,
        account: &str,
        wire_id: &str,
        outcome: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.execute(
            "recording an operation's outcome",
            "UPDATE operations SET outcome = $3, finished_at = now(), owner = NULL
             WHERE account = $1 AND wire_id = $2 AND outcome IS NULL",
            &[&account, &wire_id, outcome],
        )
        .await?;
        Ok(())
    }

    /// The outcome of operation `wire_id` on `account`, once it has one.
    pub async fn operation_outcome(
        &self,
        account: &str,
        wire_id: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        const WHAT: &str = "reading an operation's outcome";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let row = client
                .query_opt(
                    "SELECT outcome FROM operations WHERE account = $1 AND wire_id = $2",
                    &[&account, &wire_id],
                )
                .await
                .map_err(|e| self.error(WHAT, e))?;
            Ok(row.and_then(|r| r.get(0)))
        })
        .await
    }

    /// The latest finished operation a caller posted as `caller_id` on
    /// `account`: the frame it sent (what it asked for) and its outcome.
    pub async fn find_outcome(
        &self,
        account: &str,
        caller_id: &str,
    ) -> Result<Option<(pb::Operation, serde_json::Value)>, StoreError> {
        const WHAT: &str = "looking an operation up";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let row = client
                .query_opt(
                    "SELECT frame, outcome FROM operations
                     WHERE account = $1 AND caller_id = $2 AND outcome IS NOT NULL
                     ORDER BY finished_at DESC LIMIT 1",
                    &[&account, &caller_id],
                )
                .await
                .map_err(|e| self.error(WHAT, e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            Ok(Some((self.frame(&row)?, row.get("outcome"))))
        })
        .await
    }

    /// The operation frame of a row of `operations` (column `frame`).
    fn frame(&self, row: &Row) -> Result<pb::Operation, StoreError> {
        let bytes: &[u8] = row.get("frame");
        pb::Operation::decode(bytes).map_err(|e| StoreError::Corrupt {
            location: self.location.clone(),
            what: "a stored operation",
            message: e.to_string(),
        })
    }

    /// Takes for `me` the operations in flight on `accounts` that nobody
    /// waits for: unowned, or owned by a replica silent for longer than
    /// `replica_timeout` (or gone). `me` holds those accounts and sends them
    /// again.
    pub async fn adopt_operations(
        &self,
        me: &str,
        accounts: &[String],
        replica_timeout: Duration,
    ) -> Result<Vec<StoredOperation>, StoreError> {
        const WHAT: &str = "taking over operations";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let rows = client
                .query(
                    "UPDATE operations o SET owner = $1
                     WHERE o.outcome IS NULL AND o.account = ANY($2)
                       AND (o.owner IS NULL OR (o.owner <> $1 AND NOT EXISTS (
                           SELECT 1 FROM replicas r
                           WHERE r.id = o.owner AND r.heartbeat_at > now() - make_interval(secs => $3))))
                     RETURNING o.wire_id, o.account, o.caller_id, o.frame",
                    &[&me, &accounts, &secs(replica_timeout)],
                )
                .await
                .map_err(|e| self.error(WHAT, e))?;
            rows.iter()
                .map(|row| {
                    Ok(StoredOperation {
                        wire_id: row.get("wire_id"),
                        account: row.get("account"),
                        caller_id: row.get("caller_id"),
                        frame: self.frame(row)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// `me` no longer waits for operations `wire_ids` on `account` (it let
    /// the account go): the account's holder takes them.
    pub async fn hand_over_operations(
        &self,
        me: &str,
        account: &str,
        wire_ids: &[String],
    ) -> Result<(), StoreError> {
        self.execute(
            "handing operations over",
            "UPDATE operations SET owner = NULL
             WHERE account = $2 AND wire_id = ANY($3) AND owner = $1 AND outcome IS NULL",
            &[&me, &account, &wire_ids],
        )
        .await?;
        Ok(())
    }

    /// Listens for claims: each item is the name of an account some replica
    /// just claimed. The stream ends when the connection breaks (listen
    /// again).
    pub async fn listen(&self) -> Result<mpsc::Receiver<String>, StoreError> {
        const WHAT: &str = "listening for claims";
        self.bounded(WHAT, async {
            let (client, mut connection) = self
                .config
                .connect(NoTls)
                .await
                .map_err(|e| self.error(WHAT, e))?;
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

/// The key columns of `keys`, for `unnest`.
fn key_columns<'a>(
    keys: impl Iterator<Item = &'a ObjectKey>,
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in keys {
        columns.0.push(k.group.as_str());
        columns.1.push(k.kind.as_str());
        columns.2.push(k.namespace.as_str());
        columns.3.push(k.name.as_str());
    }
    columns
}
