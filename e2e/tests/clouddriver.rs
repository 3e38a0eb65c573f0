//! Clouddriver follows the shards (issue 20, item 1), against the real control plane:
//! the operator turns AgentShards into agent pods (the stand-in kubelet runs them), the
//! agents stream to a hub started with `--clouddriver-url`, and the stand-in of
//! Clouddriver's account storage API (`scale_agent_e2e::clouddriver`, written from
//! Clouddriver's source) is Clouddriver. What a Spinnaker user sees:
//!
//! - an account that streams appears as a `kubernetes` definition whose kubeconfig,
//!   given to kubectl, reads that account through the hub, and is refused (403) for
//!   any other account;
//! - it carries the account's permissions and environment from the shard, and a change
//!   of them updates it;
//! - an account its shard drops stays defined during the grace period, then goes;
//! - a definition of the same name someone else made is left alone and reported (a
//!   metric, a log line and a Warning Event on the AgentShard);
//! - an account whose writes Clouddriver refuses holds back none of the others, is
//!   reported by one Warning Event on its AgentShard (not one per retry) and a metric,
//!   and its refusal (whose message quotes the token) leaves no token in the hub's log
//!   or the Event;
//! - Clouddriver down for a minute while the shard changes: once it answers again, the
//!   hub makes the changes;
//! - for a Clouddriver without the account storage API (`--clouddriver-secret`), a
//!   Secret holds each account's kubeconfig (which kubectl uses through the hub, for
//!   that account only) and a `clouddriver-local.yml` listing it at the path the Secret
//!   is mounted at; an account its shard drops leaves it after the grace period; the
//!   accounts name one of two contexts of their kubeconfig (`context`), not its
//!   current-context, and the agents read the cluster through it;
//! - of two hub replicas sharing a store (a real PostgreSQL), only the leader writes;
//!   when it stops, the other takes over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use scale_agent_e2e::certs::CertPair;
use scale_agent_e2e::clouddriver::{Clouddriver, Settings, Stored};
use scale_agent_e2e::converge::{account_state, wait_state};
use scale_agent_e2e::hub::{HubOptions, HubProcess};
use scale_agent_e2e::hubstack::{random_secret, write_private};
use scale_agent_e2e::kubectl;
use scale_agent_e2e::metrics;
use scale_agent_e2e::operator::OperatorOptions;
use scale_agent_e2e::operator_env::OperatorEnv;
use scale_agent_e2e::pods::PodRunner;
use scale_agent_e2e::ports::free_port;
use scale_agent_e2e::postgres::Postgres;
use scale_agent_e2e::runner;
use scale_agent_e2e::scenario::{Scenario, account, config, scenario_with, start_connected};
use scale_agent_e2e::{wait, workspace_binary};
use serde_json::{Value, json};

/// The hub's grace period: long enough to see a dropped account still defined.
const GRACE: Duration = Duration::from_secs(15);

/// An account's entry streaming only what Spinnaker manages.
const SPINNAKER_MANAGED: &str = "    onlySpinnakerManaged: true\n";

/// How long Clouddriver is down while the shards change.
const OUTAGE: Duration = Duration::from_secs(60);

fn main() {
    runner::run(
        None,
        OperatorEnv::start(OperatorOptions::default(), |_, _| Ok(())),
        scale_agent_e2e::tests![
            clouddriver_definitions_follow_the_shards => follow,
            one_of_two_replicas_writes_and_the_other_takes_over => replicas,
            a_secret_of_kubeconfigs_for_a_clouddriver_without_the_api => secret,
        ],
    );
}

/// The Kubernetes API's tokens file (the hub needs one): a person's token for an account
/// no test streams.
const HUMAN_TOKENS: &str = "e2e-a-person-with-no-account-here nobody\n";

/// The user the hub names to Clouddriver (`--clouddriver-user`'s default).
const HUB_USER: &str = "scale-agent-hub";

/// A shard of `ns` streaming the ConfigMaps of `ns` in the management cluster to `hub`
/// for each `(account, extra lines of its entry)`.
fn shard(ns: &str, hub: &str, accounts: &[(&str, &str)]) -> String {
    named_shard("cd", ns, hub, accounts)
}

