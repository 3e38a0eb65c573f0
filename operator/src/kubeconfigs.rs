//! The accounts' kubeconfig Secrets as the operator checked them, so that a reconcile
//! reads a Secret only when it has to. Every AgentShard watch event, status write and
//! child change brings a reconcile, and reading every account's Secret each time was
//! most of the operator's requests (about ten GETs per reconcile, twenty per shard while
//! 1,000 shards converge).
//!
//! The watch of the shard namespaces' Secrets (metadata only, [`crate::namespaced`]: the
//! operator reads Secrets only in namespaces opened to it) tells each Secret's version
//! (uid and resourceVersion). A Secret read by a reconcile leaves its version and what
//! checking it found ([`Checked`]: per key and context, usable or why not) — never its
//! data, which lives only as long as the reconcile that read it. A later reconcile goes
//! by that check when the watch shows the very version checked, every use it needs was
//! checked, and the check is younger than [`RECHECK`] ([`usable`]); otherwise it reads
//! the Secret (never seen, changed, deleted, or a watch that does not show it).
//!
//! The agents' kubeconfig Secret copies the kubeconfigs, so writing it needs their data:
//! the reconcile reads the Secrets it copies only when that Secret must be applied
//! ([`crate::decide::KubeconfigsChild`]), and then takes what it copied already (the
//! same Secret version and key) from that Secret as the operator last applied it, one
//! read instead of one per account ([`reusable`], [`Copied`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use scale_agent_crds::{KubeconfigAllow, KubeconfigProblem, ShardRef};

use crate::decide::RESYNC;
use crate::status::reason;

/// How long a check stands without reading the Secret again: a little under
/// [`RESYNC`], so that the periodic resync reads each Secret once (a namespace no longer
/// opened to the operator, or a watch that missed a change, shows then at the latest).
pub const RECHECK: Duration = RESYNC.saturating_sub(Duration::from_secs(5));

/// One version of a Secret: its uid (a Secret deleted and created again is another) and
/// resourceVersion.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Version {
    /// metadata.uid.
    pub uid: String,
    /// metadata.resourceVersion.
    pub resource_version: String,
}

impl Version {
    /// The version of an object as the API server gave it; `None` without uid or
    /// resourceVersion (never from the API server).
    pub fn of(meta: &ObjectMeta) -> Option<Self> {
        Some(Self {
            uid: meta.uid.clone()?,
            resource_version: meta.resource_version.clone()?,
        })
    }
}

/// One use of a kubeconfig Secret by an account: the key holding the kubeconfig and the
/// context the account picks.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Use {
    /// The key (`kubeconfigSecretRef.key`).
    pub key: String,
    /// The account's `context`.
    pub context: Option<String>,
}

/// What checking one use found: usable, or why not (the status reason and a message
/// that names the Secret and the key, never what they hold).
pub type Verdict = Result<(), (&'static str, String)>;

/// What the operator keeps of a kubeconfig Secret it read.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    /// The version read.
    pub version: Version,
    /// The verdict on each use checked (usually one: a list, not a map, for the
    /// memory of 10,000 of them).
    pub verdicts: Vec<(Use, Verdict)>,
}

impl Checked {
    /// The verdict on `u`, if it was checked.
    pub fn verdict(&self, u: &Use) -> Option<&Verdict> {
        self.verdicts.iter().find(|(c, _)| c == u).map(|(_, v)| v)
    }

    /// Records the verdict on `u`.
    pub fn record(&mut self, u: Use, verdict: Verdict) {
        match self.verdicts.iter_mut().find(|(c, _)| *c == u) {
            Some((_, v)) => *v = verdict,
            None => self.verdicts.push((u, verdict)),
        }
    }
}

/// A kubeconfig Secret as one reconcile has it.
#[derive(Clone, Debug)]
pub enum Source {
    /// Read by this reconcile: its version (`None` only for objects not from the API
    /// server) and data.
    Read {
        /// The version read.
        version: Option<Version>,
        /// Its data.
        data: BTreeMap<String, ByteString>,
    },
    /// Checked before, at the version the watch shows now; not read.
    Known(Arc<Checked>),
}

impl Source {
    /// A Secret just read.
    pub fn read(secret: Secret) -> Self {
        Self::Read {
            version: Version::of(&secret.metadata),
            data: secret.data.unwrap_or_default(),
        }
    }

    /// The version it stands for.
    pub fn version(&self) -> Option<&Version> {
        match self {
            Self::Read { version, .. } => version.as_ref(),
            Self::Known(c) => Some(&c.version),
        }
    }
}

