//! A fake agent speaking the generated tonic client, and small HTTP helpers,
//! for the in-process hub tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use scale_agent_hub::{Config, Hub, RunningHub};
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::agent_hub_client::AgentHubClient;
use scale_agent_proto::v1::{
    self as pb, AccountResult, AgentFrame, EventType, GroupVersionKind, Hello, HubFrame,
    ObjectEvent, Operation, ShardRef, Welcome, agent_frame, hub_frame,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T, E = Error> = std::result::Result<T, E>;

const WAIT: Duration = Duration::from_secs(10);

/// Starts a hub on the test default settings ([`Config::local`]: loopback,
/// any free ports), with the fields a test is about changed by `change`; logs to the
/// test output when RUST_LOG is set.
pub async fn hub_with(change: impl FnOnce(&mut Config)) -> Result<RunningHub> {
    logs();
    let mut config = Config::local();
    change(&mut config);
    Ok(Hub::start(config).await?)
}

/// Starts a hub on the test default settings with a grace period (and logs, as
/// [`hub_with`]).
pub async fn hub(grace: Duration) -> Result<RunningHub> {
    hub_with(|c| c.grace_period = grace).await
}

/// Logs to the test output when RUST_LOG is set.
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A CA and certificates it signs.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate with these DNS names and URI SANs: (cert, key) PEM.
    pub fn leaf(&self, dns: &[&str], uris: &[&str]) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, "leaf");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into()?));
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    pub fn server(&self) -> Result<(String, String)> {
        self.leaf(&["localhost"], &[])
    }

    pub fn agent(&self, namespace: &str, shard: &str) -> Result<(String, String)> {
        self.leaf(
            &[],
            &[&format!(
                "spiffe://scaleagent.dev/ns/{namespace}/shard/{shard}"
            )],
        )
    }

    /// What nginx puts in `$ssl_client_escaped_cert`: the URL-encoded PEM of
    /// a certificate this CA signed naming `spinnaker/<shard>`.
    pub fn escaped_agent(&self, shard: &str) -> Result<String> {
        let (pem, _) = self.agent("spinnaker", shard)?;
        Ok(escape(&pem))
    }
}

