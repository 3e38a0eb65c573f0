//! Every frame kind survives an encode/decode round trip unchanged.

use prost::Message;
use prost::bytes::Bytes;
use prost_types::{Duration, Timestamp};
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::{
    Account, AccountOwner, AccountResult, Ack, AgentFrame, Apply, Delete, Drain, DrainReason,
    ErrorCode, EventBatch, EventType, Get, GroupVersionKind, Heartbeat, Hello, HttpHeader,
    HubFrame, KubeCancel, KubeRequest, KubeRequestBody, KubeResponseBody, KubeResponseHead,
    KubeWindow, ObjectEvent, ObjectRef, Operation, OperationResult, Patch, PatchType,
    PropagationPolicy, Register, RegisterReason, RegisterResult, ResumePoint, RolloutRestart,
    Scale, ShardRef, StreamScope, SyncEnd, SyncMode, SyncStart, Unregister, UnregisterReason,
    WatchProgress, Welcome, agent_frame, hub_frame, operation,
};

fn gvk(group: &str, version: &str, kind: &str) -> Option<GroupVersionKind> {
    Some(GroupVersionKind {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
    })
}

fn deployment(name: &str) -> Option<ObjectRef> {
    Some(ObjectRef {
        kind: gvk("apps", "v1", "Deployment"),
        namespace: "default".into(),
        name: name.into(),
    })
}

fn shard() -> Option<ShardRef> {
    Some(ShardRef {
        namespace: "spinnaker".into(),
        name: "prod-east".into(),
    })
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 7 })
}

fn agent_frames() -> Vec<agent_frame::Frame> {
    use agent_frame::Frame;
    vec![
        Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            shard: shard(),
            replica_id: "prod-east-agent-0".into(),
            agent_version: "0.1.0".into(),
            capabilities: vec!["watch-progress".into()],
        }),
        Frame::Register(Register {
            accounts: vec![Account {
                name: "prod-east-1".into(),
                cluster_id: "6f1c2f7e-3d0b-4c1e-9d47-0a4b7c1b2d3e".into(),
                server_url: "https://10.0.0.1:6443".into(),
                kubernetes_version: "v1.36.0".into(),
                scope: Some(StreamScope {
                    namespaces: vec!["web".into()],
                    omit_namespaces: vec!["kube-system".into()],
                    label_selector: "app.kubernetes.io/managed-by=spinnaker".into(),
                }),
            }],
        }),
        Frame::Unregister(Unregister {
            account_names: vec!["prod-east-1".into(), "prod-east-2".into()],
            reason: UnregisterReason::Handoff.into(),
            message: "lease of prod-east-agent-1 renewed".into(),
        }),
        Frame::EventBatch(EventBatch {
            account: "prod-east-1".into(),
            sequence: 42,
            events: vec![
                ObjectEvent {
                    r#type: EventType::Added.into(),
                    kind: gvk("", "v1", "ConfigMap"),
                    namespace: "default".into(),
                    name: "settings".into(),
                    uid: "uid-1".into(),
                    resource_version: "1001".into(),
                    body_json: Bytes::from_static(br#"{"kind":"ConfigMap"}"#),
                },
                ObjectEvent {
                    r#type: EventType::Deleted.into(),
                    kind: gvk("", "v1", "Namespace"),
                    namespace: String::new(),
                    name: "old".into(),
                    uid: "uid-2".into(),
                    resource_version: "1002".into(),
                    body_json: Bytes::from_static(br#"{"kind":"Namespace"}"#),
                },
            ],
        }),
        Frame::SyncStart(SyncStart {
            account: "prod-east-1".into(),
            kind: gvk("apps", "v1", "Deployment"),
            mode: SyncMode::FullRelist.into(),
            resource_version: "900".into(),
            selection: "sel-7f3a".into(),
            resource: "deployments".into(),
            namespaced: true,
        }),
        Frame::SyncEnd(SyncEnd {
            account: "prod-east-1".into(),
            kind: gvk("apps", "v1", "Deployment"),
            resource_version: "900".into(),
            object_count: 3,
        }),
        Frame::OperationResult(OperationResult {
            operation_id: "op-1".into(),
            success: false,
            message: "deployments.apps \"web\" not found".into(),
            result_json: Bytes::new(),
            error_code: ErrorCode::NotFound.into(),
            http_status: 404,
        }),
        Frame::Heartbeat(Heartbeat {
            sent_at: at(1_700_000_000),
            reply_to: at(1_699_999_999),
        }),
        Frame::WatchProgress(WatchProgress {
            account: "prod-east-1".into(),
            kind: gvk("apps", "v1", "Deployment"),
            resource_version: "1200".into(),
        }),
        Frame::KubeResponseHead(KubeResponseHead {
            id: 7,
            status: 200,
            headers: vec![HttpHeader {
                name: "content-type".into(),
                value: Bytes::from_static(b"application/json"),
            }],
        }),
        Frame::KubeResponseBody(KubeResponseBody {
            id: 7,
            chunk: Bytes::from_static(b"{\"kind\":\"Status\"}"),
            done: true,
            error: String::new(),
        }),
        Frame::KubeWindow(KubeWindow {
            id: 8,
            bytes: 64 << 10,
        }),
    ]
}

