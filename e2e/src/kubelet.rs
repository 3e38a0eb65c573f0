//! kwok as the kubelet of one node of a cluster: the API server reaches it for exec,
//! attach, port-forward and logs, and kwok serves them with local commands, local TCP
//! addresses and local files (its `ClusterExec`, `ClusterAttach`, `ClusterPortForward`,
//! `ClusterLogs` resources, given in its config). The test control plane's target
//! clusters have no kubelet otherwise; the management cluster's kwok
//! ([`crate::controlplane`]) serves no kubelet API.
//!
//! The node's address is 127.0.0.1 and its kubelet port kwok's own (HTTPS, with a
//! certificate from the run's CA, which the API server does not check without
//! `--kubelet-certificate-authority`, as with a real kubelet's self-signed one).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use crate::bins::Binaries;
use crate::certs::Pki;
use crate::controlplane::{Cluster, KWOK_ANNOTATION};
use crate::ports::free_port;
use crate::process::Proc;
use crate::{Error, Result};

/// A node of a cluster whose kubelet is kwok. Dropping it stops kwok (the Node stays).
#[derive(Debug)]
pub struct FakeKubelet {
    /// The Node's name (pods name it in `spec.nodeName`).
    pub node: String,
    /// The kubelet port on 127.0.0.1.
    pub port: u16,
    /// kwok's log.
    pub log: PathBuf,
    proc: Proc,
}

impl FakeKubelet {
    /// How many times kwok has `file` open now: a `logs -f` or an `attach` it serves
    /// from the file holds it open until the session ends.
    pub fn open_count(&self, file: &Path) -> usize {
        let fds = PathBuf::from(format!("/proc/{}/fd", self.proc.pid()));
        let Ok(entries) = std::fs::read_dir(&fds) else {
            return 0;
        };
        entries
            .filter_map(std::result::Result::ok)
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == file))
            .count()
    }
}

/// The file every container's log and attach read from in [`local_config`]: in its
/// work folder, lines in the container runtime's log format ([`log_line`]).
pub fn log_file(work_dir: &Path) -> PathBuf {
    work_dir.join("container.log")
}

/// One line of a container's log as the container runtime writes it (what kwok reads
/// for `kubectl logs` and `kubectl attach`): a time, the stream, `F` (a full line).
pub fn log_line(text: &str) -> String {
    // RFC 3339 with nanoseconds, in UTC.
    let at = k8s_openapi::jiff::Timestamp::now();
    format!("{at:.9} stdout F {text}\n")
}

/// A TCP echo server on 127.0.0.1, for as long as the process lives (what a
/// port-forward reaches); its port.
pub fn echo_server() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::io("binding", Path::new("127.0.0.1:0"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::io("reading the address of", Path::new("127.0.0.1:0"), e))?
        .port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                if let Ok(mut back) = conn.try_clone() {
                    let _ = std::io::copy(&mut conn, &mut back);
                }
            });
        }
    });
    Ok(port)
}

/// The example workload of a cluster whose node `node` has kwok as its kubelet: a
/// Namespace `namespace`, its `default` ServiceAccount (target clusters run no
/// controller-manager to make it) and a Pod `name` in it on that node (no scheduler
/// needed).
pub fn pod_yaml(namespace: &str, name: &str, node: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {namespace} }}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{ name: default, namespace: {namespace} }}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: {name}, namespace: {namespace}, labels: {{ app: {name} }} }}\nspec:\n  nodeName: {node}\n  containers:\n  - {{ name: main, image: busybox, ports: [{{ containerPort: 80 }}] }}\n"
    )
}

/// A config that makes every pod's exec run local commands in `work_dir`, every
/// port-forward reach `forward_to` (a port on 127.0.0.1), and every container's logs
/// and attach read (and follow) [`log_file`].
pub fn local_config(work_dir: &Path, forward_to: u16) -> String {
    format!(
        "apiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterExec\nmetadata: {{ name: local }}\nspec:\n  execs:\n  - local: {{ workDir: {work:?} }}\n---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterPortForward\nmetadata: {{ name: local }}\nspec:\n  forwards:\n  - target: {{ port: {forward_to}, address: 127.0.0.1 }}\n---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterLogs\nmetadata: {{ name: local }}\nspec:\n  logs:\n  - {{ logsFile: {logs:?}, follow: true }}\n---\napiVersion: kwok.x-k8s.io/v1alpha1\nkind: ClusterAttach\nmetadata: {{ name: local }}\nspec:\n  attaches:\n  - {{ logsFile: {logs:?} }}\n",
        work = work_dir.display().to_string(),
        logs = log_file(work_dir).display().to_string(),
    )
}

