//! Deploy operations waiting for their result (what a caller asks is in
//! [`crate::core::operation_request`]).
//!
//! Operations are idempotent by id on the hub's side too. A caller's id is
//! scoped to its account: a POST with the id of an operation still running on
//! that account joins it, a POST with the id of one that finished (within the
//! last [`FINISHED_TTL`]) gets the stored result — when it asks for the same
//! thing (type, target, body). The same id with a different request is
//! refused ([`Begin::Conflict`], HTTP 409), and the same id on another
//! account is another operation.
//!
//! The agent sees a hub-chosen id, unique across accounts, so that its own
//! run-once-per-id memory can never answer one account's operation with
//! another's result: a digest of the account, the caller's id and the request
//! ([`wire_id`]), so that every hub replica chooses the same one and a POST
//! repeated through another replica (after the first died) is not run again
//! by the agent. Only the session the operation was sent to may complete
//! it; a result from any other session is ignored. When that session ends and
//! the account comes back on another session, the operation is sent again
//! with the same wire id (the agent runs each id at most once).
//!
//! Results are stored and returned without `metadata.managedFields`, the
//! last-applied-configuration annotation, and a Secret's `data` and
//! `stringData`, whatever the agent sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use scale_agent_crds::objects;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use scale_agent_proto::v1::{self as pb, ErrorCode, operation};

use crate::core::registry::SessionId;

/// How long finished results are kept for repeated POSTs of the same id.
pub const FINISHED_TTL: Duration = Duration::from_secs(15 * 60);

/// The result of an operation, as the HTTP API returns it (and the shared
/// store keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// The operation id (the caller's, or the one the hub chose for it).
    pub id: String,
    /// True when it did what it asked.
    pub success: bool,
    /// The agent's message; on failure the API server's error text.
    pub message: String,
    /// The object the API server returned (null on failure).
    pub result: Value,
    /// On failure, the agent's error code (e.g. `INVALID`, `NOT_FOUND`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// On failure, the API server's HTTP status, when there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
}

impl Outcome {
    /// Converts an agent's OperationResult, answering the caller's `id`.
    pub fn from_result(id: &str, result: &pb::OperationResult) -> Outcome {
        let body = if result.result_json.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice::<Value>(&result.result_json) {
                Ok(mut value) => {
                    objects::strip(&mut value);
                    value
                }
                // Not JSON: no object to strip, and nothing the hub may
                // pass on unread either.
                Err(_) => Value::String(format!(
                    "the agent's result ({} bytes) is not JSON",
                    result.result_json.len()
                )),
            }
        };
        let code = ErrorCode::try_from(result.error_code).unwrap_or(ErrorCode::Internal);
        let failed = !result.success || code != ErrorCode::Unspecified;
        Outcome {
            id: id.to_owned(),
            success: !failed,
            message: result.message.clone(),
            result: body,
            error_code: failed.then(|| {
                let name = code.as_str_name();
                name.strip_prefix("ERROR_CODE_").unwrap_or(name).to_owned()
            }),
            http_status: (failed && result.http_status != 0).then_some(result.http_status),
        }
    }

    /// The agent's error code, when it failed.
    pub fn code(&self) -> Option<&str> {
        self.error_code.as_deref()
    }
}

/// An operation as its caller names it: the caller's id within an account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallerKey {
    /// The account.
    pub account: String,
    /// The caller's id.
    pub id: String,
}

struct Pending {
    caller: CallerKey,
    frame: pb::Operation,
    session: SessionId,
    done: watch::Sender<Option<Outcome>>,
}

struct Finished {
    at: Instant,
    request: Option<operation::Kind>,
    outcome: Outcome,
}

#[derive(Default)]
struct Table {
    /// By wire id.
    pending: HashMap<String, Pending>,
    /// Caller key → wire id of the pending operation.
    by_caller: HashMap<CallerKey, String>,
    finished: HashMap<CallerKey, Finished>,
}

impl Table {
    /// Completes `pending` (already out of `pending`) with `outcome`: its
    /// waiters get it, and a repeated POST of its id within [`FINISHED_TTL`].
    fn finish(&mut self, pending: Pending, outcome: Outcome) {
        self.by_caller.remove(&pending.caller);
        pending.done.send_replace(Some(outcome.clone()));
        self.finished.insert(
            pending.caller,
            Finished {
                at: Instant::now(),
                request: pending.frame.kind,
                outcome,
            },
        );
    }
}

