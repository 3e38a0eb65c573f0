//! The hub in-process on 127.0.0.1, driven by fake agents over real gRPC and
//! checked over its HTTP API.

mod common;

use std::time::Duration;

use common::*;
use scale_agent_hub::Config;
use scale_agent_proto::v1::{
    self as pb, AgentFrame, EventType, RegisterReason, agent_frame, hub_frame, operation,
};
use serde_json::json;

const LONG: Duration = Duration::from_secs(600);

#[tokio::test]
async fn registered_events_are_visible_over_http() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
    assert_eq!(agent.welcome.protocol_version, 1);
    assert_eq!(
        agent.welcome.capabilities,
        vec!["watch-progress".to_owned()]
    );
    assert!(!agent.welcome.session_id.is_empty());
    let results = agent.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted, "{results:?}");
    assert_eq!(results[0].reason, RegisterReason::Ok as i32);

    agent
        .events(
            "prod-1",
            vec![
                added("web", "frontend", "10"),
                added("web", "api", "11"),
                object(EventType::Added, namespaces(), "", "web", "12"),
            ],
        )
        .await?;
    agent
        .events(
            "prod-1",
            vec![
                object(EventType::Modified, deployments(), "web", "frontend", "13"),
                object(EventType::Deleted, deployments(), "web", "api", "14"),
            ],
        )
        .await?;

    let (status, accounts) = get(&hub, "/v1/accounts").await?;
    assert_eq!(status, 200);
    let a = &accounts[0];
    assert_eq!(a["name"], "prod-1");
    assert_eq!(
        a.get("clusterId"),
        None,
        "without an API token every caller is anonymous and sees no cluster id"
    );
    assert_eq!(a["shard"], "spinnaker/east");
    assert_eq!(a["replica"], "east-0");
    assert_eq!(a["state"], "Connected");
    assert_eq!(a["objects"], 2);

    assert_eq!(object_names(&hub, "prod-1").await?, ["frontend", "web"]);

    // Kind case-insensitive, Kind.group, `_` for cluster-scoped.
    let (status, obj) = get(&hub, "/v1/accounts/prod-1/objects/deployment/web/frontend").await?;
    assert_eq!(status, 200, "{obj}");
    assert_eq!(obj["kind"], "Deployment");
    assert_eq!(obj["group"], "apps");
    assert_eq!(obj["resourceVersion"], "13");
    assert_eq!(obj["uid"], "uid-frontend");
    assert_eq!(obj["object"]["metadata"]["name"], "frontend");
    let (status, _) = get(
        &hub,
        "/v1/accounts/prod-1/objects/Deployment.apps/web/frontend",
    )
    .await?;
    assert_eq!(status, 200);
    let (status, _) = get(
        &hub,
        "/v1/accounts/prod-1/objects/Deployment.batch/web/frontend",
    )
    .await?;
    assert_eq!(status, 404);
    let (status, ns) = get(&hub, "/v1/accounts/prod-1/objects/namespace/_/web").await?;
    assert_eq!(status, 200, "{ns}");
    assert_eq!(ns["namespace"], "");
    let (status, _) = get(&hub, "/v1/accounts/prod-1/objects/deployment/web/api").await?;
    assert_eq!(status, 404, "deleted object is gone");
    let (status, _) = get(&hub, "/v1/accounts/nope/objects").await?;
    assert_eq!(status, 404);

    // Filters.
    let (_, list) = get(&hub, "/v1/accounts/prod-1/objects?kind=namespace").await?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, list) = get(
        &hub,
        "/v1/accounts/prod-1/objects?kind=Deployment&namespace=web",
    )
    .await?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (_, list) = get(&hub, "/v1/accounts/prod-1/objects?namespace=_").await?;
    assert_eq!(list[0]["kind"], "Namespace");

    let (status, text) = get(&hub, "/metrics").await?;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("scale_agent_hub_sessions 1"), "{text}");
    assert!(text.contains("scale_agent_hub_objects 2"), "{text}");
    assert!(
        text.contains("scale_agent_hub_events_applied_total 5"),
        "{text}"
    );
    assert!(
        text.contains(r#"scale_agent_hub_accounts{state="connected"} 1"#),
        "{text}"
    );
    let (status, _) = get(&hub, "/healthz").await?;
    assert_eq!(status, 200);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_second_cluster_cannot_take_a_bound_name_and_the_first_keeps_streaming() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut first = FakeAgent::connect(&hub, "east", "east-0").await?;
    assert!(first.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    first
        .events("prod-1", vec![added("web", "one", "1")])
        .await?;

    // Another replica of the same shard, pointed at another cluster: the
    // shard is told which cluster the name is bound to.
    let mut second = FakeAgent::connect(&hub, "east", "east-1").await?;
    let results = second
        .register(&[("prod-1", "uid-b"), ("east-2", "uid-w")])
        .await?;
    let refused = &results[0];
    assert!(!refused.accepted);
    assert_eq!(refused.reason, RegisterReason::ClusterMismatch as i32);
    assert!(refused.message.contains("uid-a"), "{}", refused.message);
    let owner = refused.owner.as_ref().ok_or("owner")?;
    assert_eq!(owner.cluster_id, "uid-a");
    assert_eq!(owner.shard.as_ref().map(|s| s.name.as_str()), Some("east"));
    assert!(results[1].accepted, "its other account is fine");

    // Events the refused agent sends anyway are ignored (no Ack), the holder's apply.
    second
        .events_unacked("prod-1", vec![added("web", "intruder", "99")])
        .await?;
    second.barrier().await?;
    first
        .events("prod-1", vec![added("web", "two", "2")])
        .await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["one", "two"]);
    let a = account(&hub, "prod-1").await?.ok_or("listed")?;
    assert_eq!(a["replica"], "east-0");
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(
            r#"scale_agent_hub_registrations_rejected_total{reason="cluster_mismatch"} 1"#
        ),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn agent_back_within_grace_period_loses_nothing_and_gets_resume_points() -> Result<()> {
    let hub = hub(Duration::from_secs(2)).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    agent
        .sync_start("prod-1", deployments(), pb::SyncMode::FullRelist)
        .await?;
    agent
        .events("prod-1", vec![added("web", "one", "5")])
        .await?;
    agent.sync_end("prod-1", deployments(), "7", 1).await?;
    agent
        .events("prod-1", vec![added("web", "two", "8")])
        .await?;
    agent.close();

    eventually(Duration::from_secs(5), || async {
        Ok(account(&hub, "prod-1")
            .await?
            .is_some_and(|a| a["state"] == "Disconnected"))
    })
    .await?;
    assert_eq!(
        object_names(&hub, "prod-1").await?,
        ["one", "two"],
        "objects kept while disconnected"
    );
    // The account's own answer shows where the agent will resume.
    let (_, detail) = get(&hub, "/v1/accounts/prod-1").await?;
    assert_eq!(
        detail["resumePoints"],
        json!([{ "group": "apps", "kind": "Deployment", "resourceVersion": "8" }]),
        "{detail}"
    );

    let mut back = FakeAgent::connect(&hub, "east", "east-1").await?;
    let results = back.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted);
    let points = &results[0].resume_points;
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].resource_version, "8");
    assert_eq!(
        points[0].kind.as_ref().map(|k| k.kind.as_str()),
        Some("Deployment")
    );

    // Past the original grace period: still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let a = account(&hub, "prod-1").await?.ok_or("still listed")?;
    assert_eq!(a["state"], "Connected");
    assert_eq!(a["replica"], "east-1");
    assert_eq!(object_names(&hub, "prod-1").await?, ["one", "two"]);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn agent_gone_past_grace_period_is_removed_with_its_objects_and_binding() -> Result<()> {
    let hub = hub(Duration::from_secs(1)).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    agent
        .events("prod-1", vec![added("web", "one", "1")])
        .await?;
    agent.close();
    eventually(Duration::from_secs(5), || async {
        Ok(account(&hub, "prod-1").await?.is_none())
    })
    .await?;
    let (status, _) = get(&hub, "/v1/accounts/prod-1/objects").await?;
    assert_eq!(status, 404);
    // The name is free again: another cluster may take it.
    let mut other = FakeAgent::connect(&hub, "west", "west-0").await?;
    assert!(other.register(&[("prod-1", "uid-z")]).await?[0].accepted);
    assert!(
        other.register(&[("prod-1", "uid-z")]).await?[0]
            .resume_points
            .is_empty()
    );
    let metrics = hub.metrics_text();
    assert!(
        metrics
            .contains(r#"scale_agent_hub_accounts_removed_total{reason="grace_period_expired"} 1"#),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_relist_after_reconnect_drops_objects_that_vanished() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    agent
        .sync_start("prod-1", deployments(), pb::SyncMode::FullRelist)
        .await?;
    agent
        .events(
            "prod-1",
            vec![added("web", "stays", "1"), added("web", "vanishes", "2")],
        )
        .await?;
    agent.sync_end("prod-1", deployments(), "3", 2).await?;
    agent
        .sync_start("prod-1", namespaces(), pb::SyncMode::FullRelist)
        .await?;
    agent
        .events(
            "prod-1",
            vec![object(EventType::Added, namespaces(), "", "web", "4")],
        )
        .await?;
    agent.sync_end("prod-1", namespaces(), "4", 1).await?;
    agent.close();

    let mut back = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    // Deployments are relisted (the agent's resume point was too old); the
    // namespaces watch resumes.
    back.sync_start("prod-1", deployments(), pb::SyncMode::FullRelist)
        .await?;
    back.events(
        "prod-1",
        vec![added("web", "stays", "20"), added("web", "appeared", "21")],
    )
    .await?;
    back.sync_start("prod-1", namespaces(), pb::SyncMode::ResumedWatch)
        .await?;
    back.sync_end("prod-1", namespaces(), "22", 0).await?;
    back.sync_end("prod-1", deployments(), "23", 2).await?;
    back.barrier().await?;
    assert_eq!(
        object_names(&hub, "prod-1").await?,
        ["appeared", "stays", "web"]
    );
    let (_, obj) = get(&hub, "/v1/accounts/prod-1/objects/Deployment/web/stays").await?;
    assert_eq!(obj["resourceVersion"], "20");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_newer_session_of_the_same_cluster_supersedes_the_older() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut old = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    old.events("prod-1", vec![added("web", "one", "1")]).await?;
    let mut new = FakeAgent::connect(&hub, "east", "east-1").await?;
    let results = new.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted);
    let revoked = old
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(revoked[0].name, "prod-1");
    assert!(!revoked[0].accepted);
    assert_eq!(revoked[0].reason, RegisterReason::Superseded as i32);
    assert_eq!(
        revoked[0].owner.as_ref().map(|o| o.replica_id.as_str()),
        Some("east-1")
    );

    // The old session's late events are ignored; the old session ending does
    // not disconnect the account.
    old.events_unacked("prod-1", vec![added("web", "late", "2")])
        .await?;
    old.barrier().await?;
    old.close();
    new.events("prod-1", vec![added("web", "two", "3")]).await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["one", "two"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = account(&hub, "prod-1").await?.ok_or("listed")?;
    assert_eq!(a["state"], "Connected");
    assert_eq!(a["replica"], "east-1");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_operation_goes_to_the_agent_and_its_result_comes_back() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    agent
        .events("prod-1", vec![added("web", "frontend", "1")])
        .await?;

    let http = {
        let base = hub.http_url();
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/accounts/prod-1/operations"))
                .json(&json!({"type": "scale", "kind": "deployment", "namespace": "web", "name": "frontend", "replicas": 3, "id": "op-1"}))
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await?;
            Ok::<_, Error>((status, body))
        })
    };
    let op = agent.expect_operation().await?;
    assert!(
        !op.id.is_empty() && op.id != "op-1",
        "the agent sees the hub's own id, unique across accounts: {}",
        op.id
    );
    assert_eq!(op.account, "prod-1");
    assert!(op.deadline.is_some());
    match &op.kind {
        Some(operation::Kind::Scale(s)) => {
            assert_eq!(s.replicas, 3);
            let target = s.target.as_ref().ok_or("target")?;
            assert_eq!(target.name, "frontend");
            assert_eq!(
                target
                    .kind
                    .as_ref()
                    .map(|k| (k.group.as_str(), k.kind.as_str())),
                Some(("apps", "Deployment"))
            );
        }
        other => panic!("expected scale, got {other:?}"),
    }
    agent
        .answer(
            &op.id,
            true,
            "scaled",
            json!({"kind": "Deployment", "spec": {"replicas": 3}}),
        )
        .await?;
    let (status, body) = http.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "op-1");
    assert_eq!(body["success"], true);
    assert_eq!(body["result"]["spec"]["replicas"], 3);

    // The same id again: the stored result, no second frame to the agent.
    let (status, again) = post(&hub, "/v1/accounts/prod-1/operations",
        &json!({"type": "scale", "kind": "deployment", "namespace": "web", "name": "frontend", "replicas": 3, "id": "op-1"})).await?;
    assert_eq!((status, &again), (200, &body));

    // A failure reported by the agent is a 422 with the API server's text.
    let http = {
        let base = hub.http_url();
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/accounts/prod-1/operations"))
                .json(&json!({"type": "apply", "manifest": {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": 5}}))
                .send()
                .await?;
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await?;
            Ok::<_, Error>((status, body))
        })
    };
    let op = agent.expect_operation().await?;
    assert!(matches!(op.kind, Some(operation::Kind::Apply(_))));
    agent
        .answer(
            &op.id,
            false,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap",
            serde_json::Value::Null,
        )
        .await?;
    let (status, body) = http.await??;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be handled")
    );
    assert_eq!(body["errorCode"], "INVALID");

    // Malformed requests are 400.
    let (status, body) = post(
        &hub,
        "/v1/accounts/prod-1/operations",
        &json!({"type": "scale", "kind": "Deployment", "name": "x"}),
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(
        &hub,
        "/v1/accounts/prod-1/operations",
        &json!({"type": "launch"}),
    )
    .await?;
    assert_eq!(status, 400);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn operations_to_unknown_disconnected_or_silent_accounts_fail_clearly() -> Result<()> {
    let hub = hub(LONG).await?;
    let scale = json!({"type": "scale", "kind": "Deployment", "namespace": "web", "name": "frontend", "replicas": 1, "timeoutSeconds": 1});
    let (status, _) = post(&hub, "/v1/accounts/nobody/operations", &scale).await?;
    assert_eq!(status, 404);

    let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
    agent
        .register(&[("prod-1", "uid-a"), ("prod-2", "uid-b")])
        .await?;
    // The agent receives it but never answers: 504 after the deadline.
    let started = std::time::Instant::now();
    let (status, body) = post(&hub, "/v1/accounts/prod-1/operations", &scale).await?;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(agent.expect_operation().await?.deadline.is_some());

    agent
        .send(agent_frame::Frame::Unregister(pb::Unregister {
            account_names: vec!["prod-2".into()],
            reason: pb::UnregisterReason::Handoff as i32,
            message: "moving".into(),
        }))
        .await?;
    agent.barrier().await?;
    let (status, body) = post(&hub, "/v1/accounts/prod-2/operations", &scale).await?;
    assert_eq!(status, 503, "{body}");
    agent.close();
    eventually(Duration::from_secs(5), || async {
        Ok(account(&hub, "prod-1")
            .await?
            .is_some_and(|a| a["state"] == "Disconnected"))
    })
    .await?;
    let (status, _) = post(&hub, "/v1/accounts/prod-1/operations", &scale).await?;
    assert_eq!(status, 503);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_unanswered_operation_is_resent_to_the_accounts_next_session() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    let http = {
        let base = hub.http_url();
        tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .post(format!("{base}/v1/accounts/prod-1/operations"))
                .json(&json!({"type": "rolloutRestart", "kind": "Deployment", "namespace": "web", "name": "frontend", "timeoutSeconds": 10}))
                .send()
                .await?;
            Ok::<_, Error>(resp.status().as_u16())
        })
    };
    let first = agent.expect_operation().await?;
    agent.close();
    let mut next = FakeAgent::registered(&hub, "east", "east-1", &[("prod-1", "uid-a")]).await?;
    let again = next.expect_operation().await?;
    assert_eq!(
        again.id, first.id,
        "same id, so the agent runs it at most once"
    );
    next.answer(&again.id, true, "restarted", json!({})).await?;
    assert_eq!(http.await??, 200);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn bindings_survive_a_restart_with_a_store_file() -> Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.db");
    let with_store =
        |c: &mut Config| c.store = scale_agent_hub::config::StoreLocation::Sqlite(path.clone());
    let hub = hub_with(with_store).await?;
    let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
    assert!(agent.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    agent.close();
    hub.shutdown().await?;

    let hub = hub_with(with_store).await?;
    let a = account(&hub, "prod-1").await?.ok_or("binding loaded")?;
    assert_eq!(a["state"], "Disconnected");
    assert_eq!(a["shard"], "spinnaker/east");
    // The binding holds from the first second: its cluster for the shard's
    // own replicas, and the shard itself for everyone else.
    let mut intruder = FakeAgent::connect(&hub, "west", "west-0").await?;
    let refused = intruder.register(&[("prod-1", "uid-a")]).await?;
    assert!(!refused[0].accepted);
    assert_eq!(refused[0].reason, RegisterReason::NotOwner as i32);
    let mut other_cluster = FakeAgent::connect(&hub, "east", "east-1").await?;
    let refused = other_cluster.register(&[("prod-1", "uid-b")]).await?;
    assert!(!refused[0].accepted);
    assert_eq!(refused[0].reason, RegisterReason::ClusterMismatch as i32);
    let mut owner = FakeAgent::connect(&hub, "east", "east-0").await?;
    assert!(owner.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn bad_hellos_are_refused_while_other_sessions_keep_working() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut good = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;

    let v2 = AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello("east", "future-0", 2))),
    };
    let status = open(&hub.grpc_url(), v2)
        .await?
        .err()
        .ok_or("v2 must be refused")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("unsupported protocol version 2; this hub speaks 1"),
        "{}",
        status.message()
    );

    let not_hello = AgentFrame {
        frame: Some(agent_frame::Frame::Register(pb::Register::default())),
    };
    let status = open(&hub.grpc_url(), not_hello)
        .await?
        .err()
        .ok_or("must be refused")?;
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("first frame must be Hello"),
        "{}",
        status.message()
    );

    // Garbage inside a good session: malformed body, no kind, unknown frame
    // kind, events for an account it does not hold. Dropped; the rest applies.
    let mut broken = added("web", "broken", "2");
    broken.body_json = b"{not json".to_vec().into();
    let mut kindless = added("web", "kindless", "3");
    kindless.kind = None;
    good.send_raw(AgentFrame { frame: None }).await?;
    good.events(
        "prod-1",
        vec![
            added("web", "one", "1"),
            broken,
            kindless,
            added("web", "two", "4"),
        ],
    )
    .await?;
    good.events_unacked("not-mine", vec![added("web", "x", "1")])
        .await?;
    good.barrier().await?;
    good.events("prod-1", vec![added("web", "three", "5")])
        .await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["one", "three", "two"]);
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(r#"scale_agent_hub_sessions_rejected_total{reason="protocol_version"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scale_agent_hub_events_rejected_total{reason="malformed_body"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"scale_agent_hub_frames_ignored_total{reason="event_batch_not_held"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"scale_agent_hub_frames_ignored_total{reason="unknown_frame_kind"} 1"#),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn unregister_removed_drops_the_account_at_once() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
    agent
        .register(&[("prod-1", "uid-a"), ("prod-2", "uid-b")])
        .await?;
    agent
        .events("prod-1", vec![added("web", "one", "1")])
        .await?;
    agent
        .send(agent_frame::Frame::Unregister(pb::Unregister {
            account_names: vec!["prod-1".into()],
            reason: pb::UnregisterReason::Removed as i32,
            message: "removed from the shard".into(),
        }))
        .await?;
    agent.barrier().await?;
    assert!(account(&hub, "prod-1").await?.is_none());
    assert!(account(&hub, "prod-2").await?.is_some());
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_agent_sessions() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    let stop = tokio::spawn(hub.shutdown());
    let drain = agent
        .wait_for(|f| match f {
            hub_frame::Frame::Drain(d) => Some(d.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(drain.reason, pb::DrainReason::Shutdown as i32);
    agent.close();
    tokio::time::timeout(Duration::from_secs(10), stop).await???;
    Ok(())
}

#[tokio::test]
async fn frequent_keepalive_pings_are_allowed() -> Result<()> {
    let hub = hub(LONG).await?;
    let channel = tonic::transport::Channel::from_shared(hub.grpc_url())?
        .http2_keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .keep_alive_timeout(Duration::from_secs(1))
        .connect()
        .await?;
    let mut client = scale_agent_proto::v1::agent_hub_client::AgentHubClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello("east", "east-0", 1))),
    })
    .await?;
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    assert!(matches!(
        inbound.message().await?.and_then(|f| f.frame),
        Some(hub_frame::Frame::Welcome(_))
    ));
    // Twenty pings later the stream still works.
    tokio::time::sleep(Duration::from_secs(2)).await;
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Register(pb::Register {
            accounts: vec![pb::Account {
                name: "prod-1".into(),
                cluster_id: "uid-a".into(),
                ..Default::default()
            }],
        })),
    })
    .await?;
    loop {
        match inbound.message().await?.and_then(|f| f.frame) {
            Some(hub_frame::Frame::RegisterResult(r)) => {
                assert!(r.accounts[0].accepted);
                break;
            }
            Some(hub_frame::Frame::Heartbeat(_)) => continue,
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_silent_agent_is_cut_off_after_three_heartbeat_intervals() -> Result<()> {
    let hub = hub_with(|c| c.heartbeat_interval = Duration::from_millis(200)).await?;
    let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
    assert_eq!(
        agent.welcome.heartbeat_interval,
        Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000
        })
    );
    agent.register(&[("prod-1", "uid-a")]).await?;
    // Say nothing: the hub's heartbeats arrive, then the stream ends.
    let ended = async {
        loop {
            if agent.next().await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ended).await?;
    let a = account(&hub, "prod-1")
        .await?
        .ok_or("kept for the grace period")?;
    assert_eq!(a["state"], "Disconnected");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn hello_may_be_sent_after_the_response_headers_arrive() -> Result<()> {
    let hub = hub(LONG).await?;
    let channel = tonic::transport::Channel::from_shared(hub.grpc_url())?
        .connect()
        .await?;
    let mut client = scale_agent_proto::v1::agent_hub_client::AgentHubClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client.connect(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await??;
    let mut inbound = response.into_inner();
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello("east", "east-0", 1))),
    })
    .await?;
    assert!(matches!(
        inbound.message().await?.and_then(|f| f.frame),
        Some(hub_frame::Frame::Welcome(_))
    ));
    hub.shutdown().await?;
    Ok(())
}
