//! The `hub_frames` fuzz target's body (run by the target in `fuzz_targets/` and, over
//! the checked-in seeds and regressions, by `hub/tests/fuzz_seeds.rs` in `just test`).
//!
//! The hub's frame handling, driven through `Session::handle`: the function the
//! gRPC session loop (`Session::run`) calls for every frame after Hello, on
//! the real registry, cache, store (SQLite in memory), operations and metrics,
//! without sockets.
//!
//! Two runs per input, each on a fresh hub:
//! 1. the whole input decoded with prost as one `AgentFrame` (when it decodes),
//!    handled by one session;
//! 2. the input read with `arbitrary` as a sequence of steps over three session
//!    slots (two replicas of one shard, one of another shard): raw frame bytes
//!    (prost-decoded; bytes that do not decode end the session, as the stream
//!    error does in `Session::run`, and the slot reconnects), structured frames
//!    over a small alphabet of accounts, kinds and names (so that they meet),
//!    encoded and decoded again, session ends and reconnects, and operations
//!    begun on a slot.
//!
//! Nothing may panic, and after every step:
//! - the cache holds only objects that some ADDED/MODIFIED event sent (so its
//!   object count never exceeds the number of distinct keys sent);
//! - an account with cached objects is in the registry;
//! - an account held by a session is held by a live one, and its name and
//!   cluster id are valid;
//! - `handle` returns true (the agent's side is open);
//! - a Register gets one RegisterResult listing every account, in order; an
//!   EventBatch of a held account gets its Ack (and none when not held); a
//!   Heartbeat gets a reply echoing `sent_at`;
//! - an Unregister REMOVED of a held account removes it and its cache.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use prost::Message as _;
use scale_agent_hub::Config;
use scale_agent_hub::core::operations::CallerKey;
use scale_agent_hub::core::registry::{SessionId, ShardRef, validate_name};
use scale_agent_hub::net::identity::IdentitySource;
use scale_agent_hub::state::{SessionHandle, Shared};
use scale_agent_hub::stream::session::Session;
use scale_agent_proto::v1::{self as pb, AgentFrame, HubFrame, agent_frame, hub_frame};
use tokio::sync::mpsc;

type Rx = mpsc::Receiver<Result<HubFrame, tonic::Status>>;

const SLOTS: usize = 3;

#[derive(Arbitrary, Debug)]
enum Name {
    A,
    B,
    C,
    Other(String),
}

