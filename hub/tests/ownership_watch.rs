//! `--authorize-shards` against a real kube-apiserver (the e2e control plane):
//! the hub watches AgentShards and accepts an account only from the shard that
//! lists it, following changes as they are made.

mod common;

use std::time::Duration;

use common::*;
use scale_agent_e2e::{ControlPlane, Options};
use scale_agent_hub::ShardSource;
use scale_agent_proto::v1::{RegisterReason, hub_frame};

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crds/agentshards.scaleagent.dev.yaml"
);

fn shard_yaml(name: &str, accounts: &[&str]) -> String {
    if accounts.is_empty() {
        return format!(
            "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: spinnaker\nspec:\n  replicas: 1\n  accounts: []\n"
        );
    }
    let accounts: String = accounts
        .iter()
        .map(|a| format!("    - name: {a}\n      kubeconfigSecretRef: {{ name: kc-{a} }}\n"))
        .collect();
    format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: spinnaker\nspec:\n  accounts:\n{accounts}"
    )
}

fn apply(cp: &ControlPlane, yaml: &str) -> Result<()> {
    let out = cp.kubectl_stdin(["apply", "--server-side", "-f", "-"], yaml)?;
    if !out.success {
        return Err(format!("kubectl apply: {}", out.stderr).into());
    }
    Ok(())
}

