//! Installing scale-agent as a user does, against the real control plane:
//! - the image archive of `just image` is a valid OCI image whose binaries run from its
//!   own root filesystem as its non-root user;
//! - every kustomization of `manifests/` renders, passes Pod Security `restricted` and
//!   least-privilege checks, follows a changed namespace and image, and passes a
//!   server-side dry run;
//! - `manifests/install` applies for real (its pods admitted under `restricted`), a
//!   second apply changes nothing, and its ServiceAccounts hold only what they need;
//! - the operator and hub run as those ServiceAccounts with the manifests' own flags, and
//!   a shard in a namespace opened with `manifests/shard-namespace` streams through them;
//!   the alerts name metrics they really export.

mod common;
#[path = "install/kubelet.rs"]
mod kubelet;
#[path = "install/kustomize.rs"]
mod kustomize;
#[path = "install/oci.rs"]
mod oci;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::Env;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use scale_agent_crds::{AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef, TlsConfig};
use scale_agent_e2e::agent::{AgentProcess, AgentSpec};
use scale_agent_e2e::controlplane::http_get;
use scale_agent_e2e::converge::{configmaps, create_namespace, put_cm};
use scale_agent_e2e::kubectl::{Output, run_full};
use scale_agent_e2e::pods::{PodRunner, RunnerConfig};
use scale_agent_e2e::process::tail;
use scale_agent_e2e::{wait, workspace_binary};
use serde_json::Value;

/// The namespace `manifests/install` installs into.
const NS: &str = "scale-agent-system";
/// The image the manifests name, at this workspace's version.
const IMAGE: &str = concat!(
    "ghcr.io/scale-agent/scale-agent:v",
    env!("CARGO_PKG_VERSION")
);
const BINARIES: &[&str] = &["scale-agent", "scale-agent-operator", "scale-agent-hub"];
const OPERATOR_SA: &str = "system:serviceaccount:scale-agent-system:scale-agent-operator";
const HUB_SA: &str = "system:serviceaccount:scale-agent-system:scale-agent-hub";

