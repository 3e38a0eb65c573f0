//! The real test control plane: one etcd; a management kube-apiserver with
//! kube-controller-manager, kube-scheduler and kwok (fake nodes that run fake pods); and
//! extra kube-apiservers on the same etcd, each under its own `--etcd-prefix`, acting as
//! target clusters. Everything binds to 127.0.0.1 on free ports.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use tempfile::TempDir;

use crate::bins::Binaries;
use crate::certs::{CertPair, Pki};
use crate::kubeconfig;
use crate::ports::{self, free_port, start_on_free_ports};
use crate::process::{Proc, spawn_reaper, tail, wait_ready};
use crate::{Error, Result};

/// The name of the management cluster (where the operator, CRDs and agents live).
pub const MANAGEMENT: &str = "management";

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names of the target clusters (one extra kube-apiserver each).
    pub targets: Vec<String>,
    /// Fake nodes kwok runs in the management cluster.
    pub nodes: usize,
    /// Folder for data, certificates, kubeconfigs and logs; a temporary one (removed on
    /// drop) when `None`.
    pub run_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            targets: Vec::new(),
            nodes: 2,
            run_dir: None,
        }
    }
}

/// One kube-apiserver: the management cluster or a target cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Cluster name; also its etcd prefix.
    pub name: String,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// The admin kubeconfig (CN=admin, O=system:masters).
    pub kubeconfig: PathBuf,
    args: Vec<OsString>,
    binary: PathBuf,
    run_dir: PathBuf,
    proc: std::sync::Mutex<Option<Proc>>,
}

impl Cluster {
    /// A client with cluster-admin rights.
    pub async fn client(&self) -> Result<kube::Client> {
        kubeconfig::client(&self.kubeconfig).await
    }

    /// Sends `signal` to the kube-apiserver (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Ok(p) = self.proc.lock()
            && let Some(p) = p.as_ref()
        {
            p.signal(signal);
        }
    }

    /// Stops the kube-apiserver; its data stays in etcd.
    pub fn stop(&self) {
        let proc = self.proc.lock().ok().and_then(|mut p| p.take());
        drop(proc);
    }

    /// Starts the kube-apiserver again with the same flags and port, and waits for `/readyz`.
    pub async fn start(&self) -> Result<()> {
        self.spawn()?;
        self.wait_ready(Duration::from_secs(120)).await
    }

    fn spawn(&self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args);
        let proc = Proc::spawn(&format!("kube-apiserver-{}", self.name), cmd, &self.run_dir)?;
        if let Ok(mut p) = self.proc.lock() {
            *p = Some(proc);
        }
        Ok(())
    }

    fn check_running(&self) -> Result<Option<PathBuf>> {
        match self.proc.lock() {
            Ok(mut p) => match p.as_mut() {
                Some(p) => p.check_running().map(|()| Some(p.log().to_path_buf())),
                None => Ok(None),
            },
            Err(_) => Ok(None),
        }
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.check_running()?.unwrap_or_default();
            let req = http::Request::get("/readyz").body(Vec::new());
            if let Ok(req) = req
                && let Ok(text) = client.request_text(req).await
                && text.trim() == "ok"
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    component: format!("kube-apiserver {}", self.name),
                    seconds: timeout.as_secs(),
                    tail: tail(&log, 30),
                    log,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// The running control plane. Dropping it stops every process (controllers first, etcd
/// last) and removes a temporary run folder.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order.
    kwok: Proc,
    scheduler: Proc,
    controller_manager: Proc,
    /// The target clusters, in the order of [`Options::targets`].
    pub targets: Vec<Cluster>,
    /// The management cluster.
    pub management: Cluster,
    etcd: Proc,
    /// `http://127.0.0.1:<port>` of etcd.
    pub etcd_url: String,
    /// The run's certificate authority (issue more certificates from it).
    pub pki: Pki,
    /// The binaries in use (kubectl among them).
    pub bins: Binaries,
    /// The run folder.
    pub run_dir: PathBuf,
    _reaper: Proc,
    /// The temporary run folder, removed on drop unless kept ([`ControlPlane::keep_run_dir`]).
    tmp: std::sync::Mutex<Option<TempDir>>,
}

