//! `scale-agent-hub kubeconfig`: writes the kubeconfig a Spinnaker operator pastes into
//! Clouddriver (`kubeconfigFile` / `kubeconfigContents`), with one context per
//! account, each pointing at that account's Kubernetes API on the hub.
//!
//! ```text
//! scale-agent-hub kubeconfig --server https://hub.example.com:8443 \
//!     --token-file /run/secrets/clouddriver-token --certificate-authority ca.pem \
//!     --hub-api http://hub.example.com:8080 --api-token-file /run/secrets/api-token
//! ```
//!
//! The accounts are the ones named with `--account`, or else every account the hub
//! knows (from its JSON API, `GET /v1/accounts`).

use std::path::PathBuf;

use base64::Engine as _;
use clap::Parser;

use crate::core::registry::validate_name;

/// One account's entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contexts<'a> {
    /// The hub's Kubernetes API base, e.g. `https://hub.example.com:8443`.
    pub server: &'a str,
    /// The CA bundle (PEM) that signs the hub's certificate, if clients need one.
    pub ca_pem: Option<&'a [u8]>,
    /// The bearer token.
    pub token: &'a str,
    /// The accounts, one context each.
    pub accounts: &'a [String],
    /// The hub's `--kube-api-host-suffix`: each account whose name is a DNS label is
    /// named by host name (`https://<account>.<suffix>[:port]`, the server's port),
    /// or, when the server is an IP address, by TLS server name (`tls-server-name`)
    /// at that address; other accounts keep the path form.
    pub host_suffix: Option<&'a str>,
}

/// Where a context's cluster is: its `server`, and the TLS server name it is
/// checked against, when not the server's host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    server: String,
    tls_server_name: Option<String>,
}

/// Where `account`'s API is for a client, from the hub's `base` URL (scheme and
/// authority, maybe a path) and its host suffix.
fn endpoint(base: &str, account: &str, host_suffix: Option<&str>) -> Endpoint {
    let by_path = || Endpoint {
        server: format!("{base}/accounts/{account}"),
        tls_server_name: None,
    };
    let Some(suffix) = host_suffix else {
        return by_path();
    };
    if !super::host::is_label(account) {
        return by_path();
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return by_path();
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_name = format!("{account}.{suffix}");
    // `host:port`, `[v6]:port`, or a host alone.
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (authority, None),
    };
    let is_address = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
    if is_address {
        // No DNS name to reach: the address, the account's name in the TLS handshake.
        return Endpoint {
            server: format!("{scheme}://{authority}"),
            tls_server_name: Some(host_name),
        };
    }
    Endpoint {
        server: match port {
            Some(port) => format!("{scheme}://{host_name}:{port}"),
            None => format!("{scheme}://{host_name}"),
        },
        tls_server_name: None,
    }
}

fn quoted(text: &str) -> String {
    // A JSON string is a YAML double-quoted scalar.
    serde_json::Value::String(text.to_owned()).to_string()
}

/// Renders the kubeconfig (YAML). The first account is the current context.
pub fn render(c: &Contexts<'_>) -> Result<String, String> {
    if c.accounts.is_empty() {
        return Err("no account to write a context for".into());
    }
    let base = c.server.trim_end_matches('/');
    if !(base.starts_with("https://") || base.starts_with("http://")) {
        return Err(format!(
            "--server {base:?} must be an http:// or https:// URL"
        ));
    }
    let suffix = c
        .host_suffix
        .map(super::host::check_suffix)
        .transpose()
        .map_err(|e| format!("--host-suffix: {e}"))?;
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for account in c.accounts {
        validate_name(account)?;
        let at = endpoint(base, account, suffix.as_deref());
        if at.tls_server_name.is_some() && !base.starts_with("https://") {
            return Err(format!(
                "--server {base:?} is an address: accounts by host name are told apart there by the TLS server name, so it must be https://"
            ));
        }
        out.push_str(&format!("- name: {}\n  cluster:\n", quoted(account)));
        out.push_str(&format!("    server: {}\n", quoted(&at.server)));
        if let Some(name) = &at.tls_server_name {
            out.push_str(&format!("    tls-server-name: {}\n", quoted(name)));
        }
        if let Some(ca) = c.ca_pem {
            out.push_str(&format!(
                "    certificate-authority-data: {}\n",
                quoted(&base64::engine::general_purpose::STANDARD.encode(ca))
            ));
        }
    }
    out.push_str("contexts:\n");
    for account in c.accounts {
        out.push_str(&format!(
            "- name: {0}\n  context:\n    cluster: {0}\n    user: \"scale-agent-hub\"\n",
            quoted(account)
        ));
    }
    out.push_str(&format!(
        "users:\n- name: \"scale-agent-hub\"\n  user:\n    token: {}\ncurrent-context: {}\n",
        quoted(c.token),
        quoted(&c.accounts[0])
    ));
    Ok(out)
}

/// Writes a kubeconfig with one context per account, each pointing at the account's
/// Kubernetes API on the hub.
#[derive(Debug, Parser)]
#[command(name = "scale-agent-hub kubeconfig")]
pub struct Args {
    /// The hub's Kubernetes API as clients reach it, e.g.
    /// https://hub.example.com:8443 (contexts point at <server>/accounts/<account>).
    #[arg(long, value_name = "URL")]
    pub server: String,

    /// File holding the bearer token the kubeconfig uses (one of the tokens of the
    /// hub's --kube-api-tokens-file).
    #[arg(long, value_name = "PATH")]
    pub token_file: PathBuf,

    /// PEM bundle of the CA that signs the hub's certificate, embedded in the
    /// kubeconfig.
    #[arg(long, value_name = "PATH")]
    pub certificate_authority: Option<PathBuf>,

