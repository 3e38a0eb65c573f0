//! The agent's config file and kubeconfig files, as mounted from the shard's ConfigMap and
//! Secret, reloaded when they change (the kubelet swaps them atomically; polling the
//! content is simpler and more robust than following its symlink dance with inotify).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use scale_agent_crds::{AccountConfig, AgentConfig, BudgetConfig, HubConfig, ShardRef};
use tokio::sync::watch;

use crate::{Error, Result};

/// One account as the agent should run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDesired {
    /// The account's settings from the config file.
    pub config: AccountConfig,
    /// The kubeconfig file's text and the context to use, or why it cannot be used:
    /// unreadable, without a context to use, or asking for something the operator does
    /// not allow (running a program, reading the agent's files, a plain-HTTP or local
    /// server...; see [`scale_agent_crds::check_kubeconfig`]).
    pub kubeconfig: Result<UsableKubeconfig, String>,
}

/// A kubeconfig that passed [`scale_agent_crds::check_kubeconfig`] (empty for an
/// in-cluster account).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsableKubeconfig {
    /// The file's text.
    pub text: String,
    /// The context the check chose (the account's, else current-context, else the only
    /// one): the agent connects with this one.
    pub context: String,
}

/// Everything the files say, at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The shard this agent serves.
    pub shard: ShardRef,
    /// Where and how to reach the hub.
    pub hub: HubConfig,
    /// Memory budget.
    pub budget: BudgetConfig,
    /// Accounts by name.
    pub accounts: BTreeMap<String, AccountDesired>,
}

/// The bytes a load read: the config file's text and each account's kubeconfig file
/// (`None` when it could not be read). A reload that reads the same bytes again has
/// nothing to parse: parsing every kubeconfig every `--reload-interval` was most of an
/// idle agent's CPU at a hundred accounts (YAML, certificates and all).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    config: String,
    kubeconfigs: Vec<(PathBuf, Option<String>)>,
}

impl Inputs {
    /// True when the files still hold what was read: the config file first, then the
    /// kubeconfig files it named (the same ones, as the config is the same).
    fn unchanged(&self, config_path: &Path) -> bool {
        std::fs::read_to_string(config_path).is_ok_and(|text| text == self.config)
            && self
                .kubeconfigs
                .iter()
                .all(|(path, text)| std::fs::read_to_string(path).ok() == *text)
    }
}

/// Reads the config file and every account's kubeconfig file.
pub fn load(config_path: &Path, kubeconfig_dir: &Path) -> Result<Snapshot> {
    load_with_inputs(config_path, kubeconfig_dir).map(|(snapshot, _)| snapshot)
}

/// [`load`], and the bytes it read.
fn load_with_inputs(config_path: &Path, kubeconfig_dir: &Path) -> Result<(Snapshot, Inputs)> {
    let text = std::fs::read_to_string(config_path).map_err(|source| Error::Read {
        path: config_path.to_path_buf(),
        source,
    })?;
    let mut inputs = Inputs {
        config: text.clone(),
        kubeconfigs: Vec::new(),
    };
    let config = AgentConfig::from_yaml(&text).map_err(|source| Error::Config {
        path: config_path.to_path_buf(),
        source,
    })?;
    let accounts = config
        .accounts
        .iter()
        .map(|a| {
            let path = kubeconfig_dir.join(&a.kubeconfig_file);
            // Checked here, where the file is read, so that nothing else ever sees a
            // kubeconfig the operator does not allow: the Secret may have changed since
            // the operator checked it. An inCluster account has no kubeconfig.
            let kubeconfig = if a.in_cluster {
                Ok(UsableKubeconfig::default())
            } else {
                let read = std::fs::read_to_string(&path);
                inputs
                    .kubeconfigs
                    .push((path.clone(), read.as_ref().ok().cloned()));
                read.map_err(|e| format!("reading {}: {e}", path.display()))
                    .and_then(|text| {
                        match scale_agent_crds::check_kubeconfig(
                            text.as_bytes(),
                            a.scope.context.as_deref(),
                            &config.allow_kubeconfig,
                        ) {
                            Ok(target) => Ok(UsableKubeconfig {
                                text,
                                context: target.context,
                            }),
                            Err(why) => Err(format!("kubeconfig {}: {why}", a.kubeconfig_file)),
                        }
                    })
            };
            (
                a.name.clone(),
                AccountDesired {
                    config: a.clone(),
                    kubeconfig,
                },
            )
        })
        .collect();
    let snapshot = Snapshot {
        shard: config.shard,
        hub: config.hub,
        budget: config.budget,
        accounts,
    };
    Ok((snapshot, inputs))
}

