//! What an account's kubeconfig may ask of the agent.
//!
//! A kubeconfig is more than an address and a credential: it can make its reader run a
//! program (`exec`, `auth-provider`), read files of the reader's and send them to a server
//! it names (`tokenFile`, `client-certificate`, `client-key`, `certificate-authority`),
//! turn off server verification (`insecure-skip-tls-verify`), route through a proxy
//! (`proxy-url`), or point the agent at any address it can reach: plain `http://`, its own
//! host (loopback) or a link-local service such as a cloud metadata endpoint. Whoever can
//! write an account's kubeconfig Secret is not trusted with the agent's process, files or
//! network, so each of these is refused unless the operator is started allowing it
//! ([`KubeconfigAllow`]); the operator shows a refused account `Invalid` with the reason,
//! and the agent checks again before it connects (the Secret can change after the
//! operator looked).
//!
//! Whoever names a Secret in an account may not be allowed to read it, so what is said
//! about a kubeconfig never carries its content: a problem names the kind of fault, the
//! field and (for YAML that does not parse) the line and column, never a value, an entry
//! name or a snippet of the text.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A group of kubeconfig features that only an operator flag allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KubeconfigFeature {
    /// `exec` and `auth-provider`: the agent runs a program, or refreshes tokens from an
    /// endpoint the kubeconfig names.
    Exec,
    /// `tokenFile`, `client-certificate`, `client-key`, `certificate-authority`: the
    /// agent reads a file of its own filesystem (and sends a token file's content to the
    /// server).
    Files,
    /// `insecure-skip-tls-verify`: the agent sends its credential to a server it did not
    /// verify.
    InsecureTls,
    /// `proxy-url`: the agent connects through a proxy the kubeconfig names.
    Proxy,
    /// A `server: http://...`: the agent sends its requests and the credential
    /// unencrypted.
    Http,
    /// A `server` whose host is a loopback (127.0.0.0/8, ::1, `localhost`) or unspecified
    /// (0.0.0.0/8, ::) address: the agent would call its own host (its pod: the admin
    /// port, sidecars). The test control plane's clusters listen on 127.0.0.1.
    Loopback,
    /// A `server` whose host is a link-local address (169.254.0.0/16, fe80::/10): the
    /// node's cloud metadata endpoint (169.254.169.254) lives there.
    LinkLocal,
}

impl KubeconfigFeature {
    /// Every feature, in flag order.
    pub const ALL: [KubeconfigFeature; 7] = [
        Self::Exec,
        Self::Files,
        Self::InsecureTls,
        Self::Proxy,
        Self::Http,
        Self::Loopback,
        Self::LinkLocal,
    ];

    /// The spelling in flags and in the agent config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Files => "files",
            Self::InsecureTls => "insecure-tls",
            Self::Proxy => "proxy",
            Self::Http => "http",
            Self::Loopback => "loopback",
            Self::LinkLocal => "link-local",
        }
    }
}

impl fmt::Display for KubeconfigFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KubeconfigFeature {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|f| f.as_str()).collect();
                format!("{s:?} is not one of {}", names.join(", "))
            })
    }
}

/// The kubeconfig features allowed; empty (the default) allows none of them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KubeconfigAllow(pub Vec<KubeconfigFeature>);

impl KubeconfigAllow {
    /// Whether `f` is allowed.
    pub fn allows(&self, f: KubeconfigFeature) -> bool {
        self.0.contains(&f)
    }

    /// Whether nothing is allowed (the default).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a kubeconfig cannot be used. The text never quotes the kubeconfig (see the module
/// documentation): only the kind of fault, the field, and a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigProblem {
    /// Not UTF-8.
    #[error("it is not UTF-8 text")]
    NotText,
    /// Not a kubeconfig: not YAML, or YAML of another shape.
    #[error(
        "it does not parse as a kubeconfig ({}; its content is not shown)",
        at.map_or_else(|| "no position".to_owned(), |(l, c)| format!("line {l}, column {c}"))
    )]
    Parse {
        /// Line and column (1-based) where the parser stopped, when it says.
        at: Option<(u64, u64)>,
    },
    /// No context to use.
    #[error("{0}")]
    Context(String),
    /// The context's cluster is missing or has no usable server.
    #[error("{0}")]
    Cluster(String),
    /// It uses a feature that is not allowed.
    #[error(
        "its {what} sets {field}, which {effect}; refused unless the operator runs with --allow-kubeconfig={feature}"
    )]
    Refused {
        /// `cluster` or `user` (the one the context uses).
        what: &'static str,
        /// The kubeconfig field.
        field: &'static str,
        /// What it would make the agent do.
        effect: &'static str,
        /// The feature that would allow it.
        feature: KubeconfigFeature,
    },
}

