//! What one reconcile does to a shard, decided from what it fetched: each account's
//! state, the children to apply, and what the status is computed from. Pure: the
//! reconciler fetches (the shard, the claims index's answer, the kubeconfig Secrets),
//! calls [`decide`], and applies the [`Decision`].
//!
//! The order of the writes keeps the ownership rule's promise that a status holds every
//! name an agent config carries: a name newly carried is recorded in the status first
//! ([`Decision::reserve`]); a name dropped leaves the status only after the config was
//! rewritten without it (the status is written last), or stays while the config cannot
//! be rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use scale_agent_crds::{
    AccountSpec, AccountState, AccountStatus, AgentConfig, AgentShard, ShardRef, claims,
};

use crate::children::{self, Defaults};
use crate::claims_index::Resolution;
use crate::error::{Error, Result};
use crate::status::{self, Observed, reason};

/// How often an unchanged shard is looked at again (drift of its children).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a shard waiting for a name its owner is releasing looks again (a trigger
/// normally comes first).
pub const HANDOFF_RETRY: Duration = Duration::from_secs(2);

/// What a reconcile found, for [`decide`].
#[derive(Clone, Copy, Debug)]
pub struct Fetched<'a> {
    /// The shard, with the operator's defaults filled in ([`children::with_defaults`]).
    pub shard: &'a AgentShard,
    /// The claims index's answer for every name in the spec (unused when paused).
    pub resolutions: &'a BTreeMap<String, Resolution>,
    /// The kubeconfig Secrets of the accounts the shard owns, by name; `None`: not found.
    pub secrets: &'a BTreeMap<String, Option<Secret>>,
}

/// The objects a shard becomes, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The agents' own ServiceAccount, Role and RoleBinding, unless the shard or the
    /// operator names a ServiceAccount.
    pub identity: Option<(ServiceAccount, Role, RoleBinding)>,
    /// The kubeconfigs of the accounts served.
    pub kubeconfigs: Secret,
    /// The agent config.
    pub config_map: ConfigMap,
    /// The agents.
    pub deployment: Deployment,
    /// The PodDisruptionBudget; `None`: the shard runs one replica, and a budget it owns
    /// is deleted.
    pub pdb: Option<PodDisruptionBudget>,
}

/// When to reconcile the shard again without a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// After [`RESYNC`], to put drifted children right.
    Resync,
    /// Soon ([`HANDOFF_RETRY`]): an account waits for a name its owner is releasing.
    HandoffRetry,
    /// Only on a change (paused).
    AwaitChange,
}

impl Next {
    /// The delay, if any.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Self::Resync => Some(RESYNC),
            Self::HandoffRetry => Some(HANDOFF_RETRY),
            Self::AwaitChange => None,
        }
    }
}

/// What to do with a shard.
#[derive(Clone, Debug)]
pub struct Decision {
    /// What the status is computed from; the agent Deployment's view is added once the
    /// children are applied (or read).
    pub observed: Observed,
    /// The children to apply; `None`: leave them as they are (paused, or the spec cannot
    /// become an agent config).
    pub children: Option<Children>,
    /// The accounts to record in the status before applying the children, when the
    /// agent config is about to carry a name the stored status does not hold yet: the
    /// new accounts, and the names the stored status holds that the spec dropped (the
    /// config carries them until it is rewritten). Written only onto the status it was
    /// decided from (resourceVersion precondition).
    pub reserve: Option<Vec<AccountStatus>>,
    /// When to look again.
    pub next: Next,
}

/// The kubeconfig Secrets to fetch: those of the accounts the shard owns.
pub fn secrets_to_fetch(
    shard: &AgentShard,
    resolutions: &BTreeMap<String, Resolution>,
) -> BTreeSet<String> {
    shard
        .spec
        .accounts
        .iter()
        .filter(|a| resolutions.get(&a.name) == Some(&Resolution::Owned))
        .map(|a| a.kubeconfig_secret_ref.name.clone())
        .collect()
}