/// A control plane with the AgentShard CRD `crd` (YAML or JSON) established and the
/// namespace `spinnaker`.
async fn control_plane(crd: &str) -> Result<ControlPlane> {
    let cp = ControlPlane::start(Options {
        nodes: 0,
        ..Options::default()
    })
    .await?;
    apply(&cp, crd)?;
    cp.kubectl([
        "wait",
        "--for=condition=established",
        "crd/agentshards.scaleagent.dev",
        "--timeout=60s",
    ])?;
    cp.kubectl(["create", "namespace", "spinnaker"])?;
    Ok(cp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_owner_follows_the_agentshards_in_the_cluster() -> Result<()> {
    logs();
    let cp = control_plane(&std::fs::read_to_string(CRD)?).await?;
    apply(&cp, &shard_yaml("east", &["prod-east"]))?;
    apply(&cp, &shard_yaml("west", &["prod-west"]))?;

    let client = cp.client().await?;
    let hub = hub_with(|c| {
        c.authorize = Some(ShardSource::Watch {
            namespaces: vec!["spinnaker".into()],
            client: Some(client),
        });
    })
    .await?;

    let mut west = FakeAgent::connect(&hub, "west", "west-0").await?;
    let results = west
        .register(&[("prod-west", "uid-w"), ("prod-east", "uid-e")])
        .await?;
    assert!(results[0].accepted, "{:?}", results[0]);
    assert!(!results[1].accepted);
    assert_eq!(results[1].reason, RegisterReason::NotOwner as i32);
    assert_owned_by(&results[1], "spinnaker/east");

    // The account moves: east lets it go, west takes it. The hub follows.
    apply(&cp, &shard_yaml("west", &["prod-west", "prod-east"]))?;
    apply(&cp, &shard_yaml("east", &[]))?;
    let mut accepted = false;
    for _ in 0..100 {
        let results = west.register(&[("prod-east", "uid-e")]).await?;
        if results[0].accepted {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "west owns prod-east after the change");

    // A shard outside the watched namespaces' lists owns nothing.
    let mut rogue = FakeAgent::connect(&hub, "rogue", "rogue-0").await?;
    let results = rogue.register(&[("prod-west", "uid-w")]).await?;
    assert_eq!(results[0].reason, RegisterReason::NotOwner as i32);
    assert!(
        results[0].message.contains("spinnaker/west"),
        "{}",
        results[0].message
    );

    // West drops prod-west from its spec: the hub revokes it from west's
    // session (NOT_OWNER, unsolicited) and the account is Disconnected.
    apply(&cp, &shard_yaml("west", &["prod-east"]))?;
    let revoked = west
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => r
                .accounts
                .iter()
                .find(|a| a.name == "prod-west" && a.reason == RegisterReason::NotOwner as i32)
                .cloned(),
            _ => None,
        })
        .await?;
    assert!(
        revoked
            .message
            .contains("no AgentShard lists account prod-west"),
        "{}",
        revoked.message
    );
    let a = account(&hub, "prod-west")
        .await?
        .ok_or("kept for the grace period")?;
    assert_eq!(a["state"], "Disconnected");
    let a = account(&hub, "prod-east").await?.ok_or("listed")?;
    assert_eq!(a["state"], "Connected");
    hub.shutdown().await?;
    Ok(())
}

/// The AgentShard CRD with `spec.budget.concurrentSyncs` loosened to any integer or
/// string, so the API server stores shards this version cannot decode, as a newer (or
/// broken) version of the CRD would.
fn loose_crd() -> Result<String> {
    let mut crd = serde_json::to_value(scale_agent_crds::crd())?;
    let syncs = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["budget"]["properties"]["concurrentSyncs"];
    if syncs.is_null() {
        return Err("the CRD has no spec.budget.concurrentSyncs".into());
    }
    *syncs = serde_json::json!({ "x-kubernetes-int-or-string": true });
    Ok(serde_json::to_string(&crd)?)
}

/// The hub refused the account, naming `owner`.
fn assert_not_owner(result: &scale_agent_proto::v1::AccountResult, owner: &str) {
    assert_eq!(result.reason, RegisterReason::NotOwner as i32, "{result:?}");
    assert!(result.message.contains(owner), "{}", result.message);
}

/// Registers `account` until the hub accepts it (for at most 10 s).
async fn accepted_within_10s(agent: &mut FakeAgent, account: &str) -> Result<bool> {
    for _ in 0..100 {
        if agent.register(&[(account, "uid")]).await?[0].accepted {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

fn undecodable(yaml: &str) -> String {
    format!("{yaml}  budget:\n    concurrentSyncs: lots\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agentshard_that_does_not_decode_neither_stops_the_watch_nor_frees_its_names()
-> Result<()> {
    logs();
    let cp = control_plane(&loose_crd()?).await?;
    apply(&cp, &shard_yaml("east", &["prod-east"]))?;
    apply(&cp, &undecodable(&shard_yaml("broken", &["prod-broken"])))?;
    apply(&cp, &shard_yaml("flaky", &["prod-flaky"]))?;

    let mut config = scale_agent_hub::Config::local();
    config.authorize = Some(ShardSource::Watch {
        namespaces: vec!["spinnaker".into()],
        client: Some(cp.client().await?),
    });
    let hub = scale_agent_hub::Hub::start(config).await?;

    // The list held one shard that does not decode: the others are enforced as usual.
    let mut east = FakeAgent::connect(&hub, "east", "east-0").await?;
    let results = east.register(&[("prod-east", "uid-e")]).await?;
    assert!(results[0].accepted, "{:?}", results[0]);
    let mut broken = FakeAgent::connect(&hub, "broken", "broken-0").await?;
    let results = broken.register(&[("prod-broken", "uid-b")]).await?;
    assert_eq!(results[0].reason, RegisterReason::NotOwner as i32);
    let mut flaky = FakeAgent::connect(&hub, "flaky", "flaky-0").await?;
    let results = flaky.register(&[("prod-flaky", "uid-f")]).await?;
    assert!(results[0].accepted, "{:?}", results[0]);

    // flaky becomes undecodable, in a version whose spec drops prod-flaky: the hub keeps
    // the last version it could read, so prod-flaky stays flaky's.
    apply(&cp, &undecodable(&shard_yaml("flaky", &[])))?;
    // A later, readable change: once the hub follows it, it has seen flaky's too.
    apply(&cp, &shard_yaml("marker", &["prod-marker"]))?;
    let mut marker = FakeAgent::connect(&hub, "marker", "marker-0").await?;
    assert!(
        accepted_within_10s(&mut marker, "prod-marker").await?,
        "the hub follows changes after an undecodable one"
    );
    let a = account(&hub, "prod-flaky").await?.ok_or("listed")?;
    assert_eq!(a["state"], "Connected", "prod-flaky was not revoked: {a}");
    apply(&cp, &shard_yaml("later", &["prod-flaky"]))?;
    let mut later = FakeAgent::connect(&hub, "later", "later-0").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let results = later.register(&[("prod-flaky", "uid-f")]).await?;
    assert_not_owner(&results[0], "spinnaker/flaky");

    // Fixed, broken is readable again and owns its account.
    apply(&cp, &shard_yaml("broken", &["prod-broken"]))?;
    assert!(
        accepted_within_10s(&mut broken, "prod-broken").await?,
        "broken owns prod-broken once it decodes"
    );
    hub.shutdown().await?;
    Ok(())
}
