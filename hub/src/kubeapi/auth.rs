//! Who may use the per-account Kubernetes API: bearer tokens from a file, each allowed
//! every account (`*`) or a list of them, re-read when the file changes.
//!
//! The file has one token per line, then whitespace, then the accounts:
//!
//! ```text
//! # token                             accounts
//! 3f9c0a...clouddriver-token          *
//! 77b1e2...team-a-token               team-a-prod,team-a-staging
//! ```
//!
//! The JSON API's `--api-token-file` has the same format, or (as before per-account
//! tokens) one token alone, which may use every account.
//!
//! Tokens are compared in constant time. A request with no token, or one that is not in
//! the file, gets 401; a token used for an account it is not allowed gets 403 (whether
//! or not the account exists, so a token cannot probe for the names of others).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::core::registry::validate_name;
use crate::net::reload::{Reload, Reloaded};

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// Which accounts a token may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every account.
    All,
    /// Only these.
    Accounts(Vec<String>),
}

impl Scope {
    /// True when `account` is in the scope.
    pub fn allows(&self, account: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Accounts(names) => names.iter().any(|n| n == account),
        }
    }
}

/// One token and what it may use.
#[derive(Clone)]
struct Entry {
    token: Vec<u8>,
    scope: Scope,
    /// Its line in the file: names it in logs without showing it.
    line: usize,
}

/// Parses a tokens file.
pub fn parse(text: &str) -> Result<Vec<(String, Scope)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let mut fields = line.split_whitespace();
        let (Some(token), Some(accounts), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!(
                "line {n}: expected `<token> <accounts>` (accounts: `*` or names separated by commas)"
            ));
        };
        if token.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "line {n}: the token is shorter than {MIN_TOKEN_LEN} characters"
            ));
        }
        let scope = if accounts == "*" {
            Scope::All
        } else {
            let names: Vec<String> = accounts
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            if names.is_empty() {
                return Err(format!("line {n}: no account named"));
            }
            for name in &names {
                validate_name(name).map_err(|e| format!("line {n}: {e}"))?;
            }
            Scope::Accounts(names)
        };
        if out.iter().any(|(t, _): &(String, Scope)| t == token) {
            return Err(format!("line {n}: the same token is listed twice"));
        }
        out.push((token.to_owned(), scope));
    }
    if out.is_empty() {
        return Err("no token in the file".into());
    }
    Ok(out)
}

/// The tokens of the Kubernetes API, from a file that is re-read when it changes.
pub struct Tokens {
    file: Arc<Reloaded<Arc<Vec<Entry>>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, or an unknown one: 401.
    Unauthenticated,
    /// A known token, not allowed this account: 403.
    NotAllowed,
}

fn entries(text: &str) -> Result<Vec<Entry>, String> {
    Ok(parse(text)?
        .into_iter()
        .enumerate()
        .map(|(i, (token, scope))| Entry {
            token: token.into_bytes(),
            scope,
            line: i + 1,
        })
        .collect())
}

fn read(path: &Path) -> Result<Arc<Vec<Entry>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    entries(&text).map(Arc::new)
}

/// The JSON API's file: one token alone may use every account (the file's format before
/// per-account tokens); otherwise lines as in the Kubernetes API's file.
fn api_entries(text: &str) -> Result<Vec<Entry>, String> {
    let alone = text.trim();
    if !alone.is_empty() && !alone.starts_with('#') && !alone.contains(char::is_whitespace) {
        return Ok(vec![Entry {
            token: alone.as_bytes().to_vec(),
            scope: Scope::All,
            line: 1,
        }]);
    }
    entries(text)
}

fn read_api(path: &Path) -> Result<Arc<Vec<Entry>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    api_entries(&text).map(Arc::new)
}

/// True when `next` lets in other tokens or other accounts than `current`
/// (a moved line alone is no change).
fn differs(current: &Arc<Vec<Entry>>, next: &Arc<Vec<Entry>>) -> bool {
    current.len() != next.len()
        || current
            .iter()
            .zip(next.iter())
            .any(|(a, b)| a.token != b.token || a.scope != b.scope)
}

/// The bearer token of a request, if it has one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

impl Tokens {
    /// Tokens given as text (tests, and tools that embed the hub).
    pub fn from_text(text: &str) -> Result<Arc<Tokens>, String> {
        Ok(Arc::new(Tokens {
            file: Arc::new(Reloaded::fixed(Arc::new(entries(text)?))),
        }))
    }

