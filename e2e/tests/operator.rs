//! The operator against the real control plane (webhook in `warn` mode): children with
//! owner references, account edits without a rollout, image changes with one, conflicts
//! across namespaces with the Event and the webhook warning, handoff after the owner is
//! deleted, a move between shards in one apply with no overlap, invalid accounts in
//! status, kubeconfig Secrets rotated, broken, deleted and created again, garbage
//! collection, `kubectl wait`, no status write on a no-op reconcile, and
//! a second operator that stays standby.
//!
//! No agent runs in these tests but in `kubectl_wait_for_ready`: the accounts a shard
//! serves are in its agent config and hold their names, and honestly show that no
//! replica streams them (`NoReplica`); `e2e/tests/status.rs` covers streaming.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use scale_agent_crds::{AccountState, AgentConfig, AgentShard, CONFIG_KEY, condition_type};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::kubectl::table;
use scale_agent_e2e::operator::{Operator, OperatorOptions};
use scale_agent_e2e::operator_env::{self, OperatorEnv, shard_yaml};
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::runner::in_namespace;
use scale_agent_e2e::{wait, workspace_binary};
use serde::de::DeserializeOwned;

fn main() {
    operator_env::main(
        OperatorOptions {
            // The image tests name their own images.
            extra_args: vec!["--allowed-images=example.com/agent:*".into()],
            ..OperatorOptions::default()
        },
        None,
        scale_agent_e2e::tests![
            children_are_applied_with_owner_references => children,
            edited_or_deleted_children_are_put_back => children_put_back,
            account_edit_does_not_change_the_pod_template => account_edit,
            image_change_changes_the_pod_template => image_change,
            conflict_across_namespaces_older_wins_with_event_and_warning => conflict,
            handoff_within_10s_after_the_owner_is_deleted => handoff,
            account_moved_in_one_apply_never_in_two_configs => move_account,
            missing_secret_garbage_and_refused_kubeconfigs_in_status => invalid_accounts,
            rotated_invalid_deleted_and_recreated_kubeconfig_secrets_reach_the_agents => rotated_secret,
            secrets_that_are_not_kubeconfigs_are_never_quoted_and_servers_are_checked => kubeconfig_trust,
            shard_deletion_garbage_collects_children => deletion,
            kubectl_wait_for_ready => kubectl_wait,
            no_status_write_on_noop_reconcile => no_op,
            paused_shard_is_left_alone => paused,
            second_operator_stays_standby => standby,
        ],
    );
}

fn account_state(s: &AgentShard, name: &str) -> Option<AccountState> {
    s.account_status(name).map(|a| a.state)
}

/// The Ready condition's status and reason.
fn shard_ready(st: &scale_agent_crds::AgentShardStatus) -> Option<(&str, &str)> {
    st.condition(condition_type::READY)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// The operator has looked at the current spec (twice: Ready is no longer Unknown), the
/// config is valid and every account is the shard's own.
fn reconciled(s: &AgentShard) -> bool {
    s.status_is_current()
        && s.condition(condition_type::READY)
            .is_some_and(|c| c.status != "Unknown")
        && s.is_condition_true(condition_type::CONFIG_VALID)
        && s.is_condition_true(condition_type::ACCOUNTS_UNIQUE)
}

/// Account `name` is in the shard's agent config (whether a replica streams it or not).
fn served(s: &AgentShard, name: &str) -> bool {
    account_state(s, name).is_some_and(AccountState::served)
}

/// Shard `name` in `ns` with one account `a` (its kubeconfig in Secret `kc-a`) and the
/// spec lines `extra`, applied and reconciled.
async fn one_account_shard(
    env: &OperatorEnv,
    ns: &str,
    name: &str,
    extra: &str,
) -> anyhow::Result<()> {
    env.kubeconfig_secret(ns, "kc-a")?;
    env.apply(&shard_yaml(ns, name, &[("a", "kc-a")], extra))?;
    env.wait_shard(&format!("{name} reconciled"), ns, name, 60, reconciled)
        .await?;
    Ok(())
}

async fn deployment(env: &OperatorEnv, ns: &str, name: &str) -> anyhow::Result<Deployment> {
    let api: Api<Deployment> = Api::namespaced(env.client().await?, ns);
    Ok(api.get(&format!("{name}-agent")).await?)
}

fn controller_uid<K: Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "AgentShard")
        .map(|o| o.uid.clone())
}

/// Child `name` of kind `K` in `ns`, failing unless the shard with uid `shard_uid`
/// controls it.
async fn controlled_child<K>(
    client: &kube::Client,
    ns: &str,
    name: &str,
    shard_uid: &str,
) -> anyhow::Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let child = Api::<K>::namespaced(client.clone(), ns).get(name).await?;
    let owner = controller_uid(&child);
    ensure!(
        owner.as_deref() == Some(shard_uid),
        "{} {name} is not controlled by the shard (owner {owner:?})",
        K::kind(&())
    );
    Ok(child)
}

