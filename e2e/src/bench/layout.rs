//! Where the benchmarks' objects live. The seeded namespaces `obj-0`, `obj-1`, ... hold
//! the same number of ConfigMaps each and are spread over the target API servers in
//! turn (`obj-i` on cluster `i mod clusters`), so that several scenarios share one seeding:
//! `agent_memory_scaling` gives account `i` namespace `obj-i`; `initial_sync` gives each
//! account several namespaces, all on the account's own cluster.

/// The seeded namespace with index `i`.
pub fn seeded(i: usize) -> String {
    format!("obj-{i}")
}

/// The cluster (index into the target clusters) that holds seeded namespace `i`.
pub fn cluster_of(i: usize, clusters: usize) -> usize {
    i % clusters.max(1)
}

/// For `initial_sync`: the seeded namespace indices of each of `accounts` accounts,
/// `per_account` each. Account `j` is on cluster `j mod clusters` and takes the next
/// unused namespaces of that cluster.
pub fn sync_namespaces(accounts: usize, per_account: usize, clusters: usize) -> Vec<Vec<usize>> {
    let c = clusters.max(1);
    (0..accounts)
        .map(|j| {
            let cluster = j % c;
            let nth = j / c;
            (0..per_account)
                .map(|k| cluster + c * (nth * per_account + k))
                .collect()
        })
        .collect()
}

/// How many seeded namespaces `initial_sync` needs.
pub fn sync_namespaces_needed(accounts: usize, per_account: usize, clusters: usize) -> usize {
    sync_namespaces(accounts, per_account, clusters)
        .iter()
        .flatten()
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_sync_account_stays_on_its_own_cluster_and_namespaces_are_not_shared() {
        let layout = sync_namespaces(50, 7, 3);
        let mut seen = BTreeSet::new();
        for (j, namespaces) in layout.iter().enumerate() {
            assert_eq!(namespaces.len(), 7);
            for &i in namespaces {
                assert_eq!(cluster_of(i, 3), j % 3, "account {j} namespace {i}");
                assert!(seen.insert(i), "namespace {i} given twice");
            }
        }
        // Clusters 0 and 1 get 17 accounts each, 119 namespaces: cluster 1's last is
        // obj-355 (1 + 3 × 118).
        assert_eq!(sync_namespaces_needed(50, 7, 3), 356);
        assert_eq!(sync_namespaces_needed(0, 7, 3), 0);
    }

    #[test]
    fn one_cluster_takes_namespaces_in_order() {
        assert_eq!(sync_namespaces(2, 2, 1), vec![vec![0, 1], vec![2, 3]]);
        assert_eq!(seeded(4), "obj-4");
    }
}
