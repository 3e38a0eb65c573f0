//! Installing scale-agent as a user does, against the real control plane:
//! - the debug image archive `just test` builds is a valid OCI image whose binaries run from its
//!   own root filesystem as its non-root user;
//! - every kustomization of `manifests/` renders, passes Pod Security `restricted` and
//!   least-privilege checks, follows a changed namespace and image, and passes a
//!   server-side dry run;
//! - `manifests/install` applies for real (its pods admitted under `restricted`), a
//!   second apply changes nothing (nor does one of `manifests/examples`), and its
//!   ServiceAccounts hold only what they need;
//! - the operator and hub run as those ServiceAccounts with the manifests' own flags: a
//!   shard in a namespace opened with `manifests/shard-namespace` streams through them,
//!   one elsewhere gets nothing, an agent of another shard is refused, a remote (agent
//!   mode) shard's agent is accepted through a paused AgentShard, the Clouddriver
//!   kubeconfig the guide has the hub write reads an account through the hub, and the
//!   alerts and the Grafana dashboard name metrics they really export;
//! - the Helm chart renders manifests/install and installs, upgrades and uninstalls with
//!   the real helm.

#[path = "install/cluster.rs"]
mod cluster;
#[path = "install/helm.rs"]
mod helm;
#[path = "install/image.rs"]
mod image;
#[path = "install/kubelet.rs"]
mod kubelet;
#[path = "install/kustomize.rs"]
mod kustomize;
#[path = "install/metrics.rs"]
mod metrics;
#[path = "install/oci.rs"]
mod oci;
#[path = "install/policy.rs"]
mod policy;
#[path = "install/running.rs"]
mod running;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use cluster::{
    applied_state, apply_install, hub_volume, kubectl_full, remove, secret, shard_namespace,
    shard_yaml, stand_in_crds,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use running::{Installed, NS};
use scale_agent_crds::{AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef, TlsConfig};
use scale_agent_e2e::agent::{AgentProcess, AgentSpec};
use scale_agent_e2e::controlplane::http_get;
use scale_agent_e2e::converge::{configmaps, create_namespace, put_cm};
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::process::tail;
use scale_agent_e2e::{Env, runner, wait, workspace_binary};
use serde_json::{Value, json};

/// The image the manifests name, at this workspace's version.
const IMAGE: &str = concat!(
    "ghcr.io/scale-agent/scale-agent:v",
    env!("CARGO_PKG_VERSION")
);
/// The domain the chart's hub serves accounts' host names under (`hub.kubeApi.hostSuffix`).
const HOST_SUFFIX: &str = "hub.example.test";
/// [`HOST_SUFFIX`] as a `--set` of the chart.
const HOST_SUFFIX_VALUE: &str = "hub.kubeApi.hostSuffix=hub.example.test";
const BINARIES: &[&str] = &["scale-agent", "scale-agent-operator", "scale-agent-hub"];
const OPERATOR_SA: &str = "system:serviceaccount:scale-agent-system:scale-agent-operator";
const HUB_SA: &str = "system:serviceaccount:scale-agent-system:scale-agent-hub";

fn main() {
    runner::main_with(
        &["cluster-1"],
        vec![
            ("image_archive_runs_each_binary_as_the_non_root_user", |e| {
                Box::pin(image_runs(e))
            }),
            (
                "kustomizations_render_restricted_least_privilege_and_follow_namespace_and_image",
                |e| Box::pin(render(e)),
            ),
            ("every_kustomization_passes_a_server_side_dry_run", |e| {
                Box::pin(dry_run(e))
            }),
            (
                "install_applies_under_pod_security_restricted_and_reapplies_unchanged",
                |e| Box::pin(apply(e)),
            ),
            (
                "installed_operator_and_hub_run_as_their_service_accounts_and_a_shard_streams",
                |e| Box::pin(live(e)),
            ),
            ("the_install_guide_runs_as_written", |e| Box::pin(guide(e))),
            (
                "helm_chart_with_default_values_renders_manifests_install",
                |e| Box::pin(chart_renders_install(e)),
            ),
            (
                "helm_chart_installs_a_shard_streams_upgrades_and_uninstalls",
                |e| Box::pin(chart_lifecycle(e)),
            ),
        ],
        // The tests share the installed namespace: one at a time.
        Some(1),
    );
}

/// docs/install.md's commands, taken from the Markdown (the blocks marked to run, see
/// `scale_agent_e2e::guide`), run in order by bash as a user would: from the certificates
/// to the uninstall, on a cluster where nothing of scale-agent is installed. The guide
/// assumes a default StorageClass (here a volume made beforehand) and a kubeconfig of the
/// first shard's cluster in the current directory (here cluster-1's). After the uninstall
/// nothing of the install is left.
async fn guide(env: Arc<Env>) -> anyhow::Result<()> {
    let cp = &env.cp;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let blocks = scale_agent_e2e::guide::read(&repo.join("docs/install.md"))?;

    // Other tests of this binary install scale-agent too: start from nothing.
    let manifests = kustomize::manifests();
    let install = manifests.join("install").display().to_string();
    remove(cp, &install)?;
    cp.kubectl([
        "delete",
        "namespace",
        "spinnaker",
        "team-b",
        "--ignore-not-found",
        "--wait",
    ])?;
    hub_volume(&env)?;

    let dir = tempfile::tempdir()?;
    for d in ["manifests", "crds"] {
        std::os::unix::fs::symlink(repo.join(d).canonicalize()?, dir.path().join(d))?;
    }
    std::fs::copy(
        &cp.target("cluster-1").context("cluster-1")?.kubeconfig,
        dir.path().join("prod-east-1.kubeconfig"),
    )?;
    let script = scale_agent_e2e::guide::script("docs/install.md", &blocks);
    let kubectl_dir = cp.bins.kubectl.parent().context("kubectl's folder")?;
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("KUBECONFIG", &cp.management.kubeconfig)
        .env("PATH", path)
        .output()
        .context("running bash")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran = blocks
        .iter()
        .filter(|b| b.marker == scale_agent_e2e::guide::Marker::Run)
        .count();
    ensure!(
        out.status.success(),
        "docs/install.md, as written, fails ({}); the last lines of its output:\n{}",
        out.status,
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "docs/install.md: {ran} of {} sh blocks ran in {:.1?}",
        blocks.len(),
        started.elapsed()
    );

    // The uninstall left nothing of the install.
    let left = kubectl_full(
        cp,
        ["get", "-k", &install, "-o", "name", "--ignore-not-found"],
    )?;
    ensure!(
        left.stdout.trim().is_empty(),
        "after the guide's uninstall these are left:\n{}",
        left.stdout
    );
    cp.kubectl([
        "delete",
        "pv",
        "scale-agent-hub-store",
        "--ignore-not-found",
    ])?;
    Ok(())
}

/// The chart with its default values renders the objects of `manifests/install`, field
/// for field, but the Namespace (the release's namespace exists before helm installs), so
/// the two cannot drift apart.
async fn chart_renders_install(env: Arc<Env>) -> anyhow::Result<()> {
    let chart = helm::template(&env.cp, NS, &[])?;
    let mut install = helm::by_key(kustomize::render(&kustomize::manifests().join("install"))?);
    ensure!(
        install.remove(&format!("Namespace//{NS}")).is_some(),
        "manifests/install makes no Namespace {NS}"
    );
    let mut wrong = Vec::new();
    for key in install.keys().chain(chart.keys()).collect::<BTreeSet<_>>() {
        match (install.get(key), chart.get(key)) {
            (Some(a), Some(b)) => helm::differences(key, a, b, &mut wrong),
            (Some(_), None) => wrong.push(format!("{key}: only in manifests/install")),
            (None, _) => wrong.push(format!("{key}: only in the chart")),
        }
    }
    ensure!(
        wrong.is_empty(),
        "charts/scale-agent (default values) and manifests/install differ (manifests/install ≠ chart):\n  {}",
        wrong.join("\n  ")
    );
    // Released into another namespace, with every optional part, nothing names this one.
    let elsewhere = helm::template(
        &env.cp,
        "elsewhere",
        &[
            "certManager.enabled=true",
            "operator.shardNamespaces={spinnaker}",
            HOST_SUFFIX_VALUE,
        ],
    )?;
    // Accounts by host name: the hub serves them, and its certificate names them.
    let hub = elsewhere
        .get("Deployment/elsewhere/scale-agent-hub")
        .context("the chart's hub Deployment")?;
    ensure!(
        hub.to_string()
            .contains(&format!("--kube-api-host-suffix={HOST_SUFFIX}")),
        "hub.kubeApi.hostSuffix does not reach the hub's flags: {hub}"
    );
    let cert = elsewhere
        .get("Certificate/elsewhere/scale-agent-hub-tls")
        .context("the chart's hub Certificate")?;
    ensure!(
        cert["spec"]["dnsNames"]
            .as_array()
            .is_some_and(|names| names.contains(&json!(format!("*.{HOST_SUFFIX}")))),
        "with hub.kubeApi.hostSuffix the hub's certificate does not name *.{HOST_SUFFIX}: {cert}"
    );
    let stale: Vec<&String> = elsewhere
        .iter()
        .filter(|(_, o)| o.to_string().contains(NS))
        .map(|(k, _)| k)
        .collect();
    ensure!(
        stale.is_empty(),
        "the chart released elsewhere still names {NS} in {stale:?}"
    );
    Ok(())
}

/// A platform team's life with the chart, with the real helm on the control plane: the
/// namespace from manifests/namespace, `helm install` opening a shard namespace, the
/// installed operator and hub running (as their ServiceAccounts, with the rendered flags)
/// and a shard streaming through them; `helm upgrade` to another image moving the
/// operator, the hub and the agents' default image together; `helm uninstall` leaving
/// nothing of the release but the CRD (helm never deletes a chart's CRDs).
async fn chart_lifecycle(env: Arc<Env>) -> anyhow::Result<()> {
    let cp = &env.cp;
    let manifests = kustomize::manifests();
    // Other tests of this binary install scale-agent with kubectl: start from nothing.
    remove(cp, &manifests.join("install").display().to_string())?;
    let namespace = manifests.join("namespace").display().to_string();
    kubectl_full(cp, ["apply", "--server-side", "-k", &namespace])?;
    hub_volume(&env)?;
    let ns = env.namespace("helm-shard").await?;
    let chart = helm::chart().display().to_string();
    let opened = format!("operator.shardNamespaces={{{ns}}}");
    helm::run(
        cp,
        &[
            "install",
            helm::RELEASE,
            &chart,
            "--namespace",
            NS,
            "--set",
            &opened,
            "--set",
            HOST_SUFFIX_VALUE,
        ],
    )?;

    let installed = Installed::start(&env).await?;
    let pods = opened_namespace_streams(&env, &installed, &ns).await?;
    drop(pods);
    drop(installed);

    let upgraded = format!(
        "{}:v0.0.0-upgrade",
        IMAGE.split(':').next().unwrap_or(IMAGE)
    );
    let tag = "image.tag=v0.0.0-upgrade";
    helm::run(
        cp,
        &[
            "upgrade",
            helm::RELEASE,
            &chart,
            "--namespace",
            NS,
            "--reuse-values",
            "--set",
            tag,
        ],
    )?;
    let deployments = Api::<Deployment>::namespaced(cp.client().await?, NS);
    for name in ["scale-agent-operator", "scale-agent-hub"] {
        let c = first_container(&deployments, name).await?;
        ensure!(
            c.image.as_deref() == Some(upgraded.as_str()),
            "after helm upgrade {name} runs {:?}, not {upgraded}",
            c.image
        );
        let agents = c
            .env
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "SCALE_AGENT_DEFAULT_IMAGE");
        ensure!(
            name != "scale-agent-operator"
                || agents.as_ref().and_then(|e| e.value.as_deref()) == Some(upgraded.as_str()),
            "after helm upgrade agents default to {agents:?}, not {upgraded}"
        );
    }

