//! `hub_ingest`: object events the hub applies per second on one core.
//!
//! Each iteration is what the hub does with one EventBatch frame as it arrives from an
//! agent: decode the protobuf frame, then `Session::handle` (the function the gRPC
//! session loop calls for every frame): parse and check every body, take the lock, apply
//! each event to the account's cache, and queue the Ack. The cache holds 100,000 objects
//! of about 1.2 KiB (10 accounts of 10,000), and the events modify them in turn, as an
//! agent streams changes to a hub that already holds its accounts.
//!
//! The baseline, measured alongside, is the least any receiver must do with the same
//! frames: decode them, check that each body is JSON, and keep it in a hash map by
//! (kind, namespace, name).
//!
//! Two frame shapes: batches of 500 events (what an initial list sends; the agent fills
//! frames up to 1 MiB) and single events (a change on a quiet cluster). One thread, a
//! current-thread runtime: "per core". `just bench` reads the results from
//! `target/criterion/hub_ingest/` into `bench-results/latest.json`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use scale_agent_hub::core::registry::{SessionId, ShardRef};
use scale_agent_hub::net::identity::IdentitySource;
use scale_agent_hub::state::{SessionHandle, Shared};
use scale_agent_hub::stream::session::Session;
use scale_agent_proto::v1::{self as pb, AgentFrame, HubFrame, agent_frame};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

const ACCOUNTS: usize = 10;
const OBJECTS_PER_ACCOUNT: usize = 10_000;
const PAYLOAD: usize = 1000;

type Rx = mpsc::Receiver<Result<HubFrame, tonic::Status>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// A hub's shared state as `Hub::start` builds it (in-memory store, no ownership check)
/// and one session holding every account.
fn hub(rt: &tokio::runtime::Runtime) -> (Arc<Shared>, Session, Rx) {
    let mut config = scale_agent_hub::Config::local();
    config.hub_id = "hub-bench".into();
    let _guard = rt.enter();
    let shared = Shared::new(config, None, tokio_util::sync::CancellationToken::new())
        .expect("shared state");
    let (tx, rx) = mpsc::channel(1024);
    let shard = ShardRef {
        namespace: "bench".into(),
        name: "shard".into(),
    };
    let id: SessionId = Arc::from("session-bench");
    shared.add_session(
        id.clone(),
        SessionHandle {
            tx: tx.clone(),
            shard: shard.clone(),
            replica: "bench-0".into(),
        },
    );
    let session = Session {
        shared: Arc::clone(&shared),
        id,
        shard,
        replica: "bench-0".into(),
        tx,
        identity: IdentitySource::Hello,
    };
    (shared, session, rx)
}

fn account(a: usize) -> String {
    format!("account-{a}")
}

/// A ConfigMap as the agent sends it (managedFields stripped), about 1.2 KiB.
fn body(a: usize, i: usize, rv: u64) -> Bytes {
    let v = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": format!("obj-{i}"),
            "namespace": format!("ns-{a}"),
            "uid": format!("0b6c3d2e-{a:04}-{i:08}-0000-000000000000"),
            "resourceVersion": rv.to_string(),
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": { "app": "bench", "scale-agent.dev/bench": "seed" },
        },
        "data": { "v": "x".repeat(PAYLOAD) },
    });
    Bytes::from(serde_json::to_vec(&v).expect("json"))
}

fn event(ty: pb::EventType, a: usize, i: usize, rv: u64) -> pb::ObjectEvent {
    pb::ObjectEvent {
        r#type: ty as i32,
        kind: Some(pb::GroupVersionKind {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
        }),
        namespace: format!("ns-{a}"),
        name: format!("obj-{i}"),
        uid: format!("uid-{a}-{i}"),
        resource_version: rv.to_string(),
        body_json: body(a, i, rv),
    }
}