/// Loads the files, then keeps reloading them every `interval`, publishing a new
/// snapshot only when something changed. A file that turns invalid keeps the last good
/// snapshot and logs why.
pub fn watch(
    config_path: PathBuf,
    kubeconfig_dir: PathBuf,
    interval: Duration,
) -> Result<watch::Receiver<Arc<Snapshot>>> {
    let (first, mut read) = load_with_inputs(&config_path, &kubeconfig_dir)?;
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut last_error = None;
        loop {
            tokio::time::sleep(interval).await;
            if last_error.is_none() && read.unchanged(&config_path) {
                continue;
            }
            match load_with_inputs(&config_path, &kubeconfig_dir) {
                Ok((next, inputs)) => {
                    last_error = None;
                    read = inputs;
                    let changed = **tx.borrow() != next;
                    if changed {
                        tracing::info!(accounts = next.accounts.len(), "config reloaded");
                        if tx.send(Arc::new(next)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    if last_error.as_ref() != Some(&msg) {
                        tracing::error!(error = %msg, "config reload failed; keeping the last good config");
                        last_error = Some(msg);
                    }
                }
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kc_text<'s>(snap: &'s Snapshot, account: &str) -> Result<&'s str, &'s str> {
        match &snap.accounts[account].kubeconfig {
            Ok(k) => Ok(k.text.as_str()),
            Err(e) => Err(e.as_str()),
        }
    }

    fn write_config(dir: &Path, accounts: &[&str]) -> PathBuf {
        let mut cfg = String::from(
            "shard: { namespace: ns, name: s }\nhub: { address: \"127.0.0.1:9090\" }\nbudget: { concurrentSyncs: 2, maxBufferedBytes: 1048576 }\naccounts:\n",
        );
        for a in accounts {
            cfg.push_str(&format!("- name: {a}\n  kubeconfigFile: {a}.kubeconfig\n"));
        }
        let path = dir.join("config.yaml");
        std::fs::write(&path, cfg).unwrap_or_default();
        path
    }

    /// Issue 20: the account's `context` chooses one of a kubeconfig's contexts, whatever
    /// its current-context says; an unknown one makes the account unusable, saying why.
    #[test]
    fn the_accounts_context_chooses_among_several() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = dir.path().join("kc");
        std::fs::create_dir_all(&kc).expect("mkdir");
        let two = "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: { server: 'https://192.0.2.1:1' }\n- name: b\n  cluster: { server: 'https://192.0.2.2:1' }\ncontexts:\n- name: ctx-a\n  context: { cluster: a }\n- name: ctx-b\n  context: { cluster: b }\ncurrent-context: ctx-a\n";
        for a in ["named", "current", "unknown"] {
            std::fs::write(kc.join(format!("{a}.kubeconfig")), two).expect("write");
        }
        let cfg = "shard: { namespace: ns, name: s }\nhub: { address: \"127.0.0.1:9090\" }\nbudget: { concurrentSyncs: 2, maxBufferedBytes: 1048576 }\naccounts:\n- name: named\n  kubeconfigFile: named.kubeconfig\n  context: ctx-b\n- name: current\n  kubeconfigFile: current.kubeconfig\n- name: unknown\n  kubeconfigFile: unknown.kubeconfig\n  context: nope\n";
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, cfg).expect("write");
        let snap = load(&path, &kc).expect("load");
        let context = |a: &str| {
            snap.accounts[a]
                .kubeconfig
                .as_ref()
                .map(|k| k.context.clone())
                .map_err(Clone::clone)
        };
        assert_eq!(context("named"), Ok("ctx-b".to_owned()));
        assert_eq!(context("current"), Ok("ctx-a".to_owned()));
        let err = context("unknown").expect_err("no such context");
        assert!(err.contains("\"nope\" is not among its contexts"), "{err}");
    }

    #[test]
    fn missing_kubeconfig_is_reported_per_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = dir.path().join("kc");
        std::fs::create_dir_all(&kc).expect("mkdir");
        let good = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: 'https://192.0.2.1:1' }\ncontexts:\n- name: x\n  context: { cluster: c }\ncurrent-context: x\n";
        std::fs::write(kc.join("a.kubeconfig"), good).expect("write");
        let path = write_config(dir.path(), &["a", "b"]);
        let snap = load(&path, &kc).expect("load");
        assert_eq!(kc_text(&snap, "a"), Ok(good));
        assert_eq!(
            snap.accounts["a"]
                .kubeconfig
                .as_ref()
                .map(|k| k.context.as_str()),
            Ok("x")
        );
        let err = snap.accounts["b"]
            .kubeconfig
            .clone()
            .expect_err("b has no file");
        assert!(err.contains("b.kubeconfig"), "{err}");
    }

    #[test]
    fn kubeconfigs_that_run_code_or_read_files_are_refused_unless_allowed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = dir.path().join("kc");
        std::fs::create_dir_all(&kc).expect("mkdir");
        let exec = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: 'https://192.0.2.1:1' }\ncontexts:\n- name: x\n  context: { cluster: c, user: u }\ncurrent-context: x\nusers:\n- name: u\n  user:\n    exec: { apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, 'touch /tmp/pwned'] }\n";
        let token_file = exec.replace(
            "exec: { apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, 'touch /tmp/pwned'] }",
            "tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token",
        );
        std::fs::write(kc.join("a.kubeconfig"), exec).expect("write");
        std::fs::write(kc.join("b.kubeconfig"), &token_file).expect("write");
        let path = write_config(dir.path(), &["a", "b"]);
        let snap = load(&path, &kc).expect("load");
        for (account, field) in [("a", "exec"), ("b", "tokenFile")] {
            let err = snap.accounts[account].kubeconfig.clone().expect_err(field);
            assert!(
                err.contains(field) && err.contains("--allow-kubeconfig"),
                "{err}"
            );
        }
        // The operator allows reading files: the tokenFile account may run, exec still not.
        let text = std::fs::read_to_string(&path).expect("read");
        std::fs::write(&path, format!("{text}allowKubeconfig: [files]\n")).expect("write");
        let snap = load(&path, &kc).expect("load");
        assert_eq!(kc_text(&snap, "b"), Ok(token_file.as_str()));
        assert!(snap.accounts["a"].kubeconfig.is_err());
    }

    #[test]
    fn invalid_config_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "shard: 3").expect("write");
        let err = load(&path, dir.path()).expect_err("invalid");
        assert!(err.to_string().contains("config.yaml"), "{err}");
    }

    #[test]
    fn the_same_bytes_read_again_are_unchanged_and_any_edit_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), &["a", "b"]);
        std::fs::write(dir.path().join("a.kubeconfig"), "first").expect("write");
        let (_, read) = load_with_inputs(&path, dir.path()).expect("load");
        assert!(read.unchanged(&path), "nothing was written");
        // A kubeconfig edited, one appearing, the config edited: each is a change.
        std::fs::write(dir.path().join("a.kubeconfig"), "second").expect("write");
        assert!(!read.unchanged(&path));
        std::fs::write(dir.path().join("a.kubeconfig"), "first").expect("write");
        std::fs::write(dir.path().join("b.kubeconfig"), "new").expect("write");
        assert!(!read.unchanged(&path));
        std::fs::remove_file(dir.path().join("b.kubeconfig")).expect("rm");
        assert!(read.unchanged(&path));
        write_config(dir.path(), &["a"]);
        assert!(!read.unchanged(&path));
    }

    #[tokio::test]
    async fn reload_publishes_changes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(dir.path(), &["a"]);
        let mut rx = watch(
            path.clone(),
            dir.path().to_path_buf(),
            Duration::from_millis(20),
        )
        .expect("watch");
        rx.borrow_and_update();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!rx.has_changed().unwrap_or(true), "no change, no publish");
        write_config(dir.path(), &["a", "b"]);
        tokio::time::timeout(Duration::from_secs(2), rx.changed())
            .await
            .expect("published")
            .expect("open");
        assert_eq!(rx.borrow().accounts.len(), 2);
        // A broken file keeps the last good snapshot.
        std::fs::write(&path, "{").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.borrow().accounts.len(), 2);
    }
}
