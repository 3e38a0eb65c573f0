//! The agent's config file.
//!
//! The operator writes one per shard, as YAML under the key [`CONFIG_KEY`] of the
//! ConfigMap [`config_map_name`]; the agent reads it from the mounted file and reloads it
//! when it changes. Only accounts the shard actually owns are in it: conflicting and
//! invalid ones are left out by the operator.
//!
//! ```yaml
//! shard: { namespace: spinnaker, name: prod-east }
//! hub:
//!   address: clouddriver-grpc.example.com:443
//!   tls: { caFile: /etc/scale-agent/tls/ca.crt, certFile: /etc/scale-agent/tls/tls.crt, keyFile: /etc/scale-agent/tls/tls.key }
//! accounts:
//!   - name: prod-east-1
//!     kubeconfigFile: prod-east-1.kubeconfig
//!     omitNamespaces: [kube-system]
//! budget: { concurrentSyncs: 4, maxBufferedBytes: 67108864 }
//! ```

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::{
    AccountScope, AccountSpec, Budget, ConfigError, DEFAULT_CONCURRENT_SYNCS, DNS_LABEL_MAX_LEN,
    HUB_ADDRESS_MAX_LEN, KubeconfigAllow, ShardRef, parse_quantity_bytes,
};

/// The key of the agent config in its ConfigMap, and so the file name in the mount.
pub const CONFIG_KEY: &str = "config.yaml";

/// The default `budget.maxBufferedBytes` of an agent config, in bytes (64Mi).
pub const DEFAULT_MAX_BUFFERED_BYTES_VALUE: u64 = 64 << 20;

/// The ConfigMap holding shard `shard`'s agent config (`<shard>-agent-config`).
pub fn config_map_name(shard: &str) -> String {
    format!("{shard}-agent-config")
}

/// The Secret holding shard `shard`'s kubeconfigs, one key per account
/// (`<shard>-agent-kubeconfigs`).
pub fn kubeconfig_secret_name(shard: &str) -> String {
    format!("{shard}-agent-kubeconfigs")
}

/// The Secret holding the client certificate the operator issues for shard `shard`'s
/// agents (`<shard>-agent-tls`).
pub fn agent_tls_secret_name(shard: &str) -> String {
    format!("{shard}-agent-tls")
}

/// The agent Deployment of shard `shard` (`<shard>-agent`).
pub fn deployment_name(shard: &str) -> String {
    format!("{shard}-agent")
}

/// The key in the kubeconfigs Secret, and so the file name in the mounted directory, of
/// account `account`'s kubeconfig (`<account>.kubeconfig`).
pub fn kubeconfig_file_name(account: &str) -> String {
    format!("{account}.kubeconfig")
}

/// Everything one agent replica needs to know, but the kubeconfigs themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    /// The shard these agents run for.
    pub shard: ShardRef,
    /// Where to stream.
    pub hub: HubConfig,
    /// The accounts to stream: only those the shard owns.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Memory and concurrency limits.
    #[serde(default)]
    pub budget: BudgetConfig,
    /// The kubeconfig features the operator allows (running programs, reading the agent's
    /// files...); empty, the default, allows none. The agent refuses a kubeconfig that
    /// asks for more, whatever the Secret says now.
    #[serde(default, skip_serializing_if = "KubeconfigAllow::is_empty")]
    pub allow_kubeconfig: KubeconfigAllow,
}

/// Where the agent streams to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubConfig {
    /// The hub's gRPC endpoint as `host:port`.
    pub address: String,
    /// mTLS material; without it the agent connects in plain text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// The agent's mTLS files (PEM), as mounted in the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsConfig {
    /// The CA bundle that signed the hub's certificate.
    pub ca_file: String,
    /// The agent's client certificate (it names the shard).
    pub cert_file: String,
    /// The agent's private key.
    pub key_file: String,
    /// The name to check the hub's certificate against, when not the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// One cluster to stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountConfig {
    /// The Spinnaker account name.
    pub name: String,
    /// The kubeconfig's file name in the mounted kubeconfig directory; empty for an
    /// in-cluster account.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kubeconfig_file: String,
    /// Stream the cluster the agent runs in, with the agent's own credentials (its
    /// ServiceAccount in a pod) instead of a kubeconfig file.
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_cluster: bool,
    /// Which context of the kubeconfig, and what of the cluster, to stream: the
    /// fields of the AgentShard's account, as they are.
    #[serde(flatten)]
    pub scope: AccountScope,
}

/// Memory and concurrency limits of one agent replica, in plain numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetConfig {
    /// Most initial lists running at once; at least 1.
    pub concurrent_syncs: u32,
    /// Most bytes of events waiting to be sent; at least 1.
    pub max_buffered_bytes: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            concurrent_syncs: DEFAULT_CONCURRENT_SYNCS.unsigned_abs(),
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES_VALUE,
        }
    }
}