/// [`shard`] named `name`.
fn named_shard(name: &str, ns: &str, hub: &str, accounts: &[(&str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  hub: {{ address: \"{hub}\" }}\n  accounts:\n"
    );
    for (name, extra) in accounts {
        y.push_str(&format!(
            "  - name: {name}\n    kubeconfigSecretRef: {{ name: kc }}\n    namespaces: [{ns}]\n    kinds: [ConfigMap]\n{extra}"
        ));
    }
    y
}

/// The flags of a scenario's hub: its Kubernetes API on `127.0.0.1:port` with `cert`
/// (signed by `ca`, which the kubeconfigs given to Clouddriver name) and the `tokens`
/// file, the shards of every namespace watched, a round every 500 ms, and `clouddriver`
/// (where the accounts go).
fn hub_args(
    port: u16,
    cert: &CertPair,
    ca: &std::path::Path,
    tokens: &std::path::Path,
    clouddriver: impl IntoIterator<Item = String>,
) -> Vec<String> {
    let mut args = vec![
        "--authorize-shards=*".into(),
        format!("--kube-api-addr=127.0.0.1:{port}"),
        format!("--kube-api-tokens-file={}", tokens.display()),
        format!("--kube-api-tls-cert={}", cert.cert_file.display()),
        format!("--kube-api-tls-key={}", cert.key_file.display()),
        format!("--clouddriver-kube-api-ca-file={}", ca.display()),
        "--clouddriver-sync-interval=500ms".into(),
    ];
    args.extend(clouddriver);
    args
}

/// A hub's metrics text.
async fn metrics_of(hub: &HubProcess) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("{}/metrics", hub.http))
        .await?
        .text()
        .await?)
}

/// The scenario hub's metrics text.
async fn hub_metrics(s: &Scenario) -> anyhow::Result<String> {
    metrics_of(&s.hub).await
}

/// Waits until Clouddriver stores a definition of `name` that `check` accepts.
async fn defined(
    cd: &Clouddriver,
    what: &str,
    name: &str,
    check: impl Fn(&Stored) -> bool,
) -> anyhow::Result<Stored> {
    Ok(wait::until(what, Duration::from_secs(90), || async {
        cd.stored(name).filter(&check)
    })
    .await?)
}

/// The Events on the AgentShard `cd` of `ns` with `reason`, as `(type, note)`, each
/// as many times as it was published (kube's recorder counts a repeat in `series`).
fn shard_events(
    env: &OperatorEnv,
    ns: &str,
    reason: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let out = env
        .cp
        .kubectl(["get", "events.events.k8s.io", "-n", ns, "-o", "json"])?;
    let list: Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["regarding"]["kind"] == "AgentShard"
                && e["regarding"]["name"] == "cd"
                && e["reason"] == reason
        })
        .flat_map(|e| {
            let times = e["series"]["count"].as_u64().unwrap_or(1);
            let event = (
                e["type"].as_str().unwrap_or("").to_owned(),
                e["note"].as_str().unwrap_or("").to_owned(),
            );
            std::iter::repeat_n(event, usize::try_from(times).unwrap_or(usize::MAX))
        })
        .collect())
}

/// Waits for an Event on the AgentShard `cd` of `ns` with `reason` whose note names
/// `account`; returns its `(type, note)`.
async fn shard_event(
    env: &OperatorEnv,
    ns: &str,
    reason: &str,
    account: &str,
) -> anyhow::Result<(String, String)> {
    Ok(wait::until(
        &format!("a {reason} Event on the AgentShard naming {account}"),
        Duration::from_secs(30),
        || async {
            shard_events(env, ns, reason)
                .ok()?
                .into_iter()
                .find(|(_, note)| note.contains(&format!("account {account}")))
        },
    )
    .await?)
}

/// `kubeconfig` (account `a`'s, as Clouddriver got it) works with kubectl through the hub
/// once `a` streams: it lists the test's ConfigMap; the same token for account `b` is
/// refused (403).
async fn works_for_its_account_only(
    env: &OperatorEnv,
    s: &Scenario,
    dir: &std::path::Path,
    kubeconfig: &str,
    a: &str,
    b: &str,
) -> anyhow::Result<()> {
    let ns = &s.ns;
    let kc_a = dir.join(format!("{a}.kubeconfig"));
    std::fs::write(&kc_a, kubeconfig)?;
    wait_state(&s.hub, a, "Connected", Duration::from_secs(60)).await?;
    let listed = wait::until(
        "kubectl with a's kubeconfig lists the ConfigMap",
        Duration::from_secs(60),
        || async {
            kubectl::run(
                &env.cp.bins.kubectl,
                &kc_a,
                ["get", "configmaps", "-n", ns, "-o", "name"],
                None,
            )
            .ok()
            .filter(|out| out.contains("configmap/seen-through-the-hub"))
        },
    )
    .await?;
    eprintln!("kubectl through the hub as {a}: {listed}");
    let kc_other = dir.join(format!("{a}-for-{b}.kubeconfig"));
    std::fs::write(
        &kc_other,
        kubeconfig.replace(&format!("/accounts/{a}\""), &format!("/accounts/{b}\"")),
    )?;
    wait_state(&s.hub, b, "Connected", Duration::from_secs(60)).await?;
    let other = kubectl::run_full(
        &env.cp.bins.kubectl,
        &kc_other,
        ["get", "configmaps", "-n", ns, "-o", "name"],
        None,
    )?;
    ensure!(
        !other.success
            && (other.stderr.contains("Forbidden") || other.stderr.contains("may not use account")),
        "a's token used for {b} is refused 403: {other:?}"
    );
    Ok(())
}

