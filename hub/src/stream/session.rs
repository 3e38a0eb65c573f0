//! One agent session: moves the frames of one `Connect` stream after Hello.
//!
//! The session reads frames in order and hands each to the module that owns
//! its meaning ([`crate::stream::register`], [`crate::stream::ingest`],
//! [`crate::stream::routing`]); it keeps the stream alive (heartbeats), drains it
//! (maximum connection age, hub shutdown) and ends it. Nothing an agent sends
//! can hurt another session: what it may not do is dropped with a warning and
//! a counter, and the stream goes on. Only liveness (no frame for three
//! heartbeat intervals), an unreadable frame and the agent closing the stream
//! end it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use scale_agent_proto::v1::{
    AgentFrame, Drain, DrainReason, Heartbeat, HubFrame, agent_frame, hub_frame,
};
use tokio_stream::StreamExt as _;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use crate::core::clip::clip;
use crate::core::registry::{Caller, SessionId, ShardRef};
use crate::net::identity::IdentitySource;
use crate::state::{Outbound, SessionHandle, Shared};
use crate::stream::tunnel::{self, Part};
use crate::stream::{ingest, register, routing};

/// A session after its Hello was accepted.
pub struct Session {
    /// Shared hub state.
    pub shared: Arc<Shared>,
    /// Session id.
    pub id: SessionId,
    /// The shard from Hello.
    pub shard: ShardRef,
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

/// How long the hub tries to tell an agent why its stream ends.
const LAST_WORD: Duration = Duration::from_secs(1);

/// `age` × (1 ± [`AGE_JITTER`]), at random.
pub fn jittered(age: Duration) -> Duration {
    use rand::Rng as _;
    let factor = rand::rng().random_range((1.0 - AGE_JITTER)..=(1.0 + AGE_JITTER));
    age.mul_f64(factor)
}

/// The status the agent gets when its stream cannot be read any more: an
/// oversized frame is RESOURCE_EXHAUSTED, a frame that does not decode is
/// INVALID_ARGUMENT, each with a sentence saying so; `None` when the stream
/// merely broke.
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

/// Wraps a frame for the agent.
pub fn frame(f: hub_frame::Frame) -> HubFrame {
    HubFrame { frame: Some(f) }
}

fn heartbeat(reply_to: Option<prost_types::Timestamp>) -> hub_frame::Frame {
    hub_frame::Frame::Heartbeat(Heartbeat {
        sent_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        reply_to,
    })
}

impl Session {
    /// A session that other tasks can reach (operations, revocations, a
    /// newer session superseding it) as soon as it is returned.
    pub fn open(
        shared: Arc<Shared>,
        id: SessionId,
        handle: SessionHandle,
        identity: IdentitySource,
    ) -> Session {
        shared.add_session(id.clone(), handle.clone());
        Session {
            shared,
            id,
            shard: handle.shard,
            replica: handle.replica,
            tx: handle.tx,
            identity,
        }
    }

    /// This session as the registry knows a registering one.
    pub fn caller(&self) -> Caller {
        Caller {
            session: self.id.clone(),
            shard: self.shard.clone(),
            replica: self.replica.clone(),
        }
    }

    /// Queues a frame to the agent, waiting while its queue is full; false
    /// when the agent's side is gone.
    pub async fn send(&self, f: hub_frame::Frame) -> bool {
        self.tx.send(Ok(frame(f))).await.is_ok()
    }

