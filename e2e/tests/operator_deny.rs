//! The operator with its webhook in `deny` mode, leader failover, and an operator
//! upgrade that changes the default agent image (staged over the shards): a second
//! binary, because it needs an operator configured differently and it replaces the
//! leader. Its
//! operators run as the ServiceAccount of `manifests/operator/rbac.yaml`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use scale_agent_crds::condition_type;
use scale_agent_e2e::operator::{Operator, OperatorOptions, service_account_kubeconfig};
use scale_agent_e2e::operator_env::{self, OperatorEnv, shard_yaml};
use scale_agent_e2e::runner::in_namespace;
use scale_agent_e2e::wait;

fn main() {
    operator_env::main_with(
        OperatorOptions {
            name: "operator-deny".into(),
            webhook_mode: "deny".into(),
            ..OperatorOptions::default()
        },
        // The failover test stops the leader: one test at a time.
        Some(1),
        // These operators run as the ServiceAccount of manifests/operator/rbac.yaml, so the
        // tests also show the RBAC there is enough.
        |cp, options| {
            let rbac = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../manifests/operator/rbac.yaml");
            options.kubeconfig = Some(service_account_kubeconfig(cp, &rbac)?);
            // Each test makes its own namespace: let the operator write shards' children in
            // all of them (an install binds scale-agent-operator-shards per namespace).
            cp.kubectl([
                "create",
                "clusterrolebinding",
                "scale-agent-operator-shards-all-namespaces",
                "--clusterrole=scale-agent-operator-shards",
                "--serviceaccount=scale-agent-system:scale-agent-operator",
            ])?;
            Ok(())
        },
        vec![
            ("deny_mode_rejects_a_taken_name_naming_the_owner", |e| {
                Box::pin(deny(e))
            }),
            ("leader_failover_to_the_standby", |e| Box::pin(failover(e))),
            ("a_new_default_image_rolls_one_shard_at_a_time", |e| {
                Box::pin(staged_rollout(e))
            }),
        ],
    );
}

async fn deny(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    let owner_ns = env.namespace("deny-owner").await?;
    in_namespace(env, "deny-late", |env, ns| {
        let owner_ns = owner_ns.clone();
        async move {
            env.kubeconfig_secret(&owner_ns, "kc-x")?;
            env.kubeconfig_secret(&ns, "kc-x")?;
            // Creation times count in whole seconds, and two claims created in the same
            // second tie, broken by the shards' names ("deny-late-…" sorts first) unless
            // the owner holds x. The owner is created just after a second starts, so the
            // late claim below most likely comes in the same second, while the owner's
            // status (written, but perhaps not yet seen by the operator's own watch) is the
            // only thing that makes x the owner's: the webhook must answer as the reconciler
            // decided, not from its watch alone.
            let into_second = k8s_openapi::jiff::Timestamp::now().subsec_millisecond();
            tokio::time::sleep(Duration::from_millis((1000 - into_second).max(0) as u64)).await;
            env.apply(&shard_yaml(&owner_ns, "owner", &[("x", "kc-x")], ""))?;
            let owner = env
                .wait_shard("owner serving x", &owner_ns, "owner", 60, |s| {
                    s.account_status("x").is_some_and(|a| a.state.served())
                })
                .await?;
            let out = env.cp.kubectl_stdin(
                ["apply", "-f", "-"],
                &shard_yaml(&ns, "late", &[("x", "kc-x")], ""),
            )?;
            let created = owner.metadata.creation_timestamp.map(|t| t.0.as_second());
            eprintln!(
                "the late claim came in the owner's second: {}",
                created == Some(k8s_openapi::jiff::Timestamp::now().as_second())
            );
            let owner_key = format!("{owner_ns}/owner");
            ensure!(
                !out.success,
                "a claim on a taken name was accepted in deny mode: {}",
                out.stderr
            );
            ensure!(
                out.stderr.contains("denied the request") && out.stderr.contains(&owner_key),
                "the rejection does not name the owner {owner_key}: {}",
                out.stderr
            );
            ensure!(
                env.shard(&ns, "late").await?.is_none(),
                "the rejected shard exists"
            );
            // A name nobody holds is accepted; and once the owner lets go, so is x.
            env.apply(&shard_yaml(&ns, "late", &[("free", "kc-x")], ""))?;
            env.apply(&shard_yaml(&owner_ns, "owner", &[], ""))?;
            env.wait_shard("owner without x", &owner_ns, "owner", 30, |s| {
                s.status_is_current() && s.account_status("x").is_none()
            })
            .await?;
            env.apply(&shard_yaml(
                &ns,
                "late",
                &[("free", "kc-x"), ("x", "kc-x")],
                "",
            ))?;
            env.wait_shard("late serving x", &ns, "late", 30, |s| {
                s.account_status("x").is_some_and(|a| a.state.served())
            })
            .await?;
            Ok(())
        }
    })
    .await
}

