//! The operator's requests, against kube-rs mock services (`tower-test`): the shapes the
//! API server must see (method, path, field manager, force, patch type, body) for what
//! the real control plane does not let a test provoke at will — a status write that
//! loses a race, a Lease held by another replica, an AgentShard that does not decode.
//! The behaviour itself is proven end to end in `e2e/tests/operator.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

mod common;

use http::{Method, Request, Response, header};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::core::DeserializeGuard;
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use kube::{Api, Client};
use scale_agent_crds::{AgentShard, ShardRef};
use scale_agent_operator::applied::{Applied, Watched};
use scale_agent_operator::apply::{self, Written};
use scale_agent_operator::claims_index::{self, Resolution};
use scale_agent_operator::controller::{self, Undecodables};
use scale_agent_operator::decide::{self, Decision};
use scale_agent_operator::leader::{Elector, LeaseConfig};
use scale_agent_operator::metrics::Metrics;
use scale_agent_operator::status;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, Handle, SendResponse};

type Mock = Handle<Request<Body>, Response<Body>>;

fn mock_client() -> (Client, Mock) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// One request as the API server sees it.
struct Seen {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

async fn next(handle: &mut Mock) -> (Seen, SendResponse<Response<Body>>) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("a request within 10s")
        .expect("the client is still there");
    let query = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let seen = Seen {
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        query,
        content_type: req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: Value::Null,
    };
    let bytes = req
        .into_body()
        .collect_bytes()
        .await
        .expect("a request body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (Seen { body, ..seen }, send)
}

fn test_recorder(client: &Client) -> Recorder {
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "scale-agent-operator".into(),
            instance: Some("test".into()),
        },
    )
}

fn respond(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("a response"),
    );
}

fn failure(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "reason": reason, "code": code, "message": reason,
    })
}