impl ControlPlane {
    /// Builds (first time only) and starts everything, returning when every API server
    /// answers `/readyz` and the fake nodes exist.
    pub async fn start(opts: Options) -> Result<ControlPlane> {
        let bins = Binaries::ensure()?;
        let (run_dir, tmp) = match &opts.run_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
                (dir.clone(), None)
            }
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("scale-agent-e2e-")
                    .tempdir()
                    .map_err(|e| Error::io("creating", std::env::temp_dir(), e))?;
                if std::env::var_os("SCALE_AGENT_KEEP_RUN").is_some() {
                    // Keep logs and data for a post-mortem.
                    let path = tmp.keep();
                    eprintln!("keeping the run folder {}", path.display());
                    (path, None)
                } else {
                    (tmp.path().to_path_buf(), Some(tmp))
                }
            }
        };
        let reaper = spawn_reaper(&run_dir, std::process::id())?;
        let pki = Pki::create(&run_dir.join("pki"))?;
        let serving = pki.issue_server(
            "apiserver",
            &[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        )?;
        let admin = pki.issue_client("admin", "admin", Some("system:masters"), &[])?;

        let started = Instant::now();
        let (etcd, etcd_url) = start_etcd(&bins, &run_dir).await?;
        tracing::info!(elapsed = ?started.elapsed(), %etcd_url, "etcd ready");

        let new =
            |name: &str| Cluster::new(name, &bins, &run_dir, &pki, &serving, &admin, &etcd_url);
        let mut management = new(MANAGEMENT)?;
        let mut targets = opts
            .targets
            .iter()
            .map(|name| new(name))
            .collect::<Result<Vec<_>>>()?;
        // Start every API server at once, then wait for each: they start in parallel. One
        // that lost its port to another process starts again on a new one.
        management.spawn()?;
        for t in &targets {
            t.spawn()?;
        }
        for cluster in std::iter::once(&mut management).chain(targets.iter_mut()) {
            let mut attempt = 1;
            loop {
                match cluster.wait_ready(Duration::from_secs(180)).await {
                    Err(e) if attempt < ports::ATTEMPTS && ports::lost_its_port(&e) => {
                        tracing::warn!(cluster = %cluster.name, error = %e, "the API server's port was taken; starting it on a new one");
                        *cluster = new(&cluster.name.clone())?;
                        cluster.spawn()?;
                        attempt += 1;
                    }
                    result => break result?,
                }
            }
        }
        tracing::info!(elapsed = ?started.elapsed(), clusters = 1 + targets.len(), "kube-apiservers ready");

        let controller_manager = start_controller_manager(&bins, &run_dir, &pki, &management)?;
        let scheduler = start_scheduler(&bins, &run_dir, &management)?;
        let kwok = start_kwok(&bins, &run_dir, &management)?;
        let client = management.client().await?;
        create_nodes(&client, opts.nodes).await?;

        Ok(ControlPlane {
            kwok,
            scheduler,
            controller_manager,
            targets,
            management,
            etcd,
            etcd_url,
            pki,
            bins,
            run_dir,
            _reaper: reaper,
            tmp: std::sync::Mutex::new(tmp),
        })
    }

    /// A client for the management cluster.
    pub async fn client(&self) -> Result<kube::Client> {
        self.management.client().await
    }

    /// Keeps the run folder (every component's log and data) after the control plane
    /// stops, for a look after a failure; returns where it is.
    pub fn keep_run_dir(&self) -> &Path {
        if let Ok(mut tmp) = self.tmp.lock()
            && let Some(dir) = tmp.take()
        {
            let _ = dir.keep();
        }
        &self.run_dir
    }

    /// The target cluster called `name`.
    pub fn target(&self, name: &str) -> Option<&Cluster> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Fails when a background component (etcd, controllers, kwok) has exited.
    pub fn check_running(&mut self) -> Result<()> {
        self.etcd.check_running()?;
        self.controller_manager.check_running()?;
        self.scheduler.check_running()?;
        self.kwok.check_running()
    }

    /// Compacts etcd at its current revision (through its JSON gateway), so watches that
    /// resume from an older revision get 410 Gone.
    pub async fn compact_etcd(&self) -> Result<i64> {
        let http = reqwest::Client::new();
        let fail = |message: String| Error::Http {
            url: self.etcd_url.clone(),
            message,
        };
        let range: serde_json::Value = http
            .post(format!("{}/v3/kv/range", self.etcd_url))
            .json(&serde_json::json!({ "key": "AA==" }))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?
            .json()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let rev: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| fail(format!("no revision in {range}")))?;
        let resp = http
            .post(format!("{}/v3/kv/compaction", self.etcd_url))
            .json(&serde_json::json!({ "revision": rev, "physical": true }))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(resp.text().await.unwrap_or_default()));
        }
        Ok(rev)
    }

    /// Runs kubectl against the management cluster; returns stdout, or the error with
    /// stderr.
    pub fn kubectl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::kubectl::run(&self.bins.kubectl, &self.management.kubeconfig, args, None)
    }

    /// `kubectl apply -f -` of `yaml` (one or more documents); fails with kubectl's
    /// stderr. Returns stderr, where kubectl prints admission warnings.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let out = self.kubectl_stdin(["apply", "-f", "-"], yaml)?;
        if out.success {
            Ok(out.stderr)
        } else {
            Err(Error::Kubectl {
                args: "apply -f -".into(),
                status: "non-zero exit".into(),
                stderr: format!("{}--- the manifest:\n{yaml}", out.stderr),
            })
        }
    }

    /// Creates or updates Secret `name` in namespace `ns` holding the file `kubeconfig`
    /// under the key `kubeconfig`, as AgentShards reference kubeconfigs.
    pub fn kubeconfig_secret(&self, ns: &str, name: &str, kubeconfig: &Path) -> Result<()> {
        let yaml = self.kubectl([
            "create",
            "secret",
            "generic",
            name,
            "-n",
            ns,
            &format!("--from-file=kubeconfig={}", kubeconfig.display()),
            "--dry-run=client",
            "-o",
            "yaml",
        ])?;
        self.apply(&yaml)?;
        Ok(())
    }

    /// Runs kubectl with `stdin` as its standard input (e.g. `apply -f -`).
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> Result<crate::kubectl::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        crate::kubectl::run_full(
            &self.bins.kubectl,
            &self.management.kubeconfig,
            args,
            Some(stdin),
        )
    }
}