/// The replicas' CA (`--kube-api-replica-ca`, in a file of its own temporary
/// directory): replicas forward requests to each other only under it.
pub struct ReplicaCa {
    pub ca: Ca,
    pub file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ReplicaCa {
    pub fn new() -> Result<ReplicaCa> {
        let ca = Ca::new("replicas")?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("replicas-ca.pem");
        std::fs::write(&file, ca.pem())?;
        Ok(ReplicaCa {
            ca,
            file,
            _dir: dir,
        })
    }

    /// Hub replica `id`'s certificate: the loopback address, and the URI SAN naming
    /// it (written out, as an operator's CA would).
    pub fn cert(&self, id: &str) -> Result<(String, String)> {
        self.ca.leaf(
            &["127.0.0.1", "localhost"],
            &[&format!("spiffe://scaleagent.dev/hub/{id}")],
        )
    }

    /// Replica `id`'s Kubernetes API over TLS with [`ReplicaCa::cert`] and `tokens` (a
    /// tokens file's text), under this CA: where the other replicas forward it
    /// requests, both APIs'.
    pub fn kube_api(
        &self,
        id: &str,
        tokens: &str,
    ) -> Result<scale_agent_hub::kubeapi::KubeApiConfig> {
        let (cert, key) = self.cert(id)?;
        let mut api = scale_agent_hub::kubeapi::KubeApiConfig::new(
            "127.0.0.1:0".parse()?,
            scale_agent_hub::kubeapi::TokenSource::Text(tokens.to_owned()),
        );
        api.tls = Some(scale_agent_hub::TlsConfig {
            cert_pem: cert.into_bytes(),
            key_pem: key.into_bytes(),
            client_ca_pem: None,
            files: None,
        });
        api.replica_ca = Some(self.file.clone());
        Ok(api)
    }
}

/// URL-encodes a PEM as nginx's `$ssl_client_escaped_cert` does.
pub fn escape(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A self-signed certificate naming `spinnaker/<shard>`, URL-encoded: what
/// anyone can make.
pub fn forged_escaped_cert(shard: &str) -> Result<String> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(SanType::URI(
        format!("spiffe://scaleagent.dev/ns/spinnaker/shard/{shard}").try_into()?,
    ));
    Ok(escape(&params.self_signed(&key)?.pem()))
}

/// Settings that trust forwarded certificates from 127.0.0.1 when they
/// chain to `ca`.
pub fn trusting_localhost(config: &mut Config, ca: &Ca) {
    config.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a CIDR")];
    config.forwarded_client_ca = Some(scale_agent_hub::config::CaBundle {
        pem: ca.pem().into_bytes(),
        file: None,
    });
}

/// A PostgreSQL server of the test's own (Debian's, started by the e2e harness) with
/// database `name`, and a folder for the test's files: stopped and removed when the
/// test ends, also when it fails (and by a reaper, should the test process be killed).
pub async fn postgres(
    name: &str,
) -> Result<(
    scale_agent_e2e::postgres::Postgres,
    String,
    tempfile::TempDir,
)> {
    let dir = tempfile::tempdir()?;
    let reaper = scale_agent_e2e::process::spawn_reaper(dir.path(), std::process::id())?;
    // It outlives the test and stops what it left when the process ends.
    std::mem::forget(reaper);
    let pg = scale_agent_e2e::postgres::Postgres::start(dir.path()).await?;
    let url = pg.database(name)?;
    Ok((pg, url, dir))
}

/// One fake agent replica: one stream.
pub struct FakeAgent {
    tx: mpsc::Sender<AgentFrame>,
    inbound: Streaming<HubFrame>,
    pub welcome: Welcome,
    sequences: HashMap<String, u64>,
    /// Frames read while waiting for something else (operations, revocations).
    pub backlog: Vec<hub_frame::Frame>,
}

pub fn hello(shard: &str, replica: &str, version: u32) -> Hello {
    Hello {
        protocol_version: version,
        shard: Some(ShardRef {
            namespace: "spinnaker".into(),
            name: shard.into(),
        }),
        replica_id: replica.into(),
        agent_version: "test".into(),
        capabilities: vec!["watch-progress".into(), "something-new".into()],
    }
}

/// What [`open`] gives: the agent's sender, the hub's frames, and Welcome.
pub type Opened = (mpsc::Sender<AgentFrame>, Streaming<HubFrame>, Welcome);

/// Opens a stream with `first` as the first frame; the hub's first answer
/// (Welcome), or the status it ended the stream with.
pub async fn open(addr: &str, first: AgentFrame) -> Result<Result<Opened, Status>> {
    let channel = Channel::from_shared(addr.to_owned())?.connect().await?;
    open_on(channel, &[], first).await
}

/// [`open`] on a given channel (e.g. TLS), with extra request headers.
pub async fn open_on(
    channel: Channel,
    headers: &[(&'static str, String)],
    first: AgentFrame,
) -> Result<Result<Opened, Status>> {
    let mut client = AgentHubClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    tx.send(first).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse()?);
    }
    let mut inbound = match client.connect(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Err(status)),
    };
    match tokio::time::timeout(WAIT, inbound.message()).await? {
        Ok(Some(HubFrame {
            frame: Some(hub_frame::Frame::Welcome(welcome)),
        })) => Ok(Ok((tx, inbound, welcome))),
        Ok(other) => Err(format!("expected Welcome, got {other:?}").into()),
        Err(status) => Ok(Err(status)),
    }
}

/// A Hello frame for `shard` (namespace spinnaker).
pub fn hello_frame(shard: &str, replica: &str) -> AgentFrame {
    AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello(
            shard,
            replica,
            PROTOCOL_VERSION,
        ))),
    }
}