fn shard(replicas: i32) -> AgentShard {
    let mut s: AgentShard = serde_json::from_value(json!({
        "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShard",
        "metadata": {
            "name": "east", "namespace": "ns", "uid": "uid-1", "generation": 2,
            "resourceVersion": "7", "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": {
            "replicas": replicas,
            "hub": { "address": "hub.example.com:443" },
            "image": "example.com/agent:1",
            "accounts": [{ "name": "a", "kubeconfigSecretRef": { "name": "kc-a" } }],
        },
    }))
    .expect("a shard");
    s.metadata.namespace = Some("ns".into());
    s
}

fn decision(s: &AgentShard) -> Decision {
    let secret = common::kubeconfig_secret();
    common::decide(
        s,
        &[("a".to_owned(), Resolution::Owned)].into(),
        &[("kc-a".to_owned(), Some(secret))].into(),
        &Time(Timestamp::from_second(1_800_000_000).expect("t")),
    )
}

/// The writers of the children's watches, and what the reconciler reads of them.
struct Writers {
    config_maps: Writer<PartialObjectMeta<ConfigMap>>,
    secrets: Writer<PartialObjectMeta<Secret>>,
    deployments: Writer<Deployment>,
    pdbs: Writer<PartialObjectMeta<PodDisruptionBudget>>,
}

fn watches() -> (Writers, Watched) {
    let (config_maps, cm) = reflector::store();
    let (secrets, sec) = reflector::store();
    let (deployments, dep) = reflector::store();
    let (pdbs, pdb) = reflector::store();
    (
        Writers {
            config_maps: cm,
            secrets: sec,
            deployments: dep,
            pdbs: pdb,
        },
        Watched {
            config_maps,
            secrets,
            deployments,
            pdbs,
        },
    )
}

impl Writers {
    /// What the watches bring after an apply answered with `object`.
    fn saw(&mut self, object: &Value) {
        fn meta<K: serde::de::DeserializeOwned>(object: &Value) -> K {
            serde_json::from_value(object.clone()).expect("an object")
        }
        match object["kind"].as_str() {
            Some("ConfigMap") => self
                .config_maps
                .apply_watcher_event(&Event::Apply(meta(object))),
            Some("Secret") => self
                .secrets
                .apply_watcher_event(&Event::Apply(meta(object))),
            Some("Deployment") => self
                .deployments
                .apply_watcher_event(&Event::Apply(meta(object))),
            Some("PodDisruptionBudget") => {
                self.pdbs.apply_watcher_event(&Event::Apply(meta(object)))
            }
            _ => {}
        }
    }
}

/// Answers every request `apply::children` makes until it returns: a server-side apply
/// as the API server would (a uid, a new resourceVersion, a generation for what has a
/// spec), and a read (of a child the watches do not show) with 404, as for a child
/// someone deleted; the objects as answered, and the paths written (a read is marked
/// `GET <path>`).
async fn serve_applies(
    handle: &mut Mock,
    task: tokio::task::JoinHandle<scale_agent_operator::error::Result<Deployment>>,
    rv: &mut u64,
) -> (Vec<Value>, Vec<String>) {
    let (mut objects, mut paths) = (Vec::new(), Vec::new());
    futures::pin_mut!(task);
    loop {
        tokio::select! {
            done = &mut task => {
                done.expect("joins").expect("applies");
                return (objects, paths);
            }
            req = handle.next_request() => {
                let (req, send) = req.expect("the client is still there");
                if req.method() == Method::GET {
                    paths.push(format!("GET {}", req.uri().path()));
                    respond(send, 404, &failure(404, "NotFound"));
                    continue;
                }
                assert_eq!(req.method(), Method::PATCH, "{}", req.uri());
                paths.push(req.uri().path().to_owned());
                let bytes = req.into_body().collect_bytes().await.expect("a body");
                let mut obj: Value = serde_json::from_slice(&bytes).expect("json");
                *rv += 1;
                let kind = obj["kind"].as_str().unwrap_or_default().to_owned();
                let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_owned();
                obj["metadata"]["uid"] = json!(format!("{kind}/{name}"));
                obj["metadata"]["resourceVersion"] = json!(rv.to_string());
                if kind == "Deployment" || kind == "PodDisruptionBudget" {
                    obj["metadata"]["generation"] = json!(1);
                }
                respond(send, 200, &obj);
                objects.push(obj);
            }
        }
    }
}

#[tokio::test]
async fn an_unchanged_shard_has_its_children_applied_once_and_put_back_when_changed() {
    let s = shard(2);
    let children = Arc::new(decision(&s).children.expect("children"));
    let (client, mut handle) = mock_client();
    let (mut writers, watched) = watches();
    let state = Arc::new((Applied::new(), watched));
    let run = |children: Arc<decide::Children>| {
        let (client, state) = (client.clone(), Arc::clone(&state));
        tokio::spawn(async move { apply_children(&client, &children, &state.0, &state.1).await })
    };
    let mut rv = 100;

    // The first reconcile applies the seven children.
    let (objects, paths) = serve_applies(&mut handle, run(Arc::clone(&children)), &mut rv).await;
    assert_eq!(paths.len(), 7, "{paths:?}");
    for o in &objects {
        writers.saw(o);
    }

    // The same shard again, its children as applied: no write at all.
    let (_, paths) = serve_applies(&mut handle, run(Arc::clone(&children)), &mut rv).await;
    assert_eq!(paths, Vec::<String>::new());

    // A Deployment status change (a new resourceVersion, the same generation) is not an
    // edit: still nothing; the Deployment returned is the watched one, with its status.
    let mut dep = objects
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .expect("a Deployment")
        .clone();
    dep["metadata"]["resourceVersion"] = json!("500");
    dep["status"] = json!({ "readyReplicas": 2 });
    writers.saw(&dep);
    let task = run(Arc::clone(&children));
    let (_, paths) = serve_applies(&mut handle, task, &mut rv).await;
    assert_eq!(paths, Vec::<String>::new());
    let d = apply_children(&client, &children, &state.0, &state.1)
        .await
        .expect("reads the watched Deployment");
    assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2));

    // Someone edits the ConfigMap and deletes the kubeconfig Secret: both are put back,
    // nothing else is written. The Secret the watch no longer shows is read first (the
    // watch may only lag behind the last apply); the read finds it gone.
    let mut cm = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("a ConfigMap")
        .clone();
    cm["metadata"]["resourceVersion"] = json!("501");
    cm["data"]["config.yaml"] = json!("edited");
    writers.saw(&cm);
    let secret: PartialObjectMeta<Secret> = serde_json::from_value(
        objects
            .iter()
            .find(|o| o["kind"] == "Secret")
            .expect("a Secret")
            .clone(),
    )
    .expect("a Secret");
    writers.secrets.apply_watcher_event(&Event::Delete(secret));
    let (objects, mut paths) =
        serve_applies(&mut handle, run(Arc::clone(&children)), &mut rv).await;
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/ns/configmaps/east-agent-config",
            "/api/v1/namespaces/ns/secrets/east-agent-kubeconfigs",
            "GET /api/v1/namespaces/ns/secrets/east-agent-kubeconfigs",
        ]
    );
    for o in &objects {
        writers.saw(o);
    }

    // The shard changes (two replicas to three; the budget stays the same): only the
    // Deployment is written.
    let s = shard(3);
    let changed = Arc::new(decision(&s).children.expect("children"));
    let (_, paths) = serve_applies(&mut handle, run(changed), &mut rv).await;
    assert_eq!(
        paths,
        ["/apis/apps/v1/namespaces/ns/deployments/east-agent"]
    );
}

