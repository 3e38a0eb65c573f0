//! The foundation against the real control plane: the CRD is served as designed, the API
//! server itself validates AgentShards, kwok makes Deployments Available, and the garbage
//! collector removes dependents.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use scale_agent_e2e::kubectl::table;
use scale_agent_e2e::{Env, diagnostics, gitops, runner, wait};

fn main() {
    runner::main(
        &[],
        vec![
            ("crd_is_served_with_names_and_categories", |e| {
                Box::pin(crd_is_served(e))
            }),
            ("get_ash_wide_shows_printer_columns", |e| {
                Box::pin(get_ash_wide(e))
            }),
            ("api_server_rejects_duplicate_account_names", |e| {
                Box::pin(rejects_duplicates(e))
            }),
            ("api_server_rejects_invalid_account_name", |e| {
                Box::pin(rejects_invalid_name(e))
            }),
            ("api_server_rejects_unknown_field_server_side", |e| {
                Box::pin(rejects_unknown_field(e))
            }),
            ("api_server_rejects_both_namespaces_and_omit", |e| {
                Box::pin(rejects_cel_rule(e))
            }),
            (
                "a_new_shard_is_in_progress_for_gitops_until_the_operator_observes_it",
                |e| Box::pin(new_shard_in_progress(e)),
            ),
            ("kwok_makes_deployment_available", |e| {
                Box::pin(deployment_available(e))
            }),
            ("garbage_collector_removes_dependents", |e| {
                Box::pin(gc_removes_dependent(e))
            }),
            ("failure_report_shows_the_namespace_and_its_logs", |e| {
                Box::pin(failure_report(e))
            }),
        ],
    );
}

fn shard(ns: &str, name: &str, accounts: &str) -> String {
    format!(
        r#"apiVersion: scaleagent.dev/v1alpha1
kind: AgentShard
metadata:
  name: {name}
  namespace: {ns}
spec:
  hub:
    address: hub.example.com:443
  image: example.com/scale-agent:test
  accounts:
{accounts}"#
    )
}

fn account(name: &str) -> String {
    format!("  - name: {name}\n    kubeconfigSecretRef:\n      name: kc-{name}\n")
}

async fn crd_is_served(env: Arc<Env>) -> anyhow::Result<()> {
    let out = env.cp.kubectl([
        "api-resources",
        "--api-group=scaleagent.dev",
        "--no-headers",
    ])?;
    let line = out
        .lines()
        .find(|l| l.starts_with("agentshards"))
        .with_context(|| format!("agentshards not in discovery:\n{out}"))?;
    let cols: Vec<&str> = line.split_whitespace().collect();
    ensure!(
        cols == [
            "agentshards",
            "ash",
            "scaleagent.dev/v1alpha1",
            "true",
            "AgentShard"
        ],
        "unexpected discovery row: {line}"
    );
    // The category lists AgentShards with `kubectl get scaleagent`.
    let ns = env.namespace("category").await?;
    env.cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &shard(&ns, "by-category", &account("cat-1")),
    )?;
    let out = env
        .cp
        .kubectl(["get", "scaleagent", "-n", &ns, "-o", "name"])?;
    ensure!(
        out.trim() == "agentshard.scaleagent.dev/by-category",
        "kubectl get scaleagent printed {out:?}"
    );
    Ok(())
}

async fn get_ash_wide(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("printer").await?;
    let out = env.cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &shard(&ns, "east", &(account("east-1") + &account("east-2"))),
    )?;
    ensure!(out.success, "apply failed: {}", out.stderr);
    let out = env.cp.kubectl(["get", "ash", "-n", &ns, "-o", "wide"])?;
    let rows = table(&out);
    let row = rows.first().with_context(|| format!("no row in:\n{out}"))?;
    let columns: Vec<&str> = row.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(
        columns
            == [
                "NAME",
                "REPLICAS",
                "READY",
                "ACCOUNTS",
                "CONFLICTS",
                "STATUS",
                "AGE",
                "HUB",
                "IMAGE"
            ],
        "columns were {columns:?}"
    );
    let cell = |name: &str| {
        row.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("?")
    };
    // No operator runs here, so the status columns show the CRD's default status (nothing
    // ready, no Ready reason); the defaulted replicas (1) shows that the server applies
    // the schema's defaults.
    ensure!(cell("NAME") == "east", "row was {row:?}");
    ensure!(
        cell("REPLICAS") == "1",
        "REPLICAS should default to 1, row was {row:?}"
    );
    ensure!(
        cell("READY") == "0" && cell("CONFLICTS") == "0" && cell("STATUS").is_empty(),
        "status columns should show the default status, row was {row:?}"
    );
    ensure!(
        cell("HUB") == "hub.example.com:443",
        "HUB column, row was {row:?}"
    );
    ensure!(
        cell("IMAGE") == "example.com/scale-agent:test",
        "IMAGE column, row was {row:?}"
    );
    // Budget defaults are filled in by the server too.
    let budget = env.cp.kubectl([
        "get",
        "ash",
        "east",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.budget.concurrentSyncs} {.spec.budget.maxBufferedBytes}",
    ])?;
    ensure!(budget == "4 64Mi", "budget defaults were {budget:?}");
    Ok(())
}