impl FakeAgent {
    /// An agent of `shard` that connected and registered `accounts` (name, cluster id),
    /// whatever the hub answered.
    pub async fn registered(
        hub: &RunningHub,
        shard: &str,
        replica: &str,
        accounts: &[(&str, &str)],
    ) -> Result<FakeAgent> {
        let mut agent = FakeAgent::connect(hub, shard, replica).await?;
        agent.register(accounts).await?;
        Ok(agent)
    }

    pub async fn connect(hub: &RunningHub, shard: &str, replica: &str) -> Result<FakeAgent> {
        let first = AgentFrame {
            frame: Some(agent_frame::Frame::Hello(hello(
                shard,
                replica,
                PROTOCOL_VERSION,
            ))),
        };
        Ok(FakeAgent::from_opened(open(&hub.grpc_url(), first).await??))
    }

    /// An agent of `shard` that says it carries Kubernetes API requests (the hub answers
    /// from the cache, and passes requests on, only for such agents); not registered yet.
    pub async fn connect_carrying_requests(
        hub: &RunningHub,
        shard: &str,
        replica: &str,
    ) -> Result<FakeAgent> {
        let mut hello = hello(shard, replica, PROTOCOL_VERSION);
        hello.capabilities = vec![scale_agent_proto::kube_api::CAPABILITY.into()];
        let first = AgentFrame {
            frame: Some(agent_frame::Frame::Hello(hello)),
        };
        Ok(FakeAgent::from_opened(open(&hub.grpc_url(), first).await??))
    }

    /// A fake agent over a stream opened with [`open_on`].
    pub fn from_opened((tx, inbound, welcome): Opened) -> FakeAgent {
        FakeAgent {
            tx,
            inbound,
            welcome,
            sequences: HashMap::new(),
            backlog: Vec::new(),
        }
    }

    /// The next frame of any kind (heartbeats included), or the status the
    /// stream ended with.
    pub async fn next_raw(&mut self) -> Result<Result<Option<HubFrame>, Status>> {
        Ok(tokio::time::timeout(WAIT, self.inbound.message()).await?)
    }

    pub async fn send_raw(&self, frame: AgentFrame) -> Result<()> {
        self.tx.send(frame).await?;
        Ok(())
    }

    pub async fn send(&self, frame: agent_frame::Frame) -> Result<()> {
        self.tx.send(AgentFrame { frame: Some(frame) }).await?;
        Ok(())
    }

    /// The next frame other than a heartbeat.
    pub async fn next(&mut self) -> Result<hub_frame::Frame> {
        loop {
            let frame = tokio::time::timeout(WAIT, self.inbound.message()).await??;
            match frame.and_then(|f| f.frame) {
                Some(hub_frame::Frame::Heartbeat(_)) => continue,
                Some(f) => return Ok(f),
                None => return Err("stream ended".into()),
            }
        }
    }

    /// Waits for a frame matching `pick`, keeping others in the backlog.
    pub async fn wait_for<T>(
        &mut self,
        mut pick: impl FnMut(&hub_frame::Frame) -> Option<T>,
    ) -> Result<T> {
        if let Some(i) = self.backlog.iter().position(|f| pick(f).is_some()) {
            let f = self.backlog.remove(i);
            return pick(&f).ok_or_else(|| "unreachable".into());
        }
        loop {
            let f = self.next().await?;
            if let Some(t) = pick(&f) {
                return Ok(t);
            }
            self.backlog.push(f);
        }
    }

