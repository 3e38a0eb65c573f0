//! What an account's kubeconfig may ask of the agent.
//!
//! A kubeconfig is more than an address and a credential: it can make its reader run a
//! program (`exec`, `auth-provider`), read files of the reader's and send them to a server
//! it names (`tokenFile`, `client-certificate`, `client-key`, `certificate-authority`),
//! turn off server verification (`insecure-skip-tls-verify`) or route through a proxy
//! (`proxy-url`). Whoever can write an account's kubeconfig Secret is not trusted with the
//! agent's process, files or network, so each of these is refused unless the operator is
//! started allowing it ([`KubeconfigAllow`]); the operator shows a refused account
//! `Invalid` with the reason, and the agent checks again before it connects (the Secret can
//! change after the operator looked).

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
}

impl KubeconfigFeature {
    /// Every feature, in flag order.
    pub const ALL: [KubeconfigFeature; 4] =
        [Self::Exec, Self::Files, Self::InsecureTls, Self::Proxy];

    /// The spelling in flags and in the agent config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exec => "exec",
            Self::Files => "files",
            Self::InsecureTls => "insecure-tls",
            Self::Proxy => "proxy",
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

/// Why a kubeconfig cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeconfigProblem {
    /// Not UTF-8.
    #[error("it is not UTF-8 text")]
    NotText,
    /// Not a kubeconfig.
    #[error("it does not parse as a kubeconfig: {0}")]
    Parse(String),
    /// No context to use.
    #[error("{0}")]
    Context(String),
    /// The context's cluster is missing or has no server.
    #[error("{0}")]
    Cluster(String),
    /// It uses a feature that is not allowed.
    #[error(
        "{what} {name:?} sets {field}, which {effect}; refused unless the operator runs with --allow-kubeconfig={feature}"
    )]
    Refused {
        /// `cluster` or `user`.
        what: &'static str,
        /// The entry's name.
        name: String,
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
    /// The context used.
    pub context: String,
    /// The cluster's server URL.
    pub server: String,
}

/// Checks a kubeconfig the agent will use: YAML of the kubeconfig shape, with a current
/// context (or a single one) naming a cluster that is defined and has a server, whose
/// cluster and user ask for nothing `allow` does not allow. Only the entries the context
/// uses are checked: they are all the agent reads.
pub fn check_kubeconfig(
    bytes: &[u8],
    allow: &KubeconfigAllow,
) -> Result<KubeconfigTarget, KubeconfigProblem> {
    let text = std::str::from_utf8(bytes).map_err(|_| KubeconfigProblem::NotText)?;
    let kc = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| KubeconfigProblem::Parse(e.to_string()))?;
    let context = match &kc.current_context {
        Some(name) if !name.is_empty() => {
            kc.contexts
                .iter()
                .find(|c| &c.name == name)
                .ok_or_else(|| {
                    KubeconfigProblem::Context(format!(
                        "current-context {name:?} is not among its contexts"
                    ))
                })?
        }
        _ => match kc.contexts.as_slice() {
            [only] => only,
            [] => return Err(KubeconfigProblem::Context("it has no context".to_owned())),
            _ => {
                return Err(KubeconfigProblem::Context(
                    "it has several contexts and no current-context".to_owned(),
                ));
            }
        },
    };
    let ctx = context.context.as_ref().ok_or_else(|| {
        KubeconfigProblem::Context(format!("context {:?} names no cluster", context.name))
    })?;
    let cluster_name = &ctx.cluster;
    let named = kc
        .clusters
        .iter()
        .find(|c| &c.name == cluster_name)
        .ok_or_else(|| {
            KubeconfigProblem::Cluster(format!("cluster {cluster_name:?} is not defined"))
        })?;
    let cluster = named.cluster.as_ref();
    let server = match cluster.and_then(|c| c.server.as_deref()) {
        Some(server) if !server.is_empty() => server.to_owned(),
        _ => {
            return Err(KubeconfigProblem::Cluster(format!(
                "cluster {cluster_name:?} has no server"
            )));
        }
    };
    let refuse = |what, name: &str, field, effect, feature| -> Result<(), KubeconfigProblem> {
        if allow.allows(feature) {
            Ok(())
        } else {
            Err(KubeconfigProblem::Refused {
                what,
                name: name.to_owned(),
                field,
                effect,
                feature,
            })
        }
    };
    const READS: &str = "makes the agent read a file of its own";
    if let Some(c) = cluster {
        if c.certificate_authority
            .as_deref()
            .is_some_and(|p| !p.is_empty())
        {
            refuse(
                "cluster",
                cluster_name,
                "certificate-authority",
                READS,
                KubeconfigFeature::Files,
            )?;
        }
        if c.insecure_skip_tls_verify == Some(true) {
            refuse(
                "cluster",
                cluster_name,
                "insecure-skip-tls-verify",
                "sends the agent's credential to a server it does not verify",
                KubeconfigFeature::InsecureTls,
            )?;
        }
        if c.proxy_url.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse(
                "cluster",
                cluster_name,
                "proxy-url",
                "routes the agent's connections through another host",
                KubeconfigFeature::Proxy,
            )?;
        }
    }
    let Some(user_name) = ctx.user.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(KubeconfigTarget {
            context: context.name.clone(),
            server,
        });
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
                user_name,
                "exec",
                "runs a program in the agent",
                KubeconfigFeature::Exec,
            )?;
        }
        if user.auth_provider.is_some() {
            refuse(
                "user",
                user_name,
                "auth-provider",
                "runs a program or fetches tokens from an endpoint it names",
                KubeconfigFeature::Exec,
            )?;
        }
        if user.token_file.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse(
                "user",
                user_name,
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
                user_name,
                "client-certificate",
                READS,
                KubeconfigFeature::Files,
            )?;
        }
        if user.client_key.as_deref().is_some_and(|p| !p.is_empty()) {
            refuse(
                "user",
                user_name,
                "client-key",
                READS,
                KubeconfigFeature::Files,
            )?;
        }
    }
    Ok(KubeconfigTarget {
        context: context.name.clone(),
        server,
    })
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

    #[test]
    fn a_self_contained_kubeconfig_passes_and_names_its_server() {
        let t = check_kubeconfig(kubeconfig("", "").as_bytes(), &none()).expect("valid");
        assert_eq!(t.server, "https://127.0.0.1:6443");
        assert_eq!(t.context, "x");
    }

    #[test]
    fn shape_problems_are_reported() {
        assert!(check_kubeconfig(b"this is not a kubeconfig", &none()).is_err());
        assert_eq!(
            check_kubeconfig(b"\xff\xfe", &none()),
            Err(KubeconfigProblem::NotText)
        );
        let no_cluster = b"apiVersion: v1\nkind: Config\ncontexts:\n- name: x\n  context:\n    cluster: c\ncurrent-context: x\n";
        let e = check_kubeconfig(no_cluster, &none()).expect_err("no cluster");
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
            let err = check_kubeconfig(text.as_bytes(), &none()).expect_err(field);
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
                check_kubeconfig(text.as_bytes(), &others).is_err(),
                "{field}: another feature allowed it"
            );
            assert!(
                check_kubeconfig(text.as_bytes(), &KubeconfigAllow(vec![feature])).is_ok(),
                "{field}: still refused when allowed"
            );
        }
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