/// Decides one reconcile of `f.shard` at `now` (see the module documentation).
///
/// Errors only on what the API server always sets (namespace, uid) or on an agent
/// config that cannot be written: a shard's own problems go into the status.
pub fn decide(f: Fetched<'_>, defaults: &Defaults, now: &Time) -> Result<Decision> {
    let shard = f.shard;
    let sref = shard.shard_ref().ok_or_else(|| Error::MissingField {
        what: format!(
            "AgentShard {}",
            shard.metadata.name.as_deref().unwrap_or("?")
        ),
        field: "metadata.namespace",
    })?;
    if shard.spec.paused {
        return Ok(Decision {
            observed: Observed {
                generation: shard.metadata.generation,
                paused: true,
                ..Observed::default()
            },
            children: None,
            reserve: None,
            next: Next::AwaitChange,
        });
    }

    let mut accounts: Vec<AccountStatus> = Vec::with_capacity(shard.spec.accounts.len());
    let mut served: Vec<&AccountSpec> = Vec::new();
    let mut kubeconfigs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut waiting = false;
    for a in &shard.spec.accounts {
        let state = match f.resolutions.get(&a.name) {
            Some(Resolution::Owned) => match kubeconfig(&sref, a, f.secrets) {
                Ok(bytes) => {
                    kubeconfigs.insert(a.name.clone(), bytes);
                    served.push(a);
                    status::account(
                        &a.name,
                        AccountState::Active,
                        reason::SERVING,
                        String::new(),
                        None,
                    )
                }
                Err((r, m)) => status::account(&a.name, AccountState::Invalid, r, m, None),
            },
            Some(Resolution::Taken { owner, releasing }) => {
                waiting |= *releasing;
                let (r, m) = if *releasing {
                    (
                        reason::OWNER_RELEASING,
                        format!(
                            "AgentShard {owner} dropped this account and is letting it go; it comes next"
                        ),
                    )
                } else {
                    (
                        reason::OWNED_BY_ANOTHER_SHARD,
                        format!(
                            "AgentShard {owner} owns this account name (the oldest claim wins)"
                        ),
                    )
                };
                status::account(&a.name, AccountState::Conflict, r, m, Some(owner))
            }
            None => {
                // The index answers for every name it was shown; a name it was not shown
                // waits for the next reconcile.
                waiting = true;
                status::account(
                    &a.name,
                    AccountState::Conflict,
                    reason::OWNER_RELEASING,
                    "waiting for the claims index".to_owned(),
                    None,
                )
            }
        };
        accounts.push(AccountStatus {
            claimed_at: Some(claims::claimed_at(shard, &a.name, now)),
            ..state
        });
    }

    let mut config_problem = None;
    let children = match agent_config(shard, &sref, defaults, &served) {
        Ok((config, image)) => {
            let yaml = config.to_yaml().map_err(|source| Error::Config {
                shard: sref.key(),
                source,
            })?;
            Some(build_children(
                shard,
                &sref,
                defaults,
                yaml,
                &kubeconfigs,
                image,
            )?)
        }
        Err(problem) => {
            // The agent config stays as it is, so the names it carries stay held.
            accounts.extend(still_carried(shard));
            config_problem = Some(problem);
            None
        }
    };
    let old = shard.status.as_ref();
    let newly_held = accounts.iter().any(|a| {
        a.state == AccountState::Active
            && !old
                .and_then(|o| o.account(&a.name))
                .is_some_and(|o| o.state.holds())
    });
    let reserve = (children.is_some() && newly_held).then(|| {
        let mut list = accounts.clone();
        list.extend(
            old.into_iter()
                .flat_map(|o| &o.accounts)
                .filter(|a| a.state.holds() && !accounts.iter().any(|n| n.name == a.name))
                .cloned(),
        );
        list
    });
    Ok(Decision {
        observed: Observed {
            generation: shard.metadata.generation,
            paused: false,
            accounts,
            config_problem,
            deployment: None,
        },
        children,
        reserve,
        next: if waiting {
            Next::HandoffRetry
        } else {
            Next::Resync
        },
    })
}

/// The account's kubeconfig, checked; or why it cannot be used (reason, message).
fn kubeconfig(
    sref: &ShardRef,
    a: &AccountSpec,
    secrets: &BTreeMap<String, Option<Secret>>,
) -> Result<Vec<u8>, (&'static str, String)> {
    let name = &a.kubeconfig_secret_ref.name;
    let key = &a.kubeconfig_secret_ref.key;
    let secret = secrets.get(name).and_then(Option::as_ref).ok_or_else(|| {
        (
            reason::SECRET_NOT_FOUND,
            format!("Secret {name} not found in namespace {}", sref.namespace),
        )
    })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| {
            (
                reason::SECRET_KEY_NOT_FOUND,
                format!("Secret {name} has no key {key}"),
            )
        })?;
    children::validate_kubeconfig(&bytes.0)
        .map(|()| bytes.0.clone())
        .map_err(|why| {
            (
                reason::KUBECONFIG_INVALID,
                format!("the kubeconfig in Secret {name} key {key}: {why}"),
            )
        })
}