fn main() {
    common::main_with(
        &["cluster-1"],
        vec![
            ("image_archive_runs_each_binary_as_the_non_root_user", |e| {
                Box::pin(image(e))
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
        ],
        // The tests share the installed namespace: one at a time.
        Some(1),
    );
}

// ---------------------------------------------------------------------------------------
// The image

/// The archive to test: `$SCALE_AGENT_IMAGE_ARCHIVE`, else the newer of the release and
/// debug archives `just image` / `just image debug` write.
fn image_archive() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCALE_AGENT_IMAGE_ARCHIVE") {
        return Some(PathBuf::from(p));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let version = env!("CARGO_PKG_VERSION");
    ["", "-debug"]
        .iter()
        .map(|s| target.join(format!("images/scale-agent-{version}{s}.oci.tar")))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

async fn image(_env: Arc<Env>) -> anyhow::Result<()> {
    let Some(archive) = image_archive() else {
        eprintln!(
            "SKIPPED image_archive_runs_each_binary_as_the_non_root_user: no image archive in \
             target/images/; build it with `just image` (or `just image debug`; `just test` does)"
        );
        return Ok(());
    };
    ensure!(
        ids(std::process::id())?.0.first() == Some(&0),
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

    // No shell, nothing set-user-ID, and the user owns only its home.
    ensure!(
        !image.rootfs.join("bin/sh").exists() && !image.rootfs.join("usr/bin/sh").exists(),
        "the image has a shell"
    );
    for_each_file(&image.rootfs, &mut |path, meta| {
        use std::os::unix::fs::MetadataExt;
        let rel = path.strip_prefix(&image.rootfs).unwrap_or(path);
        ensure!(
            meta.mode() & 0o6000 == 0,
            "{} is set-user-ID or set-group-ID",
            rel.display()
        );
        if meta.uid() != 0 {
            ensure!(
                rel.starts_with("home/nonroot"),
                "{} is owned by {}",
                rel.display(),
                meta.uid()
            );
        }
        Ok(())
    })?;

    // Each binary answers --version and --help from the image's own root filesystem
    // (its libraries, no host file), as the image's user.
    let version = env!("CARGO_PKG_VERSION");
    let entrypoint: Vec<String> = serde_json::from_value(config["Entrypoint"].clone())
        .context("the image has no Entrypoint")?;
    ensure!(
        entrypoint == ["/usr/local/bin/scale-agent"],
        "the entrypoint is {entrypoint:?}: the operator starts agent pods with arguments only"
    );
    for bin in BINARIES {
        let path = format!("/usr/local/bin/{bin}");
        let out = in_image(&image.rootfs, user, &[&path, "--version"])?;
        ensure!(
            out.trim() == format!("{bin} {version}"),
            "{bin} --version printed {out:?}"
        );
        let help = in_image(&image.rootfs, user, &[&path, "--help"])?;
        ensure!(help.contains("Usage:"), "{bin} --help printed {help:?}");
    }

    // A long-running binary: the hub serves from the image, and its process is not root.
    let grpc = scale_agent_e2e::ports::free_port()?;
    let http = scale_agent_e2e::ports::free_port()?;
    let mut hub = Command::new(chroot()?)
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
    let who = ids(hub.id());
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

/// Runs `argv` inside `rootfs` as `user` (uid:gid) with no supplementary group; its stdout.
fn in_image(rootfs: &Path, user: &str, argv: &[&str]) -> anyhow::Result<String> {
    let gid = user.split(':').nth(1).unwrap_or(user);
    let out = Command::new(chroot()?)
        .arg(format!("--userspec={user}"))
        .arg(format!("--groups={gid}"))
        .arg(rootfs)
        .args(argv)
        .env_clear()
        .output()
        .with_context(|| format!("running {argv:?} in the image"))?;
    ensure!(
        out.status.success(),
        "{argv:?} in the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's chroot (coreutils), found before the child's environment is cleared.
fn chroot() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .context("chroot is missing (Debian: apt-get install coreutils)")
}

/// Real, effective, saved and filesystem uids; the same gids; supplementary groups.
fn ids(pid: u32) -> anyhow::Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok((field("Uid:"), field("Gid:"), field("Groups:")))
}

fn for_each_file(
    dir: &Path,
    f: &mut dyn FnMut(&Path, &std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        f(&path, &meta)?;
        if meta.is_dir() {
            for_each_file(&path, f)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Rendering

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
    for k in kustomize::INSTALLS {
        let objects = kustomize::render(&manifests.join(k))?;
        let mut problems = Vec::new();
        restricted_problems(&objects, &mut problems);
        least_privilege_problems(&objects, &mut problems);
        ensure!(
            problems.is_empty(),
            "manifests/{k}:\n  {}",
            problems.join("\n  ")
        );
    }

    // A user's overlay with another namespace and a mirrored image: nothing keeps the old
    // ones, once manifests/follow runs after them.
    let dir = tempfile::tempdir()?;
    for k in kustomize::INSTALLS {
        let overlay = dir.path().join(k.replace('/', "-"));
        std::fs::create_dir_all(&overlay)?;
        let follow = kustomize::relative(&overlay, &manifests.join("follow"))?;
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
        let operator = find(&objects, "Deployment", "scale-agent-operator")?;
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
            let cert = find(&objects, "Certificate", "scale-agent-hub-tls")?;
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

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

/// What Pod Security `restricted` requires of every pod template, plus a read-only root
/// filesystem; and the image the manifests name.
fn restricted_problems(objects: &[Value], problems: &mut Vec<String>) {
    for o in objects {
        if o["kind"] == "Namespace" {
            let labels = &o["metadata"]["labels"];
            if labels["pod-security.kubernetes.io/enforce"] != "restricted" {
                problems.push(format!(
                    "{}: Pod Security `restricted` is not enforced",
                    kustomize::key(o)
                ));
            }
        }
        let Some(pod) = o["spec"]["template"]["spec"].as_object() else {
            continue;
        };
        let key = kustomize::key(o);
        let psc = &pod.get("securityContext").cloned().unwrap_or_default();
        if psc["runAsNonRoot"] != true {
            problems.push(format!("{key}: runAsNonRoot is not set"));
        }
        for c in pod
            .get("containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c["name"].as_str().unwrap_or_default();
            let sc = &c["securityContext"];
            if sc["allowPrivilegeEscalation"] != false {
                problems.push(format!(
                    "{key} {name}: allowPrivilegeEscalation is not false"
                ));
            }
            if sc["readOnlyRootFilesystem"] != true {
                problems.push(format!("{key} {name}: the root filesystem is writable"));
            }
            if !sc["capabilities"]["drop"]
                .as_array()
                .is_some_and(|d| d.contains(&Value::from("ALL")))
                || !sc["capabilities"]["add"].is_null()
            {
                problems.push(format!("{key} {name}: capabilities are not all dropped"));
            }
            let seccomp = if sc["seccompProfile"]["type"].is_null() {
                &psc["seccompProfile"]["type"]
            } else {
                &sc["seccompProfile"]["type"]
            };
            if seccomp != "RuntimeDefault" {
                problems.push(format!("{key} {name}: seccomp profile is {seccomp}"));
            }
            if c["image"] != IMAGE {
                problems.push(format!("{key} {name}: image {} is not {IMAGE}", c["image"]));
            }
        }
    }
}

/// No cluster-wide Secret or Lease write; the webhook configuration only by name.
fn least_privilege_problems(objects: &[Value], problems: &mut Vec<String>) {
    let writes = [
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "*",
    ];
    for binding in objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding") {
        let role_name = binding["roleRef"]["name"].as_str().unwrap_or_default();
        let Ok(role) = find(objects, "ClusterRole", role_name) else {
            problems.push(format!(
                "{} binds a ClusterRole not installed",
                kustomize::key(binding)
            ));
            continue;
        };
        for rule in role["rules"].as_array().into_iter().flatten() {
            let has = |field: &str, want: &str| {
                rule[field]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x == want || x == "*"))
            };
            let writes_it = writes.iter().any(|w| has("verbs", w));
            for resource in ["secrets", "leases"] {
                if has("resources", resource) && writes_it {
                    problems.push(format!(
                        "ClusterRole {role_name} (bound cluster-wide) writes {resource}: {rule}"
                    ));
                }
            }
            if has("resources", "validatingwebhookconfigurations")
                && rule["resourceNames"].as_array().is_none_or(Vec::is_empty)
            {
                problems.push(format!(
                    "ClusterRole {role_name} may change every webhook configuration: {rule}"
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dry run

/// Minimal stand-ins for the CRDs of kinds the test control plane does not have
/// (cert-manager, Prometheus Operator): the kinds exist, their specs are not checked.
fn stand_in_crds() -> String {
    let kinds = [
        ("cert-manager.io", "Issuer", "issuers"),
        ("cert-manager.io", "Certificate", "certificates"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
        ("monitoring.coreos.com", "PodMonitor", "podmonitors"),
        ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    ];
    kinds
        .iter()
        .map(|(group, kind, plural)| {
            format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {plural}.{group}\nspec:\n  group: {group}\n  scope: Namespaced\n  names: {{ kind: {kind}, plural: {plural}, singular: {}, listKind: {kind}List }}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema:\n          type: object\n          properties:\n            spec: {{ type: object, x-kubernetes-preserve-unknown-fields: true }}\n---\n",
                kind.to_lowercase()
            )
        })
        .collect()
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
    let ns_file = manifests.join("install/namespace.yaml");
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

// ---------------------------------------------------------------------------------------
// Applying for real

/// `kubectl apply --server-side -k manifests/install`: fails on an error or a warning.
fn apply_install(env: &Env) -> anyhow::Result<String> {
    let dir = kustomize::manifests().join("install").display().to_string();
    let out = kubectl_full(&env.cp, ["apply", "--server-side", "-k", &dir])?;
    ensure!(out.success, "applying manifests/install:\n{}", out.stderr);
    ensure!(
        !out.stderr.contains("Warning"),
        "manifests/install applies with warnings:\n{}",
        out.stderr
    );
    Ok(out.stdout)
}

/// What `kubectl` (the apply field manager) owns of each installed object, and its
/// generation: a second apply that changes nothing leaves all of it as it was.
fn applied_state(env: &Env) -> anyhow::Result<BTreeMap<String, Value>> {
    let dir = kustomize::manifests().join("install").display().to_string();
    let list: Value = serde_json::from_str(&env.cp.kubectl([
        "get",
        "-k",
        &dir,
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    let mut state = BTreeMap::new();
    for o in list["items"].as_array().into_iter().flatten() {
        let mine: Vec<&Value> = o["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["manager"] == "kubectl" && m["operation"] == "Apply")
            .collect();
        state.insert(
            kustomize::key(o),
            serde_json::json!({ "generation": o["metadata"]["generation"], "applied": mine }),
        );
    }
    Ok(state)
}

/// A volume for the hub's claim: the test control plane has no storage provisioner.
fn hub_volume(env: &Env) -> anyhow::Result<()> {
    let path = env.cp.run_dir.join("hub-store-volume");
    std::fs::create_dir_all(&path)?;
    let out = env.cp.kubectl_stdin(
        ["apply", "-f", "-"],
        &format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: scale-agent-hub-store\nspec:\n  capacity: {{ storage: 1Gi }}\n  accessModes: [ReadWriteOnce]\n  hostPath: {{ path: {} }}\n",
            path.display()
        ),
    )?;
    ensure!(out.success, "creating the hub's volume: {}", out.stderr);
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

    // What the ServiceAccounts may do.
    let elsewhere = env.namespace("not-a-shard-namespace").await?;
    let shards = env.namespace("shards").await?;
    shard_namespace(&env, &shards)?;
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

/// `manifests/shard-namespace` for namespace `ns`, as a user's overlay.
fn shard_namespace(env: &Env, ns: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    kustomize::overlay(dir.path(), "shard-namespace", &format!("namespace: {ns}"))?;
    let out = kubectl_full(
        &env.cp,
        [
            "apply",
            "--server-side",
            "-k",
            &dir.path().display().to_string(),
        ],
    )?;
    ensure!(
        out.success,
        "applying manifests/shard-namespace for {ns}: {}",
        out.stderr
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Running what was installed

async fn live(env: Arc<Env>) -> anyhow::Result<()> {
    let cp = &env.cp;
    hub_volume(&env)?;
    apply_install(&env)?;
    let dir = tempfile::tempdir()?;

    // The hub's Secrets, as docs/install.md has users make them: a serving certificate
    // (here for the loopback address the stand-in listens on) with the CA of the agents'
    // client certificates, and the API token.
    let serving = cp.pki.issue_server(
        "install-hub",
        &["127.0.0.1", "scale-agent-hub-grpc.scale-agent-system.svc"],
    )?;
    secret(
        &env,
        NS,
        "scale-agent-hub-tls",
        &[
            ("tls.crt", serving.cert_pem.as_str()),
            ("tls.key", serving.key_pem.as_str()),
            ("ca.crt", cp.pki.ca_pem.as_str()),
        ],
    )?;
    let token = format!("install-test-{}", std::process::id());
    secret(
        &env,
        NS,
        "scale-agent-hub-api-token",
        &[("token", token.as_str())],
    )?;

    let hub = kubelet::run(cp, NS, "scale-agent-hub", dir.path(), |_| {
        kubelet::Overrides {
            // A dropped account waits 600 s by default; the test watches one go.
            env: Vec::new(),
            args: vec!["--grace-period=3s".into()],
        }
    })
    .await
    .context("starting the installed hub")?;
    let hub_http = hub.ports["http"];
    let hub_grpc = hub.ports["grpc"];
    let hub_log = hub.proc.log().to_path_buf();
    wait::until(
        "the hub to list AgentShards as its ServiceAccount",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&hub_log)
                .ok()
                .filter(|l| l.contains("account ownership is enforced"))
        },
    )
    .await
    .with_context(|| tail(&hub_log, 30))?;
    let operator = kubelet::run(cp, NS, "scale-agent-operator", dir.path(), |ports| {
        kubelet::Overrides {
            // Cluster DNS would resolve the hub's Service; the API server would call the
            // webhook through its Service.
            env: vec![(
                "SCALE_AGENT_DEFAULT_HUB".into(),
                format!("127.0.0.1:{hub_grpc}"),
            )],
            args: vec![format!(
                "--webhook-url=https://127.0.0.1:{}/validate",
                ports["webhook"]
            )],
        }
    })
    .await
    .context("starting the installed operator")?;
    let admin = operator.ports["admin"];
    let op_log = operator.proc.log().to_path_buf();
    let diagnostics = || {
        format!(
            "operator log:\n{}\nhub log:\n{}",
            tail(&op_log, 30),
            tail(&hub_log, 30)
        )
    };
    wait::until(
        "the operator to be ready as its ServiceAccount",
        Duration::from_secs(60),
        || async {
            http_get(admin, "/readyz")
                .await
                .ok()
                .filter(|r| r.contains(" 200 "))
        },
    )
    .await
    .with_context(diagnostics)?;
    wait::until("the operator to lead", Duration::from_secs(30), || async {
        let m = http_get(admin, "/metrics").await.ok()?;
        m.lines()
            .any(|l| l == "scale_agent_operator_leader 1")
            .then_some(())
    })
    .await
    .with_context(diagnostics)?;
    let webhook = cp.kubectl([
        "get",
        "validatingwebhookconfiguration",
        "scale-agent-operator",
        "-o",
        "json",
    ])?;
    ensure!(
        webhook.contains(&format!(
            "https://127.0.0.1:{}/validate",
            operator.ports["webhook"]
        )),
        "the operator did not register its webhook: {webhook}"
    );

    // A shard in a namespace opened with manifests/shard-namespace streams through the
    // installed hub, with a client certificate naming it.
    let ns = env.namespace("install-shard").await?;
    shard_namespace(&env, &ns)?;
    let cluster = cp.target("cluster-1").context("cluster-1")?;
    create_namespace(cluster, &ns).await?;
    let kc = std::fs::read_to_string(&cluster.kubeconfig)?;
    secret(&env, &ns, "kc-1", &[("kubeconfig", kc.as_str())])?;
    let client = cp.pki.issue_client(
        &format!("install-{ns}"),
        "first",
        None,
        &[&format!("spiffe://scaleagent.dev/ns/{ns}/shard/first")],
    )?;
    secret(
        &env,
        &ns,
        "first-hub-tls",
        &[
            ("tls.crt", client.cert_pem.as_str()),
            ("tls.key", client.key_pem.as_str()),
            ("ca.crt", cp.pki.ca_pem.as_str()),
        ],
    )?;
    let pods = PodRunner::start(
        cp.client().await?,
        RunnerConfig {
            agent_bin: workspace_binary("scale-agent")?,
            kubeconfig: cp.management.kubeconfig.clone(),
            run_dir: cp.run_dir.join(&ns),
            env: vec![("RUST_LOG".into(), "info,kube_client=warn".into())],
            args: vec!["--reload-millis=500".into()],
        },
    );
    let configmaps = configmaps(cluster, &ns).await?;
    put_cm(&configmaps, "install-probe", "1").await?;
    apply_yaml(&env, &shard_yaml(&ns, "first", "install-a"))?;
    let http = reqwest::Client::new();
    let objects_url =
        format!("http://127.0.0.1:{hub_http}/v1/accounts/install-a/objects?kind=ConfigMap");
    wait::until(
        "the shard's ConfigMap at the hub",
        Duration::from_secs(90),
        || async {
            let body = http
                .get(&objects_url)
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .text()
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
            cp.kubectl(["get", "ash,deploy,pods,events", "-n", &ns])
                .unwrap_or_default(),
            diagnostics()
        )
    })?;
    cp.kubectl([
        "wait",
        "--for=condition=Ready",
        "--timeout=60s",
        "-n",
        &ns,
        "agentshard/first",
    ])?;
    let unauthorized = http
        .get(format!("http://127.0.0.1:{hub_http}/v1/accounts"))
        .send()
        .await?
        .status();
    ensure!(
        unauthorized == 401,
        "the hub's API answered {unauthorized} without its token"
    );

    // A shard in a namespace nobody opened: the operator may not write there, so nothing
    // is made and nothing runs.
    let closed = env.namespace("install-closed").await?;
    secret(&env, &closed, "kc-1", &[("kubeconfig", kc.as_str())])?;
    apply_yaml(&env, &shard_yaml(&closed, "second", "install-b"))?;
    wait::until(
        "the operator to be refused in a namespace not opened",
        Duration::from_secs(30),
        || async {
            let m = http_get(admin, "/metrics").await.ok()?;
            m.contains("scale_agent_operator_reconcile_errors_total{error=\"ApiForbidden\"}")
                .then_some(())
        },
    )
    .await
    .with_context(diagnostics)?;
    let deployments = Api::<Deployment>::namespaced(cp.client().await?, &closed);
    ensure!(
        deployments.get_opt("second-agent").await?.is_none(),
        "the operator made an agent Deployment in a namespace not opened to it"
    );

    // The installed hub, reading AgentShards as its ServiceAccount, refuses the account
    // from an agent of another shard (with a valid certificate naming that shard).
    let rogue_dir = dir.path().join("rogue");
    let rogue_cert = cp.pki.issue_client(
        &format!("install-rogue-{ns}"),
        "rogue",
        None,
        &[&format!("spiffe://scaleagent.dev/ns/{ns}/shard/rogue")],
    )?;
    let rogue = AgentProcess::start(
        &AgentSpec {
            bin: workspace_binary("scale-agent")?,
            replica: "rogue-0".into(),
            namespace: ns.clone(),
            management_kubeconfig: cp.management.kubeconfig.clone(),
            args: Vec::new(),
        },
        &rogue_dir,
        &AgentConfig {
            shard: ShardRef::new(ns.clone(), "rogue"),
            hub: HubConfig {
                address: format!("127.0.0.1:{hub_grpc}"),
                tls: Some(TlsConfig {
                    ca_file: cp.pki.ca_file.display().to_string(),
                    cert_file: rogue_cert.cert_file.display().to_string(),
                    key_file: rogue_cert.key_file.display().to_string(),
                    server_name: None,
                }),
            },
            accounts: vec![AccountConfig {
                name: "install-a".into(),
                kubeconfig_file: "install-a.kubeconfig".into(),
                namespaces: vec![ns.clone()],
                omit_namespaces: vec![],
                kinds: vec!["ConfigMap".into()],
                omit_kinds: vec![],
                only_spinnaker_managed: false,
            }],
            budget: BudgetConfig::default(),
        },
        &BTreeMap::from([("install-a.kubeconfig".to_owned(), kc.clone())]),
        &cp.run_dir.join(&ns),
    )?;
    let rogue_log = rogue.proc.log().to_path_buf();
    wait::until(
        "the hub to refuse the account from another shard",
        Duration::from_secs(60),
        || async {
            let m = reqwest::get(format!("http://127.0.0.1:{hub_http}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.contains("scaleagent_hub_registrations_rejected_total{reason=\"not_owner\"}")
                .then_some(())
        },
    )
    .await
    .with_context(|| format!("rogue agent:\n{}\n{}", tail(&rogue_log, 20), diagnostics()))?;
    drop(rogue);

    // An account removed from the shard is revoked at the hub, and removed with its cache
    // after the grace period.
    apply_yaml(&env, &shard_yaml(&ns, "first", "install-c"))?;
    wait::until(
        "the removed account to leave the hub",
        Duration::from_secs(60),
        || async {
            let m = reqwest::get(format!("http://127.0.0.1:{hub_http}/metrics"))
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            m.contains("scaleagent_hub_accounts_removed_total{reason=\"grace_period_expired\"} 1")
                .then_some(())
        },
    )
    .await
    .with_context(diagnostics)?;

    // Every metric the alerts name is one the installed components export.
    let agent_pod = pods
        .running()
        .into_iter()
        .find(|p| p.starts_with(&format!("{ns}/")))
        .context("no agent running")?;
    let agent_admin = pods.admin(&agent_pod).context("agent admin address")?;
    let mut exported = BTreeSet::new();
    for text in [
        reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
            .await?
            .text()
            .await?,
        reqwest::get(format!("http://127.0.0.1:{hub_http}/metrics"))
            .await?
            .text()
            .await?,
        reqwest::get(format!("http://{agent_admin}/metrics"))
            .await?
            .text()
            .await?,
    ] {
        exported.extend(metric_names(&text));
    }
    let missing: Vec<String> = alert_metrics()?
        .into_iter()
        .filter(|m| !exported.contains(m))
        .collect();
    ensure!(
        missing.is_empty(),
        "the alerts name metrics nothing exports: {missing:?} (exported: {exported:?})"
    );

    drop(pods);
    drop(operator);
    drop(hub);
    env.drop_namespace(&ns).await;
    env.drop_namespace(&closed).await;
    Ok(())
}

/// kubectl with `args`, whatever its exit status.
fn kubectl_full<I, S>(cp: &scale_agent_e2e::ControlPlane, args: I) -> anyhow::Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Ok(run_full(
        &cp.bins.kubectl,
        &cp.management.kubeconfig,
        args,
        None,
    )?)
}

/// `kubectl apply -f -` of `yaml`; fails with kubectl's stderr.
fn apply_yaml(env: &Env, yaml: &str) -> anyhow::Result<()> {
    let out = env.cp.kubectl_stdin(["apply", "-f", "-"], yaml)?;
    ensure!(out.success, "kubectl apply failed: {}\n{yaml}", out.stderr);
    Ok(())
}

fn shard_yaml(ns: &str, name: &str, account: &str) -> String {
    format!(
        "apiVersion: scaleagent.dev/v1alpha1\nkind: AgentShard\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  accounts:\n    - name: {account}\n      kubeconfigSecretRef: {{ name: kc-1 }}\n      namespaces: [{ns}]\n      kinds: [ConfigMap]\n"
    )
}

/// A generic Secret `ns/name` with `data`.
fn secret(env: &Env, ns: &str, name: &str, data: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut s = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name, "namespace": ns },
        "stringData": {},
    });
    for (k, v) in data {
        s["stringData"][*k] = Value::from(*v);
    }
    apply_yaml(env, &serde_json::to_string(&s)?)
}

/// Metric names of a Prometheus text exposition: sample names, and the family names of
/// `# TYPE` lines with the suffixes their samples carry.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                names.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The scale-agent metrics the PrometheusRule of manifests/components/production names.
fn alert_metrics() -> anyhow::Result<BTreeSet<String>> {
    let objects = kustomize::render(&kustomize::manifests().join("overlays/production"))?;
    let rule = find(&objects, "PrometheusRule", "scale-agent")?;
    let mut names = BTreeSet::new();
    for group in rule["spec"]["groups"].as_array().into_iter().flatten() {
        for r in group["rules"].as_array().into_iter().flatten() {
            let expr = r["expr"].as_str().unwrap_or_default();
            for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            {
                if token.starts_with("scale_agent_") || token.starts_with("scaleagent_") {
                    names.insert(token.to_owned());
                }
            }
        }
    }
    if names.is_empty() {
        bail!("the PrometheusRule names no scale-agent metric");
    }
    Ok(names)
}