/// What the agent connects to, from a kubeconfig that passed [`check_kubeconfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeconfigTarget {
    /// The context used: the account's `context`, else the kubeconfig's current-context,
    /// else its only context. The agent connects with this one, whatever current-context
    /// says.
    pub context: String,
    /// The cluster's server URL.
    pub server: String,
}

/// Checks a kubeconfig the agent will use: YAML of the kubeconfig shape, with the context
/// `context` (the account's; else the current context, else its only one) naming a
/// cluster that is defined and has an `https://` server that is not a local address,
/// whose cluster and user ask for nothing `allow` does not allow. Only the entries the
/// context uses are checked: they are all the agent reads.
pub fn check_kubeconfig(
    bytes: &[u8],
    context: Option<&str>,
    allow: &KubeconfigAllow,
) -> Result<KubeconfigTarget, KubeconfigProblem> {
    let text = std::str::from_utf8(bytes).map_err(|_| KubeconfigProblem::NotText)?;
    let kc = kube::config::Kubeconfig::from_yaml(text).map_err(|e| KubeconfigProblem::Parse {
        at: match &e {
            kube::config::KubeconfigError::Parse(e) => e.location().map(|l| (l.line(), l.column())),
            _ => None,
        },
    })?;
    let context = choose_context(&kc, context)?;
    let ctx = context
        .context
        .as_ref()
        .ok_or_else(|| KubeconfigProblem::Context("the context names no cluster".to_owned()))?;
    let cluster_name = &ctx.cluster;
    let named = kc
        .clusters
        .iter()
        .find(|c| &c.name == cluster_name)
        .ok_or_else(|| {
            KubeconfigProblem::Cluster("the context's cluster is not defined".to_owned())
        })?;
    let cluster = named.cluster.as_ref();
    let server = match cluster.and_then(|c| c.server.as_deref()) {
        Some(server) if !server.is_empty() => server.to_owned(),
        _ => {
            return Err(KubeconfigProblem::Cluster(
                "the context's cluster has no server".to_owned(),
            ));
        }
    };
    let refuse = |what, field, effect, feature| -> Result<(), KubeconfigProblem> {
        if allow.allows(feature) {
            Ok(())
        } else {
            Err(KubeconfigProblem::Refused {
                what,
                field,
                effect,
                feature,
            })
        }
    };
    let address = server_address(&server)?;
    if address.http {
        refuse(
            "cluster",
            "an http:// server",
            "sends the agent's requests and credential unencrypted",
            KubeconfigFeature::Http,
        )?;
    }
    match address.local {
        Some(Local::Loopback) => refuse(
            "cluster",
            "a server at a loopback or unspecified address",
            "points the agent at its own host",
            KubeconfigFeature::Loopback,
        )?,
        Some(Local::LinkLocal) => refuse(
            "cluster",
            "a server at a link-local address",
            "points the agent at the node's link-local services, such as a cloud metadata endpoint",
            KubeconfigFeature::LinkLocal,
        )?,
        None => {}
    }
    const READS: &str = "makes the agent read a file of its own";
    if let Some(c) = cluster {
        if c.certificate_authority
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            refuse(
                "cluster",
                "certificate-authority",
                READS,
                KubeconfigFeature::Files,
            )?;
        }
        if c.insecure_skip_tls_verify == Some(true) {
            refuse(
                "cluster",
                "insecure-skip-tls-verify",
                "sends the agent's credential to a server it does not verify",
                KubeconfigFeature::InsecureTls,
            )?;
        }
        if c.proxy_url.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse(
                "cluster",
                "proxy-url",
                "routes the agent's connections through another host",
                KubeconfigFeature::Proxy,
            )?;
        }
    }
    let target = KubeconfigTarget {
        context: context.name.clone(),
        server,
    };
    let Some(user_name) = ctx.user.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(target);
    };
    // kube reads a context's user only when it is defined; an undefined one is its error.
    if let Some(user) = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.as_ref())
    {
        if user.exec.is_some() {
            refuse(
                "user",
                "exec",
                "runs a program in the agent",
                KubeconfigFeature::Exec,
            )?;
        }
        if user.auth_provider.is_some() {
            refuse(
                "user",
                "auth-provider",
                "runs a program or fetches tokens from an endpoint it names",
                KubeconfigFeature::Exec,
            )?;
        }
        if user.token_file.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse(
                "user",
                "tokenFile",
                "sends the content of a file of the agent's to the server",
                KubeconfigFeature::Files,
            )?;
        }
        if user
            .client_certificate
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            refuse(
                "user",
                "client-certificate",
                READS,
                KubeconfigFeature::Files,
            )?;
        }
        if user.client_key.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse("user", "client-key", READS, KubeconfigFeature::Files)?;
        }
    }
    Ok(target)
}

