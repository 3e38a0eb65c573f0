//! The hub behind nginx, as `just up` runs it and the certificate tests use it: agents
//! connect to nginx with a client certificate from the agents' CA ([`agents_pki`], not
//! the API servers' client CA); nginx verifies it and
//! forwards it to the hub with a secret only the two share; the hub believes a
//! forwarded certificate only with that secret and only when it chains to the agents'
//! CA, and accepts an account only from the AgentShard that owns it.

use std::path::{Path, PathBuf};

use crate::certs::Pki;
use crate::hub::{HubOptions, HubProcess};
use crate::nginx::{Mode, Nginx, NginxOptions};
use crate::{ControlPlane, Error, Result, workspace_binary};

/// The hub's domain for accounts by host name (`--kube-api-host-suffix`) in `just up`
/// and the end-to-end tests: account `a` at `a.hub.test`, reached at 127.0.0.1 with
/// `tls-server-name` (no DNS); their Kubernetes API certificates also name
/// `*.hub.test`.
pub const HOST_SUFFIX: &str = "hub.test";

/// The hub and its load balancer. Dropping it stops nginx, then the hub.
#[derive(Debug)]
pub struct HubStack {
    /// nginx, where agents connect (`nginx.address`).
    pub nginx: Nginx,
    /// The agents' CA: nginx's serving certificate and the agents' client
    /// certificates.
    pub agents: Pki,
    /// The hub; its JSON API needs [`HubStack::api_token`] (set as the hub's
    /// `api_token`).
    pub hub: HubProcess,
}

impl HubStack {
    /// Starts the hub (grace period `grace`, its store in `store` or in memory) and
    /// nginx in front of it, logging into `run_dir`.
    pub async fn start(
        cp: &ControlPlane,
        run_dir: &Path,
        grace: &str,
        store: Option<PathBuf>,
    ) -> Result<HubStack> {
        tracing::info!("starting the hub");
        // Every local process can connect from 127.0.0.1, so the address alone proves
        // nothing: nginx also sends a secret only it and the hub know.
        let proxy_secret = random_secret()?;
        let secret_file = run_dir.join("hub-proxy-secret");
        write_private(&secret_file, &proxy_secret)?;
        let agents = agents_pki(run_dir)?;
        let mut args = behind_nginx(&agents, Some(&secret_file));
        args.push("--authorize-shards=*".into());
        let api = ApiToken::write(run_dir)?;
        args.push(api.flag());
        let mut hub = HubProcess::start(
            HubOptions {
                bin: workspace_binary("scale-agent-hub")?,
                grace_period: grace.into(),
                store,
                args,
                kubeconfig: Some(cp.management.kubeconfig.clone()),
            },
            run_dir,
        )
        .await?;
        hub.api_token = Some(api.token);
        tracing::info!("starting nginx in front of the hub");
        let nginx = nginx_in_front(
            &agents,
            "lb",
            Mode::GrpcTls,
            vec![hub.grpc.clone()],
            Some(proxy_secret),
            run_dir,
        )
        .await?;
        Ok(HubStack { nginx, agents, hub })
    }
}

/// The agents' CA, in `<run_dir>/agents-pki`: apart from the control plane's, whose
/// certificates the API servers take as their clients' (an agent certificate from it
/// would log in to every API server).
pub fn agents_pki(run_dir: &Path) -> Result<Pki> {
    Pki::create_named(&run_dir.join("agents-pki"), "scale-agent agents CA")
}

/// The JSON API's token for every account, as `just up` gives it (exported as
/// `HUB_API_TOKEN`): its file is the hub's `--api-token-file`.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// The token.
    pub token: String,
    /// The file the hub reads it from.
    pub file: PathBuf,
}

impl ApiToken {
    /// A new random token, written to `<run_dir>/hub-api-tokens` (owner-only), allowed
    /// every account.
    pub fn write(run_dir: &Path) -> Result<ApiToken> {
        let token = random_secret()?;
        let file = run_dir.join("hub-api-tokens");
        write_private(&file, &format!("{token} *\n"))?;
        Ok(ApiToken { token, file })
    }

    /// The hub's flag naming the file.
    pub fn flag(&self) -> String {
        format!("--api-token-file={}", self.file.display())
    }
}

/// The hub's flags for running behind nginx in [`Mode::GrpcTls`]: it takes an agent's
/// identity from the certificate nginx verified and forwards, only from 127.0.0.1, only
/// when it chains to the run's CA, and, given `secret_file`, only with the secret nginx
/// and the hub share.
pub fn behind_nginx(pki: &Pki, secret_file: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "--trusted-proxy=127.0.0.1/32".to_string(),
        format!("--client-ca={}", pki.ca_file.display()),
    ];
    if let Some(file) = secret_file {
        args.push(format!("--proxy-secret-file={}", file.display()));
    }
    args
}

/// nginx in front of the hubs at `hubs_grpc` (one, or replicas sharing a store) in
/// `mode`: serving certificate `<lb_name>` from the run's CA, agents' certificates checked
/// against that CA, and `proxy_secret` sent to the hubs when given; logs in `run_dir`.
pub async fn nginx_in_front(
    pki: &Pki,
    lb_name: &str,
    mode: Mode,
    hubs_grpc: Vec<String>,
    proxy_secret: Option<String>,
    run_dir: &Path,
) -> Result<Nginx> {
    let lb = pki.issue_server(lb_name, &["127.0.0.1", "localhost"])?;
    Nginx::start(
        &NginxOptions {
            mode,
            hubs_grpc,
            tls_cert: lb.cert_file,
            tls_key: lb.key_file,
            client_ca: pki.ca_file.clone(),
            proxy_secret,
        },
        run_dir,
    )
    .await
}

/// 32 random bytes from the OS, in hex: a secret nginx and the hub share, or an API
/// token.
pub fn random_secret() -> Result<String> {
    use std::io::Read as _;
    let source = Path::new("/dev/urandom");
    let mut bytes = [0u8; 32];
    std::fs::File::open(source)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::io("reading", source, e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| Error::io("writing", path, e))
}