/// The operator applies a child only when it needs it: a child someone edits or deletes
/// is still put back, by the reconcile its change brings.
async fn children_put_back(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "put-back", |env, ns| async move {
        one_account_shard(&env, &ns, "east", "").await?;
        let client = env.client().await?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let config = |cm: Option<ConfigMap>| {
            cm.and_then(|c| c.data)
                .and_then(|d| d.get(CONFIG_KEY).cloned())
        };
        let applied = config(cms.get_opt("east-agent-config").await?).context("the config")?;
        env.cp.kubectl([
            "patch",
            "configmap",
            "east-agent-config",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &format!(r#"{{"data":{{"{CONFIG_KEY}":"edited"}}}}"#),
        ])?;
        wait::until(
            "the edited ConfigMap put back",
            Duration::from_secs(20),
            || {
                let (cms, applied) = (cms.clone(), applied.clone());
                async move {
                    (config(cms.get_opt("east-agent-config").await.ok()?)? == applied).then_some(())
                }
            },
        )
        .await?;
        secrets
            .delete("east-agent-kubeconfigs", &DeleteParams::default())
            .await?;
        deps.delete("east-agent", &DeleteParams::default()).await?;
        wait::until(
            "the deleted Secret and Deployment put back",
            Duration::from_secs(20),
            || {
                let (secrets, deps) = (secrets.clone(), deps.clone());
                async move {
                    let secret = secrets.get_opt("east-agent-kubeconfigs").await.ok()??;
                    deps.get_opt("east-agent").await.ok()??;
                    secret
                        .data
                        .is_some_and(|d| d.contains_key("a.kubeconfig"))
                        .then_some(())
                }
            },
        )
        .await?;
        Ok(())
    })
    .await
}

async fn children(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "children", |env, ns| async move {
        env.kubeconfig_secret(&ns, "kc-a")?;
        // A ResourceQuota counting CPU and memory, as many clusters give each namespace:
        // it refuses pods that do not say what they need, so the agent pods below exist
        // only because the operator gives them requests and limits by default.
        env.apply(&format!(
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{ name: compute, namespace: {ns} }}\nspec:\n  hard: {{ requests.cpu: '4', requests.memory: 4Gi, limits.cpu: '8', limits.memory: 8Gi }}\n"
        ))?;
        env.apply(&shard_yaml(
            &ns,
            "east",
            &[("a", "kc-a")],
            "  replicas: 2\n",
        ))?;
        let shard = env
            .wait_shard("east reconciled", &ns, "east", 60, reconciled)
            .await?;
        let uid = shard.uid().context("shard uid")?;
        let client = env.client().await?;
        let cm: ConfigMap = controlled_child(&client, &ns, "east-agent-config", &uid).await?;
        let secret: Secret = controlled_child(&client, &ns, "east-agent-kubeconfigs", &uid).await?;
        let dep: Deployment = controlled_child(&client, &ns, "east-agent", &uid).await?;
        controlled_child::<PodDisruptionBudget>(&client, &ns, "east-agent", &uid).await?;
        controlled_child::<ServiceAccount>(&client, &ns, "east-agent", &uid).await?;
        controlled_child::<Role>(&client, &ns, "east-agent", &uid).await?;
        controlled_child::<RoleBinding>(&client, &ns, "east-agent", &uid).await?;
        // Field manager of the operator's writes.
        ensure!(
            cm.managed_fields()
                .iter()
                .any(|m| m.manager.as_deref() == Some("scale-agent-operator")),
            "ConfigMap not applied by field manager scale-agent-operator"
        );
        // The config: default hub, the account, its kubeconfig copied.
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(CONFIG_KEY))
            .context("config.yaml")?;
        let config = AgentConfig::from_yaml(text)?;
        ensure!(
            config.hub.address == "hub.scale-agent.invalid:443",
            "hub {:?}",
            config.hub
        );
        ensure!(
            config.accounts.len() == 1 && config.accounts[0].name == "a",
            "accounts {:?}",
            config.accounts
        );
        let source = std::fs::read(&env.cp.management.kubeconfig)?;
        let copied = secret
            .data
            .as_ref()
            .and_then(|d| d.get("a.kubeconfig"))
            .context("a.kubeconfig")?;
        ensure!(copied.0 == source, "the kubeconfig was not copied as is");
        // The pod template: the default image, both volumes, probes, the ServiceAccount.
        let pod = dep
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .context("pod spec")?;
        let c = &pod.containers[0];
        ensure!(
            c.image.as_deref() == Some("scale-agent:dev"),
            "image {:?}",
            c.image
        );
        ensure!(pod.service_account_name.as_deref() == Some("east-agent"));
        let vols: Vec<String> = pod
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect();
        ensure!(vols == ["config", "kubeconfigs"], "volumes {vols:?}");
        ensure!(
            c.readiness_probe.is_some() && c.liveness_probe.is_some(),
            "probes missing"
        );
        let resources = c.resources.clone().unwrap_or_default();
        ensure!(
            ["cpu", "memory"].iter().all(|k| {
                resources.requests.as_ref().is_some_and(|r| r.contains_key(*k))
                    && resources.limits.as_ref().is_some_and(|l| l.contains_key(*k))
            }),
            "a shard without resources gets no default requests and limits: {resources:?}"
        );
        ensure!(dep.spec.as_ref().and_then(|s| s.replicas) == Some(2));
        // Two pods, no agent running in them: nothing streams, and the status says so.
        let shard = env
            .wait_shard("east's pods counted", &ns, "east", 30, |s| {
                s.status.as_ref().is_some_and(|st| st.replicas == 2)
            })
            .await?;
        ensure!(
            account_state(&shard, "a") == Some(AccountState::NoReplica),
            "status {:?}",
            shard.status
        );
        let st = shard.status.context("status")?;
        ensure!(
            st.ready_replicas == 0 && st.active_accounts == 0 && st.conflicts == 0,
            "status {st:?}"
        );
        ensure!(
            shard_ready(&st) == Some(("False", "NoReplica")),
            "Ready {:?}",
            st.conditions
        );
        Ok(())
    })
    .await
}

