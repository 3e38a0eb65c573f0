//! The operator with its webhook in `deny` mode, and leader failover: a second binary,
//! because it needs an operator configured differently and it stops the leader. Its
//! operators run as the ServiceAccount of `manifests/operator/rbac.yaml`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
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
            env.apply(&shard_yaml(&owner_ns, "owner", &[("x", "kc-x")], ""))?;
            env.wait_shard("owner serving x", &owner_ns, "owner", 60, |s| {
                s.account_status("x").is_some_and(|a| a.state.served())
            })
            .await?;
            let out = env.cp.kubectl_stdin(
                ["apply", "-f", "-"],
                &shard_yaml(&ns, "late", &[("x", "kc-x")], ""),
            )?;
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
