//! One agent session: the frames of one `Connect` stream after Hello.
//!
//! Frames are handled in order. Nothing an agent sends can hurt another
//! session: events for accounts this session does not hold, malformed bodies
//! and unknown frame kinds are dropped with a warning and a counter, and the
//! stream goes on. Only liveness (no frame for three heartbeat intervals) and
//! the agent closing the stream end it.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use scale_agent_proto::v1::{
    self as pb, AccountOwner, AccountResult, AgentFrame, Drain, DrainReason, ErrorCode, Heartbeat,
    HubFrame, RegisterReason, ResumePoint, ShardRef, agent_frame, hub_frame,
};
use serde_json::value::RawValue;
use tokio_stream::StreamExt as _;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::cache::{Change, Event, KindKey, ObjectKey, SyncMode};
use crate::identity::IdentitySource;
use crate::kubeapi::tunnel::Part;
use crate::metrics::ReasonLabel;
use crate::operations::Outcome;
use crate::ownership::{Ownership, Verdict};
use crate::registry::{Caller, Decision, Registration, RejectReason, Release, SessionId, ShardKey};
use crate::state::{Outbound, Shared};

/// A session after its Hello was accepted.
pub struct Session {
    /// Shared hub state.
    pub shared: Arc<Shared>,
    /// Session id.
    pub id: SessionId,
    /// The shard from Hello.
    pub shard: ShardKey,
    /// The replica from Hello.
    pub replica: String,
    /// Frames to the agent.
    pub tx: Outbound,
    /// Where the shard identity came from.
    pub identity: IdentitySource,
}

/// The maximum connection age varies by ±this fraction per session, so that
/// sessions opened together (after a hub restart) do not all drain together.
pub const AGE_JITTER: f64 = 0.1;

/// How long a Register waits for the first list of AgentShards before it is
/// answered UNAVAILABLE.
const OWNERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// `age` × (1 ± [`AGE_JITTER`]), at random.
pub fn jittered(age: std::time::Duration) -> std::time::Duration {
    use rand::Rng as _;
    let factor = rand::rng().random_range((1.0 - AGE_JITTER)..=(1.0 + AGE_JITTER));
    age.mul_f64(factor)
}

/// The status the agent gets when its stream cannot be read any more: an
/// oversized frame is RESOURCE_EXHAUSTED, a frame that does not decode is
/// INVALID_ARGUMENT, each with a sentence saying so.
fn stream_error(status: &Status, limit: u32) -> Option<Status> {
    match status.code() {
        tonic::Code::OutOfRange if status.message().contains("too large") => {
            Some(Status::resource_exhausted(format!(
                "frame larger than this hub accepts ({limit} bytes, Welcome.max_message_bytes): {}; the session ends, other sessions are not affected",
                status.message()
            )))
        }
        tonic::Code::Internal => Some(Status::invalid_argument(format!(
            "malformed frame: {}; the session ends, other sessions are not affected",
            status.message()
        ))),
        _ => None,
    }
}

fn frame(f: hub_frame::Frame) -> HubFrame {
    HubFrame { frame: Some(f) }
}

fn shard_ref(shard: &ShardKey) -> ShardRef {
    ShardRef {
        namespace: shard.namespace.clone(),
        name: shard.name.clone(),
    }
}

fn kind_key(gvk: Option<&pb::GroupVersionKind>) -> Option<(KindKey, String)> {
    let gvk = gvk?;
    if gvk.kind.is_empty() {
        return None;
    }
    Some((
        KindKey {
            group: gvk.group.clone(),
            kind: gvk.kind.clone(),
        },
        gvk.version.clone(),
    ))
}