/// The children of shard [`sref`] (owner `uid-1`) applied as a reconcile does.
async fn apply_children(
    client: &Client,
    children: &decide::Children,
    applied: &Applied,
    watched: &Watched,
) -> scale_agent_operator::error::Result<Deployment> {
    apply::children(client, &sref(), Some("uid-1"), children, applied, watched).await
}

fn sref() -> ShardRef {
    ShardRef::new("ns", "east")
}

/// Checks a write of the status: a merge patch of the status subresource by the
/// operator's field manager, not forced.
fn assert_status_patch(seen: &Seen) {
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(
        seen.path,
        "/apis/scaleagent.dev/v1alpha1/namespaces/ns/agentshards/east/status"
    );
    assert_eq!(seen.content_type, "application/merge-patch+json");
    assert_eq!(
        seen.query.get("fieldManager").map(String::as_str),
        Some("scale-agent-operator")
    );
    assert!(!seen.query.contains_key("force"));
}

/// Checks a server-side apply of `kind` `name` and answers it with what was sent.
async fn expect_apply(handle: &mut Mock, path: &str, kind: &str) -> Value {
    let (seen, send) = next(handle).await;
    assert_eq!(seen.method, Method::PATCH, "{path}");
    assert_eq!(seen.path, path);
    assert_eq!(seen.content_type, "application/apply-patch+yaml", "{path}");
    assert_eq!(
        seen.query.get("fieldManager").map(String::as_str),
        Some("scale-agent-operator"),
        "{path}"
    );
    assert_eq!(
        seen.query.get("force").map(String::as_str),
        Some("true"),
        "{path}"
    );
    assert_eq!(seen.body["kind"], kind, "{path}");
    let owner = &seen.body["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "AgentShard", "{path}");
    assert_eq!(owner["uid"], "uid-1", "{path}");
    assert_eq!(owner["controller"], true, "{path}");
    assert_eq!(
        seen.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "scale-agent-operator"
    );
    let body = seen.body.clone();
    respond(send, 200, &seen.body);
    body
}

#[tokio::test]
async fn children_are_server_side_applied_in_order_with_the_operators_field_manager() {
    let s = shard(2);
    let d = decision(&s);
    let children = d.children.expect("children");
    let (client, mut handle) = mock_client();
    let task = tokio::spawn(async move {
        let (_, watched) = watches();
        apply_children(&client, &children, &Applied::new(), &watched).await
    });
    expect_apply(
        &mut handle,
        "/api/v1/namespaces/ns/serviceaccounts/east-agent",
        "ServiceAccount",
    )
    .await;
    expect_apply(
        &mut handle,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/east-agent",
        "Role",
    )
    .await;
    expect_apply(
        &mut handle,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings/east-agent",
        "RoleBinding",
    )
    .await;
    let secret = expect_apply(
        &mut handle,
        "/api/v1/namespaces/ns/secrets/east-agent-kubeconfigs",
        "Secret",
    )
    .await;
    assert!(secret["data"]["a.kubeconfig"].is_string(), "{secret}");
    let cm = expect_apply(
        &mut handle,
        "/api/v1/namespaces/ns/configmaps/east-agent-config",
        "ConfigMap",
    )
    .await;
    assert!(
        cm["data"]["config.yaml"]
            .as_str()
            .is_some_and(|c| c.contains("hub.example.com:443")),
        "{cm}"
    );
    let dep = expect_apply(
        &mut handle,
        "/apis/apps/v1/namespaces/ns/deployments/east-agent",
        "Deployment",
    )
    .await;
    assert_eq!(dep["spec"]["replicas"], 2);
    expect_apply(
        &mut handle,
        "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/east-agent",
        "PodDisruptionBudget",
    )
    .await;
    let dep = task.await.expect("joins").expect("applies");
    assert_eq!(dep.metadata.name.as_deref(), Some("east-agent"));
}

#[tokio::test]
async fn one_replica_deletes_only_the_budget_the_shard_owns() {
    for (owner_uid, deleted) in [("uid-1", true), ("someone-else", false)] {
        let s = shard(1);
        let children = decision(&s).children.expect("children");
        let (client, mut handle) = mock_client();
        let (mut writers, watched) = watches();
        // The watch shows a budget of that name.
        writers.pdbs.apply_watcher_event(&Event::Apply(
            serde_json::from_value(json!({
                "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": { "name": "east-agent", "namespace": "ns", "uid": "pdb-1" },
            }))
            .expect("metadata"),
        ));
        let task = tokio::spawn(async move {
            apply_children(&client, &children, &Applied::new(), &watched).await
        });
        for _ in 0..6 {
            let (seen, send) = next(&mut handle).await;
            assert_eq!(seen.method, Method::PATCH);
            respond(send, 200, &seen.body);
        }
        let (seen, send) = next(&mut handle).await;
        assert_eq!(seen.method, Method::GET);
        assert_eq!(
            seen.path,
            "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/east-agent"
        );
        respond(
            send,
            200,
            &json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": { "name": "east-agent", "namespace": "ns", "ownerReferences": [{
                    "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShard",
                    "name": "east", "uid": owner_uid, "controller": true,
                }]},
            }),
        );
        if deleted {
            let (seen, send) = next(&mut handle).await;
            assert_eq!(seen.method, Method::DELETE);
            assert_eq!(
                seen.path,
                "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/east-agent"
            );
            respond(send, 404, &failure(404, "NotFound"));
        }
        task.await.expect("joins").expect("applies");
    }
}