async fn account_edit(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "acct-edit", |env, ns| async move {
        env.kubeconfig_secret(&ns, "kc-a")?;
        env.kubeconfig_secret(&ns, "kc-b")?;
        env.apply(&shard_yaml(&ns, "east", &[("a", "kc-a")], ""))?;
        env.wait_shard("east reconciled", &ns, "east", 60, reconciled)
            .await?;
        let before = deployment(&env, &ns, "east").await?;
        // Add an account and edit the other one's filters.
        let edited = shard_yaml(&ns, "east", &[("a", "kc-a"), ("b", "kc-b")], "").replace(
            "      name: kc-a\n",
            "      name: kc-a\n    namespaces: [default]\n",
        );
        env.apply(&edited)?;
        env.wait_config("config with a (filtered) and b", &ns, "east", 30, |c| {
            c.account("b").is_some()
                && c.account("a")
                    .is_some_and(|a| a.scope.namespaces == ["default"])
        })
        .await?;
        env.wait_shard("east serving 2 accounts", &ns, "east", 30, |s| {
            reconciled(s) && served(s, "a") && served(s, "b")
        })
        .await?;
        let after = deployment(&env, &ns, "east").await?;
        ensure!(
            before.metadata.generation == after.metadata.generation,
            "the Deployment changed generation ({:?} -> {:?}): accounts must not roll the pods",
            before.metadata.generation,
            after.metadata.generation
        );
        ensure!(
            before.spec.as_ref().map(|s| &s.template) == after.spec.as_ref().map(|s| &s.template),
            "the pod template changed"
        );
        // Removing an account does not roll either.
        env.apply(&shard_yaml(&ns, "east", &[("b", "kc-b")], ""))?;
        env.wait_config("config without a", &ns, "east", 30, |c| {
            c.account("a").is_none()
        })
        .await?;
        let removed = deployment(&env, &ns, "east").await?;
        ensure!(
            before.metadata.generation == removed.metadata.generation,
            "removing an account rolled the pods"
        );
        Ok(())
    })
    .await
}

async fn image_change(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "image", |env, ns| async move {
        one_account_shard(&env, &ns, "east", "  image: example.com/agent:1\n").await?;
        let before = deployment(&env, &ns, "east").await?;
        env.apply(&shard_yaml(
            &ns,
            "east",
            &[("a", "kc-a")],
            "  image: example.com/agent:2\n",
        ))?;
        let api: Api<Deployment> = Api::namespaced(env.client().await?, &ns);
        let after = wait::until(
            "the Deployment to run agent:2",
            Duration::from_secs(30),
            || {
                let api = api.clone();
                async move {
                    let d = api.get("east-agent").await.ok()?;
                    let image = d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                        .image
                        .clone()?;
                    (image == "example.com/agent:2").then_some(d)
                }
            },
        )
        .await?;
        ensure!(
            after.metadata.generation > before.metadata.generation,
            "the Deployment generation did not move: {:?} -> {:?}",
            before.metadata.generation,
            after.metadata.generation
        );
        // Reconciled again, for the new generation.
        env.wait_shard(
            "east reconciled after the change",
            &ns,
            "east",
            60,
            reconciled,
        )
        .await?;
        Ok(())
    })
    .await
}

async fn conflict(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    let owner_ns = env.namespace("conflict-owner").await?;
    in_namespace(env, "conflict-late", |env, ns| {
        let owner_ns = owner_ns.clone();
        async move {
            env.kubeconfig_secret(&owner_ns, "kc-x")?;
            env.kubeconfig_secret(&ns, "kc-x")?;
            env.kubeconfig_secret(&ns, "kc-y")?;
            let x = format!("shared-{}", std::process::id());
            env.apply(&shard_yaml(&owner_ns, "owner", &[(&x, "kc-x")], ""))?;
            env.wait_shard("owner serving x", &owner_ns, "owner", 60, |s| served(s, &x))
                .await?;
            let warnings = env.apply(&shard_yaml(
                &ns,
                "late",
                &[(&x, "kc-x"), ("yy", "kc-y")],
                "",
            ))?;
            let owner_key = format!("{owner_ns}/owner");
            ensure!(
                warnings.contains("Warning:")
                    && warnings.contains(&owner_key)
                    && warnings.contains(&x),
                "kubectl apply did not print the webhook's warning naming {owner_key}: {warnings:?}"
            );
            let late = env
                .wait_shard("late to show the conflict", &ns, "late", 60, |s| {
                    s.status_is_current()
                        && account_state(s, &x) == Some(AccountState::Conflict)
                        && served(s, "yy")
                })
                .await?;
            let acct = late.account_status(&x).context("status of x")?;
            ensure!(
                acct.owner_shard.as_deref() == Some(owner_key.as_str()),
                "ownerShard {:?}",
                acct.owner_shard
            );
            let unique = late
                .condition(condition_type::ACCOUNTS_UNIQUE)
                .context("AccountsUnique")?;
            ensure!(
                unique.status == "False" && unique.message.contains(&owner_key),
                "AccountsUnique {unique:?}"
            );
            // kubectl get ash shows it (ACCOUNTS counts streaming accounts: no agent
            // runs here).
            let out = env.cp.kubectl(["get", "ash", "-n", &ns])?;
            let rows = table(&out);
            let row: BTreeMap<String, String> = rows
                .first()
                .cloned()
                .context("no row")?
                .into_iter()
                .collect();
            ensure!(
                row["CONFLICTS"] == "1" && row["ACCOUNTS"] == "0",
                "kubectl get ash:\n{out}"
            );
            // The losing shard's config leaves x out; the owner's keeps it.
            let cfg = env
                .wait_config("late config with y", &ns, "late", 30, |c| {
                    c.account("yy").is_some()
                })
                .await?;
            ensure!(cfg.account(&x).is_none(), "late's config carries {x}");
            let owner_cfg = env
                .agent_config(&owner_ns, "owner")
                .await?
                .context("owner config")?;
            ensure!(owner_cfg.account(&x).is_some(), "owner's config lost {x}");
            let owner = env.shard(&owner_ns, "owner").await?.context("owner")?;
            ensure!(served(&owner, &x), "owner lost {x}");
            // A Warning Event naming the owner.
            let events = wait::until("the AccountConflict Event", Duration::from_secs(20), || {
                let env = env.clone();
                let ns = ns.clone();
                let owner_key = owner_key.clone();
                async move {
                    let out = env
                        .cp
                        .kubectl([
                            "get",
                            "events",
                            "-n",
                            &ns,
                            "--field-selector",
                            "reason=AccountConflict,type=Warning",
                            "-o",
                            "jsonpath={.items[*].message}",
                        ])
                        .ok()?;
                    out.contains(&owner_key).then_some(out)
                }
            })
            .await?;
            ensure!(
                events.contains(&x),
                "event does not name the account: {events}"
            );
            Ok(())
        }
    })
    .await
}