/// Follows ownership changes: an account held by a session whose shard no
/// longer owns it (the AgentShard dropped it, or another shard took it) is
/// released from that session (Disconnected, so the owner's agent can take it
/// over, or it is removed after the grace period) and the session is told with
/// an unsolicited RegisterResult NOT_OWNER.
pub fn revoke_on_ownership_change(shared: Arc<Shared>, mut rx: crate::ownership::OwnershipRx) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                () = shared.shutdown.cancelled() => return,
            }
            let Some(ownership) = rx.borrow_and_update().clone() else {
                continue;
            };
            let now = SystemTime::now();
            let mut expiries = Vec::new();
            let mut revoked = Vec::new();
            {
                let held: Vec<(String, SessionId)> = shared
                    .core()
                    .registry
                    .accounts()
                    .filter_map(|a| a.session.clone().map(|s| (a.name.clone(), s)))
                    .collect();
                for (name, session) in held {
                    let Some(handle) = shared.session(&session) else {
                        continue;
                    };
                    let Verdict::NotOwner { owner, message } =
                        ownership.check(&name, &handle.shard)
                    else {
                        continue;
                    };
                    let release = shared
                        .core()
                        .registry
                        .unregister(&session, &name, false, now);
                    if let Release::Disconnected(epoch) = release {
                        expiries.push((name.clone(), epoch));
                        revoked.push((name, session, handle.shard, owner, message));
                    }
                }
            }
            for (name, session, shard, owner, message) in revoked {
                warn!(account = %name, %shard, %session, %message, "the shard no longer owns the account; revoked from its session");
                shared
                    .metrics
                    .registrations_rejected
                    .get_or_create(&ReasonLabel {
                        reason: "not_owner_revoked",
                    })
                    .inc();
                let result = pb::RegisterResult {
                    accounts: vec![AccountResult {
                        name,
                        accepted: false,
                        reason: RegisterReason::NotOwner as i32,
                        message,
                        owner: owner.map(|o| AccountOwner {
                            shard: Some(shard_ref(&o)),
                            cluster_id: String::new(),
                            replica_id: String::new(),
                        }),
                        resume_points: Vec::new(),
                    }],
                };
                shared.send_detached(&session, frame(hub_frame::Frame::RegisterResult(result)));
            }
            shared.schedule_expiry(expiries);
        }
    });
}

/// The ownership index, waiting a little for the first list; `None` when it
/// is still not there.
async fn ownership_snapshot(mut rx: crate::ownership::OwnershipRx) -> Option<Arc<Ownership>> {
    if let Some(o) = rx.borrow().clone() {
        return Some(o);
    }
    match tokio::time::timeout(OWNERSHIP_WAIT, rx.wait_for(Option::is_some)).await {
        Ok(Ok(o)) => o.clone(),
        _ => None,
    }
}

impl Session {
    async fn send(&self, f: hub_frame::Frame) -> bool {
        self.tx.send(Ok(frame(f))).await.is_ok()
    }

