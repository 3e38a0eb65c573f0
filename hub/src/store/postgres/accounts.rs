//! Reading the shared accounts, with their holders' liveness, for the JSON
//! API and the claims.

use super::*;

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

/// Selects the columns [`account_row`] reads, from `accounts a` joined with
/// their holders `r`, followed by `rest` (`WHERE ...`, `ORDER BY ...`);
/// parameter `$<timeout>` is the replica timeout in seconds.
pub(super) fn select_accounts(timeout: u8, rest: &str) -> String {
    format!(
        "SELECT a.name, a.cluster_id, a.shard_namespace, a.shard_name, a.server_url,
         a.kubernetes_version, a.agent_replica, a.holder, a.session, a.epoch, a.since, a.objects,
         COALESCE(r.heartbeat_at > now() - make_interval(secs => ${timeout}), false) AS holder_alive,
         r.api_url, r.kube_api_url
         FROM accounts a LEFT JOIN replicas r ON r.id = a.holder {rest}"
    )
}

pub(super) fn account_row(row: &Row) -> AccountRow {
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

    pub(super) async fn rows(
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
}
