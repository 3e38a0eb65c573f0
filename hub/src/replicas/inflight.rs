//! Operations in flight, shared between hub replicas: none is lost when the
//! replica that sent it dies, none runs twice.
//!
//! - The replica sending an operation to an agent records it in the shared
//!   store first ([`record`]), and its outcome when the agent answers
//!   ([`finish`]); the request (an apply's manifest, which may carry a
//!   Secret's data) is dropped from the store then, its digest (the wire id)
//!   kept.
//! - A POST repeating a caller's id gets the stored outcome, on any replica
//!   ([`finished`]): the caller whose first POST died with its replica learns
//!   what happened by posting again.
//! - The replica holding an account takes the operations nobody waits for
//!   any more — their replica stopped heartbeating, or let the account go —
//!   and sends them again with the same id ([`adopt`]): the agent runs each
//!   id at most once, so an operation it ran already is answered from its
//!   memory, not run again.
//! - A replica that let an account go while operations on it were in flight
//!   hands them over ([`hand_over`]) and waits for the outcome the new holder
//!   records, so the caller that posted to it still gets its answer.
//! - Operations nobody can answer any more (their account was removed, or
//!   their deadline passed with no replica to send them) are failed by the
//!   leader with a message saying why ([`crate::store::PgStore::sweep`]).

use std::sync::Arc;

use scale_agent_proto::v1::{self as pb, HubFrame, hub_frame, operation};
use tracing::{debug, info, warn};

use crate::core::operations::{CallerKey, Outcome};
use crate::replicas::Replicas;
use crate::state::Shared;
use crate::store::postgres::StoredOperation;

/// The stored outcome of operation `key`, when an earlier POST of it
/// finished on any replica: `Err` with a sentence when that POST asked for
/// something else than `kind` (the id was reused).
pub async fn finished(
    shared: &Shared,
    key: &CallerKey,
    kind: &operation::Kind,
) -> Option<Result<Outcome, String>> {
    let replicas = shared.replicas.as_ref()?;
    let (wire_id, value) = match replicas.store().find_outcome(&key.account, &key.id).await {
        Ok(found) => found?,
        Err(err) => {
            debug!(account = %key.account, operation = %key.id, %err, "could not look the operation up in the shared store");
            return None;
        }
    };
    // The request itself is not kept past its answer; its digest is.
    if wire_id != crate::core::operations::wire_id(key, kind) {
        return Some(Err(format!(
            "operation id {} on account {} was already used for a different request; use a new id for a new request",
            key.id, key.account
        )));
    }
    match serde_json::from_value::<Outcome>(value) {
        Ok(outcome) => Some(Ok(outcome)),
        Err(err) => {
            warn!(account = %key.account, operation = %key.id, %err, "a stored outcome does not read; sending the operation again");
            None
        }
    }
}

/// Records `op` (asked for as `caller_id`) before it is sent: should this
/// replica die, the account's next holder sends it again. Best effort: an
/// unreachable store does not stop an operation on an account this replica
/// holds.
pub async fn record(shared: &Shared, op: &pb::Operation, caller_id: &str) {
    let Some(replicas) = shared.replicas.as_ref() else {
        return;
    };
    let deadline = op
        .deadline
        .as_ref()
        .and_then(|d| std::time::SystemTime::try_from(*d).ok());
    let stored = StoredOperation {
        wire_id: op.id.clone(),
        account: op.account.clone(),
        caller_id: caller_id.to_owned(),
        frame: op.clone(),
    };
    if let Err(err) = replicas
        .store()
        .record_operation(&replicas.id(), &stored, deadline)
        .await
    {
        shared.metrics.store_errors.inc();
        warn!(account = %op.account, operation = %op.id, %err,
            "could not record the operation in the shared store; it runs, but another replica could not send it again should this one die");
    }
}

/// Records the outcome of operation `wire_id` on `account`.
pub fn finish(shared: &Shared, account: &str, wire_id: &str, outcome: &Outcome) {
    let Some(replicas) = shared.replicas.clone() else {
        return;
    };
    let value = match serde_json::to_value(outcome) {
        Ok(v) => v,
        Err(_) => return,
    };
    let (account, wire_id) = (account.to_owned(), wire_id.to_owned());
    let errors = shared.metrics.store_errors.clone();
    tokio::spawn(async move {
        if let Err(err) = replicas
            .store()
            .finish_operation(&account, &wire_id, &value)
            .await
        {
            errors.inc();
            warn!(%account, operation = %wire_id, %err, "could not record the operation's outcome in the shared store");
        }
    });
}

/// Takes the operations on `accounts` (held here) that nobody waits for any
/// more, and sends each to the session holding its account.
pub async fn adopt(shared: &Arc<Shared>, replicas: &Replicas, accounts: Vec<String>) {
    if accounts.is_empty() {
        return;
    }
    let adopted = match replicas
        .store()
        .adopt_operations(&replicas.id(), &accounts, replicas.timing().timeout)
        .await
    {
        Ok(adopted) => adopted,
        Err(err) => {
            debug!(%err, "could not take over operations this round");
            return;
        }
    };
    for op in adopted {
        let session = shared
            .core()
            .registry
            .holder(&op.account)
            .cloned()
            .filter(|s| shared.is_live(s));
        let Some(session) = session else {
            // Held here a moment ago; whoever holds it next takes it.
            let _ = replicas
                .store()
                .hand_over_operations(
                    &replicas.id(),
                    &op.account,
                    std::slice::from_ref(&op.wire_id),
                )
                .await;
            continue;
        };
        let key = CallerKey {
            account: op.account.clone(),
            id: op.caller_id.clone(),
        };
        if shared
            .operations
            .adopt(key, op.frame.clone(), session.clone())
        {
            info!(account = %op.account, operation = %op.wire_id, caller_id = %op.caller_id, %session,
                "sending again an operation whose replica stopped before it was answered");
            shared.metrics.operations_adopted.inc();
            shared.send_detached(
                &session,
                HubFrame {
                    frame: Some(hub_frame::Frame::Operation(op.frame)),
                },
            );
        }
    }
}

/// Hands over the operations this replica sent on accounts it let go, whose
/// session is over, and completes those whose outcome another replica
/// recorded since.
pub async fn hand_over(shared: &Arc<Shared>, replicas: &Replicas) {
    let stranded: Vec<pb::Operation> = shared
        .operations
        .stranded(|s| shared.is_live(s))
        .into_iter()
        .filter(|op| {
            let core = shared.core();
            !core
                .registry
                .holder(&op.account)
                .is_some_and(|s| shared.is_live(s))
        })
        .collect();
    let me = replicas.id();
    for op in stranded {
        let store = replicas.store();
        if let Err(err) = store
            .hand_over_operations(&me, &op.account, std::slice::from_ref(&op.id))
            .await
        {
            debug!(%err, "could not hand an operation over this round");
            continue;
        }
        match store.operation_outcome(&op.account, &op.id).await {
            Ok(Some(value)) => {
                if let Ok(outcome) = serde_json::from_value::<Outcome>(value) {
                    debug!(account = %op.account, operation = %op.id, "another replica recorded the outcome of an operation sent from here");
                    shared.operations.settle(&op.id, outcome);
                }
            }
            Ok(None) => {}
            Err(err) => debug!(%err, "could not read an operation's outcome this round"),
        }
    }
}
