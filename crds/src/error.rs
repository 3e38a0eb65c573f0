//! The crate's one error type.

use std::fmt;

/// Everything that can go wrong reading, checking or writing the types of this crate.
///
/// Each variant names what it was looking at (the account, the field, the value), so the
/// operator can put the message in a condition and the agent can log it as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The agent config file is not YAML of the [`AgentConfig`](crate::AgentConfig) shape.
    #[error("agent config is not valid YAML for the expected shape: {source}")]
    ParseYaml {
        /// What serde_yaml said, with line and column.
        #[source]
        source: serde_yaml::Error,
    },

    /// A value could not be written as YAML.
    #[error("cannot write {what} as YAML: {source}")]
    WriteYaml {
        /// What was being written (`agent config`, `CustomResourceDefinition`).
        what: &'static str,
        /// What serde_yaml said.
        #[source]
        source: serde_yaml::Error,
    },

    /// A field that must not be empty is.
    #[error("{field} must not be empty")]
    Empty {
        /// The field's path, e.g. `shard.namespace`.
        field: &'static str,
    },

    /// The hub address is not `host:port`.
    #[error("hub address {address:?} is not host:port: {reason}")]
    InvalidHubAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A name (account, namespace) is not a DNS-1123 label.
    #[error(
        "{field} {value:?} is not a valid name: {reason} (lowercase letters, digits and '-', starting and ending with a letter or digit, at most 63 characters)"
    )]
    InvalidName {
        /// Which kind of name, e.g. `account name`, `namespace of account "a"`.
        field: String,
        /// The name as given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Two accounts in one config have the same name.
    #[error("account {name:?} is listed more than once")]
    DuplicateAccount {
        /// The repeated name.
        name: String,
    },

    /// An account's kubeconfig file is not a plain file name inside the kubeconfig directory.
    #[error(
        "account {account:?}: kubeconfigFile {file:?} must be a plain file name (no '/', not '.' or '..')"
    )]
    InvalidKubeconfigFile {
        /// The account.
        account: String,
        /// The file name as given.
        file: String,
    },

    /// An account names a kubeconfig file and is in-cluster too.
    #[error(
        "account {account:?}: kubeconfigFile and inCluster cannot both be set; use one of them"
    )]
    ConflictingCredentials {
        /// The account.
        account: String,
    },

    /// An account sets both an include list and its exclude list.
    #[error("account {account:?}: {include} and {exclude} cannot both be set; use one of them")]
    ConflictingFilters {
        /// The account.
        account: String,
        /// The include list (`namespaces` or `kinds`).
        include: &'static str,
        /// The exclude list (`omitNamespaces` or `omitKinds`).
        exclude: &'static str,
    },

    /// A budget value is out of its range.
    #[error("budget.{field} = {value} is out of range: {reason}")]
    InvalidBudget {
        /// The budget field (`concurrentSyncs`, `maxBufferedBytes`).
        field: &'static str,
        /// The value as given.
        value: String,
        /// The accepted range.
        reason: &'static str,
    },

    /// A quantity of bytes (like `64Mi`) could not be read.
    #[error("quantity {value:?} is not a whole number of bytes: {problem}")]
    InvalidQuantity {
        /// The quantity as given.
        value: String,
        /// What is wrong with it.
        problem: QuantityProblem,
    },

    /// A shard reference is not `namespace/name`.
    #[error("shard reference {value:?} is not namespace/name")]
    InvalidShardRef {
        /// The reference as given.
        value: String,
    },
}

impl ConfigError {
    /// A stable, low-cardinality label for this kind of error, for metrics and condition reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ParseYaml { .. } => "ParseYaml",
            Self::WriteYaml { .. } => "WriteYaml",
            Self::Empty { .. } => "EmptyField",
            Self::InvalidHubAddress { .. } => "InvalidHubAddress",
            Self::InvalidName { .. } => "InvalidName",
            Self::DuplicateAccount { .. } => "DuplicateAccount",
            Self::InvalidKubeconfigFile { .. } => "InvalidKubeconfigFile",
            Self::ConflictingFilters { .. } => "ConflictingFilters",
            Self::ConflictingCredentials { .. } => "ConflictingCredentials",
            Self::InvalidBudget { .. } => "InvalidBudget",
            Self::InvalidQuantity { .. } => "InvalidQuantity",
            Self::InvalidShardRef { .. } => "InvalidShardRef",
        }
    }
}

/// Why a quantity of bytes was refused by [`parse_quantity_bytes`](crate::parse_quantity_bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum QuantityProblem {
    /// The string is empty.
    Empty,
    /// The number is negative.
    Negative,
    /// The string is not `<number><suffix>`.
    Syntax,
    /// The suffix is not one of Ki Mi Gi Ti Pi Ei, m k M G T P E, or an exponent.
    UnknownSuffix,
    /// The value has a fraction of a byte (like `0.5` or `1.1k`).
    NotWholeBytes,
    /// The value does not fit in 64 bits.
    Overflow,
}

impl fmt::Display for QuantityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "it is empty",
            Self::Negative => "it is negative",
            Self::Syntax => "expected a number followed by an optional suffix, like 64Mi or 1G",
            Self::UnknownSuffix => {
                "unknown suffix (use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, or an exponent like e6)"
            }
            Self::NotWholeBytes => "it is not a whole number of bytes",
            Self::Overflow => "it is too large",
        })
    }
}