/// The context the agent uses: `wanted` (the account's `context`, which is the spec's and
/// may be named), else the current context, else the only one.
fn choose_context<'k>(
    kc: &'k kube::config::Kubeconfig,
    wanted: Option<&str>,
) -> Result<&'k kube::config::NamedContext, KubeconfigProblem> {
    let find = |name: &str| kc.contexts.iter().find(|c| c.name == name);
    if let Some(name) = wanted.filter(|n| !n.is_empty()) {
        return find(name).ok_or_else(|| {
            KubeconfigProblem::Context(format!(
                "the account's context {:?} is not among its contexts",
                crate::decode::bounded(name, 253)
            ))
        });
    }
    match kc.current_context.as_deref() {
        Some(name) if !name.is_empty() => find(name).ok_or_else(|| {
            KubeconfigProblem::Context(
                "its current-context is not among its contexts; set the account's context"
                    .to_owned(),
            )
        }),
        _ => match kc.contexts.as_slice() {
            [only] => Ok(only),
            [] => Err(KubeconfigProblem::Context("it has no context".to_owned())),
            _ => Err(KubeconfigProblem::Context(
                "it has several contexts and no current-context; set the account's context"
                    .to_owned(),
            )),
        },
    }
}

/// Which local range a server's address is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // link-local is the name of the range
enum Local {
    /// Loopback, or unspecified (which reaches the host itself).
    Loopback,
    /// Link-local.
    LinkLocal,
}

/// What a server URL asks for.
struct ServerAddress {
    /// `http://`, not `https://`.
    http: bool,
    /// Its host is a local address.
    local: Option<Local>,
}

/// Reads a kubeconfig's `server` URL far enough to judge it: its scheme and its host.
fn server_address(server: &str) -> Result<ServerAddress, KubeconfigProblem> {
    let not_url = || {
        KubeconfigProblem::Cluster(
            "the context's cluster server is not an https:// URL with a host".to_owned(),
        )
    };
    let (scheme, rest) = server.split_once("://").ok_or_else(not_url)?;
    let http = match scheme.to_ascii_lowercase().as_str() {
        "https" => false,
        "http" => true,
        _ => return Err(not_url()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(bracketed) = host_port.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(not_url());
    }
    Ok(ServerAddress {
        http,
        local: local_host(host),
    })
}

/// Whether `host` (a URL's host, without brackets) names a loopback, link-local or
/// unspecified address: an IP literal in any spelling a resolver accepts (`127.1`,
/// `0x7f000001`, `2130706433`, `::ffff:127.0.0.1`, a zone id), or `localhost`. Other names
/// are not resolved here: whoever controls DNS for them is trusted as the cluster's DNS.
fn local_host(host: &str) -> Option<Local> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return Some(Local::Loopback);
    }
    let v4 = |ip: Ipv4Addr| {
        // 0.0.0.0/8 ("this network"): 0.0.0.0 reaches the host itself.
        if ip.is_loopback() || ip.octets()[0] == 0 {
            Some(Local::Loopback)
        } else if ip.is_link_local() {
            Some(Local::LinkLocal)
        } else {
            None
        }
    };
    let v6 = |ip: Ipv6Addr| {
        if let Some(mapped) = ip.to_ipv4_mapped() {
            v4(mapped)
        } else if ip.is_loopback() || ip.is_unspecified() {
            Some(Local::Loopback)
        } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
            Some(Local::LinkLocal)
        } else {
            None
        }
    };
    let without_zone = host.split('%').next().unwrap_or_default();
    match without_zone.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => v4(ip),
        Ok(IpAddr::V6(ip)) => v6(ip),
        Err(_) => inet_aton(&host).and_then(v4),
    }
}