/// How a POST of an operation starts.
pub enum Begin {
    /// New: send the frame (its id is the hub's wire id), then wait on the
    /// receiver.
    New(pb::Operation, watch::Receiver<Option<Outcome>>),
    /// The id is running already with the same request: wait on the receiver.
    Joined(watch::Receiver<Option<Outcome>>),
    /// The id finished recently with the same request: here is its result.
    Finished(Outcome),
    /// The id is (or was recently) another request on this account.
    Conflict(String),
}

/// What a result from an agent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// It completed the operation.
    Done,
    /// No operation with that id is waiting (answered already, given up, or
    /// never sent).
    Unknown,
    /// The operation was sent to another session; the result is ignored.
    WrongSession,
}

/// Operations waiting for their result, and recent results.
#[derive(Default)]
pub struct Operations {
    table: Mutex<Table>,
}

impl std::fmt::Debug for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operations").finish_non_exhaustive()
    }
}

fn describe(kind: Option<&operation::Kind>) -> &'static str {
    match kind {
        Some(operation::Kind::Apply(_)) => "apply",
        Some(operation::Kind::Delete(_)) => "delete",
        Some(operation::Kind::Patch(_)) => "patch",
        Some(operation::Kind::Scale(_)) => "scale",
        Some(operation::Kind::RolloutRestart(_)) => "rolloutRestart",
        Some(operation::Kind::Get(_)) => "get",
        _ => "another operation",
    }
}