async fn handoff(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    let owner_ns = env.namespace("handoff-owner").await?;
    in_namespace(env, "handoff-next", |env, ns| {
        let owner_ns = owner_ns.clone();
        async move {
            let x = format!("handoff-{}", std::process::id());
            env.kubeconfig_secret(&owner_ns, "kc-x")?;
            env.kubeconfig_secret(&ns, "kc-x")?;
            env.apply(&shard_yaml(&owner_ns, "owner", &[(&x, "kc-x")], ""))?;
            env.wait_shard("owner serving", &owner_ns, "owner", 60, |s| served(s, &x))
                .await?;
            env.apply(&shard_yaml(&ns, "next", &[(&x, "kc-x")], ""))?;
            env.wait_shard("next in conflict", &ns, "next", 60, |s| {
                account_state(s, &x) == Some(AccountState::Conflict)
            })
            .await?;
            let api: Api<AgentShard> = Api::namespaced(env.client().await?, &owner_ns);
            let deleted = Instant::now();
            api.delete("owner", &DeleteParams::default()).await?;
            env.wait_config("next's config to carry the account", &ns, "next", 10, |c| {
                c.account(&x).is_some()
            })
            .await?;
            let to_config = deleted.elapsed();
            env.wait_shard("next serving it", &ns, "next", 10, |s| served(s, &x))
                .await?;
            let to_status = deleted.elapsed();
            eprintln!("handoff after deletion: config in {to_config:?}, status in {to_status:?}");
            ensure!(
                to_status < Duration::from_secs(10),
                "handoff took {to_status:?}"
            );
            // The Normal Event says so.
            let out = env.cp.kubectl([
                "get",
                "events",
                "-n",
                &ns,
                "--field-selector",
                "reason=AccountAcquired",
                "-o",
                "name",
            ])?;
            ensure!(!out.trim().is_empty(), "no AccountAcquired Event");
            Ok(())
        }
    })
    .await
}

