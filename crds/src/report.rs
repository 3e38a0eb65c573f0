//! What an agent replica reports about itself: whether it is connected to the hub, and
//! how each account it holds is doing. The operator turns the reports of a shard's live
//! replicas into the shard's status ("Active only while a replica reports it
//! streaming").
//!
//! The report travels through the cluster the agents run in, not through the hub (which
//! may be far away, or the very thing that is down): it is an annotation,
//! [`REPORT_ANNOTATION`], on the replica's own coordination Lease, compact JSON of at
//! most [`MAX_REPORT_BYTES`]. It rides on the Lease renewals that happen anyway, so a
//! report that does not change costs no write.
//!
//! ```json
//! {"hub":{"state":"Connected"},"accounts":{"prod-east-1":{"state":"Streaming"},
//!  "prod-east-2":{"state":"Refused","reason":"NotOwner","message":"account prod-east-2 is owned by ..."}}}
//! ```
//!
//! Whoever can write the Lease can write its report, so the operator reads reports only
//! from Leases that prove they belong to a replica of the shard
//! ([`crate::membership`]), and a report is never more than what that replica says about
//! itself: it can make an account look worse or better than it is only for the shard it
//! belongs to.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::decode::bounded;

/// The Lease annotation holding a replica's report.
pub const REPORT_ANNOTATION: &str = "scaleagent.dev/report";
/// The largest report written or read, in bytes (a Lease's annotations may hold 256 KiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// The longest message kept in a report, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 256;
/// The longest reason a report carries (the hub's reasons are short CamelCase words).
pub const MAX_REASON_BYTES: usize = 64;

/// One replica's report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaReport {
    /// The replica's link to the hub.
    #[serde(default)]
    pub hub: HubLink,
    /// Every account the replica holds (its share of the shard's accounts), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub accounts: BTreeMap<String, AccountReport>,
    /// Some accounts were left out to stay under [`MAX_REPORT_BYTES`].
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
}

/// A replica's link to the hub.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HubLink {
    /// Connected or not.
    pub state: HubState,
    /// Why not: the last connection error (e.g. a TLS file it cannot read).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl HubLink {
    /// Connected, or not with `error` (the last connection error) as the reason; the
    /// error is dropped while connected, so a report never says both.
    pub fn new(connected: bool, error: impl Into<String>) -> HubLink {
        if connected {
            HubLink {
                state: HubState::Connected,
                message: String::new(),
            }
        } else {
            HubLink {
                state: HubState::Disconnected,
                message: error.into(),
            }
        }
    }
}

/// Whether a replica has a session with the hub.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HubState {
    /// The hub welcomed the replica's session.
    Connected,
    /// No session (never connected yet, or it broke and the replica is reconnecting).
    #[default]
    Disconnected,
    /// A state this version does not know.
    #[serde(other)]
    Unknown,
}

/// How one account held by a replica is doing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccountReport {
    /// Its state.
    pub state: StreamState,
    /// For `Refused`, the hub's reason (`NotOwner`, `ClusterMismatch`, `Superseded`...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What went wrong, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl AccountReport {
    /// A report of `state` with no reason or message.
    pub fn new(state: StreamState) -> Self {
        Self {
            state,
            reason: String::new(),
            message: String::new(),
        }
    }

    /// A report of `state` saying why.
    pub fn because(
        state: StreamState,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            state,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Where an account held by a replica stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StreamState {
    /// The hub accepted it and its initial sync finished: changes stream.
    Streaming,
    /// Being registered with the hub, or listed for the first time.
    Syncing,
    /// The hub refused it (reason and message say why).
    Refused,
    /// Its cluster cannot be reached (or its kubeconfig cannot be used).
    ClusterUnreachable,
    /// The replica has no session with the hub.
    HubUnreachable,
    /// A state this version does not know.
    #[serde(other)]
    Unknown,
}

impl fmt::Display for StreamState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a report could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    /// Larger than [`MAX_REPORT_BYTES`].
    #[error("the report is {len} bytes, more than the {MAX_REPORT_BYTES} a report may have")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not JSON of the report's shape.
    #[error("the report is not readable: {reason}")]
    Malformed {
        /// What the decoder said, bounded.
        reason: String,
    },
}

impl ReplicaReport {
    /// The report as the annotation's value: compact JSON of at most
    /// [`MAX_REPORT_BYTES`]. Messages are cut to [`MAX_MESSAGE_BYTES`]; should the report
    /// still be too large, messages are left out, then accounts (and `truncated` set).
    pub fn encode(&self) -> String {
        let mut r = self.clone();
        r.bound_texts();
        let text = to_json(&r);
        if text.len() <= MAX_REPORT_BYTES {
            return text;
        }
        for a in r.accounts.values_mut() {
            a.message.clear();
        }
        let mut text = to_json(&r);
        while text.len() > MAX_REPORT_BYTES && !r.accounts.is_empty() {
            // Drop about as many accounts as the excess needs, at least one.
            let per = text.len() / r.accounts.len().max(1);
            let drop = ((text.len() - MAX_REPORT_BYTES) / per.max(1)).max(1);
            for _ in 0..drop {
                r.accounts.pop_last();
            }
            r.truncated = true;
            text = to_json(&r);
        }
        text
    }

