//! Routing of operations to sessions: [`operate`] sends one to the session
//! that holds its account and waits for the answer; the rest moves them as
//! the agents' frames ask:
//! a result from the session an operation was sent to completes it (from any
//! other session it is ignored and counted: a session may answer only what
//! it was asked); a result saying the replica does not hold the account (it
//! moved) sends the operation on to the session that holds it now; and
//! operations whose session ended before answering are sent again to the
//! account's new session. The agent runs each operation id at most once, so
//! resending is safe.

use std::time::{Duration, SystemTime};

use scale_agent_proto::v1::{self as pb, ErrorCode, hub_frame};
use tracing::{debug, info, warn};

use crate::core::clip::clip;
use crate::core::operation_request::{self, OperationRequest};
use crate::core::operations::{Begin, CallerKey, Completion, Outcome};
use crate::replicas::inflight;
use crate::state::Shared;
use crate::stream::session::{Session, frame};

/// Handles an OperationResult from `session`.
pub fn result(session: &Session, result: pb::OperationResult) {
    let shared = &session.shared;
    let id = result.operation_id.clone();
    if result.error_code == ErrorCode::UnknownAccount as i32
        && let Some((op, sent_to)) = shared.operations.pending(&id)
        && sent_to == session.id
    {
        let holder = shared.core().registry.holder(&op.account).cloned();
        if let Some(holder) = holder.filter(|h| *h != session.id && shared.is_live(h)) {
            info!(operation = %id, account = %op.account, to_session = %holder, "agent does not hold the account; routing the operation to its holder");
            shared.operations.sent_to(&id, holder.clone());
            shared.send_detached(&holder, frame(hub_frame::Frame::Operation(op)));
            return;
        }
    }
    let caller = shared.operations.caller_of(&id);
    match shared.operations.complete(&session.id, &result) {
        Completion::Done => {
            if let Some(caller) = caller
                && let Some(outcome) = shared.operations.finished_outcome(&caller)
            {
                inflight::finish(shared, &caller.account, &id, &outcome);
            }
        }
        Completion::Unknown => {
            debug!(operation = %clip(&id), "result for an operation nobody waits for (answered already or given up); ignored");
            shared.metrics.frame_ignored("operation_result_unknown");
        }
        Completion::WrongSession => {
            warn!(operation = %clip(&id), "result for an operation this session was not sent; ignored");
            shared
                .metrics
                .frame_ignored("operation_result_wrong_session");
        }
    }
}

/// Sends `session` the operations of `accounts` (just accepted on it) whose
/// session ended before answering; false when the agent's side is gone.
pub async fn resend_orphans(session: &Session, accounts: &[String]) -> bool {
    let shared = &session.shared;
    for account in accounts {
        let orphans = shared
            .operations
            .take_orphans(account, &session.id, |s| shared.is_live(s));
        for op in orphans {
            info!(%account, operation = %op.id, "sending an unanswered operation again to the account's new session");
            if !session.send(hub_frame::Frame::Operation(op)).await {
                return false;
            }
        }
    }
    true
}

/// How a posted operation ended, when it was routed.
#[derive(Debug)]
pub enum Operated {
    /// The agent answered.
    Finished(Outcome),
    /// It was posted (and answered) before with this id: that outcome.
    Known(Outcome),
    /// No answer before the deadline: it may or may not have taken effect.
    NoResult(Outcome),
}

/// Why an operation was not routed to an agent.
#[derive(Debug, thiserror::Error)]
pub enum NotRouted {
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    /// The hub does not know the account.
    #[error("the account is not known to this hub")]
    UnknownAccount,
    /// No session streams the account now.
    #[error("{0}")]
    Disconnected(String),
    /// The id was used for another operation.
    #[error("{0}")]
    Conflict(String),
}