#[tokio::test]
async fn the_status_is_a_merge_patch_of_what_changed_on_the_version_read_then_events() {
    let s = shard(1);
    let d = decision(&s);
    let new = status::compute(
        None,
        &d.observed,
        Time(Timestamp::from_second(1_800_000_000).expect("t")),
    );
    let (client, mut handle) = mock_client();
    let recorder = test_recorder(&client);
    let task = {
        let (s, new) = (s.clone(), new.clone());
        tokio::spawn(async move {
            apply::status(
                &client,
                &recorder,
                &s,
                &sref(),
                Some("8"),
                s.status.as_ref(),
                &new,
            )
            .await
        })
    };
    let (seen, send) = next(&mut handle).await;
    assert_status_patch(&seen);
    // Conditioned on the version it was decided from (the reservation's, here).
    assert_eq!(seen.body["metadata"], json!({ "resourceVersion": "8" }));
    assert_eq!(seen.body["status"]["observedGeneration"], 2);
    assert_eq!(seen.body["status"]["accounts"][0]["name"], "a");
    // In the agent config; no replica reports it yet.
    assert_eq!(seen.body["status"]["accounts"][0]["state"], "NoReplica");
    assert_eq!(
        seen.body["status"]["accounts"][0]["claimedAt"],
        "2024-01-01T00:00:00Z"
    );
    let mut stored = serde_json::to_value(&s).expect("json");
    stored["status"] = seen.body["status"].clone();
    stored["metadata"]["resourceVersion"] = json!("9");
    respond(send, 200, &stored);
    assert_eq!(
        task.await.expect("joins").expect("writes"),
        Written::Yes(Some("9".into()))
    );

    // Unchanged: no request at all.
    let mut current = s.clone();
    current.status = Some(new.clone());
    let (client, _handle) = mock_client();
    let recorder = test_recorder(&client);
    let unchanged = tokio::time::timeout(
        Duration::from_secs(5),
        apply::status(
            &client,
            &recorder,
            &current,
            &sref(),
            Some("9"),
            current.status.as_ref(),
            &new,
        ),
    )
    .await
    .expect("no request is made");
    assert_eq!(unchanged.expect("ok"), Written::Unchanged);
}