impl Cluster {
    fn new(
        name: &str,
        bins: &Binaries,
        run_dir: &Path,
        pki: &Pki,
        serving: &CertPair,
        admin: &CertPair,
        etcd_url: &str,
    ) -> Result<Cluster> {
        let port = free_port()?;
        let server = format!("https://127.0.0.1:{port}");
        let dir = run_dir.join("clusters").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
        let kubeconfig = run_dir
            .join("kubeconfigs")
            .join(format!("{name}.kubeconfig"));
        kubeconfig::write(
            &kubeconfig,
            &kubeconfig::render(name, &server, &pki.ca_pem, &admin.cert_pem, &admin.key_pem),
        )?;
        let args: Vec<OsString> = [
            format!("--etcd-servers={etcd_url}"),
            format!("--etcd-prefix=/{name}"),
            format!("--secure-port={port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            // The loopback address may not be an Endpoints IP; there is no in-cluster
            // traffic to route anyway.
            "--endpoint-reconciler-type=none".into(),
            format!("--tls-cert-file={}", serving.cert_file.display()),
            format!("--tls-private-key-file={}", serving.key_file.display()),
            format!("--client-ca-file={}", pki.ca_file.display()),
            format!("--service-account-issuer={server}"),
            format!("--service-account-key-file={}", pki.sa_pub_file.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key_file.display()
            ),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // Nodes' kubelets (kwok, `kubelet.rs`) are reached at their InternalIP,
            // 127.0.0.1: their host names resolve nowhere.
            "--kubelet-preferred-address-types=InternalIP".into(),
            "--authorization-mode=RBAC".into(),
            format!("--cert-dir={}", dir.display()),
            "--profiling=false".into(),
            "--v=1".into(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        Ok(Cluster {
            name: name.to_string(),
            server,
            kubeconfig,
            args,
            binary: bins.get("kube-apiserver"),
            run_dir: run_dir.to_path_buf(),
            proc: std::sync::Mutex::new(None),
        })
    }
}

async fn start_etcd(bins: &Binaries, run_dir: &Path) -> Result<(Proc, String)> {
    start_on_free_ports("etcd", || async {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let url = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data = run_dir.join("etcd");
        let mut cmd = Command::new(bins.get("etcd"));
        cmd.arg("--name=etcd")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=etcd={peer}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        let mut proc = Proc::spawn("etcd", cmd, run_dir)?;
        wait_http(&mut proc, client_port, "/health", "\"health\":\"true\"", 60).await?;
        Ok((proc, url))
    })
    .await
}

fn start_controller_manager(
    bins: &Binaries,
    run_dir: &Path,
    pki: &Pki,
    mgmt: &Cluster,
) -> Result<Proc> {
    let mut cmd = Command::new(bins.get("kube-controller-manager"));
    cmd.arg(format!("--kubeconfig={}", mgmt.kubeconfig.display()))
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.sa_key_file.display()
        ))
        .arg(format!("--root-ca-file={}", pki.ca_file.display()))
        .arg("--use-service-account-credentials=true")
        .arg("--controllers=*")
        .arg("--v=1");
    Proc::spawn("kube-controller-manager", cmd, run_dir)
}

fn start_scheduler(bins: &Binaries, run_dir: &Path, mgmt: &Cluster) -> Result<Proc> {
    let mut cmd = Command::new(bins.get("kube-scheduler"));
    cmd.arg(format!("--kubeconfig={}", mgmt.kubeconfig.display()))
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg("--v=1");
    Proc::spawn("kube-scheduler", cmd, run_dir)
}

fn start_kwok(bins: &Binaries, run_dir: &Path, mgmt: &Cluster) -> Result<Proc> {
    let mut cmd = Command::new(bins.get("kwok"));
    cmd.arg(format!("--kubeconfig={}", mgmt.kubeconfig.display()))
        .arg("--manage-all-nodes=false")
        .arg(format!(
            "--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}=fake"
        ))
        .arg(format!("--config={}", kwok_stages().display()))
        .arg("--node-lease-duration-seconds=40")
        .arg("--cidr=10.244.0.1/16")
        .arg("--node-ip=127.0.0.1")
        .arg("--server-address=127.0.0.1:0");
    Proc::spawn("kwok", cmd, run_dir)
}

/// The stages kwok plays: nodes and pods become ready at once.
pub fn kwok_stages() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kwok/stages.yaml")
}

