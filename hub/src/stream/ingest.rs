//! Ingest: the frames that carry a cluster's objects into the cache —
//! EventBatch (answered with an Ack), SyncStart, SyncEnd and WatchProgress.
//!
//! Each applies only to an account the session holds; a frame for any other
//! account (never registered, refused, superseded, revoked) is dropped and
//! counted, and so is an event the hub cannot use (no type, kind or name, a
//! body that is not JSON). The stream goes on either way.

use std::sync::Arc;

use scale_agent_proto::v1::{self as pb, hub_frame};
use serde_json::value::RawValue;
use tracing::{debug, warn};

use crate::core::cache::{AccountCache, Change, Event, KindKey, NsName, ObjectKey, SyncMode};
use crate::core::clip::clip;
use crate::metrics::Metrics;
use crate::stream::session::Session;

/// The cache's key of a kind, and the version it is watched at; `None`
/// when the frame names no kind.
fn kind_key(gvk: Option<&pb::GroupVersionKind>) -> Option<(KindKey, String)> {
    owned_kind_key(gvk.cloned())
}

/// [`kind_key`] of a kind the frame gives up: its strings move, not copied
/// (an event's kind, once per event).
fn owned_kind_key(gvk: Option<pb::GroupVersionKind>) -> Option<(KindKey, String)> {
    let gvk = gvk.filter(|gvk| !gvk.kind.is_empty())?;
    Some((
        KindKey {
            group: gvk.group,
            kind: gvk.kind,
        },
        gvk.version,
    ))
}

/// Runs `apply` on the cache of `account` when `session` holds it, under the
/// registry and cache lock; otherwise counts the frame (`what`) as ignored.
fn on_held<R>(
    session: &Session,
    account: &str,
    what: &'static str,
    apply: impl FnOnce(&mut AccountCache) -> R,
) -> Option<R> {
    {
        let mut core = session.shared.core();
        if core.registry.holds(account, &session.id) {
            return Some(apply(core.cache.account_mut(account)));
        }
    }
    session.shared.metrics.frame_ignored(what);
    warn!(account = %clip(account), frame = what, "frame for an account this session does not hold (not registered, rejected or superseded); ignored");
    None
}

/// The events the cache can use, in order; the others are counted in
/// `events_rejected_total` by reason and logged. Parsed outside the lock.
pub fn parse_events(metrics: &Metrics, account: &str, events: Vec<pb::ObjectEvent>) -> Vec<Event> {
    let mut parsed = Vec::with_capacity(events.len());
    for ev in events {
        let change = match pb::EventType::try_from(ev.r#type).unwrap_or_default() {
            pb::EventType::Added | pb::EventType::Modified => Change::Upsert,
            pb::EventType::Deleted => Change::Delete,
            pb::EventType::Unspecified => {
                metrics.event_rejected("unspecified_type");
                debug!(account = %clip(account), name = %clip(&ev.name), "event without a type; dropped");
                continue;
            }
        };
        let Some((kind, version)) = owned_kind_key(ev.kind) else {
            metrics.event_rejected("missing_kind");
            warn!(account = %clip(account), name = %clip(&ev.name), "event without a kind; dropped");
            continue;
        };
        if ev.name.is_empty() {
            metrics.event_rejected("missing_name");
            warn!(account = %clip(account), kind = %clip(&kind.kind), "event without a name; dropped");
            continue;
        }
        // No API server names anything with a NUL; one would blur where the cache
        // keeps the object (`NsName`).
        if !NsName::valid(&ev.name) || !NsName::valid(&ev.namespace) {
            metrics.event_rejected("nul_in_name");
            warn!(account = %clip(account), kind = %clip(&kind.kind), name = %clip(&ev.name.replace('\0', "\\0")), "event with a NUL in its namespace or name; dropped");
            continue;
        }
        let body: Arc<RawValue> = match serde_json::from_slice::<Box<RawValue>>(&ev.body_json) {
            Ok(body) => Arc::from(body),
            // A deletion needs no body.
            Err(_) if change == Change::Delete => Arc::from(RawValue::NULL.to_owned()),
            Err(err) => {
                metrics.event_rejected("malformed_body");
                warn!(account = %clip(account), kind = %clip(&kind.kind), namespace = %clip(&ev.namespace), name = %clip(&ev.name), %err, "event body is not valid JSON; dropped");
                continue;
            }
        };
        parsed.push(Event {
            change,
            key: ObjectKey {
                group: kind.group,
                kind: kind.kind,
                namespace: ev.namespace,
                name: ev.name,
            },
            version,
            uid: ev.uid,
            resource_version: ev.resource_version,
            body,
        });
    }
    parsed
}