    pub async fn register(&mut self, accounts: &[(&str, &str)]) -> Result<Vec<AccountResult>> {
        let accounts = accounts
            .iter()
            .map(|(name, cluster)| pb::Account {
                name: (*name).into(),
                cluster_id: (*cluster).into(),
                server_url: format!("https://{cluster}.example:6443"),
                kubernetes_version: "v1.36.0".into(),
                ..Default::default()
            })
            .collect();
        self.send(agent_frame::Frame::Register(pb::Register { accounts }))
            .await?;
        self.wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
            _ => None,
        })
        .await
    }

    /// Registers `account` (on cluster `cluster`, streaming every namespace) and starts
    /// a full sync of `resource` (namespaced, of kind `gvk`): what an agent sends before
    /// the hub answers reads of the kind from its cache. An error when it is refused.
    pub async fn register_and_start_sync(
        &mut self,
        account: &str,
        cluster: &str,
        gvk: GroupVersionKind,
        resource: &str,
    ) -> Result<()> {
        self.send(agent_frame::Frame::Register(pb::Register {
            accounts: vec![pb::Account {
                name: account.into(),
                cluster_id: cluster.into(),
                server_url: format!("https://{cluster}.example:6443"),
                kubernetes_version: "v1.36.0".into(),
                scope: Some(pb::StreamScope::default()),
            }],
        }))
        .await?;
        let accepted = self
            .wait_for(|f| match f {
                hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
                _ => None,
            })
            .await?;
        if !accepted.first().is_some_and(|a| a.accepted) {
            return Err(format!("account {account} was refused: {accepted:?}").into());
        }
        self.send(agent_frame::Frame::SyncStart(pb::SyncStart {
            account: account.into(),
            kind: Some(gvk),
            mode: pb::SyncMode::FullRelist as i32,
            resource: resource.into(),
            namespaced: true,
            ..Default::default()
        }))
        .await
    }

    /// Sends one batch and waits for its Ack.
    pub async fn events(&mut self, account: &str, events: Vec<ObjectEvent>) -> Result<()> {
        let sequence = self.events_unacked(account, events).await?;
        let account = account.to_owned();
        self.wait_for(|f| match f {
            hub_frame::Frame::Ack(a) if a.account == account && a.sequence == sequence => Some(()),
            _ => None,
        })
        .await
    }

    /// Sends a batch without waiting for an Ack; its sequence number.
    pub async fn events_unacked(&mut self, account: &str, events: Vec<ObjectEvent>) -> Result<u64> {
        let seq = self.sequences.entry(account.to_owned()).or_default();
        *seq += 1;
        let sequence = *seq;
        self.send(agent_frame::Frame::EventBatch(pb::EventBatch {
            account: account.into(),
            sequence,
            events,
        }))
        .await?;
        Ok(sequence)
    }

    pub async fn sync_start(
        &self,
        account: &str,
        gvk: GroupVersionKind,
        mode: pb::SyncMode,
    ) -> Result<()> {
        self.sync_start_selecting(account, gvk, mode, "").await
    }

    /// A SyncStart that says what the agent selects of the kind (`selection`).
    pub async fn sync_start_selecting(
        &self,
        account: &str,
        gvk: GroupVersionKind,
        mode: pb::SyncMode,
        selection: &str,
    ) -> Result<()> {
        self.send(agent_frame::Frame::SyncStart(pb::SyncStart {
            account: account.into(),
            kind: Some(gvk),
            mode: mode as i32,
            resource_version: String::new(),
            selection: selection.into(),
            ..Default::default()
        }))
        .await
    }

    pub async fn sync_end(
        &self,
        account: &str,
        gvk: GroupVersionKind,
        rv: &str,
        count: u64,
    ) -> Result<()> {
        self.send(agent_frame::Frame::SyncEnd(pb::SyncEnd {
            account: account.into(),
            kind: Some(gvk),
            resource_version: rv.into(),
            object_count: count,
        }))
        .await
    }

    /// A heartbeat round trip: every frame sent before it has been handled.
    pub async fn barrier(&mut self) -> Result<()> {
        self.send(agent_frame::Frame::Heartbeat(pb::Heartbeat {
            sent_at: Some(prost_types::Timestamp {
                seconds: 42,
                nanos: 7,
            }),
            reply_to: None,
        }))
        .await?;
        loop {
            let frame = tokio::time::timeout(WAIT, self.inbound.message()).await??;
            match frame.and_then(|f| f.frame) {
                Some(hub_frame::Frame::Heartbeat(h))
                    if h.reply_to
                        .as_ref()
                        .is_some_and(|t| t.seconds == 42 && t.nanos == 7) =>
                {
                    return Ok(());
                }
                Some(hub_frame::Frame::Heartbeat(_)) => continue,
                Some(f) => self.backlog.push(f),
                None => return Err("stream ended".into()),
            }
        }
    }

    pub async fn expect_operation(&mut self) -> Result<Operation> {
        self.wait_for(|f| match f {
            hub_frame::Frame::Operation(op) => Some(op.clone()),
            _ => None,
        })
        .await
    }

    pub async fn answer(
        &self,
        id: &str,
        success: bool,
        message: &str,
        result: Value,
    ) -> Result<()> {
        self.send(agent_frame::Frame::OperationResult(pb::OperationResult {
            operation_id: id.into(),
            success,
            message: message.into(),
            result_json: if result.is_null() {
                Vec::new().into()
            } else {
                result.to_string().into_bytes().into()
            },
            error_code: if success {
                0
            } else {
                pb::ErrorCode::Invalid as i32
            },
            http_status: if success { 0 } else { 422 },
        }))
        .await
    }

    /// Closes the stream from the agent's side, as a dying agent would.
    pub fn close(self) {
        drop(self);
    }
}