#[tokio::test]
async fn a_status_change_publishes_its_events() {
    // Conflict → in the config: a Normal AccountAcquired Event about the shard.
    let mut s = shard(1);
    let d = decision(&s);
    let t = Time(Timestamp::from_second(1_800_000_000).expect("t"));
    let mut before = d.observed.clone();
    before.accounts[0] = status::account(
        "a",
        scale_agent_crds::AccountState::Conflict,
        status::reason::OWNED_BY_ANOTHER_SHARD,
        "owned".into(),
        Some(&ShardRef::new("other", "o")),
    );
    s.status = Some(status::compute(None, &before, t.clone()));
    let new = status::compute(s.status.as_ref(), &d.observed, t);
    let (client, mut handle) = mock_client();
    let recorder = test_recorder(&client);
    let task = tokio::spawn(async move {
        apply::status(
            &client,
            &recorder,
            &s,
            &sref(),
            Some("7"),
            s.status.as_ref(),
            &new,
        )
        .await
    });
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::PATCH);
    // Only what changed: the accounts, counts and conditions, not the generation.
    assert!(
        seen.body["status"].get("observedGeneration").is_none(),
        "{}",
        seen.body
    );
    respond(
        send,
        200,
        &json!({
            "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShard",
            "metadata": { "name": "east", "namespace": "ns", "resourceVersion": "8" },
            "spec": {},
        }),
    );
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.path, "/apis/events.k8s.io/v1/namespaces/ns/events");
    assert_eq!(seen.body["reason"], "AccountAcquired");
    assert_eq!(seen.body["type"], "Normal");
    assert_eq!(seen.body["regarding"]["name"], "east");
    assert_eq!(seen.body["reportingController"], "scale-agent-operator");
    respond(send, 201, &seen.body);
    assert!(matches!(task.await.expect("joins"), Ok(Written::Yes(_))));
}

#[tokio::test]
async fn a_status_write_that_loses_a_race_is_stale_not_an_error_and_publishes_nothing() {
    for code in [409, 404] {
        let s = shard(1);
        let d = decision(&s);
        let accounts = d.reserve.clone().expect("a new shard reserves");
        let reserved = status::reserved(
            s.status.as_ref(),
            &accounts,
            s.metadata.generation,
            Time(Timestamp::from_second(1_800_000_000).expect("t")),
        );
        let (client, mut handle) = mock_client();
        let task = tokio::spawn(async move {
            apply::reserve(&client, &sref(), Some("7"), s.status.as_ref(), &reserved).await
        });
        let (seen, send) = next(&mut handle).await;
        assert_status_patch(&seen);
        assert_eq!(seen.body["metadata"], json!({ "resourceVersion": "7" }));
        // The reservation: the accounts and their counts, and (first sight) Ready
        // Unknown alone; no observedGeneration (the status write brings it).
        let st = seen.body["status"].as_object().expect("status");
        for key in ["accounts", "activeAccounts", "conflicts"] {
            assert!(st.contains_key(key), "{key}");
        }
        assert!(!st.contains_key("observedGeneration"));
        assert_eq!(st["conditions"].as_array().map(Vec::len), Some(1));
        assert_eq!(st["conditions"][0]["type"], "Ready");
        assert_eq!(st["conditions"][0]["status"], "Unknown");
        respond(send, code, &failure(code, "Conflict"));
        assert_eq!(
            task.await.expect("joins").expect("not an error"),
            Written::Stale
        );
    }
}

#[tokio::test]
async fn other_status_write_failures_are_errors_naming_the_shard() {
    let s = shard(1);
    let accounts = decision(&s).reserve.expect("reserves");
    let reserved = status::reserved(
        None,
        &accounts,
        Some(1),
        Time(Timestamp::from_second(1).expect("t")),
    );
    let (client, mut handle) = mock_client();
    let task =
        tokio::spawn(
            async move { apply::reserve(&client, &sref(), Some("7"), None, &reserved).await },
        );
    let (_, send) = next(&mut handle).await;
    respond(send, 422, &failure(422, "Invalid"));
    let e = task.await.expect("joins").expect_err("an error");
    assert!(e.to_string().contains("AgentShard ns/east"), "{e}");
    assert_eq!(e.label(), "ApiInvalid");
}