async fn failover(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    in_namespace(env, "failover", |env, ns| async move {
        let options = {
            let guard = env.op.lock().await;
            let first = guard.as_ref().context("no operator")?;
            ensure!(first.is_leader().await, "the first operator does not lead");
            OperatorOptions {
                name: "operator-deny-2".into(),
                run_dir: Some(env.test_dir(&ns)),
                ..first.options.clone()
            }
        };
        let second = Operator::start(&env.cp, options).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(!second.is_leader().await, "two leaders");
        ensure!(
            second
                .metric("scale_agent_operator_reconciles_total")
                .await?
                == 0.0,
            "the standby reconciled"
        );
        // Stop the leader (SIGTERM: it gives the Lease up).
        let stopped = Instant::now();
        env.op.lock().await.take();
        wait::until("the standby to lead", Duration::from_secs(30), || async {
            second.is_leader().await.then_some(())
        })
        .await?;
        let took = stopped.elapsed();
        eprintln!("failover: the standby leads {took:?} after the leader stopped");
        env.kubeconfig_secret(&ns, "kc-a")?;
        env.apply(&shard_yaml(&ns, "after", &[("a", "kc-a")], ""))?;
        env.wait_shard("after reconciled", &ns, "after", 60, |s| {
            s.status_is_current()
                && s.is_condition_true(condition_type::CONFIG_VALID)
                && s.condition(condition_type::READY)
                    .is_some_and(|c| c.status != "Unknown")
        })
        .await?;
        ensure!(
            second
                .metric("scale_agent_operator_reconciles_total")
                .await?
                > 0.0,
            "the new leader did not reconcile"
        );
        // Put it back as the binary's operator, so diagnostics and shutdown find it.
        *env.op.lock().await = Some(second);
        Ok(())
    })
    .await
}

/// Replaces the binary's operator with one started with `options` changed by `change`;
/// returns the options it replaced.
async fn replace_operator(
    env: &OperatorEnv,
    change: impl FnOnce(&mut OperatorOptions),
) -> anyhow::Result<OperatorOptions> {
    let mut guard = env.op.lock().await;
    let old = guard.take().context("no operator")?;
    let before = old.options.clone();
    drop(old);
    let mut options = before.clone();
    change(&mut options);
    let next = Operator::start(&env.cp, options).await?;
    wait::until(
        "the new operator to lead",
        Duration::from_secs(30),
        || async { next.is_leader().await.then_some(()) },
    )
    .await?;
    *guard = Some(next);
    Ok(before)
}

/// An operator upgrade that changes `--default-image` restarts the agents of at most
/// `--max-rolling-shards` shards at a time: with 1, never two shards' agent Deployments
/// roll out to the new image at once, every shard gets it in the end, and a waiting
/// shard has an `AgentImageQueued` Event.
async fn staged_rollout(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    const SHARDS: usize = 3;
    in_namespace(env, "rollout", |env, ns| async move {
        let staged = |image: &'static str| {
            move |o: &mut OperatorOptions| {
                o.default_image = Some(image.into());
                o.extra_args.retain(|a| !a.starts_with("--max-rolling-shards"));
                o.extra_args.push("--max-rolling-shards=1".into());
            }
        };
        let original = replace_operator(&env, staged("example.com/agent:1")).await?;
        env.kubeconfig_secret(&ns, "kc-a")?;
        let names: Vec<String> = (0..SHARDS).map(|i| format!("roll-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            // Each shard its own account name: names are unique across shards.
            let account = format!("a{i}");
            env.apply(&shard_yaml(&ns, name, &[(account.as_str(), "kc-a")], ""))?;
        }
        // kwok runs the pods but leaves them unready: here a kubelet whose readiness probes
        // pass, so each rollout finishes.
        let client = env.client().await?;
        let kubelet = tokio::spawn(ready_every_pod(client.clone(), ns.clone()));
        let deployments: Api<Deployment> = Api::namespaced(client, &ns);
        let states = || async {
            let mut out = Vec::with_capacity(SHARDS);
            for name in &names {
                let d = deployments.get_opt(&format!("{name}-agent")).await?;
                out.push(d.map(|d| (image_of(&d), rolling(&d))));
            }
            anyhow::Ok(out)
        };
        wait::until(
            "every shard's agents rolled out with example.com/agent:1",
            Duration::from_secs(120),
            || async {
                let s = states().await.ok()?;
                s.iter()
                    .all(|d| matches!(d, Some((i, false)) if i == "example.com/agent:1"))
                    .then_some(())
            },
        )
        .await?;

        replace_operator(&env, staged("example.com/agent:2")).await?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut most_at_once = 0;
        let mut polls = 0;
        loop {
            let s = states().await?;
            polls += 1;
            let new_rolling = s
                .iter()
                .filter(|d| matches!(d, Some((i, true)) if i == "example.com/agent:2"))
                .count();
            most_at_once = most_at_once.max(new_rolling);
            if s
                .iter()
                .all(|d| matches!(d, Some((i, false)) if i == "example.com/agent:2"))
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "not every shard rolled out to example.com/agent:2 within 180 s: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "staged rollout: {SHARDS} shards, at most {most_at_once} rolling to the new image at once ({polls} polls)"
        );
        ensure!(
            most_at_once == 1,
            "{most_at_once} shards rolled out to the new default image at once (--max-rolling-shards=1)"
        );
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(env.client().await?, &ns);
        let queued = events
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("AgentImageQueued"))
            .count();
        ensure!(queued > 0, "no shard said it waits for its turn (AgentImageQueued)");
        kubelet.abort();
        replace_operator(&env, |o| *o = original).await?;
        Ok(())
    })
    .await
}

/// Marks every pod of `ns` ready, again and again, as a kubelet whose readiness probes
/// all pass would.
async fn ready_every_pod(client: kube::Client, ns: String) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    loop {
        if let Ok(list) = pods.list(&Default::default()).await {
            for pod in &list.items {
                let container = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                let _ =
                    scale_agent_e2e::pods::write_readiness(&client, pod, &container, true).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The agent container's image of `d`'s pod template.
fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Whether `d` is still rolling out, as `kubectl rollout status` sees it.
fn rolling(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else { return true };
    st.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0)
        || st.updated_replicas.unwrap_or(0) < want
        || st.available_replicas.unwrap_or(0) < want
        || st.replicas.unwrap_or(0) > st.updated_replicas.unwrap_or(0)
}