impl AgentConfig {
    /// Reads and [validates](Self::validate) a config file.
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let config: Self =
            serde_yaml::from_str(yaml).map_err(|source| ConfigError::ParseYaml { source })?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as YAML (it does not validate: call [`Self::validate`] first).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(|source| ConfigError::WriteYaml {
            what: "agent config",
            source,
        })
    }

    /// Checks what the types cannot say: names that are DNS labels and unique, a
    /// `host:port` hub address, kubeconfig files inside their directory, at most one of
    /// each include/exclude pair, and a budget of at least 1. Returns the first problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shard.namespace.is_empty() {
            return Err(ConfigError::Empty {
                field: "shard.namespace",
            });
        }
        if self.shard.name.is_empty() {
            return Err(ConfigError::Empty {
                field: "shard.name",
            });
        }
        self.hub.validate()?;
        self.budget.validate()?;
        let mut seen = HashSet::with_capacity(self.accounts.len());
        for account in &self.accounts {
            account.validate()?;
            if !seen.insert(account.name.as_str()) {
                return Err(ConfigError::DuplicateAccount {
                    name: account.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The account named `name`.
    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }
}

impl HubConfig {
    /// Checks the address is `host:port` and the TLS file names are not empty.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_hub_address(&self.address)?;
        if let Some(tls) = &self.tls {
            for (field, value) in [
                ("hub.tls.caFile", &tls.ca_file),
                ("hub.tls.certFile", &tls.cert_file),
                ("hub.tls.keyFile", &tls.key_file),
            ] {
                if value.is_empty() {
                    return Err(ConfigError::Empty { field });
                }
            }
            if tls.server_name.as_deref() == Some("") {
                return Err(ConfigError::Empty {
                    field: "hub.tls.serverName",
                });
            }
        }
        Ok(())
    }
}

impl AccountConfig {
    /// An account `name` reading the kubeconfig file [`kubeconfig_file_name`] of its name,
    /// streaming everything of the cluster its kubeconfig's context points at.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kubeconfig_file: kubeconfig_file_name(name),
            in_cluster: false,
            scope: AccountScope::default(),
        }
    }

    /// The config of an account of the spec, reading its kubeconfig from `kubeconfig_file`
    /// (usually [`kubeconfig_file_name`] of its name); an in-cluster account has none.
    pub fn from_spec(spec: &AccountSpec, kubeconfig_file: impl Into<String>) -> Self {
        Self {
            name: spec.name.clone(),
            kubeconfig_file: if spec.in_cluster {
                String::new()
            } else {
                kubeconfig_file.into()
            },
            in_cluster: spec.in_cluster,
            scope: spec.scope.clone(),
        }
    }

    /// Checks the name, the credentials (a kubeconfig file name, or in-cluster: exactly
    /// one), the namespaces, and that each include/exclude pair has at most one side set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_account_name(&self.name)?;
        let file = self.kubeconfig_file.as_str();
        if self.in_cluster {
            if !file.is_empty() {
                return Err(ConfigError::ConflictingCredentials {
                    account: self.name.clone(),
                });
            }
        } else if file.is_empty() || file == "." || file == ".." || file.contains(['/', '\\', '\0'])
        {
            return Err(ConfigError::InvalidKubeconfigFile {
                account: self.name.clone(),
                file: file.to_owned(),
            });
        }
        let scope = &self.scope;
        if scope.context.as_deref() == Some("") {
            return Err(ConfigError::Empty {
                field: "accounts[].context",
            });
        }
        for namespace in scope.namespaces.iter().chain(&scope.omit_namespaces) {
            check_dns_label(namespace, || {
                format!("namespace of account {:?}", self.name)
            })?;
        }
        if !scope.namespaces.is_empty() && !scope.omit_namespaces.is_empty() {
            return Err(ConfigError::ConflictingFilters {
                account: self.name.clone(),
                include: "namespaces",
                exclude: "omitNamespaces",
            });
        }
        if !scope.kinds.is_empty() && !scope.omit_kinds.is_empty() {
            return Err(ConfigError::ConflictingFilters {
                account: self.name.clone(),
                include: "kinds",
                exclude: "omitKinds",
            });
        }
        Ok(())
    }
}

