//! Fair shares of one agent session's Kubernetes API requests, in the spirit of the API
//! server's priority and fairness: the one place that decides whether a request the
//! hub carries to an agent may start now, or is answered 429 so that it does not take
//! what other accounts and other tokens of the same agent need.
//!
//! - A session carries at most [`Limits::in_flight`] requests (the agent answers 429
//!   past its own limit, `MAX_IN_FLIGHT` in `agent/src/proxy.rs`, the same number), of
//!   which at most [`Limits::long_running`] are long-running (watches, logs, exec,
//!   attach, port-forward and proxies, as the API server counts them): those may last
//!   for hours, so they never take the room short requests always have.
//! - Accounts: each account of the session is guaranteed an equal share of each class
//!   (the class's guaranteed room divided by the accounts the session holds). An
//!   account may borrow past its share only what the other accounts' unused shares do
//!   not need, so a busy account never leaves an idle one with nothing.
//! - Tokens: a token may hold fewer requests of a class on the session than are still
//!   free in it, i.e. it leaves at least half of what is free to other tokens; so a
//!   newcomer always finds room while anything is free.
//!
//! Pure bookkeeping: [`Load`] counts what each session holds, [`Load::admit`] decides
//! and counts, [`Load::release`] gives back.

use std::collections::HashMap;
use std::sync::Arc;

/// Which room a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Answered and done (gets, lists, writes).
    Short,
    /// May last as long as the client wants (watches, `logs -f`, exec, proxies).
    LongRunning,
}

impl Class {
    /// The API server's long-running check: a watch, or the `log`, `exec`, `attach`,
    /// `portforward` or `proxy` subresource.
    pub fn of(watch: bool, subresource: Option<&str>) -> Class {
        let long_subresource = subresource
            .is_some_and(|s| matches!(s, "log" | "exec" | "attach" | "portforward" | "proxy"));
        if watch || long_subresource {
            Class::LongRunning
        } else {
            Class::Short
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Class::Short => "short requests",
            Class::LongRunning => "long-running requests (watches, logs)",
        }
    }
}

/// Who a request is for: the account, the token (its line in the tokens file) and its
/// class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The account.
    pub account: Arc<str>,
    /// The token's line in the tokens file.
    pub token: usize,
    /// Short or long-running.
    pub class: Class,
}

/// How much one session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight at most, both classes together.
    pub in_flight: usize,
    /// Long-running requests at most; the rest is short requests' room.
    pub long_running: usize,
}

impl Default for Limits {
    /// 256 in flight (the agent's own limit), at most 128 of them long-running.
    fn default() -> Limits {
        Limits {
            in_flight: 256,
            long_running: 128,
        }
    }
}

/// Why a request may not start now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// The session carries all of a class it may.
    #[error("the account's agent carries {limit} {} at most, and carries that many now; retry later", .class.describe())]
    Full {
        /// The class.
        class: Class,
        /// Its room on the session.
        limit: usize,
    },
    /// The account holds its share and nothing is left to borrow.
    #[error("account {account:?} already has {held} {} in flight through its agent, its fair share (the other accounts of the same agent keep the rest); retry later", .class.describe())]
    Account {
        /// The account.
        account: Arc<str>,
        /// The class.
        class: Class,
        /// What it holds.
        held: usize,
    },
    /// The token holds as many as are still free.
    #[error("this token already has {held} {} in flight through this agent, as many as are still free (each token leaves at least half to others); retry later", .class.describe())]
    Token {
        /// The class.
        class: Class,
        /// What it holds.
        held: usize,
    },
}

/// What one class of one session holds.
#[derive(Debug, Default)]
struct Pool {
    total: usize,
    accounts: HashMap<Arc<str>, usize>,
    tokens: HashMap<usize, usize>,
}

