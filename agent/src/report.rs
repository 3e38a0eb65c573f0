//! What this replica reports about itself through the cluster: its hub link and where
//! each account it holds stands ([`scale_agent_crds::report`]). The operator reads it from
//! the replica's Lease, where [`crate::leases`] writes it with each renewal, and sooner
//! when it changes; an unchanged report costs no write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use scale_agent_crds::report::{AccountReport, HubLink, ReplicaReport, StreamState};
use tokio::sync::watch;

use crate::config::AccountDesired;
use crate::state::{AccountPhase, State};

/// How often the report is computed from the agent's state.
pub const EVERY: Duration = Duration::from_millis(500);

/// The report for the accounts `held`, given the hub link (`connected`, the last
/// connection error) and each account's phase.
pub fn build<'a>(
    connected: bool,
    hub_error: Option<&str>,
    held: impl IntoIterator<Item = &'a str>,
    phase: impl Fn(&str) -> AccountPhase,
) -> ReplicaReport {
    let hub_message = hub_error.unwrap_or("connecting to the hub").to_owned();
    let accounts = held
        .into_iter()
        .map(|name| {
            let p = phase(name);
            let report = if !connected {
                AccountReport::because(StreamState::HubUnreachable, "", hub_message.clone())
            } else if let Some((reason, message)) = p.refused {
                AccountReport::because(StreamState::Refused, reason, message)
            } else if let Some(problem) = p.problem {
                AccountReport::because(StreamState::ClusterUnreachable, "", problem)
            } else if p.accepted && p.synced {
                AccountReport::new(StreamState::Streaming)
            } else {
                AccountReport::new(StreamState::Syncing)
            };
            (name.to_owned(), report)
        })
        .collect();
    ReplicaReport {
        hub: HubLink::new(connected, hub_message),
        accounts,
        truncated: false,
    }
}

/// Keeps the encoded report of this replica current (every [`EVERY`]), from `state` and
/// the accounts it holds (`held`). The receiver changes only when the report does.
pub fn run(
    state: Arc<State>,
    held: watch::Receiver<BTreeMap<String, AccountDesired>>,
) -> watch::Receiver<String> {
    let compute = move || {
        let (connected, error) = state.hub_link();
        let names: Vec<String> = held.borrow().keys().cloned().collect();
        build(
            connected,
            error.as_deref(),
            names.iter().map(String::as_str),
            |a| state.account_phase(a),
        )
        .encode()
    };
    let (tx, rx) = watch::channel(compute());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(EVERY).await;
            let next = compute();
            tx.send_if_modified(|cur| {
                let changed = *cur != next;
                if changed {
                    *cur = next;
                }
                changed
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use scale_agent_crds::report::HubState;

    fn phase(accepted: bool, synced: bool) -> AccountPhase {
        AccountPhase {
            accepted,
            synced,
            ..AccountPhase::default()
        }
    }

    #[test]
    fn streaming_only_once_accepted_and_synced() {
        let r = build(true, None, ["a", "b", "c"], |a| match a {
            "a" => phase(true, true),
            "b" => phase(true, false),
            _ => phase(false, false),
        });
        assert_eq!(r.hub.state, HubState::Connected);
        assert_eq!(r.accounts["a"].state, StreamState::Streaming);
        assert_eq!(r.accounts["b"].state, StreamState::Syncing);
        assert_eq!(r.accounts["c"].state, StreamState::Syncing);
    }

    #[test]
    fn without_the_hub_every_held_account_says_why() {
        let r = build(
            false,
            Some("TLS: reading /etc/scale-agent/tls/ca.crt: No such file"),
            ["a"],
            |_| phase(true, true),
        );
        assert_eq!(r.hub.state, HubState::Disconnected);
        assert_eq!(r.accounts["a"].state, StreamState::HubUnreachable);
        assert!(r.accounts["a"].message.contains("ca.crt"));
    }

    #[test]
    fn refusals_and_cluster_problems_are_told_apart() {
        let r = build(true, None, ["refused", "broken"], |a| {
            if a == "refused" {
                AccountPhase {
                    refused: Some(("NotOwner".into(), "owned by ns/x".into())),
                    problem: Some("hub rejected the account".into()),
                    ..AccountPhase::default()
                }
            } else {
                AccountPhase {
                    problem: Some("connection refused".into()),
                    ..AccountPhase::default()
                }
            }
        });
        assert_eq!(r.accounts["refused"].state, StreamState::Refused);
        assert_eq!(r.accounts["refused"].reason, "NotOwner");
        assert_eq!(r.accounts["broken"].state, StreamState::ClusterUnreachable);
    }
}
