//! The schema of the shared PostgreSQL store, as numbered migrations the hub
//! applies itself at start.
//!
//! Replicas may start together: the migrations run under an advisory lock,
//! each in its own transaction that also records its number in
//! `scale_agent_migrations`, so each is applied once and a replica that
//! finds them applied changes nothing. A database migrated by a newer hub
//! (a number this hub does not know) is refused rather than written with an
//! older idea of the schema.

/// One migration: its number and its statements.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in increasing order; never renumbered.
    pub version: i32,
    /// What it does, for the log.
    pub name: &'static str,
    /// The statements, run in one transaction.
    pub sql: &'static str,
}

/// The advisory lock key that serializes migrations between replicas.
pub const LOCK_KEY: i64 = 0x5ca1_ea6e_0001;

/// The table recording applied migrations.
pub const TABLE: &str = "
CREATE TABLE IF NOT EXISTS scale_agent_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Every migration, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "replicas, accounts, resume points, objects, operations",
        sql: "
-- Each hub replica: where the others reach it, and when it was last alive.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    api_url      TEXT NOT NULL,
    kube_api_url TEXT NOT NULL DEFAULT '',
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The replica that enforces grace periods and fails abandoned operations:
-- one row, held until `until` and renewed by its holder.
CREATE TABLE leader (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    replica TEXT NOT NULL,
    until   TIMESTAMPTZ NOT NULL
);

-- Every account: its binding (cluster, shard), and the replica that holds
-- its stream. `epoch` grows with every claim and fences the holder's writes:
-- a replica that lost an account cannot write over the new holder.
CREATE TABLE accounts (
    name               TEXT PRIMARY KEY,
    cluster_id         TEXT NOT NULL,
    shard_namespace    TEXT NOT NULL,
    shard_name         TEXT NOT NULL,
    server_url         TEXT NOT NULL DEFAULT '',
    kubernetes_version TEXT NOT NULL DEFAULT '',
    agent_replica      TEXT NOT NULL DEFAULT '',
    holder             TEXT NOT NULL,
    session            TEXT,
    epoch              BIGINT NOT NULL,
    since              TIMESTAMPTZ NOT NULL DEFAULT now(),
    objects            BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX accounts_by_holder ON accounts (holder);

-- Where each kind's watch resumes, consistent with the objects below (both
-- are written in one transaction).
CREATE TABLE resume_points (
    account          TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    api_group        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    version          TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    PRIMARY KEY (account, api_group, kind)
);

-- The cached objects of every account, written behind the holder's cache.
CREATE TABLE objects (
    account          TEXT NOT NULL REFERENCES accounts (name) ON DELETE CASCADE,
    api_group        TEXT NOT NULL,
    kind             TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    name             TEXT NOT NULL,
    version          TEXT NOT NULL,
    uid              TEXT NOT NULL,
    resource_version TEXT NOT NULL,
    body             TEXT NOT NULL,
    PRIMARY KEY (account, api_group, kind, namespace, name)
);

-- Operations sent to agents: in flight while `outcome` is NULL. `owner` is
-- the replica waiting for the result; NULL when nobody is (its replica died
-- or let the account go), until the account's holder takes it.
CREATE TABLE operations (
    account     TEXT NOT NULL,
    wire_id     TEXT NOT NULL,
    caller_id   TEXT NOT NULL,
    frame       BYTEA NOT NULL,
    owner       TEXT,
    deadline    TIMESTAMPTZ,
    outcome     JSONB,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    PRIMARY KEY (account, wire_id)
);
CREATE INDEX operations_in_flight ON operations (account) WHERE outcome IS NULL;
CREATE INDEX operations_by_caller ON operations (account, caller_id);
",
    },
    Migration {
        version: 2,
        name: "resume points keep the selection their objects were listed with",
        sql: "
-- The agent's fingerprint of what the kind's objects were listed with: an agent
-- whose filters differ relists instead of resuming. Empty: unknown (rows
-- written before this column).
ALTER TABLE resume_points ADD COLUMN IF NOT EXISTS selection TEXT NOT NULL DEFAULT '';
",
    },
    Migration {
        version: 3,
        name: "operations keep their request only until they are answered",
        sql: "
-- A finished operation keeps its outcome and its wire id (a digest of the request);
-- the request itself (an apply's manifest may carry a Secret's data) goes.
UPDATE operations SET frame = ''::bytea WHERE outcome IS NOT NULL;
",
    },
];

/// The migrations not in `applied`, in order; an error naming the unknown
/// ones when `applied` holds a number this hub does not know.
pub fn pending(applied: &[i32]) -> Result<Vec<Migration>, String> {
    let known: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
    let unknown: Vec<i32> = applied
        .iter()
        .copied()
        .filter(|v| !known.contains(v))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "the database has migrations {unknown:?} that this hub does not know (it knows up to {}): a newer hub migrated it; run that version",
            known.iter().max().copied().unwrap_or_default()
        ));
    }
    Ok(MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .copied()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_and_pending_skips_what_is_applied() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
        assert_eq!(pending(&[]).map(|p| p.len()), Ok(MIGRATIONS.len()));
        let all: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(pending(&all).map(|p| p.len()), Ok(0));
        let err = pending(&[1, 999]).expect_err("a newer hub's migration");
        assert!(err.contains("999"), "{err}");
    }
}