/// Checks `u` of the Secret `name` holding `data`: the key is there and holds a
/// kubeconfig the agents may use (`allow`).
pub fn verdict(
    name: &str,
    data: &BTreeMap<String, ByteString>,
    u: &Use,
    allow: &KubeconfigAllow,
) -> Verdict {
    let key = &u.key;
    let bytes = data.get(key).ok_or_else(|| {
        (
            reason::SECRET_KEY_NOT_FOUND,
            format!("Secret {name} has no key {key}"),
        )
    })?;
    scale_agent_crds::check_kubeconfig(&bytes.0, u.context.as_deref(), allow)
        .map(|_| ())
        .map_err(|why| {
            let reason = match why {
                KubeconfigProblem::Refused { .. } => reason::KUBECONFIG_REFUSED,
                _ => reason::KUBECONFIG_INVALID,
            };
            (
                reason,
                format!("the kubeconfig in Secret {name} key {key}: {why}"),
            )
        })
}

/// Whether a reconcile needing `uses` of a Secret the watch shows at `watched` (`None`:
/// not shown) may go by an earlier check of it (`checked`, made at `checked_at`) instead
/// of reading it: the watch shows the version checked, each use was checked, and the
/// check is younger than [`RECHECK`].
pub fn usable(
    watched: Option<&Version>,
    checked: Option<&Checked>,
    checked_at: Instant,
    uses: &BTreeSet<Use>,
    now: Instant,
) -> bool {
    let (Some(watched), Some(checked)) = (watched, checked) else {
        return false;
    };
    *watched == checked.version
        && uses.iter().all(|u| checked.verdict(u).is_some())
        && now.saturating_duration_since(checked_at) < RECHECK
}

/// What the agents' kubeconfig Secret of a shard held when the operator last applied it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Copied {
    /// The `desired` of that apply ([`crate::decide::KubeconfigsChild::desired`]).
    pub desired: u64,
    /// Each Secret version and key copied (Secret name, key, version), and the account
    /// whose entry holds it.
    pub from: Vec<((String, String, Version), String)>,
}

/// The Secrets of `unread` (known by their check at the version `known` gives) whose
/// every use (`needed`) the agents' kubeconfig Secret already holds (`copied`): by
/// Secret, key → the account whose entry holds it. The others are read.
pub fn reusable<'a>(
    unread: &BTreeSet<String>,
    needed: &BTreeMap<String, BTreeSet<Use>>,
    known: impl Fn(&str) -> Option<&'a Version>,
    copied: &Copied,
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for name in unread {
        let (Some(version), Some(uses)) = (known(name.as_str()), needed.get(name)) else {
            continue;
        };
        let entries: Option<BTreeMap<String, String>> = uses
            .iter()
            .map(|u| {
                copied
                    .from
                    .iter()
                    .find(|((s, k, v), _)| s == name && *k == u.key && v == version)
                    .map(|(_, account)| (u.key.clone(), account.clone()))
            })
            .collect();
        if let Some(entries) = entries.filter(|e| !e.is_empty()) {
            out.insert(name.clone(), entries);
        }
    }
    out
}

/// What the operator knows of one Secret of the shard namespaces.
#[derive(Debug, Default)]
struct Entry {
    /// Its version as the watch shows it.
    watched: Option<Version>,
    /// Its last check, and when it was made.
    checked: Option<(Arc<Checked>, Instant)>,
}

/// The Secrets of the shard namespaces: their versions as the watch shows them and the
/// checks of those read (for one leadership term).
#[derive(Debug, Default)]
pub struct Kubeconfigs {
    secrets: Mutex<HashMap<(String, String), Entry>>,
    /// Per shard, what its agents' kubeconfig Secret held when last applied.
    copied: Mutex<HashMap<ShardRef, Copied>>,
}

impl Kubeconfigs {
    /// Nothing known: every Secret is read once.
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the watch of the shard namespaces' Secrets.
    pub fn watched(&self, event: &Event<PartialObjectMeta<Secret>>) {
        let key = |m: &ObjectMeta| {
            (
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default(),
            )
        };
        let Ok(mut secrets) = self.secrets.lock() else {
            return;
        };
        match event {
            Event::Apply(s) | Event::InitApply(s) => {
                secrets.entry(key(&s.metadata)).or_default().watched = Version::of(&s.metadata);
            }
            Event::Delete(s) => {
                secrets.remove(&key(&s.metadata));
            }
            Event::Init | Event::InitDone => {}
        }
    }