/// Sends an operation on `account` to the session that holds it and waits
/// for its result, a little past its deadline. An operation posted again
/// with the same id joins the first (or gets its outcome); one posted before
/// through a replica that died since gets the outcome the store kept.
pub async fn operate(
    shared: &Shared,
    account: &str,
    request: OperationRequest,
) -> Result<Operated, NotRouted> {
    let invalid = |message: String| {
        shared.metrics.operation("invalid");
        NotRouted::Invalid(message)
    };
    let timeout = operation_request::timeout(&request, shared.config.default_operation_timeout)
        .map_err(invalid)?;
    // Which session holds the account, and the kinds it streamed (to resolve
    // a kind given without group/version).
    let (session, known) = {
        let core = shared.core();
        let Some(entry) = core.registry.get(account) else {
            drop(core);
            shared.metrics.operation("unknown_account");
            return Err(NotRouted::UnknownAccount);
        };
        let known: Vec<(String, String, String)> = core
            .cache
            .account(account)
            .map(|c| {
                c.kinds()
                    .map(|(k, v)| (k.group.clone(), v.to_owned(), k.kind.clone()))
                    .collect()
            })
            .unwrap_or_default();
        (entry.session.clone(), known)
    };
    let disconnected = |message: String| {
        shared.metrics.operation("disconnected");
        NotRouted::Disconnected(message)
    };
    let Some(session) = session else {
        return Err(disconnected(format!(
            "account {account} is disconnected: its agent is not streaming it"
        )));
    };
    let kind = operation_request::build_kind(&request, &known).map_err(invalid)?;
    let id = request
        .id
        .clone()
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let deadline = SystemTime::now() + timeout;
    let key = CallerKey {
        account: account.to_owned(),
        id: id.clone(),
    };
    let conflict = |message: String| {
        shared.metrics.operation("conflict");
        NotRouted::Conflict(message)
    };
    // Posted before, maybe through a replica that died since: its outcome.
    if request.id.is_some()
        && !shared.operations.knows(&key)
        && let Some(stored) = inflight::finished(shared, &key, &kind).await
    {
        return stored.map(Operated::Known).map_err(conflict);
    }
    let began = shared.operations.begin(
        key.clone(),
        kind,
        Some(operation_request::timestamp(deadline)),
        session.clone(),
    );
    let (wire, mut rx) = match began {
        Begin::Finished(outcome) => return Ok(Operated::Known(outcome)),
        Begin::Conflict(message) => return Err(conflict(message)),
        Begin::Joined(rx) => (None, rx),
        Begin::New(op, rx) => {
            let wire = op.id.clone();
            let Some(handle) = shared.session(&session) else {
                shared.operations.give_up(&wire);
                return Err(disconnected(format!(
                    "account {account} is disconnected: its session just ended"
                )));
            };
            info!(operation = %id, wire_id = %wire, %account, session = %session, replica = %handle.replica, "routing operation to the agent");
            inflight::record(shared, &op, &key.id).await;
            let frame = frame(hub_frame::Frame::Operation(op));
            match tokio::time::timeout(timeout, handle.tx.send(Ok(frame))).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    shared.operations.give_up(&wire);
                    return Err(disconnected(format!(
                        "account {account}: could not hand the operation to its agent"
                    )));
                }
            }
            (Some(wire), rx)
        }
    };
    // A little past the deadline, so the agent's own DEADLINE_EXCEEDED can
    // still arrive and be reported as such.
    let wait = timeout + Duration::from_millis(500);
    let outcome = match tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await {
        Ok(Ok(done)) => done.clone(),
        Ok(Err(_)) | Err(_) => None,
    };
    if let Some(outcome) = outcome {
        info!(operation = %outcome.id, %account, success = outcome.success, "operation finished");
        return Ok(Operated::Finished(outcome));
    }
    if let Some(wire) = &wire {
        shared.operations.give_up(wire);
    }
    shared.metrics.operation("timeout");
    warn!(operation = %id, %account, ?timeout, "no result from the agent before the deadline");
    Ok(Operated::NoResult(Outcome {
        id,
        success: false,
        message: format!(
            "no result from the agent within {timeout:?}; the operation may or may not have taken effect"
        ),
        result: serde_json::Value::Null,
        error_code: Some("DEADLINE_EXCEEDED".into()),
        http_status: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::operations::{Begin, CallerKey};
    use crate::core::registry::SessionId;
    use crate::state::Shared;
    use crate::stream::register;
    use crate::stream::session::testing::{Inbox, session, shared};
    use std::time::Duration;

    fn register(account: &str) -> pb::Register {
        pb::Register {
            accounts: vec![pb::Account {
                name: account.into(),
                cluster_id: "uid-a".into(),
                ..Default::default()
            }],
        }
    }

    /// The next Operation frame queued to the agent, skipping other frames.
    async fn operation(rx: &mut Inbox) -> Option<pb::Operation> {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .ok()??;
            if let Ok(pb::HubFrame {
                frame: Some(hub_frame::Frame::Operation(op)),
            }) = f
            {
                return Some(op);
            }
        }
    }

    fn begin(
        shared: &Shared,
        id: &str,
        account: &str,
        session: SessionId,
    ) -> (
        pb::Operation,
        tokio::sync::watch::Receiver<Option<crate::core::operations::Outcome>>,
    ) {
        let key = CallerKey {
            account: account.into(),
            id: id.into(),
        };
        let kind = pb::operation::Kind::Get(pb::Get::default());
        match shared.operations.begin(key, kind, None, session) {
            Begin::New(frame, done) => (frame, done),
            _ => panic!("a new operation"),
        }
    }

    #[tokio::test]
    async fn a_result_saying_the_account_moved_sends_the_operation_to_its_holder() {
        let shared = shared();
        let (old, _old_rx) = session(&shared, "s1", "east", "e0");
        let (new, mut new_rx) = session(&shared, "s2", "east", "e1");
        assert!(register::register(&new, register("prod-1")).await);
        let (op, mut done) = begin(&shared, "op-1", "prod-1", old.id.clone());
        result(
            &old,
            pb::OperationResult {
                operation_id: op.id.clone(),
                error_code: ErrorCode::UnknownAccount as i32,
                ..Default::default()
            },
        );
        let rerouted = operation(&mut new_rx).await.expect("sent to the holder");
        assert_eq!(rerouted.id, op.id);
        assert!(done.borrow_and_update().is_none(), "still waiting");
        assert_eq!(
            shared.operations.pending(&op.id).map(|(_, s)| s),
            Some(new.id.clone())
        );

        // The old session may not answer it any more; the holder's answer
        // completes it; a second answer is ignored.
        let answer = pb::OperationResult {
            operation_id: op.id.clone(),
            success: true,
            ..Default::default()
        };
        result(&old, answer.clone());
        assert!(
            done.borrow_and_update().is_none(),
            "not the session it went to"
        );
        result(&new, answer.clone());
        assert!(
            done.borrow_and_update()
                .as_ref()
                .is_some_and(|o| o.success && o.id == "op-1")
        );
        result(&new, answer);
        let metrics = shared.metrics.encode();
        for reason in ["operation_result_unknown", "operation_result_wrong_session"] {
            assert!(
                metrics.contains(&format!(
                    "scale_agent_hub_frames_ignored_total{{reason=\"{reason}\"}} 1"
                )),
                "{reason}: {metrics}"
            );
        }
    }

    /// The attack: another shard's session answers an operation routed to
    /// the account's holder; the caller must never see that answer.
    #[tokio::test]
    async fn a_session_cannot_answer_an_operation_it_was_not_sent() {
        let shared = shared();
        let (holder, mut holder_rx) = session(&shared, "s1", "east", "e0");
        let (intruder, _intruder_rx) = session(&shared, "s2", "west", "w0");
        assert!(register::register(&holder, register("prod-1")).await);
        let (op, mut done) = begin(&shared, "op-1", "prod-1", holder.id.clone());
        let forged = pb::OperationResult {
            operation_id: op.id.clone(),
            success: true,
            message: "forged".into(),
            ..Default::default()
        };
        result(&intruder, forged);
        // A forged "moved" answer does not reroute it either.
        result(
            &intruder,
            pb::OperationResult {
                operation_id: op.id.clone(),
                error_code: ErrorCode::UnknownAccount as i32,
                ..Default::default()
            },
        );
        assert!(
            done.borrow_and_update().is_none(),
            "the forged result completed it"
        );
        assert_eq!(
            shared.operations.pending(&op.id).map(|(_, s)| s),
            Some(holder.id.clone())
        );
        assert!(next_operation_is_none(&mut holder_rx));
        result(
            &holder,
            pb::OperationResult {
                operation_id: op.id.clone(),
                success: true,
                message: "real".into(),
                ..Default::default()
            },
        );
        assert_eq!(
            done.borrow_and_update()
                .as_ref()
                .map(|o| o.message.as_str()),
            Some("real")
        );
    }

    fn next_operation_is_none(rx: &mut Inbox) -> bool {
        while let Ok(f) = rx.try_recv() {
            if let Ok(pb::HubFrame {
                frame: Some(hub_frame::Frame::Operation(_)),
            }) = f
            {
                return false;
            }
        }
        true
    }

    #[tokio::test]
    async fn operations_of_an_ended_session_go_to_the_accounts_next_session() {
        let shared = shared();
        let (old, _old_rx) = session(&shared, "s1", "east", "e0");
        assert!(register::register(&old, register("prod-1")).await);
        let (op1, _done1) = begin(&shared, "op-1", "prod-1", old.id.clone());
        let (op2, _done2) = begin(&shared, "op-2", "other", old.id.clone());
        old.end();
        let (new, mut new_rx) = session(&shared, "s2", "east", "e1");
        assert!(register::register(&new, register("prod-1")).await);
        let resent = operation(&mut new_rx).await.expect("resent");
        assert_eq!(resent.id, op1.id);
        assert_eq!(
            shared.operations.pending(&op1.id).map(|(_, s)| s),
            Some(new.id.clone())
        );
        assert_eq!(
            shared.operations.pending(&op2.id).map(|(_, s)| s),
            Some(old.id.clone())
        );
    }
}