/// The agent config and the image; or the problem that keeps the spec from becoming
/// one.
fn agent_config<'a>(
    shard: &'a AgentShard,
    sref: &ShardRef,
    defaults: &'a Defaults,
    served: &[&AccountSpec],
) -> Result<(AgentConfig, &'a str), String> {
    let hub = children::hub_address(shard, defaults).ok_or_else(|| {
        "no hub address: set spec.hub.address, or start the operator with --default-hub".to_owned()
    })?;
    let image = children::image(shard, defaults).ok_or_else(|| {
        "no agent image: set spec.image, or start the operator with --default-image".to_owned()
    })?;
    let config = children::agent_config(sref, shard, hub, served).map_err(|e| e.to_string())?;
    Ok((config, image))
}

fn build_children(
    shard: &AgentShard,
    sref: &ShardRef,
    defaults: &Defaults,
    config_yaml: String,
    kubeconfigs: &BTreeMap<String, Vec<u8>>,
    image: &str,
) -> Result<Children> {
    let owner = shard
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingField {
            what: format!("AgentShard {sref}"),
            field: "metadata.uid",
        })?;
    let own_identity =
        shard.spec.service_account_name.is_none() && defaults.service_account.is_none();
    let sa = children::service_account_name(shard, defaults);
    Ok(Children {
        identity: own_identity.then(|| {
            (
                children::service_account(sref, &owner),
                children::role(sref, &owner),
                children::role_binding(sref, &owner),
            )
        }),
        kubeconfigs: children::kubeconfig_secret(sref, &owner, kubeconfigs),
        config_map: children::config_map(sref, &owner, config_yaml),
        deployment: children::deployment(sref, shard, &owner, image, &sa),
        pdb: children::pdb(sref, shard, &owner),
    })
}

