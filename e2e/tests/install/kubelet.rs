//! Runs the pod of an installed Deployment (the operator's, the hub's) as a local process,
//! as a kubelet would run its container: the command, arguments and environment of the
//! Deployment as applied to the API server, `$(VAR)` expanded, downward-API fields filled
//! in, Secret volumes written out as files, and the pod's ServiceAccount token as its
//! credentials. The process therefore runs with exactly the flags and permissions the
//! manifests give it.
//!
//! What a node provides and a loopback process cannot have is replaced, and only that:
//! the mount paths (local folders), the binary (this workspace's build of the one the
//! image holds), and the listen addresses (`0.0.0.0:<containerPort>` becomes a free
//! loopback port); the caller adds what cluster networking would (see `overrides`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use scale_agent_e2e::ports::free_port;
use scale_agent_e2e::process::Proc;
use scale_agent_e2e::{ControlPlane, workspace_binary};

/// One running stand-in pod.
pub struct PodProcess {
    pub proc: Proc,
    /// Container port name → the loopback port the process listens on instead.
    pub ports: HashMap<String, u16>,
    /// Container port → the loopback port the process listens on instead.
    container_ports: Vec<(i32, u16)>,
    /// Mount path → the local folder in its place, longest mount path first.
    mounts: Vec<(String, PathBuf)>,
    /// The container's environment.
    env: BTreeMap<String, String>,
}