/// Starts kwok for a new node `node` of `cluster`, with the test control plane's stages
/// and `config` (kwok resources, YAML documents), as a component of the run in
/// `run_dir` (its log in `logs/`, its files in `kubelets/`, its process group recorded
/// for the reaper); waits until the Node is Ready with its kubelet port.
pub async fn start(
    bins: &Binaries,
    pki: &Pki,
    cluster: &Cluster,
    node: &str,
    run_dir: &Path,
    config: &str,
) -> Result<FakeKubelet> {
    let dir = run_dir.join("kubelets");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let cert = pki.issue_server(&format!("kubelet-{node}"), &["127.0.0.1", node])?;
    let stages = crate::controlplane::kwok_stages();
    let extra = dir.join(format!("kwok-{node}.yaml"));
    std::fs::write(&extra, config).map_err(|e| Error::io("writing", &extra, e))?;
    let port = free_port()?;
    let mut cmd = Command::new(bins.get("kwok"));
    cmd.arg(format!("--kubeconfig={}", cluster.kubeconfig.display()))
        .arg("--manage-all-nodes=false")
        .arg(format!(
            "--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={node}"
        ))
        .arg(format!("--config={}", stages.display()))
        .arg(format!("--config={}", extra.display()))
        .arg("--cidr=10.245.0.1/16")
        .arg("--node-ip=127.0.0.1")
        .arg(format!("--node-port={port}"))
        .arg(format!("--server-address=127.0.0.1:{port}"))
        .arg(format!("--tls-cert-file={}", cert.cert_file.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            cert.key_file.display()
        ));
    let proc = Proc::spawn(&format!("kwok-{node}"), cmd, run_dir)?;
    let log = proc.log().to_path_buf();
    let client = cluster.client().await?;
    crate::controlplane::create_node(&client, node, node).await?;
    let nodes: Api<Node> = Api::all(client);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = nodes.get_opt(node).await.ok().flatten().is_some_and(|n| {
            let status = n.status.unwrap_or_default();
            let port_set = status
                .daemon_endpoints
                .and_then(|d| d.kubelet_endpoint)
                .is_some_and(|e| e.port == i32::from(port));
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            port_set && ready
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!(
                    "node {node} Ready with kubelet port {port} (kwok's log: {})",
                    log.display()
                ),
                seconds: 60,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(FakeKubelet {
        node: node.to_owned(),
        port,
        log,
        proc,
    })
}

/// [`start`] with exec running local commands in `work_dir`, port-forward reaching
/// an [`echo_server`] and logs and attach following [`log_file`], then the pod `namespace/pod` ([`pod_yaml`]) on the node, Ready.
#[allow(clippy::too_many_arguments)]
pub async fn with_pod(
    bins: &Binaries,
    pki: &Pki,
    cluster: &Cluster,
    node: &str,
    run_dir: &Path,
    work_dir: &Path,
    namespace: &str,
    pod: &str,
) -> Result<FakeKubelet> {
    std::fs::create_dir_all(work_dir).map_err(|e| Error::io("creating", work_dir, e))?;
    let logs = log_file(work_dir);
    if !logs.exists() {
        std::fs::write(&logs, log_line("the example pod started"))
            .map_err(|e| Error::io("writing", &logs, e))?;
    }
    let echo = echo_server()?;
    let kubelet = start(
        bins,
        pki,
        cluster,
        node,
        run_dir,
        &local_config(work_dir, echo),
    )
    .await?;
    crate::kubectl::run(
        &bins.kubectl,
        &cluster.kubeconfig,
        ["apply", "-f", "-"],
        Some(pod_yaml(namespace, pod, node).as_str()),
    )?;
    crate::kubectl::run(
        &bins.kubectl,
        &cluster.kubeconfig,
        [
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            "--timeout=60s",
        ],
        None,
    )?;
    Ok(kubelet)
}