impl BudgetConfig {
    /// The budget of a spec in plain numbers: `maxBufferedBytes` read as a quantity,
    /// both values at least 1.
    pub fn from_spec(budget: &Budget) -> Result<Self, ConfigError> {
        let concurrent_syncs =
            u32::try_from(budget.concurrent_syncs).map_err(|_| ConfigError::InvalidBudget {
                field: "concurrentSyncs",
                value: budget.concurrent_syncs.to_string(),
                reason: "must be at least 1",
            })?;
        let config = Self {
            concurrent_syncs,
            max_buffered_bytes: parse_quantity_bytes(&budget.max_buffered_bytes.0)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks both values are at least 1.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.concurrent_syncs == 0 {
            return Err(ConfigError::InvalidBudget {
                field: "concurrentSyncs",
                value: "0".to_owned(),
                reason: "must be at least 1",
            });
        }
        if self.max_buffered_bytes == 0 {
            return Err(ConfigError::InvalidBudget {
                field: "maxBufferedBytes",
                value: "0".to_owned(),
                reason: "must be at least 1 byte",
            });
        }
        Ok(())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Checks an account name is a DNS-1123 label (what the CRD's pattern says).
pub fn validate_account_name(name: &str) -> Result<(), ConfigError> {
    check_dns_label(name, || "account name".to_owned())
}

/// Checks a namespace name is a DNS-1123 label (what the CRD's pattern for an account's
/// namespaces and omitNamespaces says).
pub fn validate_namespace(name: &str) -> Result<(), ConfigError> {
    check_dns_label(name, || "namespace".to_owned())
}

/// Checks a kind to watch has the form the CRD's [`KIND_PATTERN`](crate::KIND_PATTERN)
/// says: a Kind (a letter, then letters and digits), optionally followed by `.` and its
/// API group (DNS-1123 labels joined by `.`), at most 253 characters.
pub fn validate_kind(kind: &str) -> Result<(), ConfigError> {
    let (name, group) = kind.split_once('.').unwrap_or((kind, ""));
    let reason = if kind.len() > crate::DNS_SUBDOMAIN_MAX_LEN {
        Some("it is longer than 253 characters")
    } else if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("it does not start with a letter")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Some("its Kind has a character other than letters and digits")
    } else if kind.contains('.')
        && group
            .split('.')
            .any(|label| check_dns_label(label, String::new).is_err())
    {
        Some("its API group is not DNS labels joined by '.'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ConfigError::InvalidName {
            field: "kind".to_owned(),
            value: kind.to_owned(),
            reason,
        }),
    }
}

fn check_dns_label(value: &str, field: impl FnOnce() -> String) -> Result<(), ConfigError> {
    let reason = if value.is_empty() {
        Some("it is empty")
    } else if value.len() > DNS_LABEL_MAX_LEN {
        Some("it is longer than 63 characters")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("it has a character other than a-z, 0-9 and '-'")
    } else if value.starts_with('-') || value.ends_with('-') {
        Some("it starts or ends with '-'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(ConfigError::InvalidName {
            field: field(),
            value: value.to_owned(),
            reason,
        }),
    }
}

/// Checks a hub address is `host:port`: host a DNS name, an IPv4 address or an IPv6
/// address in brackets, port 1 to 65535 (what the CRD's pattern says, and the port range).
pub fn validate_hub_address(address: &str) -> Result<(), ConfigError> {
    let bad = |reason| {
        Err(ConfigError::InvalidHubAddress {
            address: address.to_owned(),
            reason,
        })
    };
    if address.is_empty() {
        return Err(ConfigError::Empty {
            field: "hub.address",
        });
    }
    if address.len() > HUB_ADDRESS_MAX_LEN {
        return bad("it is longer than 259 characters");
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("there is no :port");
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the port is not a number");
    }
    if !port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p)) {
        return bad("the port is not between 1 and 65535");
    }
    if let Some(bracketed) = host.strip_prefix('[') {
        let ok = bracketed.strip_suffix(']').is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        });
        return if ok {
            Ok(())
        } else {
            bad("the IPv6 host is not hex digits, ':' and '.' in brackets")
        };
    }
    if host.is_empty() {
        return bad("the host is empty");
    }
    if host.contains(':') {
        return bad("an IPv6 host must be in brackets, like [::1]:443");
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return bad("the host has a character other than letters, digits, '-' and '.'");
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge_ok(host.bytes().next()) || !edge_ok(host.bytes().last()) {
        return bad("the host does not start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_addresses() {
        for ok in [
            "clouddriver-grpc.example.com:443",
            "localhost:9091",
            "127.0.0.1:1",
            "[::1]:65535",
            "[fd00::1.2.3.4]:443",
            "Hub.Example.COM:8443",
        ] {
            assert!(validate_hub_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "hub",
            "hub:",
            ":443",
            "hub:0",
            "hub:65536",
            "hub:123456",
            "hub:44a",
            "::1:443",
            "[::1]",
            "[]:443",
            "[::g]:443",
            "-hub:443",
            "hub.:443",
            "https://hub:443",
            "hub name:443",
        ] {
            assert!(validate_hub_address(bad).is_err(), "{bad}");
        }
        let long = format!("{}:443", "a".repeat(HUB_ADDRESS_MAX_LEN));
        assert!(validate_hub_address(&long).is_err());
    }

    #[test]
    fn account_names() {
        for ok in ["a", "prod-east-1", "0", &"a".repeat(63)] {
            assert!(validate_account_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            let err = validate_account_name(bad).expect_err(bad);
            assert_eq!(err.label(), "InvalidName");
        }
    }

    #[test]
    fn child_names() {
        assert_eq!(config_map_name("prod-east"), "prod-east-agent-config");
        assert_eq!(
            kubeconfig_secret_name("prod-east"),
            "prod-east-agent-kubeconfigs"
        );
        assert_eq!(deployment_name("prod-east"), "prod-east-agent");
        assert_eq!(
            kubeconfig_file_name("prod-east-1"),
            "prod-east-1.kubeconfig"
        );
    }
}
