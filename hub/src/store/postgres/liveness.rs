//! Liveness: each replica's heartbeat (where it is reached, until when it
//! is alive), the leader's sweep that ends dead replicas' sessions and
//! enforces grace periods once for everyone, and a replica leaving or
//! restarting.

use super::*;

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

/// Ends every session `me` holds (its accounts become Disconnected, their
/// grace period starting now) and hands its operations in flight to the
/// accounts' next holders. Returns how many accounts it let go.
pub(super) async fn let_go_of_everything(
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

impl PgStore {
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
                    "UPDATE operations SET owner = NULL, finished_at = now(), frame = ''::bytea,
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
                    "UPDATE operations o SET owner = NULL, finished_at = now(), frame = ''::bytea,
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
}
