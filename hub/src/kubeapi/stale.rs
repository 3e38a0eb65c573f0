//! Reads while an account's agent is away (within the grace period): what the cache
//! can answer is answered from the account's last known state, with a `Warning: 299`
//! header saying since when that state is not followed (kubectl prints it; client-go
//! logs it); writes and reads only the cluster can answer get `503` at once. The hub's
//! `--kube-api-no-stale-reads` turns this off.

use std::time::SystemTime;

use http::HeaderValue;
use k8s_openapi::jiff::Timestamp;

/// The `Warning` of an answer from the cache of `account`, not followed since `since`.
pub fn warning(account: &str, since: SystemTime) -> HeaderValue {
    let when = Timestamp::try_from(since)
        .ok()
        .and_then(|t| Timestamp::from_second(t.as_second()).ok())
        .map_or_else(|| "an unknown time".to_owned(), |t| t.to_string());
    // Header-safe and quote-safe: an account name is a DNS label, anything else is
    // shown as '?'.
    let name: String = account
        .chars()
        .take(253)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '?'
            }
        })
        .collect();
    let text = format!(
        "299 - \"account {name} is disconnected: this answer is the hub's last known state of the cluster, not followed since {when}\""
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "299 - \"the account is disconnected: this answer is the hub's last known state of the cluster\"",
        )
    })
}

/// True when the hub answers `account`'s cached reads from a state it no longer
/// follows: the account is away and stale reads are on.
pub fn serving(stale_reads: bool, connected: bool, cached: bool) -> bool {
    stale_reads && !connected && cached
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_warning_says_since_when_in_the_api_servers_form() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_554_800_250);
        let w = warning("prod-east-1", since);
        assert_eq!(
            w.to_str().expect("ascii"),
            "299 - \"account prod-east-1 is disconnected: this answer is the hub's last known state of the cluster, not followed since 2026-12-06T11:00:00Z\""
        );
        let odd = warning("a\"b\nc", since);
        assert!(
            odd.to_str()
                .expect("ascii")
                .starts_with("299 - \"account a?b?c is")
        );
    }

    #[test]
    fn only_an_away_account_with_a_cache_serves_stale_reads() {
        assert!(serving(true, false, true));
        assert!(!serving(false, false, true));
        assert!(!serving(true, true, true));
        assert!(!serving(true, false, false));
    }
}