    /// Runs the session until the agent goes, the stream breaks, or the hub
    /// shuts down; then its accounts become Disconnected.
    pub async fn run(self, mut inbound: Streaming<AgentFrame>) {
        let interval = self.shared.config.heartbeat_interval;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let far = tokio::time::Instant::now() + Duration::from_secs(30 * 365 * 86_400);
        let age = self.shared.config.max_connection_age.map(jittered);
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
                    let grace = self.shared.config.max_connection_age_grace;
                    if !self.drain_aged(age, grace).await {
                        break;
                    }
                    drain_at.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                () = self.shared.shutdown.cancelled() => {
                    self.drain_for_shutdown();
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
                        self.unreadable(&status).await;
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
                    // A full queue means frames are flowing anyway.
                    let _ = self.tx.try_send(Ok(frame(heartbeat(None))));
                }
            }
        }
        self.end();
    }

    /// The session reached its maximum connection age: asks the agent to
    /// reconnect (Drain REBALANCE) within `grace`. False when the agent's
    /// side is gone.
    async fn drain_aged(&self, age: Option<Duration>, grace: Duration) -> bool {
        self.shared.metrics.sessions_aged_out.inc();
        info!(age = ?age, ?grace, "maximum connection age reached; asking the agent to reconnect (Drain REBALANCE)");
        self.send(hub_frame::Frame::Drain(Drain {
            reason: DrainReason::Rebalance as i32,
            message: format!(
                "maximum connection age reached; reconnect (the stream ends in {grace:?})"
            ),
            reconnect_after: Some(prost_types::Duration::default()),
        }))
        .await
    }

    /// The hub is shutting down: tells the agent, best effort, before the
    /// stream ends.
    fn drain_for_shutdown(&self) {
        let _ = self.tx.try_send(Ok(frame(hub_frame::Frame::Drain(Drain {
            reason: DrainReason::Shutdown as i32,
            message: "the hub is shutting down".into(),
            reconnect_after: None,
        }))));
    }

    /// The stream failed: tells the agent why when it was its frame's fault
    /// (oversized, malformed), and counts it.
    async fn unreadable(&self, status: &Status) {
        match stream_error(status, self.shared.config.max_message_bytes) {
            Some(answer) => {
                warn!(code = ?answer.code(), message = answer.message(), "unreadable frame; ending the session");
                self.shared.metrics.frame_ignored(
                    if answer.code() == tonic::Code::ResourceExhausted {
                        "oversized"
                    } else {
                        "malformed"
                    },
                );
                let _ = tokio::time::timeout(LAST_WORD, self.tx.send(Err(answer))).await;
            }
            None => info!(code = ?status.code(), message = status.message(), "the stream broke"),
        }
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
            let first: Vec<String> = disconnected
                .iter()
                .take(crate::stream::register::NAMES_SHOWN)
                .map(|(n, _)| clip(n).to_string())
                .collect();
            info!(
                accounts = disconnected.len(),
                first = ?first,
                grace_period = ?self.shared.config.grace_period,
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
            Some(agent_frame::Frame::Register(reg)) => register::register(self, reg).await,
            Some(agent_frame::Frame::Unregister(unreg)) => {
                register::unregister(self, &unreg);
                true
            }
            Some(agent_frame::Frame::EventBatch(batch)) => ingest::events(self, batch).await,
            Some(agent_frame::Frame::SyncStart(start)) => {
                ingest::sync_start(self, &start);
                true
            }
            Some(agent_frame::Frame::SyncEnd(end)) => {
                ingest::sync_end(self, &end);
                true
            }
            Some(agent_frame::Frame::WatchProgress(progress)) => {
                ingest::watch_progress(self, &progress);
                true
            }
            Some(agent_frame::Frame::ApiSurface(surface)) => {
                ingest::api_surface(self, &surface);
                true
            }
            Some(agent_frame::Frame::OperationResult(result)) => {
                routing::result(self, result);
                true
            }
            Some(agent_frame::Frame::Heartbeat(beat)) => self.send(heartbeat(beat.sent_at)).await,
            Some(agent_frame::Frame::KubeResponseHead(head)) => {
                tunnel::from_agent(&self.shared, &self.id, Part::Head(head));
                true
            }
            Some(agent_frame::Frame::KubeResponseBody(body)) => {
                tunnel::from_agent(&self.shared, &self.id, Part::Body(body));
                true
            }
            Some(agent_frame::Frame::KubeWindow(window)) => {
                tunnel::from_agent(&self.shared, &self.id, Part::Window(window));
                true
            }
            None => {
                debug!("a frame of a kind this hub does not know; ignored");
                self.shared.metrics.frame_ignored("unknown_frame_kind");
                true
            }
        }
    }
}