/// The accounts the stored status shows in the agent config that the spec no longer
/// lists, for when the config cannot be rewritten: they stay held (as Active, reason
/// Releasing) until it can.
fn still_carried(shard: &AgentShard) -> Vec<AccountStatus> {
    let Some(old) = &shard.status else {
        return Vec::new();
    };
    old.accounts
        .iter()
        .filter(|a| {
            shard.spec.account(&a.name).is_none()
                && matches!(a.state, AccountState::Active | AccountState::Unknown)
        })
        .map(|a| AccountStatus {
            state: AccountState::Active,
            reason: reason::RELEASING.to_owned(),
            message: "removed from the spec; the agent config still carries it until the shard's config problem is fixed".to_owned(),
            owner_shard: None,
            ..a.clone()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::{AgentShardStatus, CONFIG_KEY, condition_type};

    use super::*;
    use crate::status::DeploymentView;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn shard(accounts: &[&str]) -> AgentShard {
        let spec = serde_json::json!({
            "hub": { "address": "hub.example.com:443" },
            "image": "example.com/agent:1",
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
            })).collect::<Vec<_>>()
        });
        let mut s = AgentShard::new("east", serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(2);
        s.metadata.creation_timestamp = Some(t(100));
        s
    }

    fn secret(data: Option<&str>) -> Option<Secret> {
        Some(Secret {
            data: data
                .map(|d| [("kubeconfig".to_owned(), ByteString(d.as_bytes().to_vec()))].into()),
            ..Secret::default()
        })
    }

    fn owned(names: &[&str]) -> BTreeMap<String, Resolution> {
        names
            .iter()
            .map(|n| ((*n).to_owned(), Resolution::Owned))
            .collect()
    }

    fn secrets(list: &[(&str, Option<Secret>)]) -> BTreeMap<String, Option<Secret>> {
        list.iter()
            .map(|(n, s)| ((*n).to_owned(), s.clone()))
            .collect()
    }

    fn run(
        s: &AgentShard,
        r: &BTreeMap<String, Resolution>,
        sec: &BTreeMap<String, Option<Secret>>,
    ) -> Decision {
        decide(
            Fetched {
                shard: s,
                resolutions: r,
                secrets: sec,
            },
            &Defaults::default(),
            &t(1_000),
        )
        .expect("decides")
    }

    /// Gives `s` a stored status serving b (in its config), and decides it owning a.
    fn with_b_in_the_config(s: &mut AgentShard) -> Decision {
        s.status = Some(AgentShardStatus {
            accounts: vec![AccountStatus {
                claimed_at: Some(t(100)),
                ..status::account(
                    "b",
                    AccountState::Active,
                    reason::SERVING,
                    String::new(),
                    None,
                )
            }],
            ..AgentShardStatus::default()
        });
        run(
            s,
            &owned(&["a"]),
            &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
        )
    }

    fn config(d: &Decision) -> AgentConfig {
        let c = d.children.as_ref().expect("children");
        let yaml = &c.config_map.data.as_ref().expect("data")[CONFIG_KEY];
        AgentConfig::from_yaml(yaml).expect("config")
    }

    fn states(d: &Decision) -> Vec<(String, AccountState, String)> {
        d.observed
            .accounts
            .iter()
            .map(|a| (a.name.clone(), a.state, a.reason.clone()))
            .collect()
    }

    #[test]
    fn owned_and_usable_accounts_are_served_and_reserved_first() {
        let s = shard(&["a", "b"]);
        let d = run(
            &s,
            &owned(&["a", "b"]),
            &secrets(&[
                ("kc-a", secret(Some(KUBECONFIG))),
                ("kc-b", secret(Some(KUBECONFIG))),
            ]),
        );
        assert_eq!(
            states(&d),
            [
                ("a".into(), AccountState::Active, "Serving".into()),
                ("b".into(), AccountState::Active, "Serving".into())
            ]
        );
        let c = config(&d);
        assert_eq!(c.accounts.len(), 2);
        let children = d.children.as_ref().expect("children");
        let kc = children.kubeconfigs.data.as_ref().expect("data");
        assert!(kc.contains_key("a.kubeconfig") && kc.contains_key("b.kubeconfig"));
        assert!(children.identity.is_some() && children.pdb.is_none());
        // A shard with no status yet: its names are recorded before any config carries them.
        assert_eq!(d.reserve.as_ref(), Some(&d.observed.accounts));
        assert_eq!(d.next, Next::Resync);
        // Claimed at the shard's creation, the time the rule used.
        assert!(
            d.observed
                .accounts
                .iter()
                .all(|a| a.claimed_at == Some(t(100)))
        );
    }

    #[test]
    fn nothing_to_reserve_when_the_status_already_holds_every_served_name() {
        let mut s = shard(&["a"]);
        let first = run(
            &s,
            &owned(&["a"]),
            &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
        );
        s.status = Some(status::compute(None, &first.observed, t(1_000)));
        let again = run(
            &s,
            &owned(&["a"]),
            &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
        );
        assert!(again.reserve.is_none());
        // The same decision again: the same status, so nothing would be written.
        let st = status::compute(s.status.as_ref(), &again.observed, t(2_000));
        assert_eq!(Some(&st), s.status.as_ref());
    }

    #[test]
    fn the_reservation_keeps_the_names_the_config_still_carries() {
        // b is in the config (held); the spec swaps it for a.
        let mut s = shard(&["a"]);
        let d = with_b_in_the_config(&mut s);
        let reserved: Vec<&str> = d
            .reserve
            .as_ref()
            .expect("a is newly carried")
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(reserved, ["a", "b"]);
        // The status written after the config lets b go.
        assert_eq!(states(&d).len(), 1);
        assert_eq!(config(&d).accounts.len(), 1);
    }

    #[test]
    fn taken_accounts_conflict_and_stay_out_of_the_config() {
        let s = shard(&["a", "x", "y"]);
        let mut r = owned(&["a"]);
        r.insert(
            "x".into(),
            Resolution::Taken {
                owner: ShardRef::new("other", "o"),
                releasing: false,
            },
        );
        r.insert(
            "y".into(),
            Resolution::Taken {
                owner: ShardRef::new("other", "p"),
                releasing: true,
            },
        );
        assert_eq!(secrets_to_fetch(&s, &r), ["kc-a".to_owned()].into());
        let d = run(&s, &r, &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]));
        assert_eq!(
            states(&d),
            [
                ("a".into(), AccountState::Active, "Serving".into()),
                (
                    "x".into(),
                    AccountState::Conflict,
                    "OwnedByAnotherShard".into()
                ),
                ("y".into(), AccountState::Conflict, "OwnerReleasing".into()),
            ]
        );
        assert_eq!(
            d.observed.accounts[1].owner_shard.as_deref(),
            Some("other/o")
        );
        assert_eq!(config(&d).accounts.len(), 1);
        // Waiting for y: look again soon.
        assert_eq!(d.next, Next::HandoffRetry);
        let st = status::compute(None, &d.observed, t(1_000));
        assert_eq!((st.active_accounts, st.conflicts), (1, 2));
    }

    #[test]
    fn unusable_kubeconfigs_are_invalid_with_the_reason() {
        let s = shard(&["gone", "nokey", "junk", "ok"]);
        let d = run(
            &s,
            &owned(&["gone", "nokey", "junk", "ok"]),
            &secrets(&[
                ("kc-gone", None),
                ("kc-nokey", secret(None)),
                ("kc-junk", secret(Some("not a kubeconfig: ["))),
                ("kc-ok", secret(Some(KUBECONFIG))),
            ]),
        );
        let reasons: Vec<String> = states(&d).into_iter().map(|(_, _, r)| r).collect();
        assert_eq!(
            reasons,
            [
                "SecretNotFound",
                "SecretKeyNotFound",
                "KubeconfigInvalid",
                "Serving"
            ]
        );
        assert_eq!(config(&d).accounts.len(), 1);
        let st = status::compute(None, &d.observed, t(1_000));
        let c = st
            .condition(condition_type::CONFIG_VALID)
            .expect("ConfigValid");
        assert_eq!(c.status, "False");
        assert!(c.message.contains("kc-gone"), "{}", c.message);
    }

    #[test]
    fn no_hub_leaves_the_children_alone_and_keeps_what_the_config_carries() {
        let mut s = shard(&["a"]);
        s.spec.hub = None;
        // The stored status shows b in the config; the spec dropped it.
        let d = with_b_in_the_config(&mut s);
        assert!(d.children.is_none() && d.reserve.is_none());
        assert!(
            d.observed
                .config_problem
                .as_deref()
                .is_some_and(|p| p.contains("--default-hub"))
        );
        assert_eq!(
            states(&d),
            [
                ("a".into(), AccountState::Active, "Serving".into()),
                ("b".into(), AccountState::Active, "Releasing".into()),
            ]
        );
        // a was never in the stored status: recorded now, after every earlier claim.
        assert_eq!(d.observed.accounts[0].claimed_at, Some(t(1_000)));
        assert_eq!(d.observed.accounts[1].claimed_at, Some(t(100)));
    }

    #[test]
    fn the_default_hub_and_image_fill_in() {
        let mut s = shard(&["a"]);
        s.spec.hub = None;
        s.spec.image = None;
        let defaults = Defaults {
            hub: Some("lb:443".into()),
            image: Some("img:2".into()),
            service_account: Some("shared".into()),
            hub_tls_secret: None,
        };
        let d = decide(
            Fetched {
                shard: &s,
                resolutions: &owned(&["a"]),
                secrets: &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
            },
            &defaults,
            &t(1),
        )
        .expect("decides");
        assert_eq!(config(&d).hub.address, "lb:443");
        let c = d.children.expect("children");
        assert!(
            c.identity.is_none(),
            "the operator's ServiceAccount is used"
        );
        let pod = c
            .deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert_eq!(pod.containers[0].image.as_deref(), Some("img:2"));
        assert_eq!(pod.service_account_name.as_deref(), Some("shared"));
    }

    #[test]
    fn paused_decides_nothing_but_the_status() {
        let mut s = shard(&["a"]);
        s.spec.paused = true;
        let d = run(&s, &BTreeMap::new(), &BTreeMap::new());
        assert!(d.children.is_none() && d.reserve.is_none() && d.observed.paused);
        assert_eq!(d.next, Next::AwaitChange);
    }

    #[test]
    fn the_full_status_of_a_served_shard() {
        let mut s = shard(&["a"]);
        s.spec.replicas = 2;
        let mut d = run(
            &s,
            &owned(&["a"]),
            &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
        );
        assert!(d.children.as_ref().is_some_and(|c| c.pdb.is_some()));
        d.observed.deployment = Some(DeploymentView {
            desired: 2,
            generation: Some(1),
            observed_generation: Some(1),
            replicas: 2,
            ready: 2,
            updated: 2,
            available_replicas: 2,
            available: Some((true, "MinimumReplicasAvailable".into(), "ok".into())),
        });
        let st = status::compute(None, &d.observed, t(1_000));
        assert!(
            st.condition(condition_type::READY)
                .is_some_and(|c| c.status == "True")
        );
        assert_eq!(st.observed_generation, Some(2));
        assert_eq!(
            (st.replicas, st.ready_replicas, st.active_accounts),
            (2, 2, 1)
        );
    }

    #[test]
    fn a_shard_without_a_uid_is_an_error_not_a_panic() {
        let mut s = shard(&[]);
        s.metadata.uid = None;
        let e = decide(
            Fetched {
                shard: &s,
                resolutions: &BTreeMap::new(),
                secrets: &BTreeMap::new(),
            },
            &Defaults::default(),
            &t(1),
        );
        assert!(matches!(
            e,
            Err(Error::MissingField {
                field: "metadata.uid",
                ..
            })
        ));
    }
}