    helm::run(
        cp,
        &["uninstall", helm::RELEASE, "--namespace", NS, "--wait"],
    )?;
    let mut left = Vec::new();
    for (key, o) in helm::template(cp, NS, &[&opened])? {
        let kind = o["kind"].as_str().unwrap_or_default();
        if kind == "CustomResourceDefinition" {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap_or_default();
        let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "name"];
        if let Some(n) = o["metadata"]["namespace"].as_str() {
            args.extend(["-n", n]);
        }
        if !cp.kubectl(args)?.trim().is_empty() {
            left.push(key);
        }
    }
    ensure!(
        left.is_empty(),
        "after helm uninstall these are left: {left:?}"
    );
    cp.kubectl(["get", "crd", "agentshards.scaleagent.dev"])
        .context("helm uninstall removed the CRD (and so every shard)")?;
    env.drop_namespace(&ns).await;
    remove(cp, &namespace)?;
    Ok(())
}

/// The first container of Deployment `name`'s pod template, as applied.
async fn first_container(
    deployments: &Api<Deployment>,
    name: &str,
) -> anyhow::Result<k8s_openapi::api::core::v1::Container> {
    deployments
        .get(name)
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .with_context(|| format!("{name} has no container"))
}

async fn image_runs(_env: Arc<Env>) -> anyhow::Result<()> {
    let archive = image::image_archive()?;
    ensure!(
        image::ids(std::process::id())?.0.first() == Some(&0),
        "this test runs the image's binaries with chroot, which needs root"
    );
    let dir = tempfile::tempdir()?;
    let image = oci::unpack(&archive, dir.path())
        .with_context(|| format!("reading {}", archive.display()))?;
    eprintln!("{}: {}", archive.display(), image.repo_tag);
    ensure!(
        image.repo_tag.starts_with(IMAGE),
        "the archive is tagged {}, the manifests name {IMAGE}",
        image.repo_tag
    );
    let config = &image.config["config"];
    let user = config["User"].as_str().unwrap_or_default();
    ensure!(
        user == "65532:65532",
        "the image's user is {user:?}, not 65532:65532"
    );
    ensure!(
        image.config["os"] == "linux",
        "image os {}",
        image.config["os"]
    );
    let problems = image::file_problems(&image.rootfs)?;
    ensure!(
        problems.is_empty(),
        "the image's files:\n  {}",
        problems.join("\n  ")
    );

    // One executable: the operator's and the hub's names are links to the agent's.
    let bin_dir = image.rootfs.join("usr/local/bin");
    let mut names: Vec<String> = std::fs::read_dir(&bin_dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    ensure!(
        names == ["scale-agent", "scale-agent-hub", "scale-agent-operator"],
        "/usr/local/bin holds {names:?}"
    );
    ensure!(
        std::fs::symlink_metadata(bin_dir.join("scale-agent"))?.is_file(),
        "/usr/local/bin/scale-agent is not a regular file"
    );
    for link in ["scale-agent-operator", "scale-agent-hub"] {
        let target = std::fs::read_link(bin_dir.join(link))
            .with_context(|| format!("/usr/local/bin/{link} is not a link"))?;
        ensure!(
            target == std::path::Path::new("scale-agent"),
            "/usr/local/bin/{link} links to {}, not scale-agent",
            target.display()
        );
    }

    // Each program answers --version and --help from the image's own root filesystem
    // (its libraries, no host file), as the image's user, under its own name and as a
    // first argument of scale-agent.
    let version = env!("CARGO_PKG_VERSION");
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone())
        .context("the image has no Entrypoint")?;
    ensure!(
        entrypoint == ["/usr/local/bin/scale-agent"],
        "the entrypoint is {entrypoint:?}: the operator starts agent pods with arguments only"
    );
    for bin in BINARIES {
        let path = format!("/usr/local/bin/{bin}");
        let out = image::in_image(&image.rootfs, user, &[&path, "--version"])?;
        ensure!(
            out.trim() == format!("{bin} {version}"),
            "{bin} --version printed {out:?}"
        );
        let help = image::in_image(&image.rootfs, user, &[&path, "--help"])?;
        ensure!(help.contains("Usage:"), "{bin} --help printed {help:?}");
    }
    for (sub, bin) in [
        ("operator", "scale-agent-operator"),
        ("hub", "scale-agent-hub"),
    ] {
        let argv = ["/usr/local/bin/scale-agent", sub, "--version"];
        let out = image::in_image(&image.rootfs, user, &argv)?;
        ensure!(
            out.trim() == format!("{bin} {version}"),
            "{argv:?} printed {out:?}"
        );
    }

    // The version and revision labels, the same keys the Dockerfile declares.
    let labels = config["Labels"]
        .as_object()
        .context("the image has no labels")?;
    ensure!(
        labels["org.opencontainers.image.version"] == version,
        "version label {}",
        labels["org.opencontainers.image.version"]
    );
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    ensure!(
        revision == "unknown"
            || (revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())),
        "revision label {revision:?}"
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dockerfile = std::fs::read_to_string(repo.join("Dockerfile"))?;
    let declared = image::dockerfile_labels(&dockerfile);
    let archived: BTreeSet<String> = labels.keys().cloned().collect();
    ensure!(
        declared == archived,
        "the Dockerfile's labels {declared:?} are not the archive's {archived:?}"
    );
    ensure!(
        dockerfile.contains(&format!("ARG VERSION={version}\n")),
        "the Dockerfile's VERSION default is not the workspace's version {version}"
    );

    // The SBOM beside the archive names what the executable holds: the workspace's crates
    // (not the test harness), exactly the crates its embedded list names.
    let sbom_path = image::sbom_path(&archive);
    let sbom: Value = serde_json::from_slice(
        &std::fs::read(&sbom_path)
            .with_context(|| format!("no SBOM at {}", sbom_path.display()))?,
    )
    .context("parsing the SBOM")?;
    ensure!(
        sbom["bomFormat"] == "CycloneDX" && sbom["specVersion"] == "1.5",
        "the SBOM is not CycloneDX 1.5"
    );
    ensure!(
        sbom["metadata"]["component"]["bom-ref"] == image.repo_tag.as_str()
            && sbom["metadata"]["component"]["version"] == version,
        "the SBOM is about {}",
        sbom["metadata"]["component"]
    );
    let listed: BTreeSet<(String, String)> = sbom["components"]
        .as_array()
        .context("the SBOM has no components")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_owned(),
                c["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    for krate in [
        "scale-agent-cmd",
        "scale-agent",
        "scale-agent-operator",
        "scale-agent-hub",
        "scale-agent-crds",
        "scale-agent-runtime",
        "scale-agent-proto",
    ] {
        ensure!(
            listed.contains(&(krate.to_owned(), version.to_owned())),
            "the SBOM does not name {krate} {version}"
        );
    }
    ensure!(
        !listed.iter().any(|(name, _)| name == "scale-agent-e2e"),
        "the SBOM names the test harness"
    );
    let embedded = image::embedded_crates(&image.rootfs.join("usr/local/bin/scale-agent"))?
        .context(
            "the executable has no embedded crate list (.dep-v0): not built with cargo auditable",
        )?;
    let in_binary: BTreeSet<(String, String)> = embedded["packages"]
        .as_array()
        .context(".dep-v0 has no packages")?
        .iter()
        .filter(|p| p["kind"].as_str().unwrap_or("runtime") == "runtime")
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["version"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    ensure!(
        in_binary == listed,
        "the SBOM lists {} crates, the executable {}; only in the SBOM: {:?}; only in the executable: {:?}",
        listed.len(),
        in_binary.len(),
        listed.difference(&in_binary).take(5).collect::<Vec<_>>(),
        in_binary.difference(&listed).take(5).collect::<Vec<_>>()
    );
    eprintln!(
        "{}: {} crates, as the executable's embedded list names them",
        sbom_path.display(),
        listed.len()
    );

    // A long-running binary: the hub serves from the image, and its process is not root.
    let grpc = scale_agent_e2e::ports::free_port()?;
    let http = scale_agent_e2e::ports::free_port()?;
    let mut hub = Command::new(image::chroot()?)
        .arg(format!("--userspec={user}"))
        .arg(&image.rootfs)
        .args([
            "/usr/local/bin/scale-agent-hub",
            "--insecure",
            &format!("--grpc-addr=127.0.0.1:{grpc}"),
            &format!("--http-addr=127.0.0.1:{http}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the hub from the image")?;
    let served = wait::until(
        "the hub from the image to serve /healthz",
        Duration::from_secs(30),
        || async {
            http_get(http, "/healthz")
                .await
                .ok()
                .filter(|r| r.contains(" 200 "))
        },
    )
    .await;
    let who = image::ids(hub.id());
    let _ = hub.kill();
    let _ = hub.wait();
    served?;
    let (uids, gids, groups) = who?;
    ensure!(
        uids.iter().all(|&u| u == 65532) && gids.iter().all(|&g| g == 65532),
        "the hub runs as uids {uids:?}, gids {gids:?}"
    );
    ensure!(
        groups.iter().all(|&g| g == 65532),
        "the hub keeps supplementary groups {groups:?}"
    );
    eprintln!("the hub ran from the image as uid/gid 65532, groups {groups:?}");
    Ok(())
}

async fn render(_env: Arc<Env>) -> anyhow::Result<()> {
    // Every kustomization is one this test knows how to check.
    let mut known: Vec<String> = kustomize::APPLIED
        .iter()
        .chain(kustomize::PARTS)
        .map(|s| (*s).to_owned())
        .collect();
    known.sort();
    let found = kustomize::all()?;
    ensure!(
        found == known,
        "manifests/ has kustomizations {found:?}; this test checks {known:?}: add new ones to \
         kustomize::APPLIED or kustomize::PARTS"
    );

    let manifests = kustomize::manifests();
    for k in kustomize::APPLIED {
        kustomize::render(&manifests.join(k))?;
    }
    for (k, _) in kustomize::INSTALLS {
        let objects = kustomize::render(&manifests.join(k))?;
        let mut problems = Vec::new();
        policy::restricted_problems(&objects, IMAGE, &mut problems);
        policy::least_privilege_problems(&objects, &mut problems);
        ensure!(
            problems.is_empty(),
            "manifests/{k}:\n  {}",
            problems.join("\n  ")
        );
    }

    // A user's overlay with another namespace and a mirrored image: nothing keeps the old
    // ones, once manifests/follow runs after them.
    let dir = tempfile::tempdir()?;
    for (k, follow) in kustomize::INSTALLS {
        let overlay = dir.path().join(k.replace('/', "-"));
        std::fs::create_dir_all(&overlay)?;
        let follow = kustomize::relative(&overlay, &manifests.join(follow))?;
        kustomize::overlay(
            &overlay,
            k,
            &format!(
                "namespace: elsewhere\nimages:\n  - {{ name: ghcr.io/scale-agent/scale-agent, newName: registry.example/mirror/scale-agent, newTag: v9.9.9 }}\ntransformers:\n  - {}",
                follow.display()
            ),
        )?;
        let objects = kustomize::render(&overlay)?;
        let text = serde_json::to_string(&objects)?;
        for stale in [NS, "ghcr.io/"] {
            let keys: Vec<String> = objects
                .iter()
                .filter(|o| o.to_string().contains(stale))
                .map(kustomize::key)
                .collect();
            ensure!(
                keys.is_empty(),
                "manifests/{k} under another namespace and image still says {stale} in {keys:?}"
            );
        }
        ensure!(
            text.contains("registry.example/mirror/scale-agent:v9.9.9"),
            "the mirrored image is missing"
        );
        let operator = policy::find(&objects, "Deployment", "scale-agent-operator")?;
        let default_image = operator["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .and_then(|env| {
                env.iter()
                    .find(|e| e["name"] == "SCALE_AGENT_DEFAULT_IMAGE")
            })
            .map(|e| e["value"].clone());
        ensure!(
            default_image == Some(Value::from("registry.example/mirror/scale-agent:v9.9.9")),
            "agents would run {default_image:?}, not the operator's own image"
        );
        for o in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
            ensure!(
                o["subjects"][0]["namespace"] == "elsewhere",
                "{} binds a ServiceAccount in {}",
                kustomize::key(o),
                o["subjects"][0]["namespace"]
            );
        }
        if k.contains("cert-manager") {
            let cert = policy::find(&objects, "Certificate", "scale-agent-hub-tls")?;
            ensure!(
                cert["spec"]["dnsNames"]
                    .as_array()
                    .is_some_and(|d| d.contains(&Value::from("scale-agent-hub-grpc.elsewhere.svc"))),
                "the hub's certificate does not name its Service: {}",
                cert["spec"]["dnsNames"]
            );
        }
    }
    Ok(())
}

async fn dry_run(env: Arc<Env>) -> anyhow::Result<()> {
    let cp = &env.cp;
    let out = cp.kubectl_stdin(["apply", "--server-side", "-f", "-"], &stand_in_crds())?;
    ensure!(out.success, "installing the stand-in CRDs: {}", out.stderr);
    cp.kubectl([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/issuers.cert-manager.io",
        "crd/certificates.cert-manager.io",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/podmonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ])?;
    // A dry run creates nothing: the namespaces the objects go to must exist.
    let manifests = kustomize::manifests();
    let ns_file = manifests.join("namespace/namespace.yaml");
    cp.kubectl([
        "apply",
        "--server-side",
        "-f",
        &ns_file.display().to_string(),
    ])?;
    let out = cp.kubectl_stdin(
        ["apply", "-f", "-"],
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: spinnaker\n",
    )?;
    ensure!(out.success, "creating namespace spinnaker: {}", out.stderr);

    for k in kustomize::APPLIED {
        let dir = manifests.join(k).display().to_string();
        let started = Instant::now();
        let out = kubectl_full(
            cp,
            ["apply", "--server-side", "--dry-run=server", "-k", &dir],
        )?;
        ensure!(
            out.success,
            "kubectl apply --server-side --dry-run=server -k manifests/{k}:\n{}",
            out.stderr
        );
        ensure!(
            !out.stderr.contains("Warning"),
            "manifests/{k} applies with warnings:\n{}",
            out.stderr
        );
        eprintln!(
            "manifests/{k}: {} objects pass a server-side dry run ({:.1?})",
            out.stdout.lines().count(),
            started.elapsed()
        );
    }
    Ok(())
}

async fn apply(env: Arc<Env>) -> anyhow::Result<()> {
    let cp = &env.cp;
    hub_volume(&env)?;
    let started = Instant::now();
    let first = apply_install(&env)?;
    eprintln!(
        "manifests/install applied: {} objects in {:.1?}",
        first.lines().count(),
        started.elapsed()
    );

    // Pod Security `restricted` is enforced in the namespace: a pod without the settings
    // is refused, so the operator's and hub's pods running there passed it.
    let probe = kubectl_full(
        cp,
        [
            "run",
            "pod-security-probe",
            "-n",
            NS,
            "--image=scale-agent",
            "--dry-run=server",
            // An existing ServiceAccount: the namespace's `default` may not be made yet.
            "--overrides={\"apiVersion\":\"v1\",\"spec\":{\"serviceAccountName\":\"scale-agent-hub\"}}",
        ],
    )?;
    ensure!(
        !probe.success && probe.stderr.contains("violates PodSecurity \"restricted"),
        "a pod with no security settings was not refused: {} {}",
        probe.stdout,
        probe.stderr
    );
    cp.kubectl([
        "wait",
        "--for=condition=Available",
        "--timeout=120s",
        "-n",
        NS,
        "deployment/scale-agent-operator",
        "deployment/scale-agent-hub",
    ])
    .with_context(|| {
        cp.kubectl(["get", "deploy,rs,pods,pvc,events", "-n", NS])
            .unwrap_or_default()
    })?;

    // A second apply changes nothing.
    let before = applied_state(&env)?;
    apply_install(&env)?;
    let after = applied_state(&env)?;
    let changed: Vec<&String> = before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .collect();
    ensure!(
        changed.is_empty() && before.len() == after.len(),
        "the second apply changed {changed:?}"
    );
    let dir = kustomize::manifests().join("install").display().to_string();
    let diff = kubectl_full(cp, ["diff", "--server-side", "-k", &dir])?;
    ensure!(
        diff.success && diff.stdout.is_empty(),
        "kubectl diff after applying:\n{}{}",
        diff.stdout,
        diff.stderr
    );
    eprintln!("second apply: {} objects, none changed", after.len());

    examples_reapply_unchanged(&env)?;
    client_side_reapply_is_unchanged(&env).await?;
    service_accounts_hold_only_what_they_need(&env).await?;
    people_get_the_roles_they_are_given(&env).await
}

/// The installed roles for people: someone bound only to the built-in `view` (or `edit`)
/// in a namespace reads its AgentShards (the viewer role is aggregated into them) but
/// cannot create one; `scale-agent-agentshards-edit`, bound on purpose, can.
async fn people_get_the_roles_they_are_given(env: &Env) -> anyhow::Result<()> {
    let cp = &env.cp;
    let ns = env.namespace("people").await?;
    for (user, role) in [
        ("viewer@example.com", "view"),
        ("editor@example.com", "edit"),
        ("shard-author@example.com", "scale-agent-agentshards-edit"),
    ] {
        cp.kubectl([
            "create",
            "rolebinding",
            &format!("{}-{role}", user.split('@').next().unwrap_or(user)),
            "-n",
            &ns,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ])?;
    }
    let checks: &[(&str, &str, bool)] = &[
        ("viewer@example.com", "get", true),
        ("viewer@example.com", "list", true),
        ("viewer@example.com", "watch", true),
        ("viewer@example.com", "create", false),
        ("viewer@example.com", "delete", false),
        ("editor@example.com", "list", true),
        ("editor@example.com", "create", false),
        ("editor@example.com", "update", false),
        ("shard-author@example.com", "create", true),
        ("shard-author@example.com", "update", true),
        ("shard-author@example.com", "delete", true),
    ];
    // The controller-manager aggregates the viewer role into `view` and `edit` shortly
    // after the install.
    let mismatches = || -> anyhow::Result<Vec<String>> {
        let mut wrong = Vec::new();
        for (user, verb, want) in checks {
            let out = kubectl_full(
                cp,
                [
                    "auth",
                    "can-i",
                    verb,
                    "agentshards.scaleagent.dev",
                    "-n",
                    &ns,
                    "--as",
                    user,
                ],
            )?;
            if (out.stdout.trim() == "yes") != *want {
                wrong.push(format!(
                    "{user} {verb}: {} (want {want})",
                    out.stdout.trim()
                ));
            }
        }
        Ok(wrong)
    };
    let settled = wait::until(
        "the built-in roles to carry the AgentShard viewer role",
        Duration::from_secs(30),
        || async { mismatches().ok()?.is_empty().then_some(()) },
    )
    .await;
    if settled.is_err() {
        anyhow::bail!("permissions of people:\n  {}", mismatches()?.join("\n  "));
    }
    // Not only what can-i says: the viewer really lists, and really cannot create.
    let as_viewer = ["--as", "viewer@example.com", "-n", ns.as_str()];
    let list = kubectl_full(cp, ["get", "agentshards"].iter().chain(&as_viewer))?;
    ensure!(
        list.success,
        "the viewer cannot list AgentShards: {}",
        list.stderr
    );
    let create = cp.kubectl_stdin(
        [
            "apply",
            "--server-side",
            "-f",
            "-",
            "--as",
            "viewer@example.com",
        ],
        &shard_yaml(&ns, "by-viewer", "people-a"),
    )?;
    ensure!(
        !create.success && create.stderr.contains("forbidden"),
        "the viewer created an AgentShard: {} {}",
        create.stdout,
        create.stderr
    );
    env.drop_namespace(&ns).await;
    Ok(())
}

/// `kubectl apply --server-side -f manifests/examples` twice: the second changes nothing
/// (no generation, no field the apply owns) and `kubectl diff` finds nothing. The shards
/// are deleted again (their namespaces are not opened, so nothing runs).
fn examples_reapply_unchanged(env: &Env) -> anyhow::Result<()> {
    let cp = &env.cp;
    for ns in ["spinnaker", "team-b"] {
        env.apply(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n"
        ))?;
    }
    let examples = kustomize::manifests()
        .join("examples")
        .display()
        .to_string();
    let state = || -> anyhow::Result<Value> {
        let list: Value = serde_json::from_str(&cp.kubectl([
            "get",
            "-f",
            &examples,
            "-o",
            "json",
            "--show-managed-fields",
        ])?)?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                serde_json::json!([
                    kustomize::key(o),
                    o["metadata"]["generation"],
                    cluster::applied_by_kubectl(o)
                ])
            })
            .collect())
    };
    cp.kubectl(["apply", "--server-side", "-f", &examples])?;
    let before = state()?;
    cp.kubectl(["apply", "--server-side", "-f", &examples])?;
    let after = state()?;
    let diff = kubectl_full(cp, ["diff", "--server-side", "-f", &examples])?;
    cp.kubectl(["delete", "-f", &examples, "--wait"])?;
    ensure!(
        before == after,
        "applying manifests/examples again changed them:\n{before}\n{after}"
    );
    ensure!(
        diff.success && diff.stdout.is_empty(),
        "kubectl diff after applying manifests/examples:\n{}{}",
        diff.stdout,
        diff.stderr
    );
    eprintln!(
        "manifests/examples applied twice: {} shards, none changed",
        before.as_array().map_or(0, Vec::len)
    );
    Ok(())
}

