//! Routing of operations between sessions, as the agents' frames move them:
//! a result completes the operation waiting for it; a result saying the
//! replica does not hold the account (it moved) sends the operation on to
//! the session that holds it now; and operations whose session ended before
//! answering are sent again to the account's new session. The agent runs
//! each operation id at most once, so resending is safe.

use scale_agent_proto::v1::{self as pb, ErrorCode, hub_frame};
use tracing::{debug, info};

use crate::clip::clip;
use crate::operations::Outcome;
use crate::session::{Session, frame};

/// Handles an OperationResult from `session`.
pub fn result(session: &Session, result: pb::OperationResult) {
    let shared = &session.shared;
    let id = result.operation_id.clone();
    if result.error_code == ErrorCode::UnknownAccount as i32
        && let Some((op, _)) = shared.operations.pending(&id)
    {
        let holder = shared.core().registry.holder(&op.account).cloned();
        if let Some(holder) = holder.filter(|h| *h != session.id && shared.is_live(h)) {
            info!(operation = %id, account = %op.account, to_session = %holder, "agent does not hold the account; routing the operation to its holder");
            shared.operations.sent_to(&id, holder.clone());
            shared.send_detached(&holder, frame(hub_frame::Frame::Operation(op)));
            return;
        }
    }
    if !shared.operations.complete(Outcome::from_result(&result)) {
        debug!(operation = %clip(&id), "result for an operation nobody waits for (answered already or given up); ignored");
        shared.metrics.frame_ignored("operation_result_unknown");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operations::Begin;
    use crate::registration;
    use crate::session::testing::{Inbox, session, shared};
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

    fn op(id: &str, account: &str) -> pb::Operation {
        pb::Operation {
            id: id.into(),
            account: account.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_result_saying_the_account_moved_sends_the_operation_to_its_holder() {
        let shared = shared();
        let (old, _old_rx) = session(&shared, "s1", "east", "e0");
        let (new, mut new_rx) = session(&shared, "s2", "east", "e1");
        assert!(registration::register(&new, register("prod-1")).await);
        let Begin::New(mut done) = shared
            .operations
            .begin(op("op-1", "prod-1"), old.id.clone())
        else {
            panic!("a new operation");
        };
        result(
            &old,
            pb::OperationResult {
                operation_id: "op-1".into(),
                error_code: ErrorCode::UnknownAccount as i32,
                ..Default::default()
            },
        );
        let rerouted = operation(&mut new_rx).await.expect("sent to the holder");
        assert_eq!(rerouted.id, "op-1");
        assert!(done.borrow_and_update().is_none(), "still waiting");
        assert_eq!(
            shared.operations.pending("op-1").map(|(_, s)| s),
            Some(new.id.clone())
        );

        // The holder's answer completes it; a second answer is ignored.
        let answer = pb::OperationResult {
            operation_id: "op-1".into(),
            success: true,
            ..Default::default()
        };
        result(&new, answer.clone());
        assert!(done.borrow_and_update().as_ref().is_some_and(|o| o.success));
        result(&new, answer);
        assert!(shared.metrics.encode().contains(
            "scale_agent_hub_frames_ignored_total{reason=\"operation_result_unknown\"} 1"
        ));
    }

    #[tokio::test]
    async fn operations_of_an_ended_session_go_to_the_accounts_next_session() {
        let shared = shared();
        let (old, _old_rx) = session(&shared, "s1", "east", "e0");
        assert!(registration::register(&old, register("prod-1")).await);
        let _ = shared
            .operations
            .begin(op("op-1", "prod-1"), old.id.clone());
        let _ = shared.operations.begin(op("op-2", "other"), old.id.clone());
        old.end();
        let (new, mut new_rx) = session(&shared, "s2", "east", "e1");
        assert!(registration::register(&new, register("prod-1")).await);
        let resent = operation(&mut new_rx).await.expect("resent");
        assert_eq!(resent.id, "op-1");
        assert_eq!(
            shared.operations.pending("op-1").map(|(_, s)| s),
            Some(new.id.clone())
        );
        assert_eq!(
            shared.operations.pending("op-2").map(|(_, s)| s),
            Some(old.id.clone())
        );
    }
}