    /// The check of the Secret `name` in `ns` a reconcile needing `uses` of it may go by
    /// ([`usable`]); `None`: read it.
    pub fn usable(
        &self,
        ns: &str,
        name: &str,
        uses: &BTreeSet<Use>,
        now: Instant,
    ) -> Option<Arc<Checked>> {
        let secrets = self.secrets.lock().ok()?;
        let entry = secrets.get(&(ns.to_owned(), name.to_owned()))?;
        let (checked, at) = entry.checked.as_ref()?;
        usable(entry.watched.as_ref(), Some(checked), *at, uses, now).then(|| Arc::clone(checked))
    }

    /// Records the check of a Secret read at `now`.
    pub fn checked(&self, ns: &str, name: &str, checked: Checked, now: Instant) {
        if let Ok(mut secrets) = self.secrets.lock() {
            secrets
                .entry((ns.to_owned(), name.to_owned()))
                .or_default()
                .checked = Some((Arc::new(checked), now));
        }
    }

    /// What the agents' kubeconfig Secret of `shard` held when last applied.
    pub fn copied(&self, shard: &ShardRef) -> Option<Copied> {
        self.copied.lock().ok()?.get(shard).cloned()
    }

    /// Records what the agents' kubeconfig Secret of `shard` holds as applied.
    pub fn applied(&self, shard: &ShardRef, copied: Copied) {
        if let Ok(mut c) = self.copied.lock() {
            c.insert(shard.clone(), copied);
        }
    }

    /// Keeps the records of the shards `keep` says still exist.
    pub fn retain(&self, keep: impl Fn(&ShardRef) -> bool) {
        if let Ok(mut c) = self.copied.lock() {
            c.retain(|shard, _| keep(shard));
        }
    }