/// A shard with only the required fields, applied client-side (`kubectl apply -f`, what
/// most users and Argo CD's default sync do) a second time, is `unchanged`: nothing the
/// API server fills in inside its accounts makes kubectl send the list again.
async fn client_side_reapply_is_unchanged(env: &Env) -> anyhow::Result<()> {
    let ns = env.namespace("client-side").await?;
    let file = env.cp.run_dir.join(format!("{ns}-minimal.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: minimal\n  \
             namespace: {ns}\nspec:\n  paused: true\n  accounts:\n    - name: {ns}-a\n      \
             kubeconfigSecretRef: {{ name: kc-a }}\n"
        ),
    )?;
    let file = file.to_string_lossy().into_owned();
    env.cp.kubectl(["apply", "-f", &file])?;
    let again = kubectl_full(&env.cp, ["apply", "-f", &file])?;
    env.cp.kubectl(["delete", "-f", &file, "--wait"])?;
    ensure!(
        again.success && again.stdout.contains("unchanged"),
        "a second client-side apply of an unchanged shard said: {}{}",
        again.stdout,
        again.stderr
    );
    eprintln!(
        "client-side apply of a minimal shard, again: {}",
        again.stdout.trim()
    );
    env.drop_namespace(&ns).await;
    Ok(())
}