/// An IPv4 address in the forms the C resolver accepts besides dotted decimal: one to
/// four parts, each decimal, octal (leading `0`) or hexadecimal (`0x`), the last filling
/// the remaining bytes (`127.1`, `0177.0.0.1`, `0x7f000001`, `2130706433`).
fn inet_aton(text: &str) -> Option<std::net::Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut values = Vec::with_capacity(parts.len());
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x") {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let v = if digits.is_empty() {
            0
        } else {
            u32::from_str_radix(digits, radix).ok()?
        };
        values.push(v);
    }
    let (last, head) = values.split_last()?;
    let mut addr: u32 = 0;
    for (i, v) in head.iter().enumerate() {
        if *v > 0xff {
            return None;
        }
        addr |= v << (24 - 8 * i);
    }
    let rest_bits = 32 - 8 * head.len() as u32;
    if rest_bits < 32 && *last >= (1u32 << rest_bits) {
        return None;
    }
    Some(std::net::Ipv4Addr::from(addr | last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(cluster: &str, user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\n{cluster}contexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: abc\n{user}"
        )
    }

    fn none() -> KubeconfigAllow {
        KubeconfigAllow::default()
    }

    /// What the tests' 127.0.0.1 server needs.
    fn local() -> KubeconfigAllow {
        KubeconfigAllow(vec![KubeconfigFeature::Loopback])
    }

    fn check(text: &str, allow: &KubeconfigAllow) -> Result<KubeconfigTarget, KubeconfigProblem> {
        check_kubeconfig(text.as_bytes(), None, allow)
    }

    #[test]
    fn a_self_contained_kubeconfig_passes_and_names_its_server() {
        let t = check_kubeconfig(kubeconfig("", "").as_bytes(), None, &local()).expect("valid");
        assert_eq!(t.server, "https://127.0.0.1:6443");
        assert_eq!(t.context, "x");
    }

    #[test]
    fn shape_problems_are_reported() {
        assert!(check_kubeconfig(b"this is not a kubeconfig", None, &none()).is_err());
        assert_eq!(
            check_kubeconfig(b"\xff\xfe", None, &none()),
            Err(KubeconfigProblem::NotText)
        );
        let no_cluster = b"apiVersion: v1\nkind: Config\ncontexts:\n- name: x\n  context:\n    cluster: c\ncurrent-context: x\n";
        let e = check_kubeconfig(no_cluster, None, &none()).expect_err("no cluster");
        assert!(e.to_string().contains("not defined"), "{e}");
    }

    /// Each field that runs code, reads the agent's files, skips verification or adds a
    /// proxy is refused by default, named in the reason with the flag that allows it, and
    /// accepted once that feature is allowed.
    #[test]
    fn dangerous_fields_are_refused_unless_allowed() {
        let cases = [
            (
                "",
                "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [-c, 'id > /tmp/pwned']\n",
                "exec",
                KubeconfigFeature::Exec,
            ),
            (
                "",
                "    auth-provider:\n      name: oidc\n      config: { idp-issuer-url: 'https://evil.example' }\n",
                "auth-provider",
                KubeconfigFeature::Exec,
            ),
            (
                "",
                "    tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token\n",
                "tokenFile",
                KubeconfigFeature::Files,
            ),
            (
                "",
                "    client-certificate: /etc/scale-agent/tls/tls.crt\n",
                "client-certificate",
                KubeconfigFeature::Files,
            ),
            (
                "",
                "    client-key: /etc/scale-agent/tls/tls.key\n",
                "client-key",
                KubeconfigFeature::Files,
            ),
            (
                "    certificate-authority: /etc/passwd\n",
                "",
                "certificate-authority",
                KubeconfigFeature::Files,
            ),
            (
                "    insecure-skip-tls-verify: true\n",
                "",
                "insecure-skip-tls-verify",
                KubeconfigFeature::InsecureTls,
            ),
            (
                "    proxy-url: http://evil.example:3128\n",
                "",
                "proxy-url",
                KubeconfigFeature::Proxy,
            ),
        ];
        for (cluster, user, field, feature) in cases {
            let text = kubeconfig(cluster, user);
            let err = check(&text, &local()).expect_err(field);
            let msg = err.to_string();
            assert!(msg.contains(field), "{field}: {msg}");
            assert!(
                msg.contains(&format!("--allow-kubeconfig={feature}")),
                "{field}: {msg}"
            );
            let others = KubeconfigAllow(
                KubeconfigFeature::ALL
                    .into_iter()
                    .filter(|f| *f != feature)
                    .collect(),
            );
            assert!(
                check(&text, &others).is_err(),
                "{field}: another feature allowed it"
            );
            assert!(
                check(
                    &text,
                    &KubeconfigAllow(vec![feature, KubeconfigFeature::Loopback])
                )
                .is_ok(),
                "{field}: still refused when allowed"
            );
        }
    }

    /// Secrets that are not kubeconfigs, as an AgentShard writer might point an account
    /// at them to read them back from the status: a service-account token, a private
    /// key, a docker config, and a YAML map whose values are secrets.
    const NOT_KUBECONFIGS: [&str; 5] = [
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IkdHVjFrZjNaIn0.eyJpc3MiOiJrdWJlcm5ldGVzL3NlcnZpY2VhY2NvdW50Iiwic3ViIjoic3lzdGVtOnNlcnZpY2VhY2NvdW50OmRlZmF1bHQ6ZGVmYXVsdCJ9.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJl",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkTf4Q2bYbq9d2mYk1r0hXv0JYwVd6sVQd1vZyq1m0qoAoGCCqGSM49\nAwEHoUQDQgAEb8m3Q3rN1gq0sX3w1yJ8k0Yf2bWcZr7fJ9x0gq1Wc3s=\n-----END EC PRIVATE KEY-----\n",
        "{\"auths\":{\"registry.example.com\":{\"auth\":\"dXNlcjpodW50ZXIyaHVudGVyMg==\"}}}",
        "password: hunter2hunter2hunter2\nclusters: s3cr3t-v4lue-n0t-a-list\n",
        "current-context: s3cr3t-c0ntext-v4lue\ncontexts:\n- name: another-s3cr3t-name\n  context: {cluster: s3cr3t-cluster-n4me}\n",
    ];

    /// The runs of 8 letters and digits of `secret` that appear in `message`.
    fn leaks(secret: &str, message: &str) -> Vec<String> {
        secret
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| w.len() >= 8)
            .flat_map(|w| {
                let w: Vec<char> = w.chars().collect();
                w.windows(8)
                    .map(|r| r.iter().collect::<String>())
                    .collect::<Vec<_>>()
            })
            .filter(|r| {
                !["PRIVATE", "contexts", "current"]
                    .iter()
                    .any(|c| c.contains(r.as_str()) || r.contains(c))
            })
            .filter(|r| message.contains(r.as_str()))
            .collect()
    }

    #[test]
    fn what_is_said_about_a_secret_that_is_not_a_kubeconfig_never_quotes_it() {
        for secret in NOT_KUBECONFIGS {
            let err = check(secret, &local()).expect_err("not a kubeconfig");
            let msg = err.to_string();
            assert_eq!(leaks(secret, &msg), Vec::<String>::new(), "{msg}");
            assert!(msg.len() <= 200, "{msg}");
        }
        let e = check("a: [1, 2\nb: c\n", &none()).expect_err("bad YAML");
        assert!(
            matches!(e, KubeconfigProblem::Parse { at: Some(_) }),
            "a parse error says where: {e:?}"
        );
        assert!(e.to_string().contains("line "), "{e}");
    }

    fn server(url: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {url}\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: abc\n"
        )
    }

    #[test]
    fn plain_http_and_local_servers_are_refused_unless_allowed() {
        let http = server("http://10.0.0.1:8080");
        let e = check(&http, &none()).expect_err("http");
        assert!(e.to_string().contains("--allow-kubeconfig=http"), "{e}");
        assert!(!e.to_string().contains("10.0.0.1"), "{e}");
        check(&http, &KubeconfigAllow(vec![KubeconfigFeature::Http])).expect("allowed");
        use KubeconfigFeature::{Http, LinkLocal, Loopback};
        for (url, feature) in [
            ("https://127.0.0.1:6443", Loopback),
            ("https://127.1", Loopback),
            ("https://2130706433", Loopback),
            ("https://0x7f000001", Loopback),
            ("https://0177.0.0.1", Loopback),
            ("https://localhost:6443", Loopback),
            ("https://LOCALHOST.", Loopback),
            ("https://api.localhost", Loopback),
            ("https://[::1]:6443", Loopback),
            ("https://0.0.0.0:6443", Loopback),
            ("https://[::]", Loopback),
            ("https://169.254.169.254", LinkLocal),
            (
                "https://user@169.254.169.254:443/latest/meta-data",
                LinkLocal,
            ),
            ("https://[fe80::1%25eth0]", LinkLocal),
            ("https://[::ffff:169.254.169.254]", LinkLocal),
            ("http://169.254.169.254", LinkLocal),
        ] {
            let other = if feature == Loopback {
                LinkLocal
            } else {
                Loopback
            };
            let e = check(&server(url), &KubeconfigAllow(vec![Http, other])).expect_err(url);
            assert!(
                e.to_string()
                    .contains(&format!("--allow-kubeconfig={feature}")),
                "{url}: {e}"
            );
            check(&server(url), &KubeconfigAllow(vec![Http, feature])).expect(url);
        }
        for url in [
            "https://10.0.0.1:6443",
            "https://api.example.com",
            "https://[2001:db8::1]:443/base",
            "https://1.2.3.4",
            "https://127.example.com",
        ] {
            check(&server(url), &none()).expect(url);
        }
        for url in [
            "ftp://example.com",
            "127.0.0.1:6443",
            "https://",
            "unix:///run/k.sock",
        ] {
            let e = check(&server(url), &none()).expect_err(url);
            assert!(matches!(e, KubeconfigProblem::Cluster(_)), "{url}: {e}");
        }
    }

    fn contexts(current: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://a.example.com\n- name: b\n  cluster:\n    server: https://b.example.com\ncontexts:\n- name: ctx-a\n  context:\n    cluster: a\n- name: ctx-b\n  context:\n    cluster: b\n{current}"
        )
    }

    #[test]
    fn the_accounts_context_picks_one_of_several() {
        let two = contexts("");
        let e = check(&two, &none()).expect_err("two contexts, none chosen");
        assert!(e.to_string().contains("set the account's context"), "{e}");
        let t = check_kubeconfig(two.as_bytes(), Some("ctx-b"), &none()).expect("chosen");
        assert_eq!(
            (t.context.as_str(), t.server.as_str()),
            ("ctx-b", "https://b.example.com")
        );
        // The account's context wins over current-context.
        let current = contexts("current-context: ctx-a\n");
        let t = check_kubeconfig(current.as_bytes(), Some("ctx-b"), &none()).expect("chosen");
        assert_eq!(t.context, "ctx-b");
        assert_eq!(check(&current, &none()).expect("current").context, "ctx-a");
        let e = check_kubeconfig(two.as_bytes(), Some("ctx-c"), &none()).expect_err("missing");
        assert!(e.to_string().contains("\"ctx-c\""), "{e}");
        // One context and no current-context: that one.
        let one = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster:\n    server: https://a.example.com\ncontexts:\n- name: only\n  context:\n    cluster: a\n";
        assert_eq!(check(one, &none()).expect("the only one").context, "only");
    }

    #[test]
    fn features_read_from_their_flag_spelling() {
        for f in KubeconfigFeature::ALL {
            assert_eq!(f.as_str().parse::<KubeconfigFeature>(), Ok(f));
        }
        assert!("shell".parse::<KubeconfigFeature>().is_err());
        let yaml = serde_yaml::to_string(&KubeconfigAllow(vec![KubeconfigFeature::InsecureTls]))
            .unwrap_or_default();
        assert_eq!(yaml.trim(), "- insecure-tls");
    }
}