/// Applies an EventBatch of a held account and acks it; false when the
/// agent's side is gone. A batch for an account the session does not hold
/// gets no Ack.
pub async fn events(session: &Session, batch: pb::EventBatch) -> bool {
    let account = batch.account;
    let events = parse_events(&session.shared.metrics, &account, batch.events);
    let applied = events.len();
    let held = on_held(session, &account, "event_batch_not_held", |cache| {
        for event in events {
            cache.apply(event);
        }
    });
    if held.is_none() {
        return true;
    }
    session.shared.metrics.events_applied.inc_by(applied as u64);
    session
        .send(hub_frame::Frame::Ack(pb::Ack {
            account,
            sequence: batch.sequence,
            window_bytes: None,
        }))
        .await
}

/// Opens the sync of a kind: a full relist (what it does not list is gone
/// at SyncEnd) or a resumed watch.
pub fn sync_start(session: &Session, start: &pb::SyncStart) {
    let Some((kind, version)) = kind_key(start.kind.as_ref()) else {
        session.shared.metrics.frame_ignored("sync_without_kind");
        warn!(account = %clip(&start.account), "SyncStart without a kind; ignored");
        return;
    };
    let mode = match pb::SyncMode::try_from(start.mode).unwrap_or_default() {
        pb::SyncMode::ResumedWatch => SyncMode::ResumedWatch,
        _ => SyncMode::FullRelist,
    };
    let started = on_held(session, &start.account, "sync_start_not_held", |cache| {
        cache.describe(&kind, &version, &start.resource, start.namespaced);
        cache.sync_start(&kind, &version, mode, &start.selection);
    });
    if started.is_some() {
        session.shared.metrics.sync(match mode {
            SyncMode::FullRelist => "full_relist",
            SyncMode::ResumedWatch => "resumed_watch",
        });
        debug!(account = %start.account, kind = %clip(&kind.kind), group = %clip(&kind.group), ?mode, "sync started");
    }
}

/// Closes the sync of a kind: after a full relist, the objects it did not
/// list are dropped.
pub fn sync_end(session: &Session, end: &pb::SyncEnd) {
    let Some((kind, version)) = kind_key(end.kind.as_ref()) else {
        session.shared.metrics.frame_ignored("sync_without_kind");
        warn!(account = %clip(&end.account), "SyncEnd without a kind; ignored");
        return;
    };
    let Some(outcome) = on_held(session, &end.account, "sync_end_not_held", |cache| {
        cache.sync_end(&kind, &version, &end.resource_version, end.object_count)
    }) else {
        return;
    };
    session
        .shared
        .metrics
        .objects_dropped_on_sync
        .inc_by(outcome.dropped as u64);
    if outcome.count_mismatch {
        warn!(account = %end.account, kind = %clip(&kind.kind), group = %clip(&kind.group), object_count = end.object_count,
            "the agent listed more objects than arrived; nothing dropped, the kind will be relisted on the next reconnect");
    } else if outcome.unmatched {
        debug!(account = %end.account, kind = %clip(&kind.kind), "SyncEnd without SyncStart");
    } else {
        debug!(account = %end.account, kind = %clip(&kind.kind), group = %clip(&kind.group), dropped = outcome.dropped, resource_version = %clip(&end.resource_version), "sync ended");
    }
}

/// A watch bookmark: the kind's resume point moves on although no object
/// changed.
pub fn watch_progress(session: &Session, progress: &pb::WatchProgress) {
    let Some((kind, version)) = kind_key(progress.kind.as_ref()) else {
        session
            .shared
            .metrics
            .frame_ignored("progress_without_kind");
        return;
    };
    on_held(
        session,
        &progress.account,
        "watch_progress_not_held",
        |cache| cache.progress(&kind, &version, &progress.resource_version),
    );
}