/// `kubectl auth can-i` as the installed ServiceAccounts: the operator reads Secrets and
/// writes a shard's children only in namespaces opened with manifests/shard-namespace, changes only its own
/// webhook configuration and Lease; the hub only reads AgentShards.
async fn service_accounts_hold_only_what_they_need(env: &Env) -> anyhow::Result<()> {
    let cp = &env.cp;
    let elsewhere = env.namespace("not-a-shard-namespace").await?;
    let shards = env.namespace("shards").await?;
    shard_namespace(env, &shards)?;
    let checks: &[(&str, &[&str], bool)] = &[
        (
            OPERATOR_SA,
            &["list", "agentshards.scaleagent.dev", "-A"],
            true,
        ),
        (
            OPERATOR_SA,
            &[
                "patch",
                "agentshards.scaleagent.dev",
                "--subresource=status",
                "-A",
            ],
            true,
        ),
        (OPERATOR_SA, &["create", "secrets", "-A"], false),
        (OPERATOR_SA, &["create", "secrets", "-n", &elsewhere], false),
        // Issue 21: no Secret read outside the namespaces opened to it.
        (OPERATOR_SA, &["get", "secrets", "-n", &elsewhere], false),
        (OPERATOR_SA, &["list", "secrets", "-A"], false),
        (OPERATOR_SA, &["watch", "secrets", "-n", &elsewhere], false),
        (OPERATOR_SA, &["get", "secrets", "-n", "kube-system"], false),
        (OPERATOR_SA, &["get", "secrets", "-n", &shards], true),
        (OPERATOR_SA, &["watch", "secrets", "-n", &shards], true),
        (
            OPERATOR_SA,
            &["create", "deployments.apps", "-n", &elsewhere],
            false,
        ),
        (
            OPERATOR_SA,
            &["create", "leases.coordination.k8s.io", "-n", &elsewhere],
            false,
        ),
        (OPERATOR_SA, &["create", "secrets", "-n", &shards], true),
        (
            OPERATOR_SA,
            &["create", "deployments.apps", "-n", &shards],
            true,
        ),
        (
            OPERATOR_SA,
            &[
                "patch",
                "validatingwebhookconfigurations/scale-agent-operator",
            ],
            true,
        ),
        (
            OPERATOR_SA,
            &["patch", "validatingwebhookconfigurations/another-webhook"],
            false,
        ),
        (
            OPERATOR_SA,
            &[
                "delete",
                "validatingwebhookconfigurations/scale-agent-operator",
            ],
            false,
        ),
        (
            OPERATOR_SA,
            &[
                "update",
                "leases.coordination.k8s.io/scale-agent-operator",
                "-n",
                NS,
            ],
            true,
        ),
        (
            OPERATOR_SA,
            &[
                "update",
                "leases.coordination.k8s.io/another-lease",
                "-n",
                NS,
            ],
            false,
        ),
        (HUB_SA, &["watch", "agentshards.scaleagent.dev", "-A"], true),
        (HUB_SA, &["get", "secrets", "-n", NS], false),
        (
            HUB_SA,
            &["create", "agentshards.scaleagent.dev", "-n", &shards],
            false,
        ),
    ];
    let mut wrong = Vec::new();
    for (who, what, want) in checks {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(what);
        let out = kubectl_full(cp, args.iter().copied().chain(["--as", who]))?;
        let got = out.stdout.trim() == "yes";
        if got != *want {
            wrong.push(format!(
                "{who} {what:?}: {} (want {})",
                out.stdout.trim(),
                if *want { "yes" } else { "no" }
            ));
        }
    }
    env.drop_namespace(&elsewhere).await;
    env.drop_namespace(&shards).await;
    ensure!(wrong.is_empty(), "permissions:\n  {}", wrong.join("\n  "));
    Ok(())
}