    /// An account to write a context for (repeatable). Without it, every account
    /// the hub knows (see --hub-api).
    #[arg(long = "account", value_name = "NAME")]
    pub accounts: Vec<String>,

    /// The hub's JSON API, to list its accounts when none is named.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub hub_api: String,

    /// File holding the JSON API's bearer token (the hub's --api-token-file).
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,

    /// The hub's --kube-api-host-suffix: contexts name each account by host name
    /// (https://<account>.<DOMAIN>:<port of --server>; with an IP address as
    /// --server, that address and `tls-server-name: <account>.<DOMAIN>`), so that
    /// clients that drop the server's path reach the account. Accounts whose names
    /// are not DNS labels keep the path form.
    #[arg(long, value_name = "DOMAIN")]
    pub host_suffix: Option<String>,

    /// Where to write the kubeconfig (mode 0600); standard output when unset.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

fn read_token(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// Lists the account names of a hub through its JSON API (`http://` only: the JSON
/// API is served without TLS).
async fn hub_accounts(base: &str, token: Option<&str>) -> Result<Vec<String>, String> {
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("--hub-api {base:?} must be an http:// URL"))?;
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{base}: {e}"))?;
    tokio::spawn(conn);
    let mut req =
        http::Request::get(format!("{prefix}/v1/accounts")).header(http::header::HOST, authority);
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{base}/v1/accounts: {e}"))?;
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| format!("{base}/v1/accounts: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "{base}/v1/accounts answered {status}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let accounts: Vec<serde_json::Value> =
        serde_json::from_slice(&body).map_err(|e| format!("{base}/v1/accounts: {e}"))?;
    Ok(accounts
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect())
}

/// Runs the subcommand.
pub async fn run(args: Args) -> Result<(), String> {
    let token = read_token(&args.token_file)?;
    let ca = match &args.certificate_authority {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?),
        None => None,
    };
    let accounts = if args.accounts.is_empty() {
        let api_token = args.api_token_file.as_deref().map(read_token).transpose()?;
        let mut names = hub_accounts(&args.hub_api, api_token.as_deref()).await?;
        names.sort();
        names
    } else {
        args.accounts.clone()
    };
    let text = render(&Contexts {
        server: &args.server,
        ca_pem: ca.as_deref(),
        token: &token,
        accounts: &accounts,
        host_suffix: args.host_suffix.as_deref(),
    })?;
    if args.host_suffix.is_some() {
        let by_path: Vec<&str> = accounts
            .iter()
            .filter(|a| !super::host::is_label(a))
            .map(String::as_str)
            .collect();
        if !by_path.is_empty() {
            eprintln!(
                "scale-agent-hub kubeconfig: {} account(s) keep the path form, their names not being DNS labels (lowercase letters, digits, -): {}",
                by_path.len(),
                by_path
                    .iter()
                    .take(20)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    match &args.output {
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| e.to_string())
        }
        Some(path) => write_private(path, &text),
    }
}

fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    file.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_context_per_account_with_server_ca_and_token() {
        let accounts = vec!["prod-1".to_owned(), "prod-2".to_owned()];
        let text = render(&Contexts {
            server: "https://hub:8443/",
            ca_pem: Some(b"PEM"),
            token: "t0k3n\"quoted",
            accounts: &accounts,
            host_suffix: None,
        })
        .expect("renders");
        assert!(text.contains("server: \"https://hub:8443/accounts/prod-1\""));
        assert!(text.contains("server: \"https://hub:8443/accounts/prod-2\""));
        assert!(text.contains("certificate-authority-data: \"UEVN\""));
        assert!(text.contains("token: \"t0k3n\\\"quoted\""));
        assert!(text.contains("current-context: \"prod-1\""));
        assert_eq!(text.matches("  context:").count(), 2);
        assert!(
            render(&Contexts {
                server: "hub:8443",
                ca_pem: None,
                token: "t",
                accounts: &accounts,
                host_suffix: None,
            })
            .is_err()
        );
        assert!(
            render(&Contexts {
                server: "https://hub",
                ca_pem: None,
                token: "t",
                accounts: &["bad name".to_owned()],
                host_suffix: None,
            })
            .is_err()
        );
    }

    #[test]
    fn accounts_by_host_name_or_by_tls_server_name_at_an_address() {
        let accounts = vec!["prod".to_owned(), "Team_B".to_owned()];
        let text = |server: &str| {
            render(&Contexts {
                server,
                ca_pem: None,
                token: "t",
                accounts: &accounts,
                host_suffix: Some("Hub.Example.com"),
            })
        };
        let named = text("https://hub.example.com:8443").expect("renders");
        assert!(
            named.contains("server: \"https://prod.hub.example.com:8443\""),
            "{named}"
        );
        // Not a DNS label: the path form.
        assert!(
            named.contains("server: \"https://hub.example.com:8443/accounts/Team_B\""),
            "{named}"
        );
        assert!(!named.contains("tls-server-name"), "{named}");
        let no_port = text("https://hub.example.com").expect("renders");
        assert!(
            no_port.contains("server: \"https://prod.hub.example.com\""),
            "{no_port}"
        );
        let at_address = text("https://127.0.0.1:8443").expect("renders");
        assert!(
            at_address.contains(
                "server: \"https://127.0.0.1:8443\"\n    tls-server-name: \"prod.hub.example.com\""
            ),
            "{at_address}"
        );
        // An address over plain HTTP has no server name to tell accounts apart.
        assert!(text("http://127.0.0.1:8080").is_err());
        assert!(
            render(&Contexts {
                server: "https://hub",
                ca_pem: None,
                token: "t",
                accounts: &accounts,
                host_suffix: Some("*.example.com"),
            })
            .is_err()
        );
    }
}
