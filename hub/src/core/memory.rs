//! The bytes the hub holds for callers' requests (request bodies on their way to an
//! agent, list answers not yet sent), bounded per token and in total, so that many
//! large bodies at once, or large lists a client leaves unread, cannot grow the hub's
//! memory without end: past a bound the request is refused (429) and nothing else is
//! affected.
//!
//! Pure bookkeeping: [`Memory::take`] counts bytes in for a token (or says which bound
//! they would cross), the [`Held`] it returns gives them back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Bytes held at most for one token's requests.
    pub per_token: usize,
    /// Bytes held at most for every token together.
    pub total: usize,
}

impl Default for Bounds {
    /// 128 MiB per token, 512 MiB in total.
    fn default() -> Bounds {
        Bounds {
            per_token: 128 << 20,
            total: 512 << 20,
        }
    }
}

/// Which bound a request would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Over {
    /// The token's.
    #[error(
        "the hub already holds {held} bytes of this token's request bodies and unread answers, of {bound} it may; read the answers or wait for the requests to end, then retry"
    )]
    Token {
        /// What the token holds.
        held: usize,
        /// Its bound.
        bound: usize,
    },
    /// Everybody's.
    #[error(
        "the hub already holds {bound} bytes of request bodies and unread answers, the most it holds for all callers; retry later"
    )]
    Total {
        /// The bound.
        bound: usize,
    },
}

#[derive(Debug, Default)]
struct Counts {
    tokens: HashMap<usize, usize>,
    total: usize,
}

/// The bytes held, per token and in total.
#[derive(Debug, Default)]
pub struct Memory {
    bounds: Bounds,
    counts: Mutex<Counts>,
}

impl Memory {
    /// Nothing held yet, within `bounds`.
    pub fn new(bounds: Bounds) -> Memory {
        Memory {
            bounds,
            counts: Mutex::default(),
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Plain counters changed in whole steps.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `bytes` more for `token`, unless a bound would be crossed.
    fn add(&self, token: usize, bytes: usize) -> Result<(), Over> {
        let mut counts = self.counts();
        let held = counts.tokens.get(&token).copied().unwrap_or(0);
        if held.saturating_add(bytes) > self.bounds.per_token {
            return Err(Over::Token {
                held,
                bound: self.bounds.per_token,
            });
        }
        if counts.total.saturating_add(bytes) > self.bounds.total {
            return Err(Over::Total {
                bound: self.bounds.total,
            });
        }
        counts.total += bytes;
        *counts.tokens.entry(token).or_default() += bytes;
        Ok(())
    }

    fn remove(&self, token: usize, bytes: usize) {
        let mut counts = self.counts();
        counts.total = counts.total.saturating_sub(bytes);
        if let Some(n) = counts.tokens.get_mut(&token) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                counts.tokens.remove(&token);
            }
        }
    }

    /// Holds `bytes` for `token` (0 to start a hold that grows), unless a bound would
    /// be crossed.
    pub fn take(self: &Arc<Memory>, token: usize, bytes: usize) -> Result<Held, Over> {
        self.add(token, bytes)?;
        Ok(Held {
            memory: Arc::clone(self),
            token,
            bytes,
        })
    }

    /// Bytes held now for every token.
    pub fn total(&self) -> usize {
        self.counts().total
    }
}

/// Bytes held for one request; given back when dropped.
#[derive(Debug)]
pub struct Held {
    memory: Arc<Memory>,
    token: usize,
    bytes: usize,
}

impl Held {
    /// `more` bytes for the same request, unless a bound would be crossed.
    pub fn grow(&mut self, more: usize) -> Result<(), Over> {
        self.memory.add(self.token, more)?;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.remove(self.token, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_bounded_per_token_and_in_total_and_given_back() {
        let memory = Arc::new(Memory::new(Bounds {
            per_token: 10,
            total: 15,
        }));
        let mut a = memory.take(1, 6).expect("within bounds");
        assert_eq!(a.grow(5).err(), Some(Over::Token { held: 6, bound: 10 }));
        a.grow(4).expect("up to the token's bound");
        let b = memory.take(2, 5).expect("another token");
        assert_eq!(memory.take(3, 1).err(), Some(Over::Total { bound: 15 }));
        drop(a);
        assert_eq!(memory.total(), 5);
        let _c = memory.take(3, 10).expect("given back");
        drop(b);
        assert_eq!(memory.total(), 10);
    }
}