/// What kstatus (Flux's `wait: true`, kpt) and the Argo CD health check make of `obj`.
fn gitops(obj: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let k = gitops::kstatus_of(obj)?;
    let (argo, message) = gitops::argocd_health(obj)?;
    eprintln!(
        "kstatus {} ({}), Argo CD {argo} ({message})",
        k.status, k.message
    );
    Ok((k.status, argo))
}

/// No operator runs here: a shard nobody has looked at must not read as done. kstatus
/// reads an object with no status and no conditions as Current, so the API server itself
/// gives a new shard a status saying the operator has not observed it yet — in the
/// response to a create (also a server-side dry run, what Flux diffs against), and on
/// every read until the operator writes its own. Once the operator writes a status for
/// the generation, the tools read it as they always did.
async fn new_shard_in_progress(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("fresh").await?;
    let yaml = shard(&ns, "fresh", &account("fresh-1"));
    let want = ("InProgress".to_owned(), "Progressing".to_owned());

    let out = env.cp.kubectl_stdin(
        ["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &yaml,
    )?;
    ensure!(out.success, "dry-run create failed: {}", out.stderr);
    let dry: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let seen = gitops(&dry)?;
    ensure!(
        seen == want,
        "a server-side dry-run create reads {seen:?}, not {want:?}: {}",
        dry["status"]
    );

    let out = env
        .cp
        .kubectl_stdin(["create", "-o", "json", "-f", "-"], &yaml)?;
    ensure!(out.success, "create failed: {}", out.stderr);
    let created: serde_json::Value = serde_json::from_str(&out.stdout)?;
    let seen = gitops(&created)?;
    ensure!(
        seen == want,
        "the create's response reads {seen:?}: {}",
        created["status"]
    );
    let listed = gitops::kstatus(&env.cp.management.kubeconfig, &ns)?;
    let k = listed
        .get(&format!("{ns}/fresh"))
        .with_context(|| format!("kstatus lists no {ns}/fresh: {listed:?}"))?;
    ensure!(
        k.status == "InProgress",
        "listed, the new shard reads {k:?}"
    );
    let read: serde_json::Value = serde_json::from_str(
        &env.cp
            .kubectl(["get", "ash", "fresh", "-n", &ns, "-o", "json"])?,
    )?;
    let seen = gitops(&read)?;
    ensure!(seen == want, "read back, the new shard reads {seen:?}");

    // The operator's first status write (a merge patch of the status subresource, as
    // it writes one) replaces the default: Ready for this generation reads Current and
    // Healthy.
    let now = "2026-01-01T00:00:00Z";
    let condition = |type_: &str, status: &str| {
        serde_json::json!({
            "type": type_, "status": status, "reason": "Ready", "message": "every account streams",
            "observedGeneration": 1, "lastTransitionTime": now,
        })
    };
    let patch = serde_json::json!({ "status": {
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "True"),
            condition("Reconciling", "False"),
            condition("Stalled", "False"),
        ],
    }});
    let out = env.cp.kubectl([
        "patch",
        "ash",
        "fresh",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-o",
        "json",
        "-p",
        &patch.to_string(),
    ])?;
    let written: serde_json::Value = serde_json::from_str(&out)?;
    let seen = gitops(&written)?;
    ensure!(
        seen == ("Current".to_owned(), "Healthy".to_owned()),
        "after the operator's status, the shard reads {seen:?}: {}",
        written["status"]
    );
    Ok(())
}

async fn rejects_duplicates(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("dup").await?;
    let out = env.cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &shard(&ns, "twice", &(account("same") + &account("same"))),
    )?;
    ensure!(
        !out.success,
        "a shard naming one account twice was accepted"
    );
    ensure!(
        out.stderr.contains("Duplicate value") && out.stderr.contains("same"),
        "unexpected error: {}",
        out.stderr
    );
    Ok(())
}

async fn rejects_invalid_name(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("badname").await?;
    for bad in [
        "Upper-Case",
        "-leading-dash",
        "under_score",
        &"x".repeat(64),
    ] {
        let out = env
            .cp
            .kubectl_stdin(["apply", "-f", "-"], &shard(&ns, "bad", &account(bad)))?;
        ensure!(!out.success, "account name {bad:?} was accepted");
        ensure!(
            out.stderr.contains("spec.accounts[0].name"),
            "error for {bad:?} does not name the field: {}",
            out.stderr
        );
    }
    Ok(())
}