    /// Forgets the check of a Secret found gone.
    pub fn gone(&self, ns: &str, name: &str) {
        if let Ok(mut secrets) = self.secrets.lock()
            && let Some(entry) = secrets.get_mut(&(ns.to_owned(), name.to_owned()))
        {
            entry.checked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(rv: &str) -> Version {
        Version {
            uid: "u1".into(),
            resource_version: rv.into(),
        }
    }

    fn kubeconfig_use(key: &str, context: Option<&str>) -> Use {
        Use {
            key: key.into(),
            context: context.map(str::to_owned),
        }
    }

    fn checked(rv: &str, uses: &[Use]) -> Checked {
        Checked {
            version: version(rv),
            verdicts: uses.iter().map(|u| (u.clone(), Ok(()))).collect(),
        }
    }

    /// The reads a reconcile saves: a Secret checked at the version the watch shows is
    /// not read again (the old reconcile read every kubeconfig Secret every time).
    #[test]
    fn a_secret_checked_at_the_version_the_watch_shows_is_not_read_again() {
        let now = Instant::now();
        let u = kubeconfig_use("kubeconfig", None);
        let uses = BTreeSet::from([u.clone()]);
        let c = checked("10", &[u]);
        assert!(usable(Some(&version("10")), Some(&c), now, &uses, now));
        assert!(usable(
            Some(&version("10")),
            Some(&c),
            now,
            &uses,
            now + Duration::from_secs(60)
        ));
    }

    #[test]
    fn a_secret_changed_gone_new_or_not_watched_is_read() {
        let now = Instant::now();
        let u = kubeconfig_use("kubeconfig", None);
        let uses = BTreeSet::from([u.clone()]);
        let c = checked("10", &[u]);
        // Rotated: another resourceVersion.
        assert!(!usable(Some(&version("11")), Some(&c), now, &uses, now));
        // Deleted and created again: another uid.
        let again = Version {
            uid: "u2".into(),
            ..version("10")
        };
        assert!(!usable(Some(&again), Some(&c), now, &uses, now));
        // Deleted, or the watch does not show it (yet, or the namespace's watch fails).
        assert!(!usable(None, Some(&c), now, &uses, now));
        // Never read.
        assert!(!usable(Some(&version("10")), None, now, &uses, now));
    }

    #[test]
    fn a_use_not_checked_yet_is_read() {
        let now = Instant::now();
        let c = checked("10", &[kubeconfig_use("kubeconfig", None)]);
        for other in [
            kubeconfig_use("other-key", None),
            kubeconfig_use("kubeconfig", Some("ctx-b")),
        ] {
            let uses = BTreeSet::from([kubeconfig_use("kubeconfig", None), other]);
            assert!(!usable(Some(&version("10")), Some(&c), now, &uses, now));
        }
    }

    #[test]
    fn a_check_older_than_the_resync_is_made_again() {
        let then = Instant::now();
        let u = kubeconfig_use("kubeconfig", None);
        let uses = BTreeSet::from([u.clone()]);
        let c = checked("10", &[u]);
        assert!(!usable(
            Some(&version("10")),
            Some(&c),
            then,
            &uses,
            then + RESYNC
        ));
    }

    fn secret_meta(ns: &str, name: &str, uid: &str, rv: &str) -> PartialObjectMeta<Secret> {
        PartialObjectMeta::<Secret> {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(uid.into()),
                resource_version: Some(rv.into()),
                ..ObjectMeta::default()
            },
            ..PartialObjectMeta::default()
        }
    }

    /// The store follows the watch: a check stands while the watch shows its version,
    /// and a change, a deletion or another namespace's Secret of the same name is read.
    #[test]
    fn the_store_follows_the_watch() {
        let now = Instant::now();
        let k = Kubeconfigs::new();
        let u = kubeconfig_use("kubeconfig", None);
        let uses = BTreeSet::from([u.clone()]);
        // Read before the watch shows it: not usable until it does.
        k.checked("ns", "kc", checked("10", std::slice::from_ref(&u)), now);
        assert!(k.usable("ns", "kc", &uses, now).is_none());
        k.watched(&Event::InitApply(secret_meta("ns", "kc", "u1", "10")));
        assert!(k.usable("ns", "kc", &uses, now).is_some());
        assert!(k.usable("other", "kc", &uses, now).is_none());
        k.watched(&Event::Apply(secret_meta("ns", "kc", "u1", "11")));
        assert!(k.usable("ns", "kc", &uses, now).is_none());
        k.checked("ns", "kc", checked("11", std::slice::from_ref(&u)), now);
        assert!(k.usable("ns", "kc", &uses, now).is_some());
        k.watched(&Event::Delete(secret_meta("ns", "kc", "u1", "11")));
        assert!(k.usable("ns", "kc", &uses, now).is_none());
        k.watched(&Event::Apply(secret_meta("ns", "kc", "u1", "11")));
        k.checked("ns", "kc", checked("11", std::slice::from_ref(&u)), now);
        k.gone("ns", "kc");
        assert!(k.usable("ns", "kc", &uses, now).is_none());
    }

    /// An edit that adds an account, or a rotated Secret: what the agents' kubeconfig
    /// Secret already holds at the same Secret version and key is taken from it; a
    /// Secret it does not hold at that version, or not for every key the shard uses, is
    /// read.
    #[test]
    fn what_the_agents_secret_holds_at_the_same_version_is_not_read_again() {
        let copied = Copied {
            desired: 1,
            from: [
                (
                    ("kc-a".into(), "kubeconfig".into(), version("10")),
                    "a".into(),
                ),
                (
                    ("kc-b".into(), "kubeconfig".into(), version("20")),
                    "b".into(),
                ),
                (
                    ("kc-c".into(), "kubeconfig".into(), version("30")),
                    "c".into(),
                ),
            ]
            .into(),
        };
        let one = |key: &str| BTreeSet::from([kubeconfig_use(key, None)]);
        let needed: BTreeMap<String, BTreeSet<Use>> = [
            ("kc-a".into(), one("kubeconfig")),
            ("kc-b".into(), one("kubeconfig")),
            ("kc-c".into(), {
                let mut u = one("kubeconfig");
                u.insert(kubeconfig_use("other", None));
                u
            }),
            ("kc-new".into(), one("kubeconfig")),
        ]
        .into();
        let (v10, v21, v30, v1) = (version("10"), version("21"), version("30"), version("1"));
        let known = |name: &str| match name {
            "kc-a" => Some(&v10),
            // Rotated since it was copied.
            "kc-b" => Some(&v21),
            "kc-c" => Some(&v30),
            "kc-new" => Some(&v1),
            _ => None,
        };
        let unread: BTreeSet<String> = needed.keys().cloned().collect();
        let got = reusable(&unread, &needed, known, &copied);
        assert_eq!(
            got,
            BTreeMap::from([(
                "kc-a".to_owned(),
                BTreeMap::from([("kubeconfig".to_owned(), "a".to_owned())])
            )])
        );
    }

    #[test]
    fn verdicts_name_the_secret_and_key_but_not_the_content() {
        let allow = KubeconfigAllow::default();
        let data: BTreeMap<String, ByteString> = [(
            "kubeconfig".to_owned(),
            ByteString(b"secret-token-abc: [".to_vec()),
        )]
        .into();
        let (r, m) =
            verdict("kc", &data, &kubeconfig_use("kubeconfig", None), &allow).expect_err("garbage");
        assert_eq!(r, reason::KUBECONFIG_INVALID);
        assert!(m.contains("kc") && !m.contains("secret-token-abc"), "{m}");
        let (r, _) =
            verdict("kc", &data, &kubeconfig_use("other", None), &allow).expect_err("no such key");
        assert_eq!(r, reason::SECRET_KEY_NOT_FOUND);
    }
}