/// The id the agent sees for operation `key` asking for `kind`: the same on
/// every replica, different for another account, caller id or request.
pub fn wire_id(key: &CallerKey, kind: &operation::Kind) -> String {
    use prost::Message as _;
    use sha2::{Digest as _, Sha256};
    let request = pb::Operation {
        kind: Some(kind.clone()),
        ..Default::default()
    };
    let mut digest = Sha256::new();
    for part in [key.account.as_bytes(), key.id.as_bytes()] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.update(request.encode_to_vec());
    digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn conflict(key: &CallerKey, earlier: Option<&operation::Kind>) -> String {
    format!(
        "operation id {} on account {} was already used for a different request (a {}); use a new id for a new request",
        key.id,
        key.account,
        describe(earlier)
    )
}

impl Operations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or joins) the operation `key` asking for `kind`, to be sent to
    /// `session` with `deadline`.
    pub fn begin(
        &self,
        key: CallerKey,
        kind: operation::Kind,
        deadline: Option<prost_types::Timestamp>,
        session: SessionId,
    ) -> Begin {
        let mut table = self.lock();
        let now = Instant::now();
        table
            .finished
            .retain(|_, f| now.duration_since(f.at) < FINISHED_TTL);
        if let Some(finished) = table.finished.get(&key) {
            return if finished.request.as_ref() == Some(&kind) {
                Begin::Finished(finished.outcome.clone())
            } else {
                Begin::Conflict(conflict(&key, finished.request.as_ref()))
            };
        }
        if let Some(pending) = table
            .by_caller
            .get(&key)
            .and_then(|wire| table.pending.get(wire))
        {
            return if pending.frame.kind.as_ref() == Some(&kind) {
                Begin::Joined(pending.done.subscribe())
            } else {
                Begin::Conflict(conflict(&key, pending.frame.kind.as_ref()))
            };
        }
        let wire = wire_id(&key, &kind);
        let frame = pb::Operation {
            id: wire.clone(),
            account: key.account.clone(),
            deadline,
            kind: Some(kind),
        };
        let (done, rx) = watch::channel(None);
        table.by_caller.insert(key.clone(), wire.clone());
        table.pending.insert(
            wire,
            Pending {
                caller: key,
                frame: frame.clone(),
                session,
                done,
            },
        );
        Begin::New(frame, rx)
    }

    /// True when operation `key` is in flight here or finished recently.
    pub fn knows(&self, key: &CallerKey) -> bool {
        let table = self.lock();
        table.by_caller.contains_key(key) || table.finished.contains_key(key)
    }

    /// The caller's key of the pending operation with wire id `id`.
    pub fn caller_of(&self, id: &str) -> Option<CallerKey> {
        self.lock().pending.get(id).map(|p| p.caller.clone())
    }

    /// The outcome of operation `key`, when it finished recently.
    pub fn finished_outcome(&self, key: &CallerKey) -> Option<Outcome> {
        self.lock().finished.get(key).map(|f| f.outcome.clone())
    }

    /// Takes over `frame`, an operation another replica sent as `key` and
    /// nobody waits for any more, to be sent again (same wire id) to
    /// `session`. False when it is already here (pending or finished).
    pub fn adopt(&self, key: CallerKey, frame: pb::Operation, session: SessionId) -> bool {
        let mut table = self.lock();
        if table.by_caller.contains_key(&key)
            || table.finished.contains_key(&key)
            || table.pending.contains_key(&frame.id)
        {
            return false;
        }
        let (done, _) = watch::channel(None);
        table.by_caller.insert(key.clone(), frame.id.clone());
        table.pending.insert(
            frame.id.clone(),
            Pending {
                caller: key,
                frame,
                session,
                done,
            },
        );
        true
    }

    /// Another replica recorded `outcome` for the pending operation with
    /// wire id `id` (this one let its account go): it completes it. False
    /// when nothing waits for it.
    pub fn settle(&self, id: &str, outcome: Outcome) -> bool {
        let mut table = self.lock();
        let Some(pending) = table.pending.remove(id) else {
            return false;
        };
        table.finish(pending, outcome);
        true
    }

    /// The pending operation with wire id `id`: its frame and the session it
    /// went to.
    pub fn pending(&self, id: &str) -> Option<(pb::Operation, SessionId)> {
        self.lock()
            .pending
            .get(id)
            .map(|p| (p.frame.clone(), p.session.clone()))
    }

    /// Records that `id` was (re)sent to `session`.
    pub fn sent_to(&self, id: &str, session: SessionId) {
        if let Some(p) = self.lock().pending.get_mut(id) {
            p.session = session;
        }
    }

    /// A result from `session` arrived. It completes the operation only
    /// when that is the session the operation was sent to.
    pub fn complete(&self, session: &SessionId, result: &pb::OperationResult) -> Completion {
        let mut table = self.lock();
        match table.pending.get(&result.operation_id) {
            None => return Completion::Unknown,
            Some(p) if p.session != *session => return Completion::WrongSession,
            Some(_) => {}
        }
        let Some(pending) = table.pending.remove(&result.operation_id) else {
            return Completion::Unknown;
        };
        let outcome = Outcome::from_result(&pending.caller.id, result);
        table.finish(pending, outcome);
        Completion::Done
    }

    /// The caller stopped waiting (deadline passed) for the operation with
    /// wire id `id`: forget it so a late result is ignored and a retried POST
    /// sends it again.
    pub fn give_up(&self, id: &str) {
        let mut table = self.lock();
        if let Some(pending) = table.pending.remove(id) {
            table.by_caller.remove(&pending.caller);
        }
    }

    /// Operations of `account` whose session is not live any more (per
    /// `is_live`), to resend on `session`; they are recorded as sent there.
    pub fn take_orphans(
        &self,
        account: &str,
        session: &SessionId,
        is_live: impl Fn(&SessionId) -> bool,
    ) -> Vec<pb::Operation> {
        let mut table = self.lock();
        let mut frames = Vec::new();
        for pending in table.pending.values_mut() {
            if pending.frame.account == account
                && pending.session != *session
                && !is_live(&pending.session)
            {
                pending.session = session.clone();
                frames.push(pending.frame.clone());
            }
        }
        frames
    }

    /// Operations whose session is not live any more (per `is_live`).
    pub fn stranded(&self, is_live: impl Fn(&SessionId) -> bool) -> Vec<pb::Operation> {
        self.lock()
            .pending
            .values()
            .filter(|p| !is_live(&p.session))
            .map(|p| p.frame.clone())
            .collect()
    }

    /// Number of operations waiting.
    pub fn waiting(&self) -> usize {
        self.lock().pending.len()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn key(account: &str, id: &str) -> CallerKey {
        CallerKey {
            account: account.into(),
            id: id.into(),
        }
    }

    fn scale(replicas: i32) -> operation::Kind {
        operation::Kind::Scale(pb::Scale {
            target: None,
            replicas,
        })
    }

    fn delete() -> operation::Kind {
        operation::Kind::Delete(pb::Delete::default())
    }

    fn success(wire: &str) -> pb::OperationResult {
        pb::OperationResult {
            operation_id: wire.into(),
            success: true,
            message: "ok".into(),
            result_json: br#"{"kind":"Deployment"}"#.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_idempotent_per_account_and_request() {
        let ops = Operations::default();
        let s1: SessionId = "s1".into();
        let Begin::New(frame, mut rx) = ops.begin(key("a", "op-1"), scale(3), None, s1.clone())
        else {
            panic!("new")
        };
        assert_ne!(frame.id, "op-1", "the agent sees the hub's own id");
        assert!(matches!(
            ops.begin(key("a", "op-1"), scale(3), None, s1.clone()),
            Begin::Joined(_)
        ));
        assert!(matches!(
            ops.begin(key("a", "op-1"), delete(), None, s1.clone()),
            Begin::Conflict(m) if m.contains("scale")
        ));
        // The same id on another account is another operation, with another
        // wire id.
        let Begin::New(other, _) = ops.begin(key("b", "op-1"), delete(), None, s1.clone()) else {
            panic!("another account's op-1 is new")
        };
        assert_ne!(other.id, frame.id);
        assert_eq!(ops.complete(&s1, &success(&frame.id)), Completion::Done);
        assert_eq!(
            ops.complete(&s1, &success(&frame.id)),
            Completion::Unknown,
            "second result ignored"
        );
        let outcome = rx.borrow_and_update().clone().expect("completed");
        assert_eq!(outcome.id, "op-1", "the caller sees its own id");
        assert!(
            matches!(ops.begin(key("a", "op-1"), scale(3), None, s1.clone()), Begin::Finished(o) if o == outcome)
        );
        assert!(matches!(
            ops.begin(key("a", "op-1"), scale(4), None, s1.clone()),
            Begin::Conflict(_)
        ));
        assert!(matches!(
            ops.begin(key("b", "op-1"), delete(), None, s1),
            Begin::Joined(_)
        ));
    }

    #[test]
    fn only_the_session_an_operation_went_to_completes_it() {
        let ops = Operations::default();
        let to: SessionId = "to".into();
        let other: SessionId = "other".into();
        let Begin::New(frame, rx) = ops.begin(key("a", "op-1"), scale(1), None, to.clone()) else {
            panic!("new")
        };
        assert_eq!(
            ops.complete(&other, &success(&frame.id)),
            Completion::WrongSession
        );
        assert!(rx.borrow().is_none(), "still waiting");
        assert_eq!(ops.complete(&to, &success(&frame.id)), Completion::Done);
    }

    #[test]
    fn orphans_move_to_the_new_session() {
        let ops = Operations::default();
        let old: SessionId = "old".into();
        let new: SessionId = "new".into();
        let Begin::New(frame, _rx) = ops.begin(key("a", "op-1"), scale(1), None, old) else {
            panic!("new")
        };
        assert!(
            ops.take_orphans("a", &new, |_| true).is_empty(),
            "old still live"
        );
        assert_eq!(ops.take_orphans("a", &new, |_| false).len(), 1);
        assert_eq!(ops.pending(&frame.id).map(|(_, s)| s), Some(new));
    }

    #[test]
    fn results_lose_managed_fields_and_secret_data() {
        use scale_agent_crds::objects::LAST_APPLIED;
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "s", "managedFields": [{"manager": "x"}],
                "annotations": {LAST_APPLIED: "{\"data\":{\"k\":\"djE=\"}}", "keep": "me"}},
            "data": {"k": "djE="}, "stringData": {"k": "v1"}, "type": "Opaque"
        });
        let result = pb::OperationResult {
            operation_id: "w".into(),
            success: true,
            result_json: secret.to_string().into_bytes().into(),
            ..Default::default()
        };
        let outcome = Outcome::from_result("op", &result);
        assert_eq!(
            outcome.result,
            serde_json::json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "s", "annotations": {"keep": "me"}},
                "type": "Opaque"
            })
        );
    }

    #[test]
    fn failure_outcome_carries_code_and_status() {
        let o = Outcome::from_result(
            "x",
            &pb::OperationResult {
                operation_id: "x".into(),
                success: false,
                message: "Deployment.apps \"x\" is invalid".into(),
                error_code: ErrorCode::Invalid as i32,
                http_status: 422,
                ..Default::default()
            },
        );
        assert!(!o.success);
        assert_eq!(o.code(), Some("INVALID"));
        assert_eq!(o.http_status, Some(422));
    }
}
