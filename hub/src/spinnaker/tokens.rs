//! Per-account bearer tokens the hub mints for the kubeconfigs it pushes to Clouddriver,
//! and checks when they come back to the Kubernetes API.
//!
//! A token is `sa1.<account>.<generation>.<mac>`: the MAC is HMAC-SHA256 under the hub's
//! key (`--clouddriver-token-key-file`, the same file on every replica) over the account
//! and the generation (the time divided by the rotation period). A token is accepted in
//! its own generation and the next one, so it lives one to two rotation periods; the
//! hub pushes the next generation's token when the period turns. Nothing is stored: any
//! replica with the key checks any replica's token. A valid token names its account, so
//! one used for another account is told 403, as a tokens-file token is.

use std::time::{Duration, SystemTime};

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2_011::Sha256;

/// The prefix every minted token starts with.
const PREFIX: &str = "sa1.";

/// Mints and checks per-account tokens.
pub struct Minter {
    key: Vec<u8>,
    rotation: Duration,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

/// What a presented token is, for an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not a minted token (perhaps one of the tokens file).
    NotMinted,
    /// Minted, valid and for this account.
    Allowed,
    /// Minted and valid, for another account.
    OtherAccount,
    /// Minted by no key of this hub, or expired.
    Invalid,
}

/// The smallest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

impl Minter {
    /// A minter with `key` (at least [`MIN_KEY_LEN`] bytes) whose tokens turn every
    /// `rotation`.
    pub fn new(key: Vec<u8>, rotation: Duration) -> Result<Minter, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the token key is {} bytes; it needs at least {MIN_KEY_LEN}",
                key.len()
            ));
        }
        if rotation < Duration::from_secs(60) {
            return Err("the token rotation period must be at least a minute".into());
        }
        Ok(Minter { key, rotation })
    }

    /// A minter with a random key (one hub: its tokens die with it).
    pub fn random(rotation: Duration) -> Result<Minter, String> {
        let key: [u8; 32] = rand::random();
        Minter::new(key.to_vec(), rotation)
    }

    /// The generation at `now`.
    pub fn generation(&self, now: SystemTime) -> u64 {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        secs / self.rotation.as_secs().max(1)
    }

    fn mac(&self, account: &str, generation: u64) -> Hmac<Sha256> {
        // The key was checked to be non-empty, which is all HMAC asks.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(account.as_bytes());
        mac.update(&[0]);
        mac.update(&generation.to_be_bytes());
        mac
    }

    /// The token of `account` at `now`.
    pub fn token(&self, account: &str, now: SystemTime) -> String {
        let generation = self.generation(now);
        let tag = self.mac(account, generation).finalize().into_bytes();
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        format!("{PREFIX}{account}.{generation}.{hex}")
    }

    /// Checks `presented` for `account` at `now` (the MAC compared in constant time).
    pub fn check(&self, presented: &str, account: &str, now: SystemTime) -> Check {
        let Some(rest) = presented.strip_prefix(PREFIX) else {
            return Check::NotMinted;
        };
        let mut parts = rest.rsplitn(3, '.');
        let (Some(hex), Some(generation), Some(named)) = (parts.next(), parts.next(), parts.next())
        else {
            return Check::Invalid;
        };
        let Ok(generation) = generation.parse::<u64>() else {
            return Check::Invalid;
        };
        let current = self.generation(now);
        if generation > current || current - generation > 1 {
            return Check::Invalid;
        }
        let Some(tag) = decode_hex(hex) else {
            return Check::Invalid;
        };
        if self.mac(named, generation).verify_slice(&tag).is_err() {
            return Check::Invalid;
        }
        if named == account {
            Check::Allowed
        } else {
            Check::OtherAccount
        }
    }

    /// True when `presented` is a token this hub minted, unexpired, for any account.
    pub fn is_valid(&self, presented: &str, now: SystemTime) -> bool {
        matches!(
            self.check(presented, "", now),
            Check::Allowed | Check::OtherAccount
        )
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn minter() -> Minter {
        Minter::new(vec![7; 32], DAY).expect("a valid key")
    }

    #[test]
    fn a_token_lets_in_its_account_only_and_only_for_two_periods() {
        let m = minter();
        let t0 = SystemTime::UNIX_EPOCH + DAY * 100;
        let token = m.token("east", t0);
        assert_eq!(m.check(&token, "east", t0), Check::Allowed);
        assert_eq!(m.check(&token, "west", t0), Check::OtherAccount);
        assert_eq!(m.check(&token, "east", t0 + DAY), Check::Allowed);
        assert_eq!(m.check(&token, "east", t0 + DAY * 2), Check::Invalid);
        assert_eq!(m.check(&token, "east", t0 - DAY), Check::Invalid);
        // Another key, a changed account, generation or MAC: invalid.
        let other = Minter::new(vec![8; 32], DAY).expect("a valid key");
        assert_eq!(other.check(&token, "east", t0), Check::Invalid);
        let forged = token.replacen("east", "west", 1);
        assert_eq!(m.check(&forged, "west", t0), Check::Invalid);
        let later = token.replacen(".100.", ".101.", 1);
        assert_eq!(m.check(&later, "east", t0 + DAY), Check::Invalid);
        let mut flipped = token.clone();
        let last = flipped.pop().expect("a character");
        flipped.push(if last == '0' { '1' } else { '0' });
        assert_eq!(m.check(&flipped, "east", t0), Check::Invalid);
        assert_eq!(
            m.check("a-file-token-0123456789", "east", t0),
            Check::NotMinted
        );
        assert_eq!(m.check("sa1.east", "east", t0), Check::Invalid);
    }

    #[test]
    fn a_short_key_or_period_is_refused() {
        assert!(Minter::new(vec![1; 31], DAY).is_err());
        assert!(Minter::new(vec![1; 32], Duration::from_secs(59)).is_err());
    }
}
