//! Accounts by host name: with `--kube-api-host-suffix hub.example.com`, account `prod`
//! is also served at `https://prod.hub.example.com/`, its API at the root, for clients
//! that drop a server URL's path (`kubectl get --raw /api`, some SDKs).
//!
//! Which account a request is for (pure, [`select`]): a path under `/accounts/<account>/`
//! names its account whatever the host (the hub's own kubeconfigs and the hop between
//! replicas use it); any other path is for the account the `Host` (HTTP/2
//! `:authority`) names, or else the one the TLS server name (SNI) names. A host and a
//! server name naming two different accounts is a misdirected request (421: a client
//! that reused a connection for another host name tries a new one). The host name only
//! selects the account: the request's token must still be allowed that account.
//!
//! Only accounts whose names are DNS labels (lowercase letters, digits and `-`, at most
//! 63, not starting or ending with `-`) have a host name; a host name is read without
//! regard to case.

/// Which account a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// By its path (`/accounts/<account>/...`), or by nothing (refused as the path).
    Path,
    /// By host name: the account, and the request's path is the cluster's path.
    Host(String),
    /// The host and the TLS server name name different accounts.
    Misdirected {
        /// The account the TLS server name names.
        server_name: String,
        /// The account the host names.
        host: String,
    },
}

/// Why a host suffix is not one.
pub fn check_suffix(suffix: &str) -> Result<String, String> {
    let suffix = suffix
        .trim_start_matches('.')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if suffix.is_empty() || suffix.len() > 200 {
        return Err(format!(
            "{suffix:?} is not a DNS name (1 to 200 characters)"
        ));
    }
    if let Some(bad) = suffix.split('.').find(|label| !is_label(label)) {
        return Err(format!(
            "{suffix:?} is not a DNS name: {bad:?} is not a label (lowercase letters, digits and -, at most 63, not starting or ending with -)"
        ));
    }
    Ok(suffix)
}

/// A DNS label as an account's host name must be: lowercase letters, digits and `-`, at
/// most 63, not starting or ending with `-`.
pub fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The account `host` (a host name, with or without a port) names under `suffix` (as
/// [`check_suffix`] returns it): `prod` for `prod.hub.example.com:8443`.
pub fn account_of(host: &str, suffix: &str) -> Option<String> {
    // An IPv6 literal (`[::1]:8443`) names no account.
    if host.starts_with('[') {
        return None;
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _port)| name);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label = name.strip_suffix(suffix)?.strip_suffix('.')?;
    is_label(label).then(|| label.to_owned())
}

/// Which account a request for `path` is for, from its `host` (the `Host` header or
/// HTTP/2 `:authority`) and the TLS `server_name` of its connection, when the hub
/// serves accounts under `suffix`.
pub fn select(
    suffix: Option<&str>,
    server_name: Option<&str>,
    host: Option<&str>,
    path: &str,
) -> Selected {
    let Some(suffix) = suffix else {
        return Selected::Path;
    };
    if path.starts_with(super::path::PREFIX) {
        return Selected::Path;
    }
    let by_host = host.and_then(|h| account_of(h, suffix));
    let by_server_name = server_name.and_then(|s| account_of(s, suffix));
    match (by_server_name, by_host) {
        (Some(server_name), Some(host)) if server_name != host => {
            Selected::Misdirected { server_name, host }
        }
        (_, Some(account)) | (Some(account), None) => Selected::Host(account),
        (None, None) => Selected::Path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUFFIX: Option<&str> = Some("hub.example.com");

    #[test]
    fn a_host_names_one_account_under_the_suffix() {
        let of = |h: &str| account_of(h, "hub.example.com");
        assert_eq!(of("prod.hub.example.com").as_deref(), Some("prod"));
        assert_eq!(of("Prod.Hub.Example.COM:8443").as_deref(), Some("prod"));
        assert_eq!(of("prod-2.hub.example.com.").as_deref(), Some("prod-2"));
        // Not under the suffix, the suffix itself, two labels, not a label.
        assert_eq!(of("prod.example.com"), None);
        assert_eq!(of("hub.example.com"), None);
        assert_eq!(of("a.b.hub.example.com"), None);
        assert_eq!(of("-a.hub.example.com"), None);
        assert_eq!(of("a_b.hub.example.com"), None);
        assert_eq!(of("xhub.example.com"), None);
        assert_eq!(of("127.0.0.1:8443"), None);
        assert_eq!(of("[::1]:8443"), None);
    }

    #[test]
    fn the_path_form_wins_then_the_host_then_the_server_name() {
        // The hub's path form, whatever the host.
        assert_eq!(
            select(
                SUFFIX,
                Some("a.hub.example.com"),
                Some("b.hub.example.com"),
                "/accounts/c/api"
            ),
            Selected::Path
        );
        assert_eq!(
            select(SUFFIX, None, Some("a.hub.example.com:443"), "/api"),
            Selected::Host("a".into())
        );
        // kubectl with `tls-server-name` and an address as its server.
        assert_eq!(
            select(
                SUFFIX,
                Some("a.hub.example.com"),
                Some("127.0.0.1:8443"),
                "/api"
            ),
            Selected::Host("a".into())
        );
        assert_eq!(
            select(
                SUFFIX,
                Some("a.hub.example.com"),
                Some("A.hub.example.com"),
                "/"
            ),
            Selected::Host("a".into())
        );
        assert_eq!(
            select(
                SUFFIX,
                Some("a.hub.example.com"),
                Some("b.hub.example.com"),
                "/api"
            ),
            Selected::Misdirected {
                server_name: "a".into(),
                host: "b".into()
            }
        );
        assert_eq!(
            select(
                SUFFIX,
                Some("hub.example.com"),
                Some("hub.example.com"),
                "/api"
            ),
            Selected::Path
        );
        // Without a suffix, only paths.
        assert_eq!(
            select(
                None,
                Some("a.hub.example.com"),
                Some("a.hub.example.com"),
                "/api"
            ),
            Selected::Path
        );
    }

    #[test]
    fn a_suffix_is_a_dns_name() {
        assert_eq!(
            check_suffix(".Hub.Example.com.").as_deref(),
            Ok("hub.example.com")
        );
        assert!(check_suffix("").is_err());
        assert!(check_suffix("hub..example.com").is_err());
        assert!(check_suffix("hub_x.example.com").is_err());
        assert!(check_suffix("*.example.com").is_err());
    }
}
