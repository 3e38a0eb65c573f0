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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_owner_follows_the_agentshards_in_the_cluster() -> Result<()> {
    logs();
    let cp = ControlPlane::start(Options {
        nodes: 0,
        ..Options::default()
    })
    .await?;
    cp.kubectl(["apply", "--server-side", "-f", CRD])?;
    cp.kubectl([
        "wait",
        "--for=condition=established",
        "crd/agentshards.scaleagent.dev",
        "--timeout=60s",
    ])?;
    cp.kubectl(["create", "namespace", "spinnaker"])?;
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
    assert!(
        results[1]
            .message
            .contains("owned by AgentShard spinnaker/east"),
        "{}",
        results[1].message
    );

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