async fn live(env: Arc<Env>) -> anyhow::Result<()> {
    hub_volume(&env)?;
    apply_install(&env)?;
    let installed = Installed::start(&env).await?;
    probes_answer(&env, &installed).await?;
    let ns = env.namespace("install-shard").await?;
    shard_namespace(&env, &ns)?;
    let pods = opened_namespace_streams(&env, &installed, &ns).await?;
    clouddriver_reads_an_account_through_the_hub(&env, &installed, &ns)?;
    let closed = closed_namespace_gets_nothing(&env, &installed).await?;
    another_shards_agent_is_refused(&env, &installed, &ns).await?;
    let remote = paused_shard_vouches_for_a_remote_agent(&env, &installed).await?;

    // An account removed from the shard is revoked at the hub, and removed with its cache
    // after the grace period.
    env.apply(&shard_yaml(&ns, "first", "install-c"))?;
    until_exported(
        &installed,
        "the removed account to leave the hub",
        60,
        installed.hub_http(),
        "scale_agent_hub_accounts_removed_total{reason=\"grace_period_expired\"} 1",
    )
    .await?;

    // Every metric the alerts and the dashboard name is one the installed components export.
    let agent_pod = pods
        .running()
        .into_iter()
        .find(|p| p.starts_with(&format!("{ns}/")))
        .context("no agent running")?;
    let agent_admin = pods.admin(&agent_pod).context("agent admin address")?;
    let mut exported = BTreeSet::new();
    for addr in [
        installed.operator_admin(),
        installed.hub_http(),
        agent_admin,
    ] {
        exported.extend(metrics::metric_names(
            &scale_agent_e2e::metrics::scrape(&addr).await?,
        ));
    }
    for (what, named) in [
        ("the alerts", metrics::alert_metrics()?),
        ("the Grafana dashboard", metrics::dashboard_metrics()?),
    ] {
        let missing: Vec<String> = named
            .into_iter()
            .filter(|m| !exported.contains(m))
            .collect();
        ensure!(
            missing.is_empty(),
            "{what} name metrics nothing exports: {missing:?} (exported: {exported:?})"
        );
    }

    drop(pods);
    drop(installed);
    env.drop_namespace(&ns).await;
    env.drop_namespace(&closed).await;
    env.drop_namespace(&remote).await;
    Ok(())
}