async fn move_account(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "move", |env, ns| async move {
        // a serves x and 20 more accounts (so its reconcile is the slower one), b one.
        let fillers: Vec<String> = (0..20).map(|i| format!("fill-{i}")).collect();
        let kubeconfig = std::fs::read_to_string(&env.cp.management.kubeconfig)?;
        let mut secrets = String::new();
        for name in ["x", "zz"].iter().map(|s| s.to_string()).chain(fillers.iter().cloned()) {
            secrets += &format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: kc-{name}\n  namespace: {ns}\nstringData:\n  kubeconfig: {}\n",
                serde_json::to_string(&kubeconfig)?
            );
        }
        env.apply(&secrets)?;
        let x = format!("moving-{}", std::process::id());
        let fill_secrets: Vec<String> = fillers.iter().map(|f| format!("kc-{f}")).collect();
        let a_accounts = |with_x: bool| -> Vec<(&str, &str)> {
            let mut v: Vec<(&str, &str)> = fillers
                .iter()
                .zip(&fill_secrets)
                .map(|(f, s)| (f.as_str(), s.as_str()))
                .collect();
            if with_x {
                v.insert(0, (x.as_str(), "kc-x"));
            }
            v
        };
        let b_accounts = |with_x: bool| -> Vec<(&str, &str)> {
            let mut v = vec![("zz", "kc-zz")];
            if with_x {
                v.push((x.as_str(), "kc-x"));
            }
            v
        };
        env.apply(&shard_yaml(&ns, "a", &a_accounts(true), ""))?;
        env.wait_shard("a serving x", &ns, "a", 60, |s| {
            served(s, &x)
        })
        .await?;
        env.apply(&shard_yaml(&ns, "b", &b_accounts(false), ""))?;
        env.wait_shard("b serving zz", &ns, "b", 60, |s| {
            served(s, "zz")
        })
        .await?;

        // Record every version of both ConfigMaps while the moves happen.
        let api: Api<ConfigMap> = Api::namespaced(env.client().await?, &ns);
        let seen: Arc<Mutex<Vec<(u64, String, bool)>>> = Arc::default();
        let recorder = {
            let seen = seen.clone();
            let x = x.clone();
            tokio::spawn(async move {
                let stream = watcher(api, watcher::Config::default()).touched_objects();
                futures::pin_mut!(stream);
                while let Some(Ok(cm)) = stream.next().await {
                    let rv: u64 = cm
                        .resource_version()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let carries = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get(CONFIG_KEY))
                        .and_then(|t| AgentConfig::from_yaml(t).ok())
                        .is_some_and(|c| c.account(&x).is_some());
                    if let Ok(mut s) = seen.lock() {
                        s.push((rv, cm.name_any(), carries));
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let serving = |s: &AgentShard| {
            s.status_is_current()
                && served(s, &x)
                && s.status.as_ref().is_some_and(|st| st.conflicts == 0)
        };
        for round in 0..3 {
            // One apply: b (gaining x) comes first, so it claims x before a lets go.
            let to_b = format!(
                "{}---\n{}",
                shard_yaml(&ns, "b", &b_accounts(true), ""),
                shard_yaml(&ns, "a", &a_accounts(false), "")
            );
            let started = Instant::now();
            env.apply(&to_b)?;
            env.wait_config("b's config to carry x", &ns, "b", 30, |c| c.account(&x).is_some())
                .await?;
            env.wait_shard("b serving x", &ns, "b", 30, serving).await?;
            eprintln!("move {round} to b completed in {:?}", started.elapsed());
            let a_cfg = env.agent_config(&ns, "a").await?.context("a config")?;
            ensure!(a_cfg.account(&x).is_none(), "a still carries x");
            if round < 2 {
                // And back, to move it again.
                let to_a = format!(
                    "{}---\n{}",
                    shard_yaml(&ns, "b", &b_accounts(false), ""),
                    shard_yaml(&ns, "a", &a_accounts(true), "")
                );
                env.apply(&to_a)?;
                env.wait_shard("a serving x again", &ns, "a", 30, serving).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        recorder.abort();
        // Replay the versions in resourceVersion order: never both at once.
        let mut events = seen.lock().map(|s| s.clone()).unwrap_or_default();
        events.sort();
        let mut state: BTreeMap<String, bool> = BTreeMap::new();
        for (rv, name, carries) in &events {
            state.insert(name.clone(), *carries);
            let holders: Vec<&String> = state.iter().filter(|(_, c)| **c).map(|(n, _)| n).collect();
            if holders.len() > 1 {
                bail!("at resourceVersion {rv} both {holders:?} carried {x}; versions: {events:?}");
            }
        }
        ensure!(
            state.get("b-agent-config") == Some(&true),
            "the watch never saw b carry x: {events:?}"
        );
        Ok(())
    })
    .await
}

async fn invalid_accounts(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "invalid", |env, ns| async move {
        env.kubeconfig_secret(&ns, "kc-good")?;
        env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kc-garbage\n  namespace: {ns}\nstringData:\n  kubeconfig: \"this is not a kubeconfig: [\"\n"
        ))?;
        // A kubeconfig that would make the agent run a program.
        env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: kc-exec\n  namespace: {ns}\nstringData:\n  kubeconfig: |\n    apiVersion: v1\n    kind: Config\n    clusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:6443'}}}}]\n    users: [{{name: u, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, 'touch /tmp/ran']}}}}}}]\n    contexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n    current-context: x\n"
        ))?;
        env.apply(&shard_yaml(
            &ns,
            "mixed",
            &[("good", "kc-good"), ("missing", "kc-missing"), ("garbage", "kc-garbage"), ("exec", "kc-exec")],
            "",
        ))?;
        let s = env
            .wait_shard("mixed to report its accounts", &ns, "mixed", 60, |s| {
                s.status_is_current() && s.status.as_ref().is_some_and(|st| st.accounts.len() == 4)
            })
            .await?;
        let st = |n: &str| s.account_status(n).cloned().context(format!("status of {n}"));
        ensure!(st("good")?.state.served(), "good: {:?}", st("good")?);
        let missing = st("missing")?;
        ensure!(
            missing.state == AccountState::Invalid && missing.reason == "SecretNotFound" && missing.message.contains("kc-missing"),
            "missing: {missing:?}"
        );
        let garbage = st("garbage")?;
        ensure!(
            garbage.state == AccountState::Invalid && garbage.reason == "KubeconfigInvalid" && garbage.message.contains("kc-garbage"),
            "garbage: {garbage:?}"
        );
        let exec = st("exec")?;
        ensure!(
            exec.state == AccountState::Invalid && exec.reason == "KubeconfigRefused" && exec.message.contains("kc-exec") && exec.message.contains("--allow-kubeconfig=exec"),
            "exec: {exec:?}"
        );
        let cv = s.condition(condition_type::CONFIG_VALID).context("ConfigValid")?;
        ensure!(
            cv.status == "False" && cv.message.contains("kc-missing") && cv.message.contains("kc-garbage"),
            "ConfigValid {cv:?}"
        );
        let cfg = env.wait_config("config with good", &ns, "mixed", 30, |c| c.account("good").is_some()).await?;
        let names: Vec<&str> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
        ensure!(names == ["good"], "config accounts {names:?}");
        let d = deployment(&env, &ns, "mixed").await?;
        ensure!(d.metadata.name.is_some());
        // Creating the missing Secret fixes it within seconds (the Secret watch).
        env.kubeconfig_secret(&ns, "kc-missing")?;
        env.wait_config("config with missing", &ns, "mixed", 15, |c| c.account("missing").is_some()).await?;
        env.wait_shard("missing served", &ns, "mixed", 15, |s| served(s, "missing")).await?;
        Ok(())
    })
    .await
}