    /// Runs the session until the agent goes, the stream breaks, or the hub
    /// shuts down; then its accounts become Disconnected.
    pub async fn run(self, mut inbound: Streaming<AgentFrame>) {
        let interval = self.shared.settings.heartbeat_interval;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(30 * 365 * 86_400);
        let age = self.shared.settings.max_connection_age.map(jittered);
        let drain_at =
            tokio::time::sleep_until(age.map_or(far, |a| tokio::time::Instant::now() + a));
        tokio::pin!(drain_at);
        let mut draining = false;
        loop {
            tokio::select! {
                () = &mut drain_at => {
                    if draining {
                        info!("the agent did not close the drained stream within the grace period; ending it");
                        break;
                    }
                    draining = true;
                    let grace = self.shared.settings.max_connection_age_grace;
                    self.shared.metrics.sessions_aged_out.inc();
                    info!(age = ?age, ?grace, "maximum connection age reached; asking the agent to reconnect (Drain REBALANCE)");
                    let drain = Drain {
                        reason: DrainReason::Rebalance as i32,
                        message: format!("maximum connection age reached; reconnect (the stream ends in {grace:?})"),
                        reconnect_after: Some(prost_types::Duration::default()),
                    };
                    if !self.send(hub_frame::Frame::Drain(drain)).await {
                        break;
                    }
                    drain_at.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                () = self.shared.shutdown.cancelled() => {
                    let drain = Drain {
                        reason: DrainReason::Shutdown as i32,
                        message: "the hub is shutting down".into(),
                        reconnect_after: None,
                    };
                    // Best effort: the agent learns why before the stream ends.
                    let _ = self.tx.try_send(Ok(frame(hub_frame::Frame::Drain(drain))));
                    break;
                }
                next = inbound.next() => match next {
                    Some(Ok(f)) => {
                        last_heard = Instant::now();
                        if !self.handle(f).await {
                            info!("the agent stopped reading; ending the session");
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        match stream_error(&status, self.shared.settings.max_message_bytes) {
                            Some(answer) => {
                                warn!(code = ?answer.code(), message = answer.message(), "unreadable frame; ending the session");
                                self.shared.metrics.frame_ignored(if answer.code() == tonic::Code::ResourceExhausted { "oversized" } else { "malformed" });
                                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.tx.send(Err(answer))).await;
                            }
                            None => info!(code = ?status.code(), message = status.message(), "the stream broke"),
                        }
                        break;
                    }
                    None => {
                        info!("the agent closed the stream");
                        break;
                    }
                },
                _ = beat.tick() => {
                    if last_heard.elapsed() > interval.saturating_mul(3) {
                        warn!(silent_for = ?last_heard.elapsed(), "nothing heard for three heartbeat intervals; ending the session");
                        let _ = self.tx.try_send(Err(Status::unavailable("no frame from the agent for three heartbeat intervals")));
                        break;
                    }
                    let hb = Heartbeat { sent_at: Some(prost_types::Timestamp::from(SystemTime::now())), reply_to: None };
                    // A full queue means frames are flowing anyway.
                    let _ = self.tx.try_send(Ok(frame(hub_frame::Frame::Heartbeat(hb))));
                }
            }
        }
        self.end();
    }

    /// Ends the session: it is no longer live, and its accounts become
    /// Disconnected for the grace period. [`Session::run`] calls it when the
    /// stream ends; public so that frame handling can be driven without a
    /// stream (the fuzz target, tests).
    pub fn end(&self) {
        self.shared.remove_session(&self.id);
        self.shared.tunnels.session_ended(&self.id);
        let disconnected = self
            .shared
            .core()
            .registry
            .disconnect_session(&self.id, SystemTime::now());
        if !disconnected.is_empty() {
            info!(
                accounts = ?disconnected.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
                grace_period = ?self.shared.settings.grace_period,
                "session ended; its accounts are Disconnected for the grace period"
            );
        }
        self.shared.schedule_expiry(disconnected);
    }

    /// Handles one frame after Hello, exactly as [`Session::run`] does for
    /// each frame it reads; false when the agent's side is gone (the answer
    /// could not be queued). Public so that frame handling can be driven
    /// without a stream (the fuzz target, tests).
    pub async fn handle(&self, f: AgentFrame) -> bool {
        match f.frame {
            Some(agent_frame::Frame::Hello(_)) => {
                warn!("a second Hello on an open session; ignored");
                self.shared.metrics.frame_ignored("duplicate_hello");
                true
            }
            Some(agent_frame::Frame::Register(reg)) => self.register(reg).await,
            Some(agent_frame::Frame::Unregister(unreg)) => {
                self.unregister(unreg);
                true
            }
            Some(agent_frame::Frame::EventBatch(batch)) => self.events(batch).await,
            Some(agent_frame::Frame::SyncStart(start)) => {
                self.sync_start(&start);
                true
            }
            Some(agent_frame::Frame::SyncEnd(end)) => {
                self.sync_end(&end);
                true
            }
            Some(agent_frame::Frame::OperationResult(result)) => {
                self.operation_result(result);
                true
            }
            Some(agent_frame::Frame::Heartbeat(beat)) => {
                let reply = Heartbeat {
                    sent_at: Some(prost_types::Timestamp::from(SystemTime::now())),
                    reply_to: beat.sent_at,
                };
                self.send(hub_frame::Frame::Heartbeat(reply)).await
            }
            Some(agent_frame::Frame::WatchProgress(progress)) => {
                self.watch_progress(&progress);
                true
            }
            Some(agent_frame::Frame::KubeResponseHead(head)) => {
                crate::kubeapi::tunnel::from_agent(&self.shared, &self.id, Part::Head(head));
                true
            }
            Some(agent_frame::Frame::KubeResponseBody(body)) => {
                crate::kubeapi::tunnel::from_agent(&self.shared, &self.id, Part::Body(body));
                true
            }
            None => {
                debug!("a frame of a kind this hub does not know; ignored");
                self.shared.metrics.frame_ignored("unknown_frame_kind");
                true
            }
        }
    }

    async fn register(&self, reg: pb::Register) -> bool {
        let caller = Caller {
            session: self.id.clone(),
            shard: self.shard.clone(),
            replica: self.replica.clone(),
        };
        let ownership = match &self.shared.settings.ownership {
            None => None,
            Some(rx) => Some(ownership_snapshot(rx.clone()).await),
        };
        let now = SystemTime::now();
        let mut results = Vec::with_capacity(reg.accounts.len());
        let mut persist = Vec::new();
        let mut superseded = Vec::new();
        let mut accepted = Vec::new();
        {
            let mut core = self.shared.core();
            for account in reg.accounts {
                if let Some(ownership) = &ownership
                    && let Some(refused) = self.check_owner(ownership.as_deref(), &account.name)
                {
                    results.push(refused);
                    continue;
                }
                let registration = Registration {
                    name: account.name.clone(),
                    cluster_id: account.cluster_id.clone(),
                    server_url: account.server_url.clone(),
                    kubernetes_version: account.kubernetes_version.clone(),
                };
                let held_before = core.registry.holds(&account.name, &self.id);
                match core.registry.register(&caller, &registration, now) {
                    Decision::Accepted {
                        superseded: old,
                        persist: binding,
                        fresh,
                    } => {
                        let cache = core.cache.account_mut(&account.name);
                        if !held_before {
                            // Syncs the previous holder left open (it died or
                            // was superseded mid-relist) are void.
                            cache.abandon_open_syncs();
                        }
                        let resume_points = if fresh {
                            Vec::new()
                        } else {
                            cache
                                .resume_points()
                                .into_iter()
                                .map(|r| ResumePoint {
                                    kind: Some(pb::GroupVersionKind {
                                        group: r.kind.group,
                                        version: r.version,
                                        kind: r.kind.kind,
                                    }),
                                    resource_version: r.resource_version,
                                })
                                .collect()
                        };
                        info!(
                            account = %account.name,
                            cluster_id = %account.cluster_id,
                            resume_points = resume_points.len(),
                            superseded = old.as_ref().map(|(s, _)| &**s),
                            "account accepted"
                        );
                        if let Some(b) = binding {
                            persist.push((account.name.clone(), b));
                        }
                        if let Some(old) = old {
                            superseded.push((account.name.clone(), old));
                        }
                        accepted.push(account.name.clone());
                        results.push(AccountResult {
                            name: account.name,
                            accepted: true,
                            reason: RegisterReason::Ok as i32,
                            message: String::new(),
                            owner: None,
                            resume_points,
                        });
                    }
                    Decision::Rejected {
                        reason,
                        message,
                        owner,
                    } => {
                        warn!(account = %account.name, cluster_id = %account.cluster_id, reason = reason.label(), %message, "registration rejected");
                        self.shared
                            .metrics
                            .registrations_rejected
                            .get_or_create(&ReasonLabel {
                                reason: reason.label(),
                            })
                            .inc();
                        results.push(AccountResult {
                            name: account.name,
                            accepted: false,
                            reason: match reason {
                                RejectReason::Invalid => RegisterReason::Invalid,
                                RejectReason::ClusterMismatch => RegisterReason::ClusterMismatch,
                            } as i32,
                            message,
                            owner: owner.map(|b| AccountOwner {
                                shard: Some(shard_ref(&b.shard)),
                                cluster_id: b.cluster_id,
                                replica_id: String::new(),
                            }),
                            resume_points: Vec::new(),
                        });
                    }
                }
            }
        }
        self.shared
            .metrics
            .registrations_accepted
            .inc_by(accepted.len() as u64);
        for (name, binding) in &persist {
            self.shared.persist(name, binding);
        }
        for (name, (old_session, old_replica)) in superseded {
            self.shared.metrics.registrations_superseded.inc();
            info!(account = %name, old_session = %old_session, %old_replica, "a newer session took the account over; telling the older one");
            let revoke = pb::RegisterResult {
                accounts: vec![AccountResult {
                    name: name.clone(),
                    accepted: false,
                    reason: RegisterReason::Superseded as i32,
                    message: format!(
                        "account {name} is now streamed by replica {} (session {}) of shard {}",
                        self.replica, self.id, self.shard
                    ),
                    owner: Some(AccountOwner {
                        shard: Some(shard_ref(&self.shard)),
                        cluster_id: String::new(),
                        replica_id: self.replica.clone(),
                    }),
                    resume_points: Vec::new(),
                }],
            };
            self.shared.send_detached(
                &old_session,
                frame(hub_frame::Frame::RegisterResult(revoke)),
            );
        }
        if !self
            .send(hub_frame::Frame::RegisterResult(pb::RegisterResult {
                accounts: results,
            }))
            .await
        {
            return false;
        }
        // Operations whose session died before answering go to the new holder.
        for name in accepted {
            let orphans = self
                .shared
                .operations
                .take_orphans(&name, &self.id, |s| self.shared.is_live(s));
            for op in orphans {
                info!(account = %name, operation = %op.id, "sending an unanswered operation again to the account's new session");
                if !self.send(hub_frame::Frame::Operation(op)).await {
                    return false;
                }
            }
        }
        true
    }

    /// The refusal of `account` when this session's shard does not own it
    /// (or ownership is not known yet); `None` when it does.
    fn check_owner(&self, ownership: Option<&Ownership>, account: &str) -> Option<AccountResult> {
        let (reason, label, message, owner) = match ownership {
            None => (
                RegisterReason::Unavailable,
                "ownership_unavailable",
                "the hub has not loaded the AgentShards yet, so it cannot tell who owns this account; retry shortly".to_owned(),
                None,
            ),
            Some(ownership) => match ownership.check(account, &self.shard) {
                Verdict::Owner => return None,
                Verdict::NotOwner { owner, message } => (
                    RegisterReason::NotOwner,
                    "not_owner",
                    message,
                    owner,
                ),
            },
        };
        warn!(account, shard = %self.shard, identity = self.identity.label(), %message, "registration rejected");
        self.shared
            .metrics
            .registrations_rejected
            .get_or_create(&ReasonLabel { reason: label })
            .inc();
        Some(AccountResult {
            name: account.to_owned(),
            accepted: false,
            reason: reason as i32,
            message,
            owner: owner.map(|shard| AccountOwner {
                shard: Some(shard_ref(&shard)),
                cluster_id: String::new(),
                replica_id: String::new(),
            }),
            resume_points: Vec::new(),
        })
    }

    fn unregister(&self, unreg: pb::Unregister) {
        let reason = pb::UnregisterReason::try_from(unreg.reason).unwrap_or_default();
        let remove = reason == pb::UnregisterReason::Removed;
        let now = SystemTime::now();
        let mut expiries = Vec::new();
        for name in &unreg.account_names {
            let (release, objects) = {
                let mut core = self.shared.core();
                let release = core.registry.unregister(&self.id, name, remove, now);
                let objects = if release == Release::Removed {
                    core.cache.remove(name)
                } else {
                    0
                };
                (release, objects)
            };
            match release {
                Release::NotHeld => {
                    debug!(account = %name, "unregister of an account this session does not hold; ignored");
                }
                Release::Removed => {
                    info!(account = %name, objects, message = %unreg.message, "account removed by its agent");
                    self.shared.forget(name, "unregistered");
                }
                Release::Disconnected(epoch) => {
                    info!(account = %name, reason = reason.as_str_name(), message = %unreg.message, "account unregistered; Disconnected for the grace period");
                    expiries.push((name.clone(), epoch));
                }
            }
        }
        self.shared.schedule_expiry(expiries);
    }

    /// Parses events outside the lock; malformed ones are dropped and counted.
    fn parse_events(&self, account: &str, events: Vec<pb::ObjectEvent>) -> Vec<Event> {
        let mut parsed = Vec::with_capacity(events.len());
        for ev in events {
            let change = match pb::EventType::try_from(ev.r#type).unwrap_or_default() {
                pb::EventType::Added | pb::EventType::Modified => Change::Upsert,
                pb::EventType::Deleted => Change::Delete,
                pb::EventType::Unspecified => {
                    self.shared.metrics.event_rejected("unspecified_type");
                    debug!(%account, name = %ev.name, "event without a type; dropped");
                    continue;
                }
            };
            let Some((kind, version)) = kind_key(ev.kind.as_ref()) else {
                self.shared.metrics.event_rejected("missing_kind");
                warn!(%account, name = %ev.name, "event without a kind; dropped");
                continue;
            };
            if ev.name.is_empty() {
                self.shared.metrics.event_rejected("missing_name");
                warn!(%account, kind = %kind.kind, "event without a name; dropped");
                continue;
            }
            let body: Arc<RawValue> = match serde_json::from_slice::<Box<RawValue>>(&ev.body_json) {
                Ok(body) => Arc::from(body),
                // A deletion needs no body.
                Err(_) if change == Change::Delete => Arc::from(RawValue::NULL.to_owned()),
                Err(err) => {
                    self.shared.metrics.event_rejected("malformed_body");
                    warn!(%account, kind = %kind.kind, namespace = %ev.namespace, name = %ev.name, %err, "event body is not valid JSON; dropped");
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

    fn not_held(&self, account: &str, what: &'static str) {
        self.shared.metrics.frame_ignored(what);
        warn!(%account, frame = what, "frame for an account this session does not hold (not registered, rejected or superseded); ignored");
    }

    async fn events(&self, batch: pb::EventBatch) -> bool {
        let account = batch.account;
        let events = self.parse_events(&account, batch.events);
        let applied = events.len();
        {
            let mut core = self.shared.core();
            if !core.registry.holds(&account, &self.id) {
                drop(core);
                self.not_held(&account, "event_batch_not_held");
                return true;
            }
            let cache = core.cache.account_mut(&account);
            for event in events {
                cache.apply(event);
            }
        }
        self.shared.metrics.events_applied.inc_by(applied as u64);
        self.send(hub_frame::Frame::Ack(pb::Ack {
            account,
            sequence: batch.sequence,
            window_bytes: None,
        }))
        .await
    }

    fn sync_start(&self, start: &pb::SyncStart) {
        let Some((kind, version)) = kind_key(start.kind.as_ref()) else {
            self.shared.metrics.frame_ignored("sync_without_kind");
            warn!(account = %start.account, "SyncStart without a kind; ignored");
            return;
        };
        let mode = match pb::SyncMode::try_from(start.mode).unwrap_or_default() {
            pb::SyncMode::ResumedWatch => SyncMode::ResumedWatch,
            _ => SyncMode::FullRelist,
        };
        let mut core = self.shared.core();
        if !core.registry.holds(&start.account, &self.id) {
            drop(core);
            self.not_held(&start.account, "sync_start_not_held");
            return;
        }
        core.cache
            .account_mut(&start.account)
            .sync_start(&kind, &version, mode);
        debug!(account = %start.account, kind = %kind.kind, group = %kind.group, ?mode, "sync started");
    }

    fn sync_end(&self, end: &pb::SyncEnd) {
        let Some((kind, version)) = kind_key(end.kind.as_ref()) else {
            self.shared.metrics.frame_ignored("sync_without_kind");
            warn!(account = %end.account, "SyncEnd without a kind; ignored");
            return;
        };
        let outcome = {
            let mut core = self.shared.core();
            if !core.registry.holds(&end.account, &self.id) {
                drop(core);
                self.not_held(&end.account, "sync_end_not_held");
                return;
            }
            core.cache.account_mut(&end.account).sync_end(
                &kind,
                &version,
                &end.resource_version,
                end.object_count,
            )
        };
        self.shared
            .metrics
            .objects_dropped_on_sync
            .inc_by(outcome.dropped as u64);
        if outcome.count_mismatch {
            warn!(account = %end.account, kind = %kind.kind, group = %kind.group, object_count = end.object_count,
                "the agent listed more objects than arrived; nothing dropped, the kind will be relisted on the next reconnect");
        } else if outcome.unmatched {
            debug!(account = %end.account, kind = %kind.kind, "SyncEnd without SyncStart");
        } else {
            debug!(account = %end.account, kind = %kind.kind, group = %kind.group, dropped = outcome.dropped, resource_version = %end.resource_version, "sync ended");
        }
    }

    fn watch_progress(&self, progress: &pb::WatchProgress) {
        let Some((kind, version)) = kind_key(progress.kind.as_ref()) else {
            self.shared.metrics.frame_ignored("progress_without_kind");
            return;
        };
        let mut core = self.shared.core();
        if !core.registry.holds(&progress.account, &self.id) {
            drop(core);
            self.not_held(&progress.account, "watch_progress_not_held");
            return;
        }
        core.cache.account_mut(&progress.account).progress(
            &kind,
            &version,
            &progress.resource_version,
        );
    }

    fn operation_result(&self, result: pb::OperationResult) {
        let id = result.operation_id.clone();
        if result.error_code == ErrorCode::UnknownAccount as i32 {
            // The replica no longer holds the account: send it to the holder.
            if let Some((op, _)) = self.shared.operations.pending(&id) {
                let holder = self
                    .shared
                    .core()
                    .registry
                    .get(&op.account)
                    .and_then(|a| a.session.clone());
                if let Some(holder) = holder.filter(|h| *h != self.id && self.shared.is_live(h)) {
                    info!(operation = %id, account = %op.account, to_session = %holder, "agent does not hold the account; routing the operation to its holder");
                    self.shared.operations.sent_to(&id, holder.clone());
                    self.shared
                        .send_detached(&holder, frame(hub_frame::Frame::Operation(op)));
                    return;
                }
            }
        }
        let outcome = Outcome::from_result(&result);
        if !self.shared.operations.complete(outcome) {
            debug!(operation = %id, "result for an operation nobody waits for (answered already or given up); ignored");
            self.shared
                .metrics
                .frame_ignored("operation_result_unknown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityPolicy;
    use crate::state::{SessionHandle, Settings};
    use crate::store::Store;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn shared() -> Arc<Shared> {
        let settings = Settings {
            hub_id: "hub-test".into(),
            grace_period: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(15),
            max_message_bytes: 1 << 20,
            initial_window_bytes: 1 << 20,
            default_operation_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(30),
            identity: IdentityPolicy::default(),
            ownership: None,
            max_connection_age: None,
            max_connection_age_grace: Duration::from_secs(30),
        };
        let store = Store::open(None).expect("in-memory store");
        Shared::new(settings, store, tokio_util::sync::CancellationToken::new()).expect("shared")
    }

    fn session(
        shared: &Arc<Shared>,
        id: &str,
    ) -> (Session, mpsc::Receiver<Result<HubFrame, Status>>) {
        let (tx, rx) = mpsc::channel(16);
        let shard = ShardKey {
            namespace: "ns".into(),
            name: "shard".into(),
        };
        let id: SessionId = Arc::from(id);
        shared.add_session(
            id.clone(),
            SessionHandle {
                tx: tx.clone(),
                shard: shard.clone(),
                replica: "r".into(),
            },
        );
        let session = Session {
            shared: Arc::clone(shared),
            id,
            shard,
            replica: "r".into(),
            tx,
            identity: IdentitySource::Hello,
        };
        (session, rx)
    }

    fn agent(f: agent_frame::Frame) -> AgentFrame {
        AgentFrame { frame: Some(f) }
    }

    /// Frames are handled without a stream: a Register is answered, events of
    /// the held account are cached and acked, and ending the session leaves
    /// the account Disconnected with its objects.
    #[tokio::test]
    async fn frames_are_handled_without_a_stream() {
        let shared = shared();
        let (s, mut rx) = session(&shared, "s1");
        let register = pb::Register {
            accounts: vec![pb::Account {
                name: "a".into(),
                cluster_id: "c1".into(),
                ..Default::default()
            }],
        };
        assert!(
            s.handle(agent(agent_frame::Frame::Register(register)))
                .await
        );
        let Ok(HubFrame {
            frame: Some(hub_frame::Frame::RegisterResult(result)),
        }) = rx.recv().await.expect("an answer")
        else {
            panic!("expected a RegisterResult");
        };
        assert!(result.accounts[0].accepted);
        let batch = pb::EventBatch {
            account: "a".into(),
            sequence: 7,
            events: vec![pb::ObjectEvent {
                r#type: pb::EventType::Added as i32,
                kind: Some(pb::GroupVersionKind {
                    group: "apps".into(),
                    version: "v1".into(),
                    kind: "Deployment".into(),
                }),
                namespace: "n".into(),
                name: "web".into(),
                body_json: bytes::Bytes::from_static(b"{}"),
                ..Default::default()
            }],
        };
        assert!(s.handle(agent(agent_frame::Frame::EventBatch(batch))).await);
        let Ok(HubFrame {
            frame: Some(hub_frame::Frame::Ack(ack)),
        }) = rx.recv().await.expect("an ack")
        else {
            panic!("expected an Ack");
        };
        assert_eq!(ack.sequence, 7);
        assert_eq!(shared.core().cache.total(), 1);
        s.end();
        assert!(!shared.is_live(&s.id));
        let core = shared.core();
        let account = core.registry.get("a").expect("kept for the grace period");
        assert!(account.session.is_none());
        assert_eq!(core.cache.total(), 1);
    }
}