/// A definition as a failure message shows it: without its kubeconfig (a token).
fn without_kubeconfig(definition: &Value) -> Value {
    let mut shown = definition.clone();
    if let Some(o) = shown.as_object_mut() {
        o.remove("kubeconfigContents");
    }
    shown
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn follow(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    let cd = Clouddriver::new(Settings {
        storage_enabled: true,
        reload: Duration::from_millis(500),
    });
    let running = cd.serve("127.0.0.1:0".parse()?).await?;
    let pki = &env.cp.pki;
    let cert = pki.issue_server("hub-clouddriver", &["127.0.0.1", "localhost"])?;
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    // The file holds a person's token, for another account: the only tokens Clouddriver
    // holds are the ones the hub mints.
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, HUMAN_TOKENS)?;
    let kube_api = format!("https://127.0.0.1:{port}");
    let s = scenario_with(
        &env,
        "clouddriver",
        &format!("{}s", GRACE.as_secs()),
        None,
        hub_args(
            port,
            &cert,
            &pki.ca_file,
            &tokens,
            [
                format!("--clouddriver-url={}", running.url()),
                format!("--clouddriver-kube-api-server={kube_api}"),
            ],
        ),
    )
    .await?;
    let ns = s.ns.clone();
    env.kubeconfig_secret(&ns, "kc")?;
    let _pods = PodRunner::for_test(&env, &ns).await?;
    let hub_log = env.test_dir(&ns).join("logs/hub.log");

    // `0-refused` sorts first: the hub meets Clouddriver's refusal before the others.
    let refused = format!("{ns}-0-refused");
    let a = format!("{ns}-a");
    let b = format!("{ns}-b");
    let theirs = format!("{ns}-theirs");
    cd.fail_writes_of(&refused);
    cd.put(
        json!({"type": "kubernetes", "name": theirs, "kubeconfigFile": "/theirs/kubeconfig", "namespaces": ["theirs"]}),
        "someone-else",
    )
    .map_err(anyhow::Error::msg)?;
    // What a Clouddriver account carries besides the stream: permissions, environment.
    let readers = "    permissions: { READ: [dev], WRITE: [ops] }\n    environment: prod\n";
    env.apply(&shard(
        &ns,
        &s.hub.grpc,
        &[
            (&refused, ""),
            (&a, readers),
            (&b, SPINNAKER_MANAGED),
            (&theirs, ""),
        ],
    ))?;
    env.cp.kubectl([
        "create",
        "configmap",
        "seen-through-the-hub",
        "-n",
        &ns,
        "--from-literal=k=v",
    ])?;

    // Created, by the hub, saying what the shard says; despite the refused one.
    let ours = |d: &Stored| d.modified_by == HUB_USER;
    let def_a = defined(&cd, "a's definition", &a, ours).await?;
    let def_b = defined(&cd, "b's definition", &b, ours).await?;
    ensure!(
        def_b.body["onlySpinnakerManaged"] == json!(true)
            && def_a.body["onlySpinnakerManaged"] == json!(false),
        "the shard's onlySpinnakerManaged is carried into the definitions: {} {}",
        without_kubeconfig(&def_a.body),
        without_kubeconfig(&def_b.body)
    );
    ensure!(
        strings(&def_a.body["namespaces"]) == [ns.clone()]
            && strings(&def_a.body["kinds"]) == ["ConfigMap"]
            && def_a.body["permissions"] == json!({"READ": ["dev"], "WRITE": ["ops"]})
            && def_a.body["environment"] == json!("prod"),
        "a's definition carries the shard's namespaces, kinds, permissions and environment: {}",
        without_kubeconfig(&def_a.body)
    );
    ensure!(
        cd.stored(&refused).is_none(),
        "the refused account is not stored"
    );
    let text = wait::until(
        "the refused create counted",
        Duration::from_secs(30),
        || async {
            let text = hub_metrics(&s).await.ok()?;
            (metrics::sample(
                &text,
                "scale_agent_hub_clouddriver_pushes_total{action=\"create\",outcome=\"refused\"}",
            )? >= 1.0)
                .then_some(text)
        },
    )
    .await?;
    ensure!(
        metrics::require(
            &text,
            "scale_agent_hub_clouddriver_pushes_total{action=\"create\",outcome=\"ok\"}"
        )? >= 2.0,
        "the others were created: {text}"
    );
    // ... and told where a platform team looks: a Warning Event on the AgentShard that
    // declares the account, saying what Clouddriver answered without the definition
    // (its kubeconfig holds a token); the accounts pushed, a Normal one each.
    let (kind, note) = shard_event(&env, &ns, "ClouddriverAccountRefused", &refused).await?;
    ensure!(
        kind == "Warning" && note.contains("400") && !note.contains("sa1."),
        "the refusal's Event is a Warning naming Clouddriver's status, no token: {kind} {note}"
    );
    let (kind, _) = shard_event(&env, &ns, "ClouddriverAccountPushed", &a).await?;
    ensure!(kind == "Normal", "a's create is a Normal Event: {kind}");
    // One refusal, one Event: the retries that meet the same answer add none.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let refusals: Vec<(String, String)> = shard_events(&env, &ns, "ClouddriverAccountRefused")?
        .into_iter()
        .filter(|(_, note)| note.contains(&format!("account {refused}:")))
        .collect();
    ensure!(
        refusals.len() == 1,
        "one Event for the refused account, not one per retry: {refusals:?}"
    );
    let text = hub_metrics(&s).await?;
    ensure!(
        metrics::require(&text, "scale_agent_hub_clouddriver_refused")? == 1.0,
        "one account refused: {text}"
    );

    // The kubeconfig Clouddriver got works with kubectl for its account, through the
    // hub, once the account streams, and is refused for another account.
    let kubeconfig = def_a.body["kubeconfigContents"]
        .as_str()
        .context("a kubeconfig in a's definition")?
        .to_owned();
    works_for_its_account_only(&env, &s, dir.path(), &kubeconfig, &a, &b).await?;

    // Someone else's definition: left alone, reported.
    let text = wait::until(
        "the foreign definition reported",
        Duration::from_secs(30),
        || async {
            let text = hub_metrics(&s).await.ok()?;
            (metrics::sample(&text, "scale_agent_hub_clouddriver_foreign")? >= 1.0).then_some(text)
        },
    )
    .await?;
    ensure!(
        metrics::require(&text, "scale_agent_hub_clouddriver_foreign")? == 1.0,
        "{text}"
    );
    let log = std::fs::read_to_string(&hub_log)?;
    ensure!(
        log.lines()
            .any(|l| l.contains(&theirs) && l.contains("did not make")),
        "the hub's log names {theirs} as not its own"
    );
    let (kind, _) = shard_event(&env, &ns, "ClouddriverAccountForeign", &theirs).await?;
    ensure!(
        kind == "Warning",
        "the foreign definition is a Warning Event: {kind}"
    );

    // A change of what the definition carries (a's permissions) updates it; b is left
    // as it is.
    let b_before = cd.stored(&b).context("b")?;
    let writers = "    permissions: { READ: [dev, qa], WRITE: [ops] }\n    environment: prod\n";
    env.apply(&shard(
        &ns,
        &s.hub.grpc,
        &[
            (&refused, ""),
            (&a, writers),
            (&b, SPINNAKER_MANAGED),
            (&theirs, ""),
        ],
    ))?;
    defined(&cd, "a's definition with the new permissions", &a, |d| {
        d.body["permissions"] == json!({"READ": ["dev", "qa"], "WRITE": ["ops"]})
    })
    .await?;
    ensure!(
        cd.stored(&b).map(|d| d.body) == Some(b_before.body.clone()),
        "b's definition did not change"
    );

    // b leaves its shard: defined, as it was, for the grace period; then gone.
    let left = Instant::now();
    env.apply(&shard(
        &ns,
        &s.hub.grpc,
        &[(&refused, ""), (&a, writers), (&theirs, "")],
    ))?;
    // The hub lets go of b (its agent says it is removed: no longer Connected).
    wait::until("b no longer streaming", Duration::from_secs(60), || async {
        account_state(&s.hub, &b)
            .await
            .is_none_or(|a| a["state"] != "Connected")
            .then_some(())
    })
    .await?;
    // Two sync intervals: a hub that deleted on leaving would have done it by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        cd.stored(&b).map(|d| d.body) == Some(b_before.body.clone()),
        "b is still defined during the grace period, as it was"
    );
    wait::until(
        "b's definition deleted after the grace period",
        Duration::from_secs(90),
        || async { cd.stored(&b).is_none().then_some(()) },
    )
    .await?;
    ensure!(
        left.elapsed() >= GRACE,
        "b's definition was deleted {:?} after b left its shard, within the grace period {GRACE:?}",
        left.elapsed()
    );
    ensure!(cd.stored(&a).is_some(), "a is still defined when b goes");
    let theirs_now = cd.stored(&theirs).context("theirs")?;
    ensure!(
        theirs_now.modified_by == "someone-else"
            && theirs_now.body["kubeconfigFile"] == json!("/theirs/kubeconfig"),
        "someone else's definition was never overwritten: {:?}",
        theirs_now
    );

    // Nothing a token is ever logged (the refusal's message quoted one).
    let log = std::fs::read_to_string(&hub_log)?;
    ensure!(!log.contains("sa1."), "the hub's log holds a minted token");

    // Clouddriver down for a minute (its database stays: what it stores outlives its
    // process), during which the shard changes: a's environment, and a new account c.
    // Once it answers again, the hub makes both changes.
    let addr = running.addr;
    running.stop();
    let c = format!("{ns}-c");
    let staging = "    permissions: { READ: [dev, qa], WRITE: [ops] }\n    environment: staging\n";
    env.apply(&shard(
        &ns,
        &s.hub.grpc,
        &[(&refused, ""), (&a, staging), (&theirs, ""), (&c, "")],
    ))?;
    let failures =
        |text: &str| metrics::sample(text, "scale_agent_hub_clouddriver_list_failures_total");
    let before = failures(&hub_metrics(&s).await?).unwrap_or(0.0);
    tokio::time::sleep(OUTAGE).await;
    let text = hub_metrics(&s).await?;
    ensure!(
        failures(&text).unwrap_or(0.0) > before,
        "the hub tried Clouddriver while it was down: {text}"
    );
    ensure!(
        cd.stored(&c).is_none(),
        "nothing was stored while Clouddriver was down"
    );
    let back = Instant::now();
    let running = cd.serve(addr).await?;
    defined(&cd, "c defined once Clouddriver is back", &c, ours).await?;
    defined(
        &cd,
        "a's new environment once Clouddriver is back",
        &a,
        |d| d.body["environment"] == json!("staging"),
    )
    .await?;
    eprintln!(
        "after {OUTAGE:?} down, Clouddriver in step {:?} after it answered again",
        back.elapsed()
    );

    // c moves to another shard, the way a platform team moves an account: added to the
    // new shard (which waits for it: the account is the old shard's), then dropped from
    // the old one. Its definition is never deleted and re-created: it stays, as it was,
    // through the move and past the grace period.
    // The new shard already streams another account, d: the move waits for no new
    // agent pod to start (a start on a loaded machine can outlast the grace period, and
    // the hub rightly deletes an account unserved that long).
    let d = format!("{ns}-d");
    env.apply(&named_shard("cd2", &ns, &s.hub.grpc, &[(&d, "")]))?;
    wait_state(&s.hub, &d, "Connected", Duration::from_secs(90)).await?;
    let c_before = cd.revisions(&c);
    let c_def = cd.stored(&c).context("c")?.body;
    env.apply(&named_shard("cd2", &ns, &s.hub.grpc, &[(&d, ""), (&c, "")]))?;
    env.apply(&shard(
        &ns,
        &s.hub.grpc,
        &[(&refused, ""), (&a, staging), (&theirs, "")],
    ))?;
    let moved = Instant::now();
    wait::until(
        "c streaming from its new shard",
        Duration::from_secs(90),
        || async {
            account_state(&s.hub, &c)
                .await
                .filter(|a| {
                    a["state"] == "Connected"
                        && a["shard"].as_str().is_some_and(|s| s.ends_with("/cd2"))
                })
                .map(|_| ())
        },
    )
    .await?;
    ensure!(
        moved.elapsed() < GRACE,
        "c's move took {:?}, longer than the grace period {GRACE:?}",
        moved.elapsed()
    );
    let settle = GRACE + Duration::from_secs(3);
    tokio::time::sleep(settle.saturating_sub(moved.elapsed())).await;
    let c_after = cd.revisions(&c);
    ensure!(
        c_after.len() >= c_before.len()
            && c_after[c_before.len()..].iter().all(Option::is_some)
            && cd.stored(&c).map(|d| d.body) == Some(c_def),
        "c's definition was deleted or changed by its move to another shard: {} revisions after the move, deleted in {}",
        c_after.len() - c_before.len(),
        c_after[c_before.len()..]
            .iter()
            .filter(|r| r.is_none())
            .count()
    );
    running.stop();
    Ok(())
}

