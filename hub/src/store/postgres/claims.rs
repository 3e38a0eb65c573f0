//! Claims: who holds an account, decided under advisory locks in one
//! transaction that raises the account's epoch; the holder's later writes
//! that let the account go or remove it, fenced by that epoch.

use super::*;

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

impl PgStore {
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
    pub(super) async fn load_cache(
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
}