/// Every probe of the installed operator and hub names an endpoint its process serves,
/// and the readiness probes the one that says whether it can do its work (`/readyz`), not
/// only that it is alive.
async fn probes_answer(env: &Env, installed: &Installed) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(env.cp.client().await?, NS);
    for (name, pod) in [
        ("scale-agent-hub", &installed.hub),
        ("scale-agent-operator", &installed.operator),
    ] {
        let c = first_container(&deployments, name).await?;
        for (kind, probe) in [
            ("readiness", &c.readiness_probe),
            ("liveness", &c.liveness_probe),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.clone())
                .with_context(|| format!("{name} has no HTTP {kind} probe"))?;
            let path = get.path.unwrap_or_default();
            if kind == "readiness" {
                ensure!(
                    path == "/readyz",
                    "{name}'s readiness probe asks {path}, not /readyz"
                );
            }
            let port = match &get.port {
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(p) => p.clone(),
                other => anyhow::bail!("{name}'s {kind} probe names port {other:?}, not a name"),
            };
            let port = *pod
                .ports
                .get(&port)
                .with_context(|| format!("{name} has no port {port}"))?;
            let answer = http_get(port, &path).await?;
            ensure!(
                answer.contains(" 200 "),
                "{name}'s {kind} probe {path} answers {}",
                answer.lines().next().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// docs/install.md's "Wiring Clouddriver": its command, run in the installed hub's pod (the
/// stand-in), writes a kubeconfig that reads the shard's ConfigMap of account `install-a`
/// through the hub's Kubernetes API, with the manifests' port, tokens Secret and TLS.
fn clouddriver_reads_an_account_through_the_hub(
    env: &Env,
    installed: &Installed,
    ns: &str,
) -> anyhow::Result<()> {
    const SERVER: &str = "https://scale-agent-hub-grpc.scale-agent-system.svc:8443";
    let blocks = scale_agent_e2e::guide::read(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/install.md"),
    )?;
    let argv = scale_agent_e2e::guide::exec_command(&blocks, "scale-agent-hub").context(
        "docs/install.md runs nothing in the hub's pod (`kubectl exec deploy/scale-agent-hub --`)",
    )?;
    let written = installed.hub.exec(&argv)?;
    ensure!(
        written.contains(&format!("{SERVER}/accounts/install-a")),
        "the kubeconfig does not point account install-a at the hub's Service:\n{written}"
    );
    // Cluster DNS and the Service would bring the Service's name to the hub's pod.
    let kubeconfig = written.replace(
        SERVER,
        &format!("https://127.0.0.1:{}", installed.hub.ports["kube-api"]),
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("clouddriver.kubeconfig");
    std::fs::write(&path, kubeconfig)?;
    let out = scale_agent_e2e::kubectl::run_full(
        &env.cp.bins.kubectl,
        &path,
        [
            "--context",
            "install-a",
            "-n",
            ns,
            "get",
            "configmap",
            "install-probe",
            "-o",
            "name",
        ],
        None,
    )?;
    ensure!(
        out.success && out.stdout.trim() == "configmap/install-probe",
        "kubectl with the kubeconfig the guide writes: {}{}\n{}",
        out.stdout,
        out.stderr,
        installed.diagnostics()
    );
    Ok(())
}

/// A shard in namespace `ns`, opened to the operator, streams through the
/// installed hub with a client certificate naming it; the agent pods' stand-in runs.
async fn opened_namespace_streams(
    env: &Env,
    installed: &Installed,
    ns: &str,
) -> anyhow::Result<PodRunner> {
    let cp = &env.cp;
    let cluster = cp.target("cluster-1").context("cluster-1")?;
    create_namespace(cluster, ns).await?;
    let kc = std::fs::read_to_string(&cluster.kubeconfig)?;
    secret(env, ns, "kc-1", &[("kubeconfig", kc.as_str())])?;
    // No certificate of the shard's own: the operator issues it from scale-agent-ca.
    let pods = PodRunner::start(
        cp.client().await?,
        RunnerConfig {
            agent_bin: workspace_binary("scale-agent")?,
            kubeconfig: cp.management.kubeconfig.clone(),
            run_dir: cp.run_dir.join(ns),
            env: vec![("RUST_LOG".into(), "info,kube_client=warn".into())],
            args: vec!["--reload-interval=500ms".into()],
            namespace: Some(ns.to_owned()),
        },
    );
    put_cm(&configmaps(cluster, ns).await?, "install-probe", "1").await?;
    env.apply(&shard_yaml(ns, "first", "install-a"))?;
    wait::until(
        "the shard's ConfigMap at the hub",
        Duration::from_secs(90),
        || async {
            let body = installed
                .hub_api("/v1/accounts/install-a/objects?kind=ConfigMap")
                .await
                .ok()?;
            body.contains("install-probe").then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "pods: {:?}\n{}\n{}",
            pods.running(),
            cp.kubectl(["get", "ash,deploy,pods,events", "-n", ns])
                .unwrap_or_default(),
            installed.diagnostics()
        )
    })?;
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        "-n",
        ns,
        "agentshard/first",
    ])?;
    cp.kubectl(["get", "secret", "first-agent-tls", "-n", ns])
        .context("the client certificate the operator issued")?;
    let unauthorized = reqwest::get(format!("http://{}/v1/accounts", installed.hub_http()))
        .await?
        .status();
    ensure!(
        unauthorized == 401,
        "the hub's API answered {unauthorized} without its token"
    );
    Ok(pods)
}