    /// Reads the Kubernetes API's file, and checks it every `interval` for changes. A
    /// file that becomes unreadable or invalid keeps the tokens loaded before (logged
    /// once).
    pub fn watch(
        path: &Path,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Tokens>, crate::Error> {
        Tokens::watch_with(path, interval, shutdown, read, "Kubernetes API tokens file")
    }

    /// Reads the JSON API's file (`--api-token-file`: one token for every account, or
    /// lines as in the Kubernetes API's file), as [`Tokens::watch`] does.
    pub fn watch_api(
        path: &Path,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<Tokens>, crate::Error> {
        Tokens::watch_with(path, interval, shutdown, read_api, "HTTP API token file")
    }

    fn watch_with(
        path: &Path,
        interval: Duration,
        shutdown: CancellationToken,
        read: fn(&Path) -> Result<Arc<Vec<Entry>>, String>,
        what: &'static str,
    ) -> Result<Arc<Tokens>, crate::Error> {
        let file = Reloaded::watch(
            path,
            interval,
            shutdown,
            read,
            differs,
            move |path, reload| match reload {
                Reload::Changed(tokens) => {
                    info!(path = %path.display(), tokens = tokens.len(), "{what} changed; the new tokens are in use");
                }
                Reload::Failed(err) => {
                    warn!(path = %path.display(), %err, "cannot read the {what}; the tokens loaded before stay in use");
                }
            },
        )
        .map_err(|message| crate::Error::ApiToken {
            path: path.to_owned(),
            message,
        })?;
        Ok(Arc::new(Tokens { file }))
    }

    fn snapshot(&self) -> Arc<Vec<Entry>> {
        Arc::clone(&self.file.current())
    }

    /// Lets a request in for `account`, or says why not. Returns the token's line in
    /// the file, to name the caller in logs.
    pub fn check(&self, headers: &HeaderMap, account: &str) -> Result<usize, Refusal> {
        let (line, scope) = self.scope(headers)?;
        if scope.allows(account) {
            Ok(line)
        } else {
            Err(Refusal::NotAllowed)
        }
    }

    /// The accounts a request's token may use, and the token's line in the file; or
    /// [`Refusal::Unauthenticated`].
    pub fn scope(&self, headers: &HeaderMap) -> Result<(usize, Scope), Refusal> {
        let presented = bearer(headers).ok_or(Refusal::Unauthenticated)?;
        let entries = self.snapshot();
        // Compare against every token, so the time taken says nothing about which
        // one (if any) came close.
        let mut found: Option<&Entry> = None;
        for entry in entries.iter() {
            if bool::from(entry.token.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(Refusal::Unauthenticated)?;
        Ok((entry.line, entry.scope.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &str = "0123456789abcdef-all";
    const TEAM: &str = "0123456789abcdef-team";

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(
                http::header::AUTHORIZATION,
                a.parse().expect("a header value"),
            );
        }
        h
    }

    #[test]
    fn the_file_names_tokens_and_their_accounts() {
        let parsed = parse(&format!(
            "# comment\n\n{ALL} *\n  {TEAM}\tteam-a,team-b  \n"
        ))
        .expect("valid");
        assert_eq!(
            parsed,
            vec![
                (ALL.to_owned(), Scope::All),
                (
                    TEAM.to_owned(),
                    Scope::Accounts(vec!["team-a".into(), "team-b".into()])
                ),
            ]
        );
        for bad in [
            "",
            "# only a comment",
            "short *",
            ALL,
            &format!("{ALL} a b"),
            &format!("{ALL} bad/name"),
            &format!("{ALL} ,"),
            &format!("{ALL} *\n{ALL} a"),
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn tokens_let_in_only_their_accounts() {
        let tokens = Tokens::from_text(&format!("{ALL} *\n{TEAM} team-a\n")).expect("valid");
        let all = format!("Bearer {ALL}");
        let team = format!("bearer {TEAM}");
        assert_eq!(tokens.check(&headers(Some(&all)), "anything"), Ok(1));
        assert_eq!(tokens.check(&headers(Some(&team)), "team-a"), Ok(2));
        assert_eq!(
            tokens.check(&headers(Some(&team)), "team-b"),
            Err(Refusal::NotAllowed)
        );
        for bad in [
            None,
            Some("Bearer"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer 0123456789abcdef-al"),
            Some("Bearer 0123456789abcdef-all-and-more"),
        ] {
            assert_eq!(
                tokens.check(&headers(bad), "team-a"),
                Err(Refusal::Unauthenticated),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_json_api_file_may_hold_one_token_for_every_account() {
        let one = api_entries("  short-but-old\n").expect("one token");
        assert_eq!((one.len(), &one[0].scope), (1, &Scope::All));
        let lines = api_entries(&format!("{ALL} *\n{TEAM} team-a\n")).expect("lines");
        assert_eq!(lines[1].scope, Scope::Accounts(vec!["team-a".into()]));
        for bad in ["", "# only a comment", "short team-a"] {
            assert!(api_entries(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
