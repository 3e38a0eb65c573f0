//! Operations in flight: sent to an agent by one replica, answered through
//! any, adopted by an account's next holder when their sender died.

use super::*;

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

impl PgStore {
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
    /// one wins), and drops the frame that was sent: a request (an apply's
    /// manifest may carry a Secret's data) is kept only until it is answered.
    /// Its wire id, a digest of the request, still tells a repeated POST from
    /// another request under the same caller's id.
    pub async fn finish_operation(
        &self,
        account: &str,
        wire_id: &str,
        outcome: &serde_json::Value,
    ) -> Result<(), StoreError> {
        self.execute(
            "recording an operation's outcome",
            "UPDATE operations SET outcome = $3, finished_at = now(), owner = NULL,
                 frame = ''::bytea
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
    /// `account`: its wire id (a digest of what it asked for,
    /// [`crate::core::operations::wire_id`]) and its outcome.
    pub async fn find_outcome(
        &self,
        account: &str,
        caller_id: &str,
    ) -> Result<Option<(String, serde_json::Value)>, StoreError> {
        const WHAT: &str = "looking an operation up";
        self.bounded(WHAT, async {
            let client = self.client(WHAT).await?;
            let row = client
                .query_opt(
                    "SELECT wire_id, outcome FROM operations
                     WHERE account = $1 AND caller_id = $2 AND outcome IS NOT NULL
                     ORDER BY finished_at DESC LIMIT 1",
                    &[&account, &caller_id],
                )
                .await
                .map_err(|e| self.error(WHAT, e))?;
            Ok(row.map(|row| (row.get("wire_id"), row.get("outcome"))))
        })
        .await
    }

    /// The operation frame of a row of `operations` (column `frame`).
    pub(super) fn frame(&self, row: &Row) -> Result<pb::Operation, StoreError> {
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
}