pub fn deployments() -> GroupVersionKind {
    GroupVersionKind {
        group: "apps".into(),
        version: "v1".into(),
        kind: "Deployment".into(),
    }
}

pub fn namespaces() -> GroupVersionKind {
    GroupVersionKind {
        group: String::new(),
        version: "v1".into(),
        kind: "Namespace".into(),
    }
}

pub fn object(t: EventType, gvk: GroupVersionKind, ns: &str, name: &str, rv: &str) -> ObjectEvent {
    let api_version = if gvk.group.is_empty() {
        gvk.version.clone()
    } else {
        format!("{}/{}", gvk.group, gvk.version)
    };
    let mut metadata =
        serde_json::json!({"name": name, "uid": format!("uid-{name}"), "resourceVersion": rv});
    if !ns.is_empty() {
        metadata["namespace"] = Value::String(ns.into());
    }
    let body =
        serde_json::json!({"apiVersion": api_version, "kind": gvk.kind, "metadata": metadata});
    ObjectEvent {
        r#type: t as i32,
        kind: Some(gvk),
        namespace: ns.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: rv.into(),
        body_json: body.to_string().into_bytes().into(),
    }
}

pub fn added(ns: &str, name: &str, rv: &str) -> ObjectEvent {
    object(EventType::Added, deployments(), ns, name, rv)
}

pub async fn get(hub: &RunningHub, path: &str) -> Result<(u16, Value)> {
    let resp = reqwest::get(format!("{}{path}", hub.http_url())).await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

pub async fn post(hub: &RunningHub, path: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", hub.http_url()))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// The names of an account's objects, sorted.
pub async fn object_names(hub: &RunningHub, account: &str) -> Result<Vec<String>> {
    let (status, body) = get(hub, &format!("/v1/accounts/{account}/objects")).await?;
    if status != 200 {
        return Err(format!("GET objects of {account}: {status} {body}").into());
    }
    let mut names: Vec<String> = body
        .as_array()
        .ok_or("not an array")?
        .iter()
        .filter_map(|o| o["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

/// The account's entry in GET /v1/accounts, if listed.
pub async fn account(hub: &RunningHub, name: &str) -> Result<Option<Value>> {
    let (_, body) = get(hub, "/v1/accounts").await?;
    Ok(body
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name).cloned()))
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > within {
            return Err(format!("condition not met within {within:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that a refusal's message names the owning AgentShard `owner` (namespace/name).
pub fn assert_owned_by(result: &AccountResult, owner: &str) {
    assert!(
        result
            .message
            .contains(&format!("owned by AgentShard {owner}")),
        "{}",
        result.message
    );
}