fn operations() -> Vec<operation::Kind> {
    use operation::Kind;
    vec![
        Kind::Apply(Apply {
            manifest_json: Bytes::from_static(br#"{"apiVersion":"v1","kind":"ConfigMap"}"#),
            field_manager: "scale-agent".into(),
            force: true,
        }),
        Kind::Delete(Delete {
            target: deployment("web"),
            propagation_policy: PropagationPolicy::Foreground.into(),
            grace_period_seconds: Some(0),
        }),
        Kind::Patch(Patch {
            target: deployment("web"),
            patch_type: PatchType::Json.into(),
            patch: Bytes::from_static(br#"[{"op":"remove","path":"/spec/paused"}]"#),
            field_manager: String::new(),
            force: false,
        }),
        Kind::Scale(Scale {
            target: deployment("web"),
            replicas: 5,
        }),
        Kind::RolloutRestart(RolloutRestart {
            target: deployment("web"),
        }),
        Kind::Get(Get {
            target: deployment("web"),
        }),
    ]
}

fn hub_frames() -> Vec<hub_frame::Frame> {
    use hub_frame::Frame;
    let mut frames = vec![
        Frame::Welcome(Welcome {
            session_id: "s-1".into(),
            hub_id: "hub-0".into(),
            protocol_version: PROTOCOL_VERSION,
            heartbeat_interval: Some(Duration {
                seconds: 15,
                nanos: 0,
            }),
            max_message_bytes: 4 << 20,
            capabilities: vec!["watch-progress".into()],
            initial_window_bytes: 8 << 20,
        }),
        Frame::RegisterResult(RegisterResult {
            accounts: vec![
                AccountResult {
                    name: "prod-east-1".into(),
                    accepted: true,
                    reason: RegisterReason::Ok.into(),
                    message: String::new(),
                    owner: None,
                    resume_points: vec![ResumePoint {
                        kind: gvk("apps", "v1", "Deployment"),
                        resource_version: "1200".into(),
                        selection: "v1:4f2a".into(),
                    }],
                },
                AccountResult {
                    name: "prod-west-1".into(),
                    accepted: false,
                    reason: RegisterReason::NotOwner.into(),
                    message: "owned by spinnaker/prod-west".into(),
                    owner: Some(AccountOwner {
                        shard: Some(ShardRef {
                            namespace: "spinnaker".into(),
                            name: "prod-west".into(),
                        }),
                        cluster_id: "uid-west".into(),
                        replica_id: "prod-west-agent-1".into(),
                    }),
                    resume_points: vec![],
                },
            ],
        }),
        Frame::Ack(Ack {
            account: "prod-east-1".into(),
            sequence: 42,
            window_bytes: Some(0),
        }),
        Frame::Heartbeat(Heartbeat {
            sent_at: at(1_700_000_001),
            reply_to: None,
        }),
        Frame::Drain(Drain {
            reason: DrainReason::Shutdown.into(),
            message: "hub-0 restarting".into(),
            reconnect_after: Some(Duration {
                seconds: 2,
                nanos: 500_000_000,
            }),
        }),
        Frame::KubeRequest(KubeRequest {
            id: 7,
            account: "prod-east-1".into(),
            method: "PATCH".into(),
            path: "/apis/apps/v1/namespaces/web/deployments/web?fieldManager=kubectl".into(),
            headers: vec![HttpHeader {
                name: "content-type".into(),
                value: Bytes::from_static(b"application/apply-patch+yaml"),
            }],
            deadline: at(1_700_000_030),
            body: Bytes::from_static(b"kind: Deployment\n"),
            body_done: false,
            window_bytes: 1 << 20,
            upgrade: String::new(),
        }),
        Frame::KubeRequest(KubeRequest {
            id: 8,
            account: "prod-east-1".into(),
            method: "GET".into(),
            path: "/api/v1/namespaces/web/pods/web-0/exec?command=sh&stdin=true".into(),
            body_done: false,
            window_bytes: 1 << 20,
            upgrade: "websocket".into(),
            ..Default::default()
        }),
        Frame::KubeRequestBody(KubeRequestBody {
            id: 7,
            chunk: Bytes::from_static(b"metadata: {}\n"),
            done: true,
        }),
        Frame::KubeWindow(KubeWindow {
            id: 7,
            bytes: 256 << 10,
        }),
        Frame::KubeCancel(KubeCancel {
            id: 7,
            reason: "the client went away".into(),
        }),
    ];
    for (i, kind) in operations().into_iter().enumerate() {
        frames.push(Frame::Operation(Operation {
            id: format!("op-{i}"),
            account: "prod-east-1".into(),
            deadline: at(1_700_000_060),
            kind: Some(kind),
        }));
    }
    frames
}

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M) {
    let bytes = message.encode_to_vec();
    let decoded = M::decode(bytes.as_slice()).expect("a frame we encoded decodes");
    assert_eq!(&decoded, message);
}

#[test]
fn every_agent_frame_round_trips() {
    let frames = agent_frames();
    assert_eq!(frames.len(), 12, "a new AgentFrame kind needs a case here");
    for frame in frames {
        round_trip(&AgentFrame { frame: Some(frame) });
    }
}

#[test]
fn every_hub_frame_round_trips() {
    let frames = hub_frames();
    assert_eq!(
        frames.len(),
        10 + 6,
        "a new HubFrame or Operation kind needs a case here"
    );
    for frame in frames {
        round_trip(&HubFrame { frame: Some(frame) });
    }
}

#[test]
fn empty_frames_round_trip() {
    // An unset oneof is how a receiver sees a frame kind newer than itself.
    round_trip(&AgentFrame::default());
    round_trip(&HubFrame::default());
    assert!(AgentFrame::default().encode_to_vec().is_empty());
}