    /// Reads an annotation's value. Unknown fields and states are tolerated (a newer
    /// agent may write them); a value larger than [`MAX_REPORT_BYTES`] is refused
    /// unread. Messages and reasons are cut as [`Self::encode`] cuts them, whoever wrote
    /// the annotation: what a reader copies into a status stays small.
    pub fn decode(text: &str) -> Result<Self, ReportError> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge { len: text.len() });
        }
        let mut r: Self = serde_json::from_str(text).map_err(|e| ReportError::Malformed {
            reason: bounded(&e.to_string(), MAX_MESSAGE_BYTES),
        })?;
        r.bound_texts();
        Ok(r)
    }

    /// Cuts the hub message and each account's message to [`MAX_MESSAGE_BYTES`] and
    /// reason to [`MAX_REASON_BYTES`].
    fn bound_texts(&mut self) {
        self.hub.message = bounded(&self.hub.message, MAX_MESSAGE_BYTES);
        for a in self.accounts.values_mut() {
            a.message = bounded(&a.message, MAX_MESSAGE_BYTES);
            a.reason = bounded(&a.reason, MAX_REASON_BYTES);
        }
    }
}

fn to_json(r: &ReplicaReport) -> String {
    // A struct of strings and maps always serializes.
    serde_json::to_string(r).unwrap_or_default()
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(accounts: usize, message: &str) -> ReplicaReport {
        ReplicaReport {
            hub: HubLink {
                state: HubState::Connected,
                message: String::new(),
            },
            accounts: (0..accounts)
                .map(|i| {
                    (
                        format!("account-{i:05}-{}", "x".repeat(40)),
                        AccountReport::because(StreamState::Refused, "NotOwner", message),
                    )
                })
                .collect(),
            truncated: false,
        }
    }

    #[test]
    fn round_trips_compactly() {
        let r = report(2, "owned by ns/other");
        let text = r.encode();
        assert!(!text.contains(' ') || text.contains("owned by"), "{text}");
        assert!(!text.contains('\n'));
        assert_eq!(ReplicaReport::decode(&text), Ok(r));
        let empty = ReplicaReport::default().encode();
        assert_eq!(empty, r#"{"hub":{"state":"Disconnected"}}"#);
    }

    #[test]
    fn long_messages_are_cut() {
        let r = report(1, &"m".repeat(10_000));
        let back = ReplicaReport::decode(&r.encode()).expect("decodes");
        let a = back.accounts.values().next().expect("one");
        assert!(a.message.len() <= MAX_MESSAGE_BYTES, "{}", a.message.len());
    }

    #[test]
    fn a_hand_written_report_is_read_with_its_texts_cut() {
        // Not what an agent writes: someone with write access to the Lease wrote it.
        let text = format!(
            r#"{{"hub":{{"state":"Disconnected","message":"{m}"}},"accounts":{{"a":{{"state":"Refused","reason":"{r}","message":"{m}"}}}}}}"#,
            m = "m".repeat(30_000),
            r = "R".repeat(1_000),
        );
        let back = ReplicaReport::decode(&text).expect("decodes");
        assert!(back.hub.message.len() <= MAX_MESSAGE_BYTES);
        assert!(back.accounts["a"].message.len() <= MAX_MESSAGE_BYTES);
        assert!(back.accounts["a"].reason.len() <= MAX_REASON_BYTES);
    }

    #[test]
    fn a_report_stays_bounded_and_says_when_it_left_accounts_out() {
        let big = report(3_000, &"m".repeat(200));
        let text = big.encode();
        assert!(text.len() <= MAX_REPORT_BYTES, "{}", text.len());
        let back = ReplicaReport::decode(&text).expect("decodes");
        assert!(back.truncated);
        assert!(!back.accounts.is_empty());
        // 500 accounts of the longest names fit whole (messages dropped at worst).
        let most = report(500, &"m".repeat(200));
        let back = ReplicaReport::decode(&most.encode()).expect("decodes");
        assert_eq!(back.accounts.len(), 500);
        assert!(!back.truncated);
    }

    #[test]
    fn unknown_states_and_fields_are_tolerated() {
        let text = r#"{"hub":{"state":"Draining","since":"x"},"accounts":{"a":{"state":"Paused","extra":1}},"v":2}"#;
        let r = ReplicaReport::decode(text).expect("tolerated");
        assert_eq!(r.hub.state, HubState::Unknown);
        assert_eq!(r.accounts["a"].state, StreamState::Unknown);
    }

    #[test]
    fn oversized_and_malformed_reports_are_refused() {
        let huge = format!(
            "{{\"hub\":{{\"state\":\"Connected\",\"message\":\"{}\"}}}}",
            "x".repeat(MAX_REPORT_BYTES)
        );
        assert!(matches!(
            ReplicaReport::decode(&huge),
            Err(ReportError::TooLarge { .. })
        ));
        assert!(matches!(
            ReplicaReport::decode("{\"accounts\": 3}"),
            Err(ReportError::Malformed { .. })
        ));
    }
}