/// Issue 23: the operator reads an account's kubeconfig Secret again only when the watch
/// shows another version of it, and the agents' kubeconfig Secret copies kubeconfigs it
/// knows only by their check. A rotated Secret still reaches the agents (with the other
/// account's copy intact), one that becomes invalid or is deleted still shows in the
/// status and leaves the agents, and one created again comes back.
async fn rotated_secret(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "rotate", |env, ns| async move {
        env.kubeconfig_secret(&ns, "kc-a")?;
        env.kubeconfig_secret(&ns, "kc-b")?;
        env.apply(&shard_yaml(
            &ns,
            "east",
            &[("a", "kc-a"), ("b", "kc-b")],
            "",
        ))?;
        env.wait_shard("east serving a and b", &ns, "east", 60, |s| {
            reconciled(s) && served(s, "a") && served(s, "b")
        })
        .await?;
        let client = env.client().await?;
        let secrets: Api<Secret> = Api::namespaced(client, &ns);
        let source = std::fs::read_to_string(&env.cp.management.kubeconfig)?;
        // The agents' copies of a and b once they are `a` and `b` (`None`: not copied).
        let copies = |a: Option<String>, b: Option<String>| {
            let secrets = secrets.clone();
            let want = (a, b);
            async move {
                let data = secrets
                    .get_opt("east-agent-kubeconfigs")
                    .await
                    .ok()??
                    .data?;
                let copy = |n: &str| {
                    data.get(&format!("{n}.kubeconfig"))
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                };
                ((copy("a"), copy("b")) == want).then_some(())
            }
        };
        let both = || copies(Some(source.clone()), Some(source.clone()));
        wait::until(
            "the agents' copies of a and b",
            Duration::from_secs(30),
            both,
        )
        .await?;
        let set = |body: String| {
            let secrets = secrets.clone();
            async move {
                secrets
                    .patch(
                        "kc-a",
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({ "stringData": { "kubeconfig": body } })),
                    )
                    .await
            }
        };

        // Rotated credentials: new bytes for a; b's copy stays.
        let rotated = format!("{source}\n# rotated credentials\n");
        set(rotated.clone()).await?;
        wait::until(
            "the rotated kubeconfig copied for a",
            Duration::from_secs(30),
            || copies(Some(rotated.clone()), Some(source.clone())),
        )
        .await?;

        // No longer a kubeconfig: Invalid, and out of the agents' kubeconfigs and config.
        set("this is not a kubeconfig: [".to_owned()).await?;
        env.wait_shard("a invalid", &ns, "east", 30, |s| {
            s.account_status("a").is_some_and(|a| {
                a.state == AccountState::Invalid && a.reason == "KubeconfigInvalid"
            }) && served(s, "b")
        })
        .await?;
        wait::until("a's copy removed", Duration::from_secs(30), || {
            copies(None, Some(source.clone()))
        })
        .await?;
        env.wait_config("config without a", &ns, "east", 30, |c| {
            c.account("a").is_none() && c.account("b").is_some()
        })
        .await?;

        // Deleted: SecretNotFound.
        secrets.delete("kc-a", &DeleteParams::default()).await?;
        env.wait_shard("a's Secret not found", &ns, "east", 30, |s| {
            s.account_status("a")
                .is_some_and(|a| a.reason == "SecretNotFound")
        })
        .await?;

        // Created again: served, copied again.
        env.kubeconfig_secret(&ns, "kc-a")?;
        env.wait_shard("a served again", &ns, "east", 30, |s| {
            served(s, "a") && served(s, "b")
        })
        .await?;
        wait::until("a copied again", Duration::from_secs(30), both).await?;
        Ok(())
    })
    .await
}