impl Pool {
    /// Whether `flow` may take one more of `room` (the class's room now), given
    /// `guaranteed` (the class's room to share out) and `accounts` on the session.
    fn decide(
        &self,
        flow: &Flow,
        room: usize,
        guaranteed: usize,
        accounts: usize,
    ) -> Result<(), Busy> {
        let free = room.saturating_sub(self.total);
        if free == 0 {
            return Err(Busy::Full {
                class: flow.class,
                limit: room,
            });
        }
        let share = (guaranteed / accounts.max(1)).max(1);
        let held = self.accounts.get(&flow.account).copied().unwrap_or(0);
        if held >= share {
            // Borrowing: only what the other accounts' unused shares leave.
            let others = self.accounts.iter().filter(|(a, _)| **a != flow.account);
            let (holding, unused) = others.fold((0usize, 0usize), |(n, unused), (_, held)| {
                (n + 1, unused + share.saturating_sub(*held))
            });
            let idle = accounts.saturating_sub(1).saturating_sub(holding);
            let reserved = unused + idle * share;
            if free <= reserved {
                return Err(Busy::Account {
                    account: Arc::clone(&flow.account),
                    class: flow.class,
                    held,
                });
            }
        }
        let token = self.tokens.get(&flow.token).copied().unwrap_or(0);
        if token >= free {
            return Err(Busy::Token {
                class: flow.class,
                held: token,
            });
        }
        Ok(())
    }

    fn take(&mut self, flow: &Flow) {
        self.total += 1;
        *self.accounts.entry(Arc::clone(&flow.account)).or_default() += 1;
        *self.tokens.entry(flow.token).or_default() += 1;
    }

    fn give_back(&mut self, flow: &Flow) {
        self.total = self.total.saturating_sub(1);
        fn down<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
            if let Some(n) = map.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(key);
                }
            }
        }
        down(&mut self.accounts, &flow.account);
        down(&mut self.tokens, &flow.token);
    }
}

/// What one session carries now.
#[derive(Debug, Default)]
pub struct Load {
    short: Pool,
    long: Pool,
}

impl Load {
    /// Counts `flow` in when it may start now on a session holding `accounts`
    /// accounts; otherwise says why not (and counts nothing).
    pub fn admit(&mut self, flow: &Flow, accounts: usize, limits: Limits) -> Result<(), Busy> {
        let long_room = limits.long_running.min(limits.in_flight);
        match flow.class {
            Class::LongRunning => self.long.decide(flow, long_room, long_room, accounts)?,
            Class::Short => {
                let room = limits.in_flight.saturating_sub(self.long.total);
                let guaranteed = limits.in_flight.saturating_sub(long_room);
                self.short.decide(flow, room, guaranteed, accounts)?;
            }
        }
        self.pool(flow.class).take(flow);
        Ok(())
    }

    /// `flow` ended: its room is free again.
    pub fn release(&mut self, flow: &Flow) {
        self.pool(flow.class).give_back(flow);
    }

    /// Requests in flight, both classes.
    pub fn total(&self) -> usize {
        self.short.total + self.long.total
    }