/// The annotation that hands a Node to kwok.
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

async fn create_nodes(client: &kube::Client, count: usize) -> Result<()> {
    for i in 0..count {
        create_node(client, &format!("kwok-node-{i}"), "fake").await?;
    }
    Ok(())
}

/// Creates the Node `name` (if absent), handed to the kwok whose annotation selector
/// is `KWOK_ANNOTATION=kwok`.
pub async fn create_node(client: &kube::Client, name: &str, kwok: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": { KWOK_ANNOTATION: kwok, "node.alpha.kubernetes.io/ttl": "0" },
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "110" },
            "capacity": { "cpu": "32", "memory": "256Gi", "pods": "110" },
        },
    }))
    .map_err(|e| Error::Kubeconfig {
        path: PathBuf::from("<node manifest>"),
        message: e.to_string(),
    })?;
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("creating node {name}"), e)),
    }
}

/// Waits until plain-HTTP `GET path` on 127.0.0.1:`port` answers with a body containing
/// `expect`.
async fn wait_http(proc: &mut Proc, port: u16, path: &str, expect: &str, secs: u64) -> Result<()> {
    wait_ready(
        proc,
        Duration::from_secs(secs),
        Duration::from_millis(100),
        || async move { http_get(port, path).await.is_ok_and(|b| b.contains(expect)) },
    )
    .await
}

/// A minimal HTTP/1.0 GET on loopback, enough for health endpoints.
pub async fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read timed out"))??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}