/// Issue 21: whoever may write AgentShards may name any Secret of the namespace; what the
/// operator says of one that is not a kubeconfig (a service-account token, a private key)
/// never carries its content, in the status or in an Event. Plain-HTTP and link-local
/// servers are refused, naming the flag; a kubeconfig with two contexts is usable with
/// the account's `context` and Invalid without it.
async fn kubeconfig_trust(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IlRFU1RLRVkifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbTphZG1pbiJ9.VEhJU0lTVEhFU0lHTkFUVVJF";
    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\n    MHcCAQEEIFRISVNJU1RIRVBSSVZBVEVLRVlUSElTSVNUSEVQUklWQVRFS0VZoAoG\n    -----END EC PRIVATE KEY-----";
    const FRAGMENTS: [&str; 4] = ["eyJhbGci", "VEhJU0lT", "MHcCAQEE", "FRISVNJU1RI"];
    in_namespace(env, "trust", |env, ns| async move {
        let secret = |name: &str, body: &str| {
            env.apply(&format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\nstringData:\n  kubeconfig: |\n    {body}\n"
            ))
        };
        let kubeconfig = |clusters: &str, contexts: &str| {
            format!("apiVersion: v1\n    kind: Config\n    clusters: [{clusters}]\n    contexts: [{contexts}]\n    users: [{{name: u, user: {{token: abc}}}}]")
        };
        secret("kc-token", JWT)?;
        secret("kc-key", KEY)?;
        secret("kc-http", &kubeconfig("{name: c, cluster: {server: 'http://10.0.0.1:8080'}}", "{name: x, context: {cluster: c, user: u}}"))?;
        secret("kc-metadata", &kubeconfig("{name: c, cluster: {server: 'https://169.254.169.254'}}", "{name: x, context: {cluster: c, user: u}}"))?;
        let two = kubeconfig(
            "{name: a, cluster: {server: 'https://192.0.2.1'}}, {name: b, cluster: {server: 'https://192.0.2.2'}}",
            "{name: ctx-a, context: {cluster: a, user: u}}, {name: ctx-b, context: {cluster: b, user: u}}",
        );
        secret("kc-two", &two)?;
        let mut shard = shard_yaml(
            &ns,
            "trust",
            &[("token", "kc-token"), ("key", "kc-key"), ("http", "kc-http"), ("metadata", "kc-metadata"), ("two", "kc-two"), ("chosen", "kc-two")],
            "",
        );
        shard = shard.replace("  - name: chosen\n", "  - name: chosen\n    context: ctx-b\n");
        env.apply(&shard)?;
        let s = env
            .wait_shard("trust to report its accounts", &ns, "trust", 60, |s| {
                s.status_is_current() && s.status.as_ref().is_some_and(|st| st.accounts.len() == 6)
            })
            .await?;
        let st = |n: &str| s.account_status(n).cloned().context(format!("status of {n}"));
        for (name, reason, says) in [
            ("token", "KubeconfigInvalid", "kc-token"),
            ("key", "KubeconfigInvalid", "kc-key"),
            ("http", "KubeconfigRefused", "--allow-kubeconfig=http"),
            ("metadata", "KubeconfigRefused", "--allow-kubeconfig=link-local"),
            ("two", "KubeconfigInvalid", "set the account's context"),
        ] {
            let a = st(name)?;
            ensure!(
                a.state == AccountState::Invalid && a.reason == reason && a.message.contains(says),
                "{name}: {a:?}"
            );
        }
        ensure!(st("chosen")?.state.served(), "chosen: {:?}", st("chosen")?);
        let status = serde_json::to_string(&s.status)?;
        // The Warning Events about the invalid accounts carry none of it either.
        let events = wait::until("the Events about the invalid accounts", Duration::from_secs(20), || {
            let env = env.clone();
            let ns = ns.clone();
            async move {
                let out = env.cp.kubectl(["get", "events", "-n", &ns, "-o", "json"]).ok()?;
                out.contains("kc-token").then_some(out)
            }
        })
        .await?;
        for fragment in FRAGMENTS {
            ensure!(!status.contains(fragment), "the status quotes a Secret: {status}");
            ensure!(!events.contains(fragment), "an Event quotes a Secret: {events}");
        }
        Ok(())
    })
    .await
}

async fn deletion(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "gc", |env, ns| async move {
        one_account_shard(&env, &ns, "doomed", "  replicas: 2\n").await?;
        let client = env.client().await?;
        let api: Api<AgentShard> = Api::namespaced(client.clone(), &ns);
        api.delete("doomed", &DeleteParams::default()).await?;
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        wait::until(
            "the children to be garbage-collected",
            Duration::from_secs(60),
            || {
                let (cms, secrets, deps, pdbs, sas) = (
                    cms.clone(),
                    secrets.clone(),
                    deps.clone(),
                    pdbs.clone(),
                    sas.clone(),
                );
                async move {
                    let gone = cms.get_opt("doomed-agent-config").await.ok()?.is_none()
                        && secrets
                            .get_opt("doomed-agent-kubeconfigs")
                            .await
                            .ok()?
                            .is_none()
                        && deps.get_opt("doomed-agent").await.ok()?.is_none()
                        && pdbs.get_opt("doomed-agent").await.ok()?.is_none()
                        && sas.get_opt("doomed-agent").await.ok()?.is_none();
                    gone.then_some(())
                }
            },
        )
        .await?;
        // The user's Secret is not the shard's: it stays.
        ensure!(
            secrets.get_opt("kc-a").await?.is_some(),
            "the user's Secret was deleted"
        );
        Ok(())
    })
    .await
}

async fn kubectl_wait(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "wait", |env, ns| async move {
        // Ready means streaming: this test runs a hub and the agents of its pods.
        let hub = HubProcess::start(
            HubOptions {
                bin: workspace_binary("scale-agent-hub")?,
                grace_period: "5s".into(),
                store: None,
                args: Vec::new(),
                kubeconfig: None,
            },
            &env.test_dir(&ns),
        )
        .await?;
        let _agents = PodRunner::start(
            env.client().await?,
            RunnerConfig {
                namespace: Some(ns.clone()),
                args: vec!["--lease-renew-interval=500ms".into()],
                ..RunnerConfig::new(&env.cp, env.test_dir(&ns))?
            },
        );
        env.kubeconfig_secret(&ns, "kc-a")?;
        let shard = shard_yaml(
            &ns,
            "waited",
            &[("a", "kc-a")],
            &format!("  hub: {{ address: \"{}\" }}\n", hub.grpc),
        )
        .replace(
            "      name: kc-a\n",
            &format!("      name: kc-a\n    namespaces: [{ns}]\n    kinds: [ConfigMap]\n"),
        );
        env.apply(&shard)?;
        let started = Instant::now();
        let out = env.cp.kubectl_stdin(
            [
                "wait",
                "--for=condition=Ready",
                "--timeout=90s",
                "-n",
                &ns,
                "ash/waited",
            ],
            "",
        )?;
        ensure!(out.success, "kubectl wait failed: {}", out.stderr);
        eprintln!("Ready in {:?}", started.elapsed());
        let row = table(&env.cp.kubectl(["get", "ash", "-n", &ns])?);
        let row: BTreeMap<String, String> = row
            .first()
            .cloned()
            .context("no row")?
            .into_iter()
            .collect();
        ensure!(
            row["STATUS"] == "Ready"
                && row["READY"] == "1"
                && row["ACCOUNTS"] == "1"
                && row["CONFLICTS"] == "0",
            "row {row:?}"
        );
        Ok(())
    })
    .await
}

