//! Pages of the HTTP API's lists (`GET /v1/accounts`, the object lists): at
//! most `limit` items per answer (default [`DEFAULT_LIMIT`], at most
//! [`MAX_LIMIT`]), and when more remain, a token in the [`CONTINUE_HEADER`]
//! response header that the next request passes as `continue` to get the
//! items after them. Lists are in a fixed order (by name; objects by group,
//! kind, namespace, name), so a token stays meaningful while the list
//! changes: items added or removed behind the token are seen or missed, as
//! with a Kubernetes list's `continue`.

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Items per page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 500;

/// The largest `limit` a request may ask for.
pub const MAX_LIMIT: usize = 5_000;

/// The response header holding the token of the next page; absent on the
/// last page.
pub const CONTINUE_HEADER: &str = "x-continue";

/// The paging part of a list request's query (text, parsed by
/// [`PageQuery::limit`], so that it can be flattened into other queries).
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// Items per page.
    pub limit: Option<String>,
    /// The token of the page to answer.
    #[serde(rename = "continue")]
    pub continue_token: Option<String>,
}

impl PageQuery {
    /// The page size asked for; an error for 0 or more than [`MAX_LIMIT`].
    pub fn limit(&self) -> Result<usize, String> {
        let Some(text) = self.limit.as_deref().filter(|t| !t.is_empty()) else {
            return Ok(DEFAULT_LIMIT);
        };
        match text.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(format!(
                "limit {:?}: must be a number between 1 and {MAX_LIMIT}",
                crate::core::clip::clip(text).to_string()
            )),
        }
    }

    /// The key the page starts after, decoded from the token; `None` for the
    /// first page.
    pub fn after<K: DeserializeOwned>(&self) -> Result<Option<K>, String> {
        match self.continue_token.as_deref().filter(|t| !t.is_empty()) {
            None => Ok(None),
            Some(token) => decode(token).map(Some),
        }
    }
}

/// The token of the page that starts after `key`: the key as JSON, in hex
/// (URL-safe as is).
pub fn encode<K: serde::Serialize>(key: &K) -> String {
    let json = serde_json::to_vec(key).unwrap_or_default();
    json.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode<K: DeserializeOwned>(token: &str) -> Result<K, String> {
    let invalid = || "the continue token is not one this hub gave out".to_owned();
    if !token.len().is_multiple_of(2) || token.len() > 4 * 1024 {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| invalid())?;
    serde_json::from_slice(&bytes).map_err(|_| invalid())
}

/// The first `limit` items of `items` (already past the token's key), and
/// the token of the next page when more remain.
pub fn take<K: serde::Serialize, T>(
    items: impl Iterator<Item = (K, T)>,
    limit: usize,
) -> (Vec<T>, Option<String>) {
    let mut page = Vec::with_capacity(limit.min(64));
    let mut last = None;
    for (key, item) in items {
        if page.len() == limit {
            return (page, last.as_ref().map(encode));
        }
        page.push(item);
        last = Some(key);
    }
    (page, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_with_a_token_until_the_last() {
        let items = || (1..=5).map(|i| (i, i * 10));
        let (first, token) = take(items(), 2);
        assert_eq!(first, [10, 20]);
        let token = token.expect("more remain");
        let query = PageQuery {
            limit: Some("2".into()),
            continue_token: Some(token),
        };
        let after: i32 = query.after().expect("a token").expect("a key");
        assert_eq!(after, 2);
        let (last, token) = take(items().filter(|(k, _)| *k > 3), 2);
        assert_eq!((last, token), (vec![40, 50], None));
        let (exact, token) = take(items(), 5);
        assert_eq!((exact.len(), token), (5, None));
    }

    #[test]
    fn limits_and_tokens_are_checked() {
        let q = |limit: Option<&str>| PageQuery {
            limit: limit.map(str::to_owned),
            continue_token: None,
        };
        assert_eq!(q(None).limit(), Ok(DEFAULT_LIMIT));
        assert_eq!(q(Some("7")).limit(), Ok(7));
        assert!(q(Some("0")).limit().is_err());
        assert!(q(Some("-1")).limit().is_err());
        assert!(q(Some("5001")).limit().is_err());
        for bad in ["zz", "abc", "7b", &"00".repeat(4000)] {
            let query = PageQuery {
                limit: None,
                continue_token: Some(bad.into()),
            };
            assert!(query.after::<String>().is_err(), "{bad}");
        }
        let key = (
            "apps".to_owned(),
            "Deployment".to_owned(),
            "web".to_owned(),
            "a b/c".to_owned(),
        );
        let query = PageQuery {
            limit: None,
            continue_token: Some(encode(&key)),
        };
        assert_eq!(query.after(), Ok(Some(key)));
    }
}