/// Two replicas on one PostgreSQL database, each naming itself to Clouddriver
/// (`--clouddriver-user`), so that what Clouddriver stores says which one wrote.
async fn replicas(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    let pg = Postgres::start(&env.cp.run_dir).await?;
    let url = pg.database("clouddriver_replicas")?;
    let cd = Clouddriver::new(Settings {
        storage_enabled: true,
        reload: Duration::from_millis(500),
    });
    let running = cd.serve("127.0.0.1:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("token-key");
    write_private(&key, &random_secret()?)?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, HUMAN_TOKENS)?;
    let cert = env
        .cp
        .pki
        .issue_server("hub-clouddriver-replicas", &["127.0.0.1", "localhost"])?;
    let ports = [free_port()?, free_port()?];
    // In a cluster both replicas sit behind one Service; here the first's address
    // stands for it. The marker of the hub's definitions names it, the same for both.
    let server = format!("https://127.0.0.1:{}", ports[0]);
    let users = ["hub-a", "hub-b"];
    let args = |i: usize| -> Vec<String> {
        let mut args = vec![
            format!("--store={url}"),
            format!("--hub-id=clouddriver-{}", users[i]),
            "--replica-heartbeat=500ms".into(),
            "--replica-timeout=3s".into(),
            format!("--kube-api-addr=127.0.0.1:{}", ports[i]),
            format!("--kube-api-tokens-file={}", tokens.display()),
            format!("--kube-api-tls-cert={}", cert.cert_file.display()),
            format!("--kube-api-tls-key={}", cert.key_file.display()),
            format!("--clouddriver-url={}", running.url()),
            format!("--clouddriver-kube-api-server={server}"),
            format!("--clouddriver-user={}", users[i]),
            format!("--clouddriver-token-key-file={}", key.display()),
            "--clouddriver-sync-interval=500ms".into(),
        ];
        // The second writes the CA into its kubeconfigs, the first does not: were both
        // writing, each would find the other's definition changed and rewrite it, so a
        // second writer cannot hide behind an identical definition.
        if i == 1 {
            args.push(format!(
                "--clouddriver-kube-api-ca-file={}",
                env.cp.pki.ca_file.display()
            ));
        }
        args
    };
    let mut s = scenario_with(&env, "cd-replicas", "120s", None, args(0)).await?;
    let ns = s.ns.clone();
    let mut other = HubProcess::start(
        HubOptions {
            bin: workspace_binary("scale-agent-hub")?,
            grace_period: "120s".into(),
            store: None,
            args: args(1),
            kubeconfig: None,
        },
        &env.test_dir(&ns),
    )
    .await?;
    let name = format!("{ns}-a");
    let cfg = config(&s, "cd", vec![account(&name, &ns)]);
    let kcs: BTreeMap<String, String> = [(
        format!("{name}.kubeconfig"),
        std::fs::read_to_string(&env.cp.management.kubeconfig)?,
    )]
    .into();
    let _agent = start_connected(&env, &s, "cd-0", &cfg, &kcs, &[], &name).await?;

    // Exactly one leader; the definition is the leader's, and the other pushed nothing.
    let replicas = [&s.hub, &other];
    let leader = wait::until("one leader", Duration::from_secs(30), || async {
        let mut leaders = Vec::new();
        for (i, hub) in replicas.iter().enumerate() {
            let text = metrics_of(hub).await.ok()?;
            if metrics::sample(&text, "scale_agent_hub_replica_leader")? == 1.0 {
                leaders.push(i);
            }
        }
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await?;
    let follower = 1 - leader;
    defined(&cd, "the account's definition", &name, |d| {
        d.modified_by == users[leader]
    })
    .await?;
    // A few more rounds: the follower still writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // (An empty family is not exposed: the leader's shows the metric's name is right.)
    let leader_text = metrics_of(replicas[leader]).await?;
    ensure!(
        metrics::require_sum(&leader_text, "scale_agent_hub_clouddriver_pushes_total")? >= 1.0,
        "the leader pushed: {leader_text}"
    );
    let text = metrics_of(replicas[follower]).await?;
    ensure!(
        metrics::sum(&text, "scale_agent_hub_clouddriver_pushes_total") == 0.0,
        "the follower pushed to Clouddriver: {text}"
    );
    ensure!(
        cd.stored(&name)
            .is_some_and(|d| d.modified_by == users[leader]),
        "the definition is the leader's"
    );

    // The leader stops; someone deletes the definition in Clouddriver; the other
    // replica, leader now, makes it again.
    if leader == 0 {
        s.hub.stop();
    } else {
        other.stop();
    }
    ensure!(cd.remove(&name), "the definition was stored");
    defined(
        &cd,
        "the definition made again by the other replica",
        &name,
        |d| d.modified_by == users[follower],
    )
    .await?;
    let text = metrics_of(if leader == 0 { &other } else { &s.hub }).await?;
    ensure!(
        metrics::require(&text, "scale_agent_hub_replica_leader")? == 1.0,
        "the replica that took over leads: {text}"
    );
    running.stop();
    drop(pg);
    Ok(())
}

/// Writes to `path` the management cluster's kubeconfig with a second context, made
/// current, naming a cluster that is not there; returns the name of the real one.
fn two_contexts(env: &OperatorEnv, path: &std::path::Path) -> anyhow::Result<String> {
    use serde_yaml::Value as Yaml;
    let text = std::fs::read_to_string(&env.cp.management.kubeconfig)?;
    let mut kc: Yaml = serde_yaml::from_str(&text)?;
    let real = kc["current-context"]
        .as_str()
        .context("the management kubeconfig's current-context")?
        .to_owned();
    let user = kc["contexts"][0]["context"]["user"].clone();
    let cluster: Yaml =
        serde_yaml::from_str("{name: elsewhere, cluster: {server: 'https://192.0.2.1:6443'}}")?;
    let mut context: Yaml =
        serde_yaml::from_str("{name: elsewhere, context: {cluster: elsewhere}}")?;
    context["context"]["user"] = user;
    kc["clusters"]
        .as_sequence_mut()
        .context("clusters")?
        .push(cluster);
    kc["contexts"]
        .as_sequence_mut()
        .context("contexts")?
        .push(context);
    kc["current-context"] = Yaml::from("elsewhere");
    std::fs::write(path, serde_yaml::to_string(&kc)?)?;
    Ok(real)
}

/// The data of the Secret `name` in `ns`, decoded; `None` while there is none.
fn secret_data(env: &OperatorEnv, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
    use base64::Engine as _;
    let out = env
        .cp
        .kubectl(["get", "secret", name, "-n", ns, "-o", "json"])
        .ok()?;
    let secret: Value = serde_json::from_str(&out).ok()?;
    secret["data"].as_object().map(|data| {
        data.iter()
            .filter_map(|(k, v)| {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str()?)
                    .ok()?;
                Some((k.clone(), String::from_utf8(bytes).ok()?))
            })
            .collect()
    })
}

/// The names of the accounts `clouddriver-local.yml` lists, with their `kubeconfigFile`.
fn fragment_accounts(data: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    data.get("clouddriver-local.yml")
        .and_then(|f| serde_yaml::from_str::<Value>(f).ok())
        .and_then(|v| v["kubernetes"]["accounts"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| Some((a["name"].as_str()?.to_owned(), a)))
        .collect()
}

/// A Clouddriver without the account storage API: the hub keeps a Secret in its
/// namespace (here the test's) that it mounts.
async fn secret(env: Arc<OperatorEnv>) -> anyhow::Result<()> {
    const MOUNT: &str = "/opt/spinnaker/config/scale-agent";
    let pki = &env.cp.pki;
    let cert = pki.issue_server("hub-clouddriver-secret", &["127.0.0.1", "localhost"])?;
    let port = free_port()?;
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, HUMAN_TOKENS)?;
    // Clouddriver's namespace, with no Secret a run before left there.
    let cd_ns = "scale-agent-e2e-clouddriver";
    let _ = env.cp.kubectl(["create", "namespace", cd_ns]);
    env.cp.kubectl([
        "delete",
        "secret",
        "clouddriver-accounts",
        "-n",
        cd_ns,
        "--ignore-not-found",
    ])?;
    let s = scenario_with(
        &env,
        "cd-secret",
        &format!("{}s", GRACE.as_secs()),
        None,
        hub_args(
            port,
            &cert,
            &pki.ca_file,
            &tokens,
            [
                "--clouddriver-secret=scale-agent-e2e-clouddriver/clouddriver-accounts".into(),
                format!("--clouddriver-secret-mount-path={MOUNT}"),
                format!("--clouddriver-kube-api-server=https://127.0.0.1:{port}"),
            ],
        ),
    )
    .await?;
    let ns = s.ns.clone();
    // The accounts' kubeconfig has two contexts, the current one naming a cluster that
    // is not there: the accounts name the other (`context`), and only an agent that
    // uses it reads the cluster (kubectl through the hub below).
    let two = dir.path().join("two-contexts.kubeconfig");
    let real = two_contexts(&env, &two)?;
    env.cp.kubeconfig_secret(&ns, "kc", &two)?;
    let _pods = PodRunner::for_test(&env, &ns).await?;
    let a = format!("{ns}-a");
    let b = format!("{ns}-b");
    let a_entry = format!("    context: {real}\n{SPINNAKER_MANAGED}");
    let b_entry = format!("    context: {real}\n");
    env.apply(&shard(&ns, &s.hub.grpc, &[(&a, &a_entry), (&b, &b_entry)]))?;
    env.cp.kubectl([
        "create",
        "configmap",
        "seen-through-the-hub",
        "-n",
        &ns,
        "--from-literal=k=v",
    ])?;

    // The Secret lists both, each at the path of its kubeconfig in the mount.
    let data = wait::until(
        "the Secret lists both accounts",
        Duration::from_secs(90),
        || async {
            let data = secret_data(&env, cd_ns, "clouddriver-accounts")?;
            let listed = fragment_accounts(&data);
            (listed.contains_key(&a) && listed.contains_key(&b)).then_some(data)
        },
    )
    .await?;
    let listed = fragment_accounts(&data);
    ensure!(
        listed[&a]["kubeconfigFile"] == json!(format!("{MOUNT}/{a}.kubeconfig"))
            && strings(&listed[&a]["namespaces"]) == [ns.clone()]
            && listed[&a]["onlySpinnakerManaged"] == json!(true)
            && listed[&b]["onlySpinnakerManaged"] == json!(false),
        "a's entry names its file in the mount, its namespaces and onlySpinnakerManaged: {}",
        listed[&a]
    );
    let kubeconfig = data
        .get(&format!("{a}.kubeconfig"))
        .context("a's kubeconfig in the Secret")?;

    // a's kubeconfig works with kubectl through the hub, for a only.
    works_for_its_account_only(&env, &s, dir.path(), kubeconfig, &a, &b).await?;

    // b leaves its shard: listed during the grace period, then gone; a stays.
    let left = Instant::now();
    env.apply(&shard(&ns, &s.hub.grpc, &[(&a, &a_entry)]))?;
    wait::until("b no longer streaming", Duration::from_secs(60), || async {
        account_state(&s.hub, &b)
            .await
            .is_none_or(|a| a["state"] != "Connected")
            .then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = secret_data(&env, cd_ns, "clouddriver-accounts").context("the Secret")?;
    ensure!(
        fragment_accounts(&during).contains_key(&b)
            && during.contains_key(&format!("{b}.kubeconfig")),
        "b is still in the Secret during the grace period"
    );
    wait::until(
        "b gone from the Secret after the grace period",
        Duration::from_secs(90),
        || async {
            let data = secret_data(&env, cd_ns, "clouddriver-accounts")?;
            (!fragment_accounts(&data).contains_key(&b)
                && !data.contains_key(&format!("{b}.kubeconfig")))
            .then_some(())
        },
    )
    .await?;
    ensure!(
        left.elapsed() >= GRACE,
        "b left the Secret {:?} after leaving its shard, within the grace period {GRACE:?}",
        left.elapsed()
    );
    let after = secret_data(&env, cd_ns, "clouddriver-accounts").context("the Secret")?;
    ensure!(
        fragment_accounts(&after).contains_key(&a)
            && after.contains_key(&format!("{a}.kubeconfig")),
        "a is still in the Secret when b goes"
    );
    // Nothing of a token in the hub's log.
    let log = std::fs::read_to_string(env.test_dir(&ns).join("logs/hub.log"))?;
    ensure!(!log.contains("sa1."), "the hub's log holds a minted token");
    let _ = env
        .cp
        .kubectl(["delete", "secret", "clouddriver-accounts", "-n", cd_ns]);
    Ok(())
}