/// Lines of the operator's log saying shard `key` was reconciled.
async fn reconciles_logged(env: &OperatorEnv, key: &str) -> anyhow::Result<usize> {
    let guard = env.op.lock().await;
    let op = guard.as_ref().context("no operator")?;
    let text = std::fs::read_to_string(op.log())?;
    let needle = format!("\"shard\":\"{key}\"");
    Ok(text
        .lines()
        .filter(|l| l.contains("\"message\":\"reconciled\"") && l.contains(&needle))
        .count())
}

async fn no_op(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "noop", |env, ns| async move {
        one_account_shard(&env, &ns, "quiet", "").await?;
        // Let the last writes (Deployment status, our status) settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let client = env.client().await?;
        let shard_rv = |s: Option<AgentShard>| s.and_then(|s| s.resource_version());
        let before = shard_rv(env.shard(&ns, "quiet").await?);
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let deps: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let cm_before = cms.get("quiet-agent-config").await?.resource_version();
        let dep_before = deps.get("quiet-agent").await?.resource_version();
        let key = format!("{ns}/quiet");
        let logged_before = reconciles_logged(&env, &key).await?;
        // Touch the referenced Secret (a label): each touch makes the operator reconcile
        // the unchanged shard.
        let touches = 5;
        for i in 0..touches {
            env.cp.kubectl([
                "label",
                "secret",
                "kc-a",
                "-n",
                &ns,
                &format!("touch={i}"),
                "--overwrite",
            ])?;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let reconciled = wait::until(
            "the operator to reconcile the touched shard",
            Duration::from_secs(20),
            || {
                let env = env.clone();
                let key = key.clone();
                async move {
                    let n = reconciles_logged(&env, &key).await.ok()?;
                    (n >= logged_before + touches).then_some(n - logged_before)
                }
            },
        )
        .await?;
        let after = shard_rv(env.shard(&ns, "quiet").await?);
        let cm_after = cms.get("quiet-agent-config").await?.resource_version();
        let dep_after = deps.get("quiet-agent").await?.resource_version();
        eprintln!("no-op: {reconciled} reconciles, shard resourceVersion {before:?} -> {after:?}");
        ensure!(
            before == after,
            "the shard was written during {reconciled} no-op reconciles ({before:?} -> {after:?})"
        );
        ensure!(
            cm_before == cm_after,
            "the ConfigMap was written ({cm_before:?} -> {cm_after:?})"
        );
        ensure!(
            dep_before == dep_after,
            "the Deployment was written ({dep_before:?} -> {dep_after:?})"
        );
        let _ = secrets;
        Ok(())
    })
    .await
}

async fn paused(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "paused", |env, ns| async move {
        one_account_shard(&env, &ns, "still", "  image: example.com/agent:1\n").await?;
        env.apply(&shard_yaml(
            &ns,
            "still",
            &[("a", "kc-a")],
            "  image: example.com/agent:2\n  paused: true\n",
        ))?;
        env.wait_shard("still Paused", &ns, "still", 30, |s| {
            s.status_is_current()
                && s.condition(condition_type::READY)
                    .is_some_and(|c| c.reason == "Paused")
        })
        .await?;
        let d = deployment(&env, &ns, "still").await?;
        let image = d
            .spec
            .and_then(|s| s.template.spec)
            .map(|p| p.containers[0].image.clone());
        ensure!(
            image == Some(Some("example.com/agent:1".into())),
            "a paused shard was rolled: {image:?}"
        );
        Ok(())
    })
    .await
}

async fn standby(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "standby", |env, ns| async move {
        let options = {
            let guard = env.op.lock().await;
            let first = guard.as_ref().context("no operator")?;
            ensure!(first.is_leader().await, "the first operator does not lead");
            OperatorOptions {
                name: "operator-standby".into(),
                register_webhook: false,
                run_dir: Some(env.test_dir(&ns)),
                ..first.options.clone()
            }
        };
        let second = Operator::start(&env.cp, options).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(!second.is_leader().await, "two operators lead at once");
        one_account_shard(&env, &ns, "seen", "").await?;
        let second_reconciles = second
            .metric("scale_agent_operator_reconciles_total")
            .await?;
        let second_writes = second
            .metric("scale_agent_operator_status_writes_total")
            .await?;
        let first_reconciles = {
            let guard = env.op.lock().await;
            guard
                .as_ref()
                .context("no operator")?
                .metric("scale_agent_operator_reconciles_total")
                .await?
        };
        eprintln!("reconciles: leader {first_reconciles}, standby {second_reconciles}");
        ensure!(
            second_reconciles == 0.0 && second_writes == 0.0,
            "the standby reconciled {second_reconciles} times and wrote {second_writes} statuses"
        );
        ensure!(first_reconciles > 0.0, "the leader did not reconcile");
        // The standby still serves the webhook and its shard cache: it is ready.
        ensure!(
            second.metric("scale_agent_operator_shards").await? >= 1.0,
            "the standby's cache is empty"
        );
        drop(second);
        Ok(())
    })
    .await
}