impl PodProcess {
    /// Runs `argv` in the pod as `kubectl exec` does: the binary `argv[0]` names (this
    /// workspace's build of it), in the container's environment, with mount paths and the
    /// container's own addresses (`127.0.0.1:<containerPort>`) in the arguments mapped as
    /// for the pod's process. Its standard output; an error with its standard error when
    /// it fails.
    pub fn exec(&self, argv: &[String]) -> anyhow::Result<String> {
        let (program, args) = argv.split_first().context("nothing to exec")?;
        let binary = program.rsplit('/').next().context("empty program")?;
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                let mut a = localize(a, &self.mounts);
                for (container, local) in &self.container_ports {
                    a = a.replace(
                        &format!("127.0.0.1:{container}"),
                        &format!("127.0.0.1:{local}"),
                    );
                }
                a
            })
            .collect();
        let out = Command::new(workspace_binary(binary)?)
            .args(&args)
            .env_clear()
            .envs(&self.env)
            .output()
            .with_context(|| format!("running {binary}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{} {} failed ({}): {}",
            binary,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

/// `arg` with the first mount path it contains replaced by its local folder.
fn localize(arg: &str, mounts: &[(String, PathBuf)]) -> String {
    match mounts.iter().find(|(p, _)| arg.contains(p.as_str())) {
        Some((path, local)) => arg.replace(path.as_str(), &local.display().to_string()),
        None => arg.to_owned(),
    }
}

/// What cluster networking would give the pod: environment values to replace (e.g. an
/// address through cluster DNS), and arguments to add.
#[derive(Default)]
pub struct Overrides {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
}

/// Starts the first container of Deployment `namespace/name`'s pod template.
pub async fn run(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    dir: &Path,
    overrides: impl FnOnce(&HashMap<String, u16>) -> Overrides,
) -> anyhow::Result<PodProcess> {
    let client = cp.client().await?;
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .with_context(|| format!("reading Deployment {namespace}/{name}"))?;
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("the Deployment has no pod template")?;
    let container = pod.containers.first().context("no container")?;
    let pod_name = format!("{name}-standin-0");
    let dir = dir.join(&pod_name);
    std::fs::create_dir_all(&dir)?;

    // The binary the image runs, from this workspace's build.
    let command = container
        .command
        .clone()
        .context("the container sets no command")?;
    let image_path = command.first().context("empty command")?;
    let binary = image_path
        .rsplit('/')
        .next()
        .context("command is not a path")?;
    let mut args: Vec<String> = command[1..].to_vec();
    args.extend(container.args.clone().unwrap_or_default());

    // Environment: values (with $(VAR) of earlier variables) and downward-API fields.
    let mut env: Vec<(String, String)> = Vec::new();
    for var in container.env.clone().unwrap_or_default() {
        let value = if let Some(value) = var.value {
            expand(&value, &env)
        } else if let Some(field) = var.value_from.and_then(|v| v.field_ref) {
            match field.field_path.as_str() {
                "metadata.namespace" => namespace.to_owned(),
                "metadata.name" => pod_name.clone(),
                other => bail!("env {}: unsupported fieldRef {other}", var.name),
            }
        } else {
            bail!("env {}: unsupported source", var.name);
        };
        env.push((var.name, value));
    }
    let mut args: Vec<String> = args.iter().map(|a| expand(a, &env)).collect();

    // Listen addresses: each container port on a free loopback port.
    let mut ports = HashMap::new();
    let mut container_ports = Vec::new();
    for p in container.ports.clone().unwrap_or_default() {
        let local = free_port()?;
        let from = format!("0.0.0.0:{}", p.container_port);
        let to = format!("127.0.0.1:{local}");
        for a in &mut args {
            *a = a.replace(&from, &to);
        }
        ports.insert(p.name.unwrap_or_default(), local);
        container_ports.push((p.container_port, local));
    }

    // Volumes: Secrets written out (their items, or every key), claims as empty folders.
    let mut volume_dirs: HashMap<String, PathBuf> = HashMap::new();
    for v in pod.volumes.clone().unwrap_or_default() {
        let vdir = dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&vdir)?;
        if let Some(secret) = v.secret {
            let secret_name = secret.secret_name.context("secret volume without a name")?;
            let data = Api::<Secret>::namespaced(client.clone(), namespace)
                .get(&secret_name)
                .await
                .with_context(|| format!("reading Secret {namespace}/{secret_name}"))?
                .data
                .unwrap_or_default();
            let items: Vec<(String, String)> = match secret.items {
                Some(items) => items.into_iter().map(|i| (i.key, i.path)).collect(),
                None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
            };
            for (key, path) in items {
                let bytes = data
                    .get(&key)
                    .with_context(|| format!("Secret {secret_name} has no key {key}"))?;
                std::fs::write(vdir.join(path), &bytes.0)?;
            }
        } else if v.persistent_volume_claim.is_none() {
            bail!(
                "volume {}: only Secret and claim volumes are run here",
                v.name
            );
        }
        volume_dirs.insert(v.name, vdir);
    }
    // Mount paths in arguments point at those folders (longest mount path first).
    let mut mounts: Vec<(String, PathBuf)> = container
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| Some((m.mount_path, volume_dirs.get(&m.name)?.clone())))
        .collect();
    mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
    let mut args: Vec<String> = args.iter().map(|a| localize(a, &mounts)).collect();

    let o = overrides(&ports);
    let env_map: BTreeMap<String, String> = env.into_iter().chain(o.env).collect();
    args.extend(o.args);

    let service_account = pod.service_account_name.unwrap_or_else(|| "default".into());
    let kubeconfig = token_kubeconfig(cp, namespace, &service_account, &dir)?;
    let mut cmd = Command::new(workspace_binary(binary)?);
    cmd.args(&args)
        .env_clear()
        .envs(&env_map)
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
    let proc = Proc::spawn(&pod_name, cmd, &cp.run_dir)?;
    Ok(PodProcess {
        proc,
        ports,
        container_ports,
        mounts,
        env: env_map,
    })
}

/// `$(NAME)` replaced by the value of an earlier variable, as the kubelet does; unknown
/// references stay as they are.
fn expand(text: &str, env: &[(String, String)]) -> String {
    let mut out = text.to_owned();
    for (name, value) in env {
        out = out.replace(&format!("$({name})"), value);
    }
    out
}

/// A kubeconfig that authenticates as ServiceAccount `namespace/name` with a token (what
/// the pod's projected token gives it).
pub fn token_kubeconfig(
    cp: &ControlPlane,
    namespace: &str,
    name: &str,
    dir: &Path,
) -> anyhow::Result<PathBuf> {
    let token = cp.kubectl(["create", "token", name, "-n", namespace, "--duration=2h"])?;
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.pki.ca_pem.as_bytes());
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: management\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context:\n    cluster: management\n    user: {name}\ncurrent-context: sa\n",
        cp.management.server,
        token.trim()
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    scale_agent_e2e::kubeconfig::write(&path, &text)?;
    Ok(path)
}
