//! Which replica holds which account: rendezvous (highest-random-weight) hashing of
//! account names over the live replicas. Every replica computes the same answer from the
//! same membership, with no write per account, and a membership change moves only the
//! accounts whose winner changed.

/// FNV-1a, 64 bit: stable across builds and platforms, unlike `std`'s hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Final avalanche (splitmix64) so similar names spread evenly.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The member that holds `account` among `members` (None when there are none).
pub fn owner<'a>(account: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (fnv1a(&[account.as_bytes(), m.as_bytes()]), m.as_str()))
        .map(String::as_str)
}

/// Whether `me` holds `account` among `members`. A replica that is not (yet) among the
/// members holds nothing.
pub fn holds(account: &str, me: &str, members: &[String]) -> bool {
    owner(account, members) == Some(me)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("agent-{i}")).collect()
    }

    #[test]
    fn spreads_accounts_over_members() {
        let m = members(3);
        let mut counts = [0usize; 3];
        for a in 0..300 {
            let o = owner(&format!("account-{a}"), &m).unwrap_or_default();
            let i = m.iter().position(|x| x == o).unwrap_or(0);
            counts[i] += 1;
        }
        for c in counts {
            assert!((60..=140).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn nobody_holds_without_members() {
        assert_eq!(owner("a", &[]), None);
        assert!(!holds("a", "me", &[]));
    }

    proptest! {
        /// Removing a member moves only the accounts it held; adding one moves accounts
        /// only to the new member.
        #[test]
        fn membership_change_moves_only_what_it_must(
            accounts in proptest::collection::btree_set("[a-z]{1,12}", 1..50),
            n in 2usize..6,
            gone in 0usize..6,
        ) {
            let all = members(n);
            let gone = gone % n;
            let fewer: Vec<String> = all.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, m)| m.clone()).collect();
            for a in &accounts {
                let before = owner(a, &all);
                let after = owner(a, &fewer);
                if before != Some(all[gone].as_str()) {
                    prop_assert_eq!(before, after);
                }
                // And back: adding the member again moves accounts only to it.
                let again = owner(a, &all);
                prop_assert!(again == after || again == Some(all[gone].as_str()));
            }
        }

        /// Member order does not matter: every replica computes the same answer.
        #[test]
        fn order_independent(accounts in proptest::collection::vec("[a-z0-9-]{1,20}", 1..20), n in 1usize..6) {
            let m = members(n);
            let mut rev = m.clone();
            rev.reverse();
            for a in &accounts {
                prop_assert_eq!(owner(a, &m), owner(a, &rev));
            }
        }
    }
}