fn lease(holder: &str, rv: &str, duration: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "op", "namespace": "sys", "resourceVersion": rv },
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": duration,
            "renewTime": "2024-01-01T00:00:00.000000Z", "leaseTransitions": 3,
        },
    })
}

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/sys/leases/op";

fn elector(client: Client) -> Elector {
    Elector::new(
        client,
        LeaseConfig {
            namespace: "sys".into(),
            name: "op".into(),
            identity: "me".into(),
            duration: Duration::from_secs(2),
        },
    )
}

#[tokio::test]
async fn leader_election_creates_renews_and_releases_the_lease() {
    let (client, mut handle) = mock_client();
    let (tx, mut leading) = watch::channel(false);
    let run = tokio::spawn({
        let client = client.clone();
        async move { elector(client).run(tx).await }
    });
    // No Lease yet: created, naming this replica.
    let (seen, send) = next(&mut handle).await;
    assert_eq!((seen.method, seen.path.as_str()), (Method::GET, LEASE_PATH));
    respond(send, 404, &failure(404, "NotFound"));
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(
        seen.path,
        "/apis/coordination.k8s.io/v1/namespaces/sys/leases"
    );
    assert_eq!(seen.body["spec"]["holderIdentity"], "me");
    assert_eq!(seen.body["spec"]["leaseDurationSeconds"], 2);
    respond(send, 201, &lease("me", "1", 2));
    leading.wait_for(|l| *l).await.expect("leads");
    // Renewed with a PUT on the version read.
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::GET);
    respond(send, 200, &lease("me", "1", 2));
    let (seen, send) = next(&mut handle).await;
    assert_eq!((seen.method, seen.path.as_str()), (Method::PUT, LEASE_PATH));
    assert_eq!(seen.body["metadata"]["resourceVersion"], "1");
    assert_eq!(seen.body["spec"]["holderIdentity"], "me");
    assert_eq!(
        seen.body["spec"]["leaseTransitions"], 3,
        "a renewal is no transition"
    );
    respond(send, 200, &lease("me", "2", 2));
    run.abort();

    // Released on shutdown: no holder, and a one-second duration.
    let release = tokio::spawn(async move { elector(client).release().await });
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::GET);
    respond(send, 200, &lease("me", "2", 2));
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::PUT);
    assert!(
        seen.body["spec"]["holderIdentity"].is_null(),
        "{}",
        seen.body
    );
    assert_eq!(seen.body["spec"]["leaseDurationSeconds"], 1);
    respond(send, 200, &lease("", "3", 1));
    release.await.expect("releases");
}

#[tokio::test]
async fn another_replicas_lease_is_taken_only_once_it_went_unrenewed_for_its_duration() {
    let (client, mut handle) = mock_client();
    let (tx, leading) = watch::channel(false);
    let run = tokio::spawn(async move { elector(client).run(tx).await });
    let started = tokio::time::Instant::now();
    // The other replica's record never changes; its duration is one second.
    loop {
        let (seen, send) = next(&mut handle).await;
        match seen.method {
            Method::GET => respond(send, 200, &lease("other", "5", 1)),
            Method::PUT => {
                assert!(
                    started.elapsed() >= Duration::from_secs(1),
                    "taken after {:?}",
                    started.elapsed()
                );
                assert_eq!(seen.body["metadata"]["resourceVersion"], "5");
                assert_eq!(seen.body["spec"]["holderIdentity"], "me");
                assert_eq!(seen.body["spec"]["leaseTransitions"], 4);
                assert!(seen.body["spec"]["acquireTime"].is_string());
                respond(send, 200, &lease("me", "6", 2));
                break;
            }
            m => panic!("unexpected {m} {}", seen.path),
        }
        assert!(
            !*leading.borrow(),
            "led while another replica held the Lease"
        );
    }
    let mut leading = leading;
    leading.wait_for(|l| *l).await.expect("leads");
    run.abort();
}