impl Name {
    fn get(&self) -> String {
        match self {
            Name::A => "prod-1".into(),
            Name::B => "prod-2".into(),
            Name::C => "staging".into(),
            Name::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Small {
    Empty,
    One,
    Two,
    Three,
    Other(String),
}

impl Small {
    fn get(&self, prefix: &str) -> String {
        match self {
            Small::Empty => String::new(),
            Small::One => format!("{prefix}1"),
            Small::Two => format!("{prefix}2"),
            Small::Three => format!("{prefix}3"),
            Small::Other(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Kind {
    None,
    Deployment,
    DeploymentV1beta1,
    Service,
    /// A kind whose name is empty.
    Unnamed,
    Other {
        group: String,
        version: String,
        kind: String,
    },
}

impl Kind {
    fn get(&self) -> Option<pb::GroupVersionKind> {
        let gvk = |g: &str, v: &str, k: &str| pb::GroupVersionKind {
            group: g.into(),
            version: v.into(),
            kind: k.into(),
        };
        match self {
            Kind::None => None,
            Kind::Deployment => Some(gvk("apps", "v1", "Deployment")),
            Kind::DeploymentV1beta1 => Some(gvk("apps", "v1beta1", "Deployment")),
            Kind::Service => Some(gvk("", "v1", "Service")),
            Kind::Unnamed => Some(gvk("apps", "v1", "")),
            Kind::Other {
                group,
                version,
                kind,
            } => Some(gvk(group, version, kind)),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Object,
    Empty,
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Ev {
    r#type: u8,
    kind: Kind,
    namespace: Small,
    name: Small,
    uid: Small,
    resource_version: Small,
    body: Body,
}

#[derive(Arbitrary, Debug)]
struct Acct {
    name: Name,
    cluster: Small,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Empty,
    Hello,
    Register(Vec<Acct>),
    Unregister {
        names: Vec<Name>,
        reason: u8,
    },
    Events {
        account: Name,
        sequence: u64,
        events: Vec<Ev>,
    },
    SyncStart {
        account: Name,
        kind: Kind,
        mode: u8,
        rv: Small,
    },
    SyncEnd {
        account: Name,
        kind: Kind,
        rv: Small,
        count: u8,
    },
    Progress {
        account: Name,
        kind: Kind,
        rv: Small,
    },
    OpResult {
        id: u8,
        error_code: u8,
        success: bool,
    },
    Heartbeat {
        sent: Option<(i64, i32)>,
    },
    /// An answer to a Kubernetes API request this session was never sent: dropped.
    KubeHead {
        id: u64,
        status: u32,
    },
    KubeBody {
        id: u64,
        chunk: Vec<u8>,
        done: bool,
    },
}

impl Frame {
    fn build(&self) -> AgentFrame {
        use agent_frame::Frame as F;
        let f = match self {
            Frame::Empty => None,
            Frame::Hello => Some(F::Hello(pb::Hello {
                protocol_version: 1,
                shard: Some(pb::ShardRef {
                    namespace: "ns".into(),
                    name: "s1".into(),
                }),
                ..Default::default()
            })),
            Frame::Register(accounts) => Some(F::Register(pb::Register {
                accounts: accounts
                    .iter()
                    .map(|a| pb::Account {
                        name: a.name.get(),
                        cluster_id: a.cluster.get("cluster-"),
                        server_url: "https://k8s".into(),
                        kubernetes_version: "v1.36.0".into(),
                        ..Default::default()
                    })
                    .collect(),
            })),
            Frame::Unregister { names, reason } => Some(F::Unregister(pb::Unregister {
                account_names: names.iter().map(Name::get).collect(),
                reason: i32::from(*reason % 6),
                message: String::new(),
            })),
            Frame::Events {
                account,
                sequence,
                events,
            } => Some(F::EventBatch(pb::EventBatch {
                account: account.get(),
                sequence: *sequence,
                events: events
                    .iter()
                    .map(|e| pb::ObjectEvent {
                        r#type: i32::from(e.r#type % 5),
                        kind: e.kind.get(),
                        namespace: e.namespace.get("ns-"),
                        name: e.name.get("obj-"),
                        uid: e.uid.get("uid-"),
                        resource_version: e.resource_version.get(""),
                        body_json: match &e.body {
                            Body::Object => bytes::Bytes::from_static(b"{\"metadata\":{}}"),
                            Body::Empty => bytes::Bytes::new(),
                            Body::Raw(b) => bytes::Bytes::from(b.clone()),
                        },
                    })
                    .collect(),
            })),
            Frame::SyncStart {
                account,
                kind,
                mode,
                rv,
            } => Some(F::SyncStart(pb::SyncStart {
                account: account.get(),
                kind: kind.get(),
                mode: i32::from(*mode % 4),
                resource_version: rv.get(""),
                ..Default::default()
            })),
            Frame::SyncEnd {
                account,
                kind,
                rv,
                count,
            } => Some(F::SyncEnd(pb::SyncEnd {
                account: account.get(),
                kind: kind.get(),
                resource_version: rv.get(""),
                object_count: u64::from(*count),
            })),
            Frame::Progress { account, kind, rv } => Some(F::WatchProgress(pb::WatchProgress {
                account: account.get(),
                kind: kind.get(),
                resource_version: rv.get(""),
            })),
            Frame::OpResult {
                id,
                error_code,
                success,
            } => Some(F::OperationResult(pb::OperationResult {
                operation_id: format!("op-{}", id % 4),
                success: *success,
                error_code: i32::from(*error_code % 11),
                ..Default::default()
            })),
            Frame::KubeHead { id, status } => Some(F::KubeResponseHead(pb::KubeResponseHead {
                id: *id,
                status: *status,
                headers: Vec::new(),
            })),
            Frame::KubeBody { id, chunk, done } => {
                Some(F::KubeResponseBody(pb::KubeResponseBody {
                    id: *id,
                    chunk: bytes::Bytes::from(chunk.clone()),
                    done: *done,
                    error: String::new(),
                }))
            }
            Frame::Heartbeat { sent } => Some(F::Heartbeat(pb::Heartbeat {
                sent_at: sent.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                reply_to: None,
            })),
        };
        AgentFrame { frame: f }
    }
}

#[derive(Arbitrary, Debug)]
enum Step {
    /// Raw bytes as one frame on a slot's stream.
    Raw { slot: u8, bytes: Vec<u8> },
    /// A structured frame on a slot's stream.
    Frame { slot: u8, frame: Frame },
    /// The slot's session ends; a new one of the same replica opens.
    Reconnect { slot: u8 },
    /// The HTTP API begins an operation on an account, sent to a slot's session.
    Operation { slot: u8, id: u8, account: Name },
}

struct Slot {
    session: Session,
    rx: Rx,
}

struct Hub {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    generation: u64,
    /// (account, group, kind, namespace, name) of every ADDED/MODIFIED event sent.
    upserted: HashSet<(String, String, String, String, String)>,
    /// Every account an EventBatch named.
    accounts: HashSet<String>,
}

fn shard_of(slot: usize) -> ShardRef {
    ShardRef {
        namespace: "ns".into(),
        name: if slot < 2 { "s1".into() } else { "s2".into() },
    }
}

impl Hub {
    fn new(grace_period: Duration) -> Hub {
        let config = Config {
            grace_period,
            ..Config::local()
        };
        let shared = Shared::new(config, None, tokio_util::sync::CancellationToken::new())
            .expect("shared state");
        let mut hub = Hub {
            shared,
            slots: Vec::with_capacity(SLOTS),
            generation: 0,
            upserted: HashSet::new(),
            accounts: HashSet::new(),
        };
        for slot in 0..SLOTS {
            let opened = hub.open(slot);
            hub.slots.push(opened);
        }
        hub
    }

    /// A new session in `slot`, as the handshake registers it.
    fn open(&mut self, slot: usize) -> Slot {
        self.generation += 1;
        let id: SessionId = Arc::from(format!("slot{slot}-{}", self.generation));
        let (tx, rx) = mpsc::channel(1024);
        let handle = SessionHandle {
            tx,
            shard: shard_of(slot),
            replica: format!("replica-{}", slot % 2),
        };
        Slot {
            session: Session::open(Arc::clone(&self.shared), id, handle, IdentitySource::Hello),
            rx,
        }
    }

    fn reconnect(&mut self, slot: usize) {
        self.slots[slot].session.end();
        let opened = self.open(slot);
        self.slots[slot] = opened;
    }

    /// Lets detached sends and grace timers run, then empties every queue.
    async fn settle(&mut self) {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        for slot in &mut self.slots {
            while slot.rx.try_recv().is_ok() {}
        }
    }

    fn record(&mut self, frame: &AgentFrame) {
        if let Some(agent_frame::Frame::EventBatch(batch)) = &frame.frame {
            self.accounts.insert(batch.account.clone());
            for ev in &batch.events {
                let upsert = matches!(
                    pb::EventType::try_from(ev.r#type),
                    Ok(pb::EventType::Added | pb::EventType::Modified)
                );
                if let (true, Some(kind)) = (upsert, &ev.kind) {
                    self.upserted.insert((
                        batch.account.clone(),
                        kind.group.clone(),
                        kind.kind.clone(),
                        ev.namespace.clone(),
                        ev.name.clone(),
                    ));
                }
            }
        }
    }

    async fn handle(&mut self, slot: usize, frame: AgentFrame) {
        self.record(&frame);
        let id = self.slots[slot].session.id.clone();
        let held = |shared: &Shared, account: &str| shared.core().registry.holds(account, &id);
        let expect = match &frame.frame {
            Some(agent_frame::Frame::Register(reg)) => {
                Expect::RegisterResult(reg.accounts.iter().map(|a| a.name.clone()).collect())
            }
            Some(agent_frame::Frame::EventBatch(batch)) => {
                if held(&self.shared, &batch.account) {
                    Expect::Ack(batch.account.clone(), batch.sequence)
                } else {
                    Expect::Nothing
                }
            }
            Some(agent_frame::Frame::Heartbeat(beat)) => Expect::Heartbeat(beat.sent_at),
            Some(agent_frame::Frame::Unregister(unreg))
                if unreg.reason == pb::UnregisterReason::Removed as i32 =>
            {
                Expect::Removed(
                    unreg
                        .account_names
                        .iter()
                        .filter(|n| held(&self.shared, n))
                        .cloned()
                        .collect(),
                )
            }
            Some(agent_frame::Frame::OperationResult(_)) => Expect::Anything,
            _ => Expect::Nothing,
        };
        let open = self.slots[slot].session.handle(frame).await;
        assert!(open, "handle says the agent's side is gone, but it is open");
        let answer = self.slots[slot].rx.try_recv().ok();
        let answer = answer.map(|a| a.expect("a frame, not an error status"));
        let answer = answer.and_then(|a| a.frame);
        match expect {
            Expect::Anything => {}
            Expect::Nothing => assert!(answer.is_none(), "unexpected answer {answer:?}"),
            Expect::RegisterResult(names) => {
                let Some(hub_frame::Frame::RegisterResult(result)) = answer else {
                    panic!("a Register was answered with {answer:?}");
                };
                let got: Vec<String> = result.accounts.into_iter().map(|a| a.name).collect();
                assert_eq!(
                    got, names,
                    "RegisterResult does not list the accounts asked for"
                );
            }
            Expect::Ack(account, sequence) => {
                let Some(hub_frame::Frame::Ack(ack)) = answer else {
                    panic!("an EventBatch of a held account was answered with {answer:?}");
                };
                assert_eq!((ack.account, ack.sequence), (account, sequence));
            }
            Expect::Heartbeat(sent_at) => {
                let Some(hub_frame::Frame::Heartbeat(reply)) = answer else {
                    panic!("a Heartbeat was answered with {answer:?}");
                };
                assert_eq!(reply.reply_to, sent_at);
            }
            Expect::Removed(names) => {
                assert!(answer.is_none(), "unexpected answer {answer:?}");
                let core = self.shared.core();
                for name in names {
                    assert!(core.registry.get(&name).is_none(), "{name} not removed");
                    assert!(core.cache.account(&name).is_none(), "{name}'s cache kept");
                }
            }
        }
    }

    fn check(&self) {
        let core = self.shared.core();
        let mut total = 0;
        for account in &self.accounts {
            let Some(cache) = core.cache.account(account) else {
                continue;
            };
            total += cache.len();
            for (key, _) in cache.objects() {
                let sent = (
                    account.clone(),
                    key.group.to_owned(),
                    key.kind.to_owned(),
                    key.namespace.to_owned(),
                    key.name.to_owned(),
                );
                assert!(
                    self.upserted.contains(&sent),
                    "cached but never sent: {sent:?}"
                );
            }
            if !cache.is_empty() {
                assert!(
                    core.registry.get(account).is_some(),
                    "account {account:?} has cached objects but is not in the registry"
                );
            }
        }
        assert_eq!(
            core.cache.total(),
            total,
            "objects cached for accounts no event named"
        );
        assert!(core.cache.total() <= self.upserted.len());
        for account in core.registry.accounts() {
            assert!(validate_name(&account.name).is_ok(), "{account:?}");
            assert!(!account.binding.cluster_id.trim().is_empty(), "{account:?}");
            if let Some(session) = &account.session {
                assert!(
                    self.shared.is_live(session),
                    "held by a dead session: {account:?}"
                );
            }
        }
    }
}

enum Expect {
    Anything,
    Nothing,
    RegisterResult(Vec<String>),
    Ack(String, u64),
    Heartbeat(Option<prost_types::Timestamp>),
    Removed(Vec<String>),
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn run_one_frame(data: &[u8]) {
    let Ok(frame) = AgentFrame::decode(data) else {
        return;
    };
    runtime().block_on(async {
        let mut hub = Hub::new(Duration::from_secs(3600));
        hub.handle(0, frame).await;
        hub.settle().await;
        hub.check();
    });
}

fn run_steps(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(zero_grace) = bool::arbitrary(&mut u) else {
        return;
    };
    let Ok(steps) = Vec::<Step>::arbitrary(&mut u) else {
        return;
    };
    runtime().block_on(async {
        // A zero grace period runs expiries at once, between steps.
        let grace = if zero_grace {
            Duration::ZERO
        } else {
            Duration::from_secs(3600)
        };
        let mut hub = Hub::new(grace);
        for step in steps {
            match step {
                Step::Raw { slot, bytes } => {
                    let slot = usize::from(slot) % SLOTS;
                    match AgentFrame::decode(bytes.as_slice()) {
                        Ok(frame) => hub.handle(slot, frame).await,
                        // Session::run ends the session on a frame that does not decode.
                        Err(_) => hub.reconnect(slot),
                    }
                }
                Step::Frame { slot, frame } => {
                    let slot = usize::from(slot) % SLOTS;
                    let wire = frame.build().encode_to_vec();
                    let frame = AgentFrame::decode(wire.as_slice()).expect("own encoding decodes");
                    hub.handle(slot, frame).await;
                }
                Step::Reconnect { slot } => hub.reconnect(usize::from(slot) % SLOTS),
                Step::Operation { slot, id, account } => {
                    let slot = usize::from(slot) % SLOTS;
                    let key = CallerKey {
                        account: account.get(),
                        id: format!("op-{}", id % 4),
                    };
                    let kind = pb::operation::Kind::Get(pb::Get::default());
                    let _ = hub.shared.operations.begin(
                        key,
                        kind,
                        None,
                        hub.slots[slot].session.id.clone(),
                    );
                }
            }
            hub.settle().await;
            hub.check();
        }
    });
}

/// The target's body: one input, both runs. Panics on a broken invariant.
pub fn run(data: &[u8]) {
    run_one_frame(data);
    run_steps(data);
}