/// A shard in a namespace nobody opened: the operator may not write there, so nothing is
/// made and nothing runs. Returns the namespace.
async fn closed_namespace_gets_nothing(env: &Env, installed: &Installed) -> anyhow::Result<String> {
    let cp = &env.cp;
    let closed = env.namespace("install-closed").await?;
    let kc = std::fs::read_to_string(&cp.target("cluster-1").context("cluster-1")?.kubeconfig)?;
    secret(env, &closed, "kc-1", &[("kubeconfig", kc.as_str())])?;
    env.apply(&shard_yaml(&closed, "second", "install-b"))?;
    until_exported(
        installed,
        "the operator to be refused in a namespace not opened",
        30,
        installed.operator_admin(),
        "scale_agent_operator_reconcile_errors_total{error=\"ApiForbidden\"}",
    )
    .await?;
    let deployments = Api::<Deployment>::namespaced(cp.client().await?, &closed);
    ensure!(
        deployments.get_opt("second-agent").await?.is_none(),
        "the operator made an agent Deployment in a namespace not opened to it"
    );
    // The shard's status says why, and what to do.
    wait::until(
        "the shard's status to say its namespace is not opened",
        Duration::from_secs(30),
        || async {
            let out = cp
                .kubectl([
                    "get",
                    "agentshard",
                    "second",
                    "-n",
                    &closed,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"ConfigValid\")].reason} {.status.conditions[?(@.type==\"ConfigValid\")].message}",
                ])
                .ok()?;
            (out.starts_with("NamespaceNotOpened") && out.contains("scale-agent-operator-shards"))
                .then_some(())
        },
    )
    .await
    .with_context(|| installed.diagnostics())?;
    Ok(closed)
}