#[tokio::test]
async fn a_lost_race_for_the_lease_is_not_leading() {
    let (client, mut handle) = mock_client();
    let (tx, leading) = watch::channel(false);
    let run = tokio::spawn(async move { elector(client).run(tx).await });
    let (_, send) = next(&mut handle).await;
    respond(send, 404, &failure(404, "NotFound"));
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::POST);
    respond(send, 409, &failure(409, "AlreadyExists"));
    // The next round reads the winner's Lease and does not write.
    let (seen, send) = next(&mut handle).await;
    assert_eq!(seen.method, Method::GET);
    respond(send, 200, &lease("other", "1", 15));
    let (seen, send) = next(&mut handle).await;
    assert_eq!(
        seen.method,
        Method::GET,
        "no write while the Lease is fresh"
    );
    assert!(!*leading.borrow());
    respond(send, 200, &lease("other", "1", 15));
    run.abort();
}

fn listed(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShardList",
        "metadata": { "resourceVersion": "10" },
        "items": items,
    })
}

fn item(name: &str, accounts: &[&str]) -> Value {
    json!({
        "apiVersion": "scaleagent.dev/v1alpha1", "kind": "AgentShard",
        "metadata": {
            "name": name, "namespace": "ns", "uid": format!("uid-{name}"),
            "resourceVersion": "3", "creationTimestamp": "2024-01-01T00:00:00Z",
        },
        "spec": { "accounts": accounts.iter().map(|a| json!({
            "name": a, "kubeconfigSecretRef": { "name": "kc" },
        })).collect::<Vec<_>>() },
    })
}

#[tokio::test]
async fn one_undecodable_shard_is_reported_and_skipped_and_the_others_are_watched() {
    for leading in [false, true] {
        let (client, mut handle) = mock_client();
        let writer = Writer::<AgentShard>::default();
        let store = writer.as_reader();
        let (claims, index) = claims_index::channel();
        let index = tokio::spawn(index);
        let metrics = Arc::new(Metrics::default());
        let recorder = test_recorder(&client);
        let (_lead_tx, lead_rx) = watch::channel(leading);
        let watch = tokio::spawn(controller::watch_shards(
            Api::<DeserializeGuard<AgentShard>>::all(client),
            writer,
            claims.clone(),
            Undecodables::new(recorder, metrics.clone(), lead_rx),
        ));
        let (seen, send) = next(&mut handle).await;
        assert_eq!(seen.method, Method::GET);
        assert_eq!(seen.path, "/apis/scaleagent.dev/v1alpha1/agentshards");
        let mut bad = item("newer", &["x"]);
        bad["spec"]["replicas"] = json!({ "min": 1, "max": 3 });
        respond(
            send,
            200,
            &listed(vec![item("a", &["x"]), bad, item("b", &["y"])]),
        );
        // The watch that follows the list (left open) and, when leading, the Event (the
        // two may come in either order).
        let mut requests = vec![next(&mut handle).await];
        if leading {
            requests.push(next(&mut handle).await);
        }
        let mut _open = Vec::new();
        for (seen, send) in requests {
            if seen.method == Method::POST {
                assert_eq!(seen.path, "/apis/events.k8s.io/v1/namespaces/ns/events");
                assert_eq!(seen.body["reason"], "Undecodable");
                assert_eq!(seen.body["type"], "Warning");
                assert_eq!(seen.body["regarding"]["name"], "newer");
                let note = seen.body["note"].as_str().unwrap_or_default();
                assert!(
                    note.len() < 400 && note.to_lowercase().contains("invalid type"),
                    "{note}"
                );
                respond(send, 201, &seen.body);
            } else {
                assert_eq!(seen.query.get("watch").map(String::as_str), Some("true"));
                _open.push(send);
            }
        }
        store.wait_until_ready().await.expect("the cache is ready");
        let mut names: Vec<String> = store
            .state()
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
        // The index knows the decodable shards.
        let a: AgentShard = serde_json::from_value(item("a", &["x"])).expect("a");
        let c: AgentShard = serde_json::from_value(item("c", &["x"])).expect("c");
        assert_eq!(
            claims.resolve(&a).await.expect("answer")["x"],
            Resolution::Owned
        );
        assert_eq!(
            claims.resolve(&c).await.expect("answer")["x"],
            Resolution::Taken {
                owner: ShardRef::new("ns", "a"),
                releasing: false
            }
        );
        assert!(
            metrics
                .encode()
                .contains("scale_agent_operator_undecodable_shards_total 1"),
            "{}",
            metrics.encode()
        );
        watch.abort();
        drop(claims);
        index.abort();
    }
}