/// Encoded EventBatch frames of `batch` MODIFIED events that together touch every
/// object of every account once.
fn frames(batch: usize, first_rv: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut rv = first_rv;
    for a in 0..ACCOUNTS {
        for chunk in (0..OBJECTS_PER_ACCOUNT).collect::<Vec<_>>().chunks(batch) {
            let events = chunk
                .iter()
                .map(|&i| {
                    rv += 1;
                    event(pb::EventType::Modified, a, i, rv)
                })
                .collect();
            let frame = AgentFrame {
                frame: Some(agent_frame::Frame::EventBatch(pb::EventBatch {
                    account: account(a),
                    sequence: rv,
                    events,
                })),
            };
            out.push(Bytes::from(frame.encode_to_vec()));
        }
    }
    out
}

/// Registers every account and fills its cache with its objects (ADDED).
fn fill(rt: &tokio::runtime::Runtime, session: &Session, rx: &mut Rx) {
    rt.block_on(async {
        let register = pb::Register {
            accounts: (0..ACCOUNTS)
                .map(|a| pb::Account {
                    name: account(a),
                    cluster_id: format!("cluster-{a}"),
                    ..Default::default()
                })
                .collect(),
        };
        let f = AgentFrame {
            frame: Some(agent_frame::Frame::Register(register)),
        };
        assert!(session.handle(f).await, "register");
        let _ = rx.recv().await;
        for bytes in frames(500, 0) {
            let mut f = AgentFrame::decode(bytes).expect("frame");
            if let Some(agent_frame::Frame::EventBatch(b)) = &mut f.frame {
                for e in &mut b.events {
                    e.r#type = pb::EventType::Added as i32;
                }
            }
            assert!(session.handle(f).await, "fill");
            let _ = rx.recv().await;
        }
    });
    assert_eq!(
        session.shared.core().cache.total(),
        ACCOUNTS * OBJECTS_PER_ACCOUNT
    );
}

/// The hub's path for `iters` frames (cycling through `frames`).
fn through_hub(
    rt: &tokio::runtime::Runtime,
    session: &Session,
    rx: &mut Rx,
    frames: &[Bytes],
    next: &mut usize,
    iters: u64,
) -> Duration {
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            let bytes = frames[*next % frames.len()].clone();
            *next += 1;
            let f = AgentFrame::decode(bytes).expect("frame");
            assert!(session.handle(f).await);
            // The Ack, as the session loop's sender would take it.
            black_box(rx.try_recv().ok());
        }
        start.elapsed()
    })
}

type Key = (String, String, String);

/// The baseline for `iters` frames: decode, check each body is JSON, keep it by key.
fn bare(map: &mut HashMap<Key, Bytes>, frames: &[Bytes], next: &mut usize, iters: u64) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let bytes = frames[*next % frames.len()].clone();
        *next += 1;
        let f = AgentFrame::decode(bytes).expect("frame");
        if let Some(agent_frame::Frame::EventBatch(b)) = f.frame {
            for e in b.events {
                let ok = serde_json::from_slice::<&RawValue>(&e.body_json).is_ok();
                let kind = e.kind.map(|k| k.kind).unwrap_or_default();
                if ok {
                    map.insert((kind, e.namespace, e.name), e.body_json);
                }
            }
        }
    }
    start.elapsed()
}

fn hub_ingest(c: &mut Criterion) {
    let rt = runtime();
    let (_shared, session, mut rx) = hub(&rt);
    fill(&rt, &session, &mut rx);
    let mut group = c.benchmark_group("hub_ingest");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(6));
    for batch in [500usize, 1] {
        let frames = frames(batch, 1_000_000);
        group.throughput(Throughput::Elements(batch as u64));
        let mut next = 0;
        group.bench_function(format!("hub_batch_{batch}"), |b| {
            b.iter_custom(|iters| through_hub(&rt, &session, &mut rx, &frames, &mut next, iters));
        });
        let mut map: HashMap<Key, Bytes> = HashMap::new();
        let mut next = 0;
        // The baseline's map starts as full as the hub's cache.
        bare(&mut map, &frames, &mut next, frames.len() as u64);
        group.bench_function(format!("baseline_batch_{batch}"), |b| {
            b.iter_custom(|iters| bare(&mut map, &frames, &mut next, iters));
        });
    }
    group.finish();
}

criterion_group!(benches, hub_ingest);
criterion_main!(benches);