/// The installed hub, reading AgentShards as its ServiceAccount, refuses the account of
/// shard `ns/first` from an agent of another shard (with a valid certificate naming it).
async fn another_shards_agent_is_refused(
    env: &Env,
    installed: &Installed,
    ns: &str,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let rogue = start_agent(env, installed, ns, "rogue", "install-a", dir.path())?;
    wait::until(
        "the hub to refuse the account from another shard",
        Duration::from_secs(60),
        || async {
            let m = scale_agent_e2e::metrics::scrape(&installed.hub_http())
                .await
                .ok()?;
            m.contains("scale_agent_hub_registrations_rejected_total{reason=\"not_owner\"}")
                .then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "rogue agent:\n{}\n{}",
            tail(rogue.proc.log(), 20),
            installed.diagnostics()
        )
    })?;
    Ok(())
}

/// Agent mode as docs/deployment-modes.md describes it today: the agent runs elsewhere
/// (here: started directly), and a paused AgentShard of the same namespace and name in the
/// hub's cluster lists its account, so the hub (which sees only its own cluster's shards)
/// accepts it. The paused shard makes nothing.
async fn paused_shard_vouches_for_a_remote_agent(
    env: &Env,
    installed: &Installed,
) -> anyhow::Result<String> {
    let ns = env.namespace("install-remote").await?;
    env.apply(&format!(
            "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: remote\n  namespace: {ns}\nspec:\n  paused: true\n  hub: {{ address: {} }}\n  accounts:\n    - name: install-remote-a\n      kubeconfigSecretRef: {{ name: elsewhere }}\n",
            installed.hub_grpc()
        ),
    )?;
    let cluster = env.cp.target("cluster-1").context("cluster-1")?;
    create_namespace(cluster, &ns).await?;
    let dir = tempfile::tempdir()?;
    let agent = start_agent(
        env,
        installed,
        &ns,
        "remote",
        "install-remote-a",
        dir.path(),
    )?;
    wait::until(
        "the remote agent's account at the hub",
        Duration::from_secs(60),
        || async {
            let body = installed.hub_api("/v1/accounts").await.ok()?;
            let accounts: Value = serde_json::from_str(&body).ok()?;
            accounts
                .as_array()?
                .iter()
                .any(|a| a["name"] == "install-remote-a" && a["state"] == "Connected")
                .then_some(())
        },
    )
    .await
    .with_context(|| {
        format!(
            "remote agent:\n{}\n{}",
            tail(agent.proc.log(), 20),
            installed.diagnostics()
        )
    })?;
    let deployments = Api::<Deployment>::namespaced(env.cp.client().await?, &ns);
    ensure!(
        deployments.get_opt("remote-agent").await?.is_none(),
        "the paused shard got an agent Deployment"
    );
    Ok(ns)
}

/// An agent of shard `ns/shard` streaming `account` (namespace `ns` of cluster-1) to the
/// installed hub, with a client certificate naming the shard.
fn start_agent(
    env: &Env,
    installed: &Installed,
    ns: &str,
    shard: &str,
    account: &str,
    dir: &std::path::Path,
) -> anyhow::Result<AgentProcess> {
    let cp = &env.cp;
    let cert = cp.pki.issue_client(
        &format!("install-{shard}-{ns}"),
        shard,
        None,
        &[&format!("spiffe://scaleagent.dev/ns/{ns}/shard/{shard}")],
    )?;
    let kc = std::fs::read_to_string(&cp.target("cluster-1").context("cluster-1")?.kubeconfig)?;
    let kubeconfig_file = format!("{account}.kubeconfig");
    Ok(AgentProcess::start(
        &AgentSpec {
            bin: workspace_binary("scale-agent")?,
            replica: format!("{shard}-0"),
            namespace: ns.to_owned(),
            management_kubeconfig: cp.management.kubeconfig.clone(),
            args: Vec::new(),
        },
        dir,
        &AgentConfig {
            shard: ShardRef::new(ns.to_owned(), shard),
            hub: HubConfig {
                address: installed.hub_grpc(),
                tls: Some(TlsConfig {
                    ca_file: cp.pki.ca_file.display().to_string(),
                    cert_file: cert.cert_file.display().to_string(),
                    key_file: cert.key_file.display().to_string(),
                    server_name: None,
                }),
            },
            accounts: vec![AccountConfig {
                name: account.into(),
                kubeconfig_file: kubeconfig_file.clone(),
                in_cluster: false,
                scope: scale_agent_crds::AccountScope {
                    namespaces: vec![ns.to_owned()],
                    kinds: vec!["ConfigMap".into()],
                    ..Default::default()
                },
            }],
            budget: BudgetConfig::default(),
            allow_kubeconfig: scale_agent_e2e::kubeconfig::allow(),
        },
        &BTreeMap::from([(kubeconfig_file, kc)]),
        &cp.run_dir.join(ns),
    )?)
}

/// Waits up to `secs` seconds until the metrics at `addr` (one of the installed
/// components') contain `needle`; the installed components' diagnostics on failure.
async fn until_exported(
    installed: &Installed,
    what: &str,
    secs: u64,
    addr: String,
    needle: &str,
) -> anyhow::Result<()> {
    wait::until(what, Duration::from_secs(secs), || async {
        let m = scale_agent_e2e::metrics::scrape(&addr).await.ok()?;
        m.contains(needle).then_some(())
    })
    .await
    .with_context(|| installed.diagnostics())
}
