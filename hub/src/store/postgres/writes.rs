//! Write-behind: the changes of a held account's cache (objects and resume
//! points) written in one transaction per account, at the epoch it was
//! claimed at.

use super::*;

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

/// The key columns of `keys`, for `unnest`.
pub(super) fn key_columns<'a>(
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

impl PgStore {
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
}