/// Sessions driven without a stream, for the unit tests of the modules that
/// handle frames.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::config::Config;
    use tokio::sync::mpsc;

    /// What the agent of a test session receives.
    pub(crate) type Inbox = mpsc::Receiver<Result<HubFrame, Status>>;

    /// Shared state on the test default settings.
    pub(crate) fn shared() -> Arc<Shared> {
        Shared::new(
            Config::local(),
            None,
            tokio_util::sync::CancellationToken::new(),
        )
        .expect("shared state on the test default settings")
    }

    /// A live session of replica `replica` of shard `ns/shard`.
    pub(crate) fn session(
        shared: &Arc<Shared>,
        id: &str,
        shard: &str,
        replica: &str,
    ) -> (Session, Inbox) {
        let (tx, rx) = mpsc::channel(16);
        let handle = SessionHandle {
            tx,
            shard: ShardRef {
                namespace: "ns".into(),
                name: shard.into(),
            },
            replica: replica.into(),
        };
        let session = Session::open(
            Arc::clone(shared),
            Arc::from(id),
            handle,
            IdentitySource::Hello,
        );
        (session, rx)
    }

    /// The next frame queued to the agent, if any.
    pub(crate) fn next(rx: &mut Inbox) -> Option<hub_frame::Frame> {
        rx.try_recv()
            .ok()
            .and_then(Result::ok)
            .and_then(|f| f.frame)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{next, session, shared};
    use super::*;
    use scale_agent_proto::v1 as pb;

    fn agent(f: agent_frame::Frame) -> AgentFrame {
        AgentFrame { frame: Some(f) }
    }

    /// Frames are handled without a stream: a Register is answered, events of
    /// the held account are cached and acked, and ending the session leaves
    /// the account Disconnected with its objects.
    #[tokio::test]
    async fn frames_are_handled_without_a_stream() {
        let shared = shared();
        let (s, mut rx) = session(&shared, "s1", "shard", "r");
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
        let Some(hub_frame::Frame::RegisterResult(result)) = next(&mut rx) else {
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
        let Some(hub_frame::Frame::Ack(ack)) = next(&mut rx) else {
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

    /// A heartbeat is answered with one echoing its time; a second Hello and
    /// a frame of an unknown kind are ignored, counted, and answered with
    /// nothing.
    #[tokio::test]
    async fn heartbeats_are_echoed_and_stray_frames_ignored() {
        let shared = shared();
        let (s, mut rx) = session(&shared, "s1", "shard", "r");
        let sent_at = prost_types::Timestamp {
            seconds: 42,
            nanos: 7,
        };
        let beat = pb::Heartbeat {
            sent_at: Some(sent_at),
            reply_to: None,
        };
        assert!(s.handle(agent(agent_frame::Frame::Heartbeat(beat))).await);
        let Some(hub_frame::Frame::Heartbeat(reply)) = next(&mut rx) else {
            panic!("expected a Heartbeat");
        };
        assert_eq!(reply.reply_to, Some(sent_at));
        let hello = agent_frame::Frame::Hello(pb::Hello::default());
        assert!(s.handle(agent(hello)).await);
        assert!(s.handle(AgentFrame { frame: None }).await);
        assert_eq!(next(&mut rx), None);
        let metrics = shared.metrics.encode();
        for reason in ["duplicate_hello", "unknown_frame_kind"] {
            assert!(
                metrics.contains(&format!(
                    "scale_agent_hub_frames_ignored_total{{reason=\"{reason}\"}} 1"
                )),
                "{reason} not counted: {metrics}"
            );
        }
    }

    #[test]
    fn unreadable_frames_get_a_status_that_says_why() {
        let oversized = Status::out_of_range("decoded message length too large: 99 > 10");
        let answer = stream_error(&oversized, 10).expect("an answer");
        assert_eq!(answer.code(), tonic::Code::ResourceExhausted);
        assert!(
            answer.message().contains("10 bytes"),
            "{}",
            answer.message()
        );
        let malformed = Status::internal("failed to decode Protobuf message");
        let answer = stream_error(&malformed, 10).expect("an answer");
        assert_eq!(answer.code(), tonic::Code::InvalidArgument);
        assert!(stream_error(&Status::cancelled("gone"), 10).is_none());
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let age = Duration::from_secs(1000);
        for _ in 0..100 {
            let got = jittered(age);
            assert!((900..=1100).contains(&got.as_secs()), "{got:?}");
        }
    }
}