    fn pool(&mut self, class: Class) -> &mut Pool {
        match class {
            Class::Short => &mut self.short,
            Class::LongRunning => &mut self.long,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(account: &str, token: usize, class: Class) -> Flow {
        Flow {
            account: Arc::from(account),
            token,
            class,
        }
    }

    /// Admits `flow` until refused; how many were admitted.
    fn fill(load: &mut Load, f: &Flow, accounts: usize, limits: Limits) -> usize {
        let mut n = 0;
        while load.admit(f, accounts, limits).is_ok() {
            n += 1;
            assert!(n <= limits.in_flight, "never more than the session carries");
        }
        n
    }

    #[test]
    fn long_running_requests_are_told_from_short_ones_as_the_api_server_does() {
        assert_eq!(Class::of(true, None), Class::LongRunning);
        for sub in ["log", "exec", "attach", "portforward", "proxy"] {
            assert_eq!(Class::of(false, Some(sub)), Class::LongRunning, "{sub}");
        }
        assert_eq!(Class::of(false, Some("status")), Class::Short);
        assert_eq!(Class::of(false, Some("scale")), Class::Short);
        assert_eq!(Class::of(false, None), Class::Short);
    }

    #[test]
    fn one_accounts_watches_leave_another_account_its_share_and_every_short_request() {
        let limits = Limits::default();
        let mut load = Load::default();
        // Account a's one token opens watches until refused: the token leaves half of
        // what is free.
        let a = flow("a", 0, Class::LongRunning);
        assert_eq!(fill(&mut load, &a, 2, limits), 64);
        // Another token of account a: a holds its share (half of 128 for two accounts)
        // and may borrow nothing that account b's share needs.
        let refused = load.admit(&flow("a", 1, Class::LongRunning), 2, limits);
        assert!(
            matches!(refused, Err(Busy::Account { held: 64, .. })),
            "{refused:?}"
        );
        // Account b still gets watches (its token leaves half of what is free) and
        // every short request it could.
        assert_eq!(
            fill(&mut load, &flow("b", 2, Class::LongRunning), 2, limits),
            32
        );
        assert_eq!(
            fill(&mut load, &flow("b", 3, Class::LongRunning), 2, limits),
            16
        );
        // Short requests: b's share of the short room, and what long-running ones
        // leave unused of theirs, until its token leaves half of what is free.
        assert_eq!(fill(&mut load, &flow("b", 2, Class::Short), 2, limits), 72);
        // Releasing gives the room back, to whoever is within the rules.
        load.release(&a);
        assert!(
            matches!(load.admit(&a, 2, limits), Err(Busy::Token { .. })),
            "a's token holds more than is free"
        );
        load.release(&flow("b", 2, Class::LongRunning));
        assert!(
            load.admit(&flow("b", 3, Class::LongRunning), 2, limits)
                .is_ok()
        );
    }

    #[test]
    fn an_account_alone_borrows_what_idle_accounts_do_not_need() {
        let limits = Limits::default();
        // Four accounts on the session: shares of 32 long-running requests each.
        let mut load = Load::default();
        let mut taken = 0;
        for token in 0..10 {
            taken += fill(&mut load, &flow("a", token, Class::LongRunning), 4, limits);
        }
        assert_eq!(
            taken, 32,
            "no borrowing while the three others keep their shares"
        );
        // With one account alone it has the whole room, token by token.
        let mut load = Load::default();
        let mut taken = 0;
        for token in 0..20 {
            taken += fill(&mut load, &flow("a", token, Class::LongRunning), 1, limits);
        }
        assert_eq!(taken, 128);
        // Short requests keep their room whatever long-running ones hold.
        let mut short = 0;
        for token in 0..20 {
            short += fill(&mut load, &flow("a", token, Class::Short), 1, limits);
        }
        assert_eq!(short, 128);
        assert_eq!(load.total(), 256);
        assert!(matches!(
            load.admit(&flow("a", 99, Class::Short), 1, limits),
            Err(Busy::Full { limit: 128, .. })
        ));
    }

    #[test]
    fn every_account_keeps_its_share_whatever_the_others_do_first() {
        let limits = Limits::default();
        let accounts = ["a", "b", "c", "d"];
        let mut load = Load::default();
        // Everybody greedy, with many tokens each, in turn.
        let mut held = [0usize; 4];
        for round in 0..50 {
            for (i, a) in accounts.iter().enumerate() {
                if load
                    .admit(&flow(a, i * 100 + round, Class::LongRunning), 4, limits)
                    .is_ok()
                {
                    held[i] += 1;
                }
            }
        }
        assert_eq!(held, [32; 4], "equal shares of 128");
        // A late account that did nothing yet still gets its guaranteed share when
        // the others took only theirs.
        let mut load = Load::default();
        for (i, a) in accounts[..3].iter().enumerate() {
            for t in 0..40 {
                let _ = load.admit(&flow(a, i * 100 + t, Class::LongRunning), 4, limits);
            }
        }
        let mut late = 0;
        for t in 0..40 {
            late += usize::from(
                load.admit(&flow("d", 900 + t, Class::LongRunning), 4, limits)
                    .is_ok(),
            );
        }
        assert_eq!(late, 32);
    }
}