async fn rejects_unknown_field(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("unknown").await?;
    let manifest =
        shard(&ns, "typo", &account("ok-1")).replace("  hub:\n", "  replica: 3\n  hub:\n");
    let out = env
        .cp
        .kubectl_stdin(["apply", "--server-side", "-f", "-"], &manifest)?;
    ensure!(!out.success, "an unknown field was accepted");
    ensure!(
        out.stderr.contains(".spec.replica:")
            && (out.stderr.contains("unknown field")
                || out.stderr.contains("field not declared in schema")),
        "unexpected error: {}",
        out.stderr
    );
    Ok(())
}

async fn rejects_cel_rule(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("cel").await?;
    let acct = account("both") + "    namespaces: [a]\n    omitNamespaces: [b]\n";
    let out = env
        .cp
        .kubectl_stdin(["apply", "-f", "-"], &shard(&ns, "both", &acct))?;
    ensure!(
        !out.success,
        "namespaces and omitNamespaces together were accepted"
    );
    ensure!(
        out.stderr.contains("namespaces") && out.stderr.contains("omitNamespaces"),
        "the CEL message should name both fields: {}",
        out.stderr
    );
    Ok(())
}

async fn deployment_available(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("kwok").await?;
    let client = env.cp.client().await?;
    let api: Api<Deployment> = Api::namespaced(client, &ns);
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.com/web:1" }] }
            }
        }
    }))?;
    api.create(&PostParams::default(), &d).await?;
    let ready = wait::until(
        "deployment web Available with 2 ready replicas",
        Duration::from_secs(90),
        || {
            let api = api.clone();
            async move {
                let d = api.get("web").await.ok()?;
                let status = d.status?;
                let available = status
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Available" && c.status == "True");
                (available && status.ready_replicas == Some(2)).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = ready {
        let pods = env
            .cp
            .kubectl(["get", "pods,rs,nodes", "-A", "-o", "wide"])
            .unwrap_or_default();
        bail!("{e}\n{pods}");
    }
    Ok(())
}

async fn gc_removes_dependent(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("gc").await?;
    let api: Api<ConfigMap> = Api::namespaced(env.cp.client().await?, &ns);
    let owner: ConfigMap =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "owner" } }))?;
    let owner = api.create(&PostParams::default(), &owner).await?;
    let uid = owner.metadata.uid.context("owner has no uid")?;
    let dependent: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{ "apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid }]
        }
    }))?;
    api.create(&PostParams::default(), &dependent).await?;
    api.delete("owner", &DeleteParams::default()).await?;
    wait::until(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || {
            let api = api.clone();
            async move {
                match api.get_opt("dependent").await {
                    Ok(None) => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await?;
    Ok(())
}

/// What a failed test prints, built from a real namespace: the shard's status as the
/// status subresource holds it, the namespace's Events, the end of a component's log in
/// the test's folder, and only the lines of a shared log that name the namespace.
async fn failure_report(env: Arc<Env>) -> anyhow::Result<()> {
    let ns = env.namespace("report").await?;
    env.apply(&shard(&ns, "reported", &account("rep-1")))?;
    env.cp.kubectl([
        "patch",
        "ash",
        "reported",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"observedGeneration":1,"conditions":[{"type":"Ready","status":"False","reason":"StatusReason","message":"the status the report shows","lastTransitionTime":"2025-01-01T00:00:00Z"}]}}"#,
    ])?;
    env.apply(&format!(
        "apiVersion: v1\nkind: Event\nmetadata:\n  name: reported.1\n  namespace: {ns}\ninvolvedObject:\n  apiVersion: scaleagent.dev/v1alpha1\n  kind: AgentShard\n  name: reported\n  namespace: {ns}\nreason: EventReason\nmessage: the event the report shows\ntype: Warning\nsource:\n  component: e2e\n"
    ))?;
    let logs = env.test_dir(&ns).join("logs");
    std::fs::create_dir_all(&logs)?;
    let hub_log: String = (1..=100).map(|i| format!("hub line {i}\n")).collect();
    std::fs::write(logs.join("hub.log"), hub_log)?;
    let shared = env.test_dir(&ns).join("shared.txt");
    std::fs::write(
        &shared,
        format!("about {ns}/reported\nabout another-namespace/x\n"),
    )?;

    let report = diagnostics::report(&env, std::slice::from_ref(&ns), &[shared]);
    for expected in [
        // The objects, the status and the Events of the namespace.
        "agentshard.scaleagent.dev/reported",
        "reason: StatusReason",
        "the status the report shows",
        "EventReason",
        "the event the report shows",
        // The end of the component's log, bounded.
        "hub line 100\n",
        "hub line 71\n",
        "(70 earlier lines left out)",
        // The shared log's line about this test.
        &format!("about {ns}/reported"),
    ] {
        ensure!(
            report.contains(expected),
            "the report lacks {expected:?}:\n{report}"
        );
    }
    for unexpected in ["hub line 70\n", "another-namespace", "failed:"] {
        ensure!(
            !report.contains(unexpected),
            "the report shows {unexpected:?}:\n{report}"
        );
    }
    Ok(())
}