/// The agent follows the account's CRDs and APIServices (or no longer does), and
/// what the cluster serves may have changed.
pub fn api_surface(session: &Session, surface: &pb::ApiSurface) {
    on_held(session, &surface.account, "api_surface_not_held", |cache| {
        cache.surface_changed(surface.followed);
    });
    debug!(account = %clip(&surface.account), followed = surface.followed, "the cluster's served APIs changed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::session::testing::{next, session, shared};

    fn deployment(t: pb::EventType, name: &str, body: &'static [u8]) -> pb::ObjectEvent {
        pb::ObjectEvent {
            r#type: t as i32,
            kind: Some(pb::GroupVersionKind {
                group: "apps".into(),
                version: "v1".into(),
                kind: "Deployment".into(),
            }),
            namespace: "web".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "7".into(),
            body_json: bytes::Bytes::from_static(body),
        }
    }

    #[test]
    fn events_the_cache_cannot_use_are_dropped_and_counted_by_reason() {
        let metrics = Metrics::default();
        let mut no_kind = deployment(pb::EventType::Added, "no-kind", b"{}");
        no_kind.kind = None;
        let events = vec![
            deployment(pb::EventType::Added, "ok", b"{\"spec\":{}}"),
            deployment(pb::EventType::Unspecified, "no-type", b"{}"),
            no_kind,
            deployment(pb::EventType::Modified, "", b"{}"),
            deployment(pb::EventType::Modified, "bad-body", b"{not json"),
            // A NUL would make namespace "a\0b", name "c" the place of "a", "b\0c".
            deployment(pb::EventType::Modified, "b\0c", b"{}"),
            pb::ObjectEvent {
                namespace: "a\0b".into(),
                ..deployment(pb::EventType::Modified, "c", b"{}")
            },
            // A deletion needs no body.
            deployment(pb::EventType::Deleted, "gone", b""),
        ];
        let parsed = parse_events(&metrics, "prod-1", events);
        let kept: Vec<(&str, Change)> = parsed
            .iter()
            .map(|e| (e.key.name.as_str(), e.change))
            .collect();
        assert_eq!(kept, [("ok", Change::Upsert), ("gone", Change::Delete)]);
        assert_eq!(parsed[0].body.get(), "{\"spec\":{}}");
        assert_eq!(parsed[0].version, "v1");
        let text = metrics.encode();
        for (reason, times) in [
            ("unspecified_type", 1),
            ("missing_kind", 1),
            ("missing_name", 1),
            ("malformed_body", 1),
            ("nul_in_name", 2),
        ] {
            assert!(
                text.contains(&format!(
                    "scale_agent_hub_events_rejected_total{{reason=\"{reason}\"}} {times}"
                )),
                "{reason}: {text}"
            );
        }
    }

    /// Frames for an account the session does not hold change nothing and
    /// get no Ack, even when another session holds it.
    #[tokio::test]
    async fn frames_for_accounts_not_held_change_nothing() {
        let shared = shared();
        let (holder, mut holder_rx) = session(&shared, "s1", "east", "e0");
        let (other, mut other_rx) = session(&shared, "s2", "west", "w0");
        shared.core().registry.register(
            &holder.caller(),
            &crate::core::registry::Registration {
                name: "prod-1".into(),
                cluster_id: "uid-a".into(),
                ..Default::default()
            },
            false,
            std::time::SystemTime::now(),
        );
        let batch = pb::EventBatch {
            account: "prod-1".into(),
            sequence: 1,
            events: vec![deployment(pb::EventType::Added, "web", b"{}")],
        };
        assert!(events(&other, batch.clone()).await);
        assert_eq!(next(&mut other_rx), None, "no Ack for an account not held");
        let gvk = batch.events[0].kind.clone();
        sync_start(
            &other,
            &pb::SyncStart {
                account: "prod-1".into(),
                kind: gvk.clone(),
                mode: pb::SyncMode::FullRelist as i32,
                resource_version: String::new(),
                ..Default::default()
            },
        );
        watch_progress(
            &other,
            &pb::WatchProgress {
                account: "prod-1".into(),
                kind: gvk,
                resource_version: "99".into(),
            },
        );
        assert_eq!(shared.core().cache.total(), 0);
        assert!(
            shared
                .core()
                .cache
                .account("prod-1")
                .is_none_or(|c| c.resume_points().is_empty()),
            "another session's frames must not move the resume point"
        );
        let text = shared.metrics.encode();
        for what in [
            "event_batch_not_held",
            "sync_start_not_held",
            "watch_progress_not_held",
        ] {
            assert!(
                text.contains(&format!(
                    "scale_agent_hub_frames_ignored_total{{reason=\"{what}\"}} 1"
                )),
                "{what}: {text}"
            );
        }

        // The holder's batch is applied and acked.
        assert!(events(&holder, batch).await);
        let Some(hub_frame::Frame::Ack(ack)) = next(&mut holder_rx) else {
            panic!("the holder's batch must be acked");
        };
        assert_eq!((ack.account.as_str(), ack.sequence), ("prod-1", 1));
        assert_eq!(shared.core().cache.total(), 1);
    }
}
