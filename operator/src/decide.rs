//! What one reconcile does to a shard, decided from what it fetched: each account's
//! state, the children to apply, and what the status is computed from. Pure: the
//! reconciler fetches (the shard, the claims index's answer, the kubeconfig and TLS
//! Secrets, the operator's CA, the agent replicas' reports from the watches), calls
//! [`decide`], and applies the [`Decision`].
//!
//! An account the shard owns and can use goes into the agent config; its state says
//! whether it streams, from what the shard's live replicas report
//! ([`Replicas::account`]). The agents' TLS material is the shard's own Secret, the one
//! the operator issues and renews, or a cert-manager Certificate's
//! ([`children::tls_source`]); a Secret the agents could not use is a config problem,
//! reported before anything is rolled out.
//!
//! The order of the writes keeps the ownership rule's promise that a status holds every
//! name an agent config carries: a name newly carried is recorded in the status first
//! ([`Decision::reserve`]); a name dropped leaves the status only after the config was
//! rewritten without it (the status is written last), or stays while the config cannot
//! be rewritten.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::DynamicObject;
use scale_agent_crds::{
    AccountSpec, AccountState, AccountStatus, AgentConfig, AgentShard, ShardRef, claims,
};
use serde::Serialize;

use crate::applied;
use crate::certs::{self, AgentCa, Assessment};
use crate::children::{self, Defaults, TlsSource};
use crate::claims_index::Resolution;
use crate::error::{Error, Result};
use crate::kubeconfigs::{self, Checked, Source, Use, Version};
use crate::policy;
use crate::replicas::Replicas;
use crate::status::{self, Observed, Problem, ReplicaSummary, reason};

/// How often an unchanged shard is looked at again (drift of its children).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How soon a shard waiting for a name its owner is releasing looks again (a trigger
/// normally comes first).
pub const HANDOFF_RETRY: Duration = Duration::from_secs(2);
/// How long after a replica's Lease expires the shard is looked at: the report of a
/// replica that stopped renewing stops counting then.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// What a reconcile found, for [`decide`].
#[derive(Clone, Copy, Debug)]
pub struct Fetched<'a> {
    /// The shard, with the operator's defaults filled in ([`children::with_defaults`]).
    pub shard: &'a AgentShard,
    /// The claims index's answer for every name in the spec (unused when paused).
    pub resolutions: &'a BTreeMap<String, Resolution>,
    /// The kubeconfig Secrets of the accounts the shard owns, by name, read or known by
    /// an earlier check ([`crate::kubeconfigs`]); `None`: not found.
    pub secrets: &'a BTreeMap<String, Option<Source>>,
    /// The TLS Secret the agents would mount ([`children::tls_source`]), as found;
    /// `None`: not found, or the shard has none.
    pub tls_secret: Option<&'a Secret>,
    /// The operator's CA, when it issues certificates (`--agent-ca-secret`): the CA, or
    /// why it cannot be used.
    pub agent_ca: Option<&'a std::result::Result<AgentCa, String>>,
    /// The shard's live agent replicas and their reports.
    pub replicas: &'a Replicas,
}

/// The objects a shard becomes, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// The agents' own ServiceAccount, Role and RoleBinding, unless the shard or the
    /// operator names a ServiceAccount.
    pub identity: Option<(ServiceAccount, Role, RoleBinding)>,
    /// The kubeconfigs of the accounts served.
    pub kubeconfigs: KubeconfigsChild,
    /// The agents' client certificate, when the operator issues it.
    pub tls: Option<Secret>,
    /// The cert-manager Certificate making it, when a cert-manager issuer does.
    pub certificate: Option<DynamicObject>,
    /// The agent config.
    pub config_map: ConfigMap,
    /// The agents.
    pub deployment: Deployment,
    /// The PodDisruptionBudget; `None`: the shard runs one replica, and a budget it owns
    /// is deleted.
    pub pdb: Option<PodDisruptionBudget>,
}

/// The agents' kubeconfig Secret: a copy of the served accounts' kubeconfigs, which
/// can be written only with the data of every Secret it copies.
#[derive(Clone, Debug, PartialEq)]
pub struct KubeconfigsChild {
    /// A hash of what it holds, the `desired` of its applied record
    /// ([`crate::applied`]): its metadata and, per account, the Secret, version and key
    /// its kubeconfig is copied from (a version's data never changes), so that whether
    /// it must be applied is known without reading those Secrets.
    pub desired: u64,
    /// The Secret, when the reconcile read every Secret it copies.
    pub secret: Option<Secret>,
    /// The Secrets it copies that the reconcile knows only by an earlier check: to read
    /// before it is applied.
    pub unread: BTreeSet<String>,
    /// What it copies: (Secret name, key, version) and the account whose entry holds it.
    pub from: Vec<((String, String, Version), String)>,
}

/// When to reconcile the shard again without a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// After [`RESYNC`], to put drifted children right.
    Resync,
    /// Soon ([`HANDOFF_RETRY`]): an account waits for a name its owner is releasing.
    HandoffRetry,
    /// When something is due sooner: a replica's Lease expires, a certificate is due for
    /// renewal or expires.
    At(Duration),
    /// Only on a change (paused).
    AwaitChange,
}

impl Next {
    /// The delay, if any.
    pub fn delay(self) -> Option<Duration> {
        match self {
            Self::Resync => Some(RESYNC),
            Self::HandoffRetry => Some(HANDOFF_RETRY),
            Self::At(d) => Some(d),
            Self::AwaitChange => None,
        }
    }

    /// This, or `at` when that comes first.
    pub fn or_sooner(self, at: Option<Duration>) -> Self {
        match (self.delay(), at) {
            (Some(d), Some(at)) if at < d => Self::At(at),
            _ => self,
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
    /// What checking the Secrets read by this reconcile found, by name: what later
    /// reconciles go by while the Secrets stay as they are ([`crate::kubeconfigs`]).
    pub checked: BTreeMap<String, Checked>,
}

/// The kubeconfig Secrets the shard needs: those of the accounts it owns, by name, with
/// the uses (key, context) the accounts make of each.
pub fn secrets_to_fetch(
    shard: &AgentShard,
    resolutions: &BTreeMap<String, Resolution>,
) -> BTreeMap<String, BTreeSet<Use>> {
    let mut out: BTreeMap<String, BTreeSet<Use>> = BTreeMap::new();
    for a in &shard.spec.accounts {
        if resolutions.get(&a.name) != Some(&Resolution::Owned) {
            continue;
        }
        if let Some(r) = &a.kubeconfig_secret_ref {
            out.entry(r.name.clone())
                .or_default()
                .insert(use_of(a, &r.key));
        }
    }
    out
}

/// The use account `a` makes of key `key` of its kubeconfig Secret.
fn use_of(a: &AccountSpec, key: &str) -> Use {
    Use {
        key: key.to_owned(),
        context: a.scope.context.clone(),
    }
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
            checked: BTreeMap::new(),
        });
    }
    let at = now.0;
    let mut due: Vec<Timestamp> = f
        .replicas
        .next_expiry()
        .and_then(|t| t.checked_add(EXPIRY_MARGIN).ok())
        .into_iter()
        .collect();

    let mut accounts: Vec<AccountStatus> = Vec::with_capacity(shard.spec.accounts.len());
    let mut served: Vec<&AccountSpec> = Vec::new();
    let mut kubeconfigs: BTreeMap<String, KubeconfigCopy<'_>> = BTreeMap::new();
    let mut checked = BTreeMap::new();
    let mut waiting = false;
    for a in &shard.spec.accounts {
        let state = match f.resolutions.get(&a.name) {
            Some(Resolution::Owned) => {
                match kubeconfig(&sref, a, f.secrets, defaults, &mut checked)? {
                    Ok(copy) => {
                        if let Some(copy) = copy {
                            kubeconfigs.insert(a.name.clone(), copy);
                        }
                        served.push(a);
                        let v = f.replicas.account(&a.name);
                        status::account(&a.name, v.state, &v.reason, v.message, None)
                    }
                    Err((r, m)) => status::account(&a.name, AccountState::Invalid, r, m, None),
                }
            }
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
    let children = match plan(&f, &sref, defaults, &served, at) {
        Ok(plan) => {
            due.extend(plan.due);
            let yaml = plan.config.to_yaml().map_err(|source| Error::Config {
                shard: sref.key(),
                source,
            })?;
            Some(build_children(
                shard,
                &sref,
                defaults,
                yaml,
                &kubeconfigs,
                plan.image,
                plan.tls,
            )?)
        }
        Err(problem) => {
            // The agent config stays as it is, so the names it carries stay held.
            accounts.extend(still_carried(shard, f.replicas));
            config_problem = Some(problem);
            None
        }
    };
    let old = shard.status.as_ref();
    let newly_held = accounts.iter().any(|a| {
        a.state.served()
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
    let soonest = due
        .into_iter()
        .min()
        .map(|t| Duration::try_from(t.duration_since(at)).unwrap_or(Duration::ZERO));
    let base = if waiting {
        Next::HandoffRetry
    } else {
        Next::Resync
    };
    Ok(Decision {
        observed: Observed {
            generation: shard.metadata.generation,
            paused: false,
            accounts,
            config_problem,
            deployment: None,
            replicas: ReplicaSummary {
                live: f.replicas.members.len(),
                disconnected: f
                    .replicas
                    .disconnected()
                    .into_iter()
                    .map(|(r, m)| (r.to_owned(), m.to_owned()))
                    .collect(),
            },
        },
        children,
        reserve,
        next: base.or_sooner(soonest),
        checked,
    })
}

/// A served account's kubeconfig as the agents' kubeconfig Secret copies it.
#[derive(Debug, Serialize)]
struct KubeconfigCopy<'a> {
    /// The Secret, version and key it comes from.
    secret: &'a str,
    version: Option<&'a Version>,
    key: &'a str,
    /// The kubeconfig, when the reconcile read the Secret.
    #[serde(skip)]
    bytes: Option<&'a [u8]>,
}

/// The account's kubeconfig, checked (`None` for an in-cluster account); or why it
/// cannot be used (reason, message). A Secret read by this reconcile is checked here
/// (the verdict goes into `checked`); one known by an earlier check has its verdict.
fn kubeconfig<'a>(
    sref: &ShardRef,
    a: &'a AccountSpec,
    secrets: &'a BTreeMap<String, Option<Source>>,
    defaults: &Defaults,
    checked: &mut BTreeMap<String, Checked>,
) -> Result<Result<Option<KubeconfigCopy<'a>>, (&'static str, String)>> {
    let Some(r) = &a.kubeconfig_secret_ref else {
        return Ok(if a.in_cluster {
            Ok(None)
        } else {
            Err((
                reason::KUBECONFIG_INVALID,
                "set kubeconfigSecretRef or inCluster: true".to_owned(),
            ))
        });
    };
    if a.in_cluster {
        return Ok(Err((
            reason::KUBECONFIG_INVALID,
            "kubeconfigSecretRef and inCluster cannot both be set".to_owned(),
        )));
    }
    let (name, key) = (&r.name, &r.key);
    let Some(source) = secrets.get(name).and_then(Option::as_ref) else {
        return Ok(Err((
            reason::SECRET_NOT_FOUND,
            format!("Secret {name} not found in namespace {}", sref.namespace),
        )));
    };
    let u = use_of(a, key);
    let (verdict, bytes) = match source {
        Source::Read { version, data } => {
            let verdict = kubeconfigs::verdict(name, data, &u, &defaults.allow_kubeconfig);
            if let Some(version) = version {
                checked
                    .entry(name.clone())
                    .or_insert_with(|| Checked {
                        version: version.clone(),
                        verdicts: Vec::new(),
                    })
                    .record(u, verdict.clone());
            }
            (verdict, data.get(key).map(|b| b.0.as_slice()))
        }
        Source::Known(c) => {
            // The reconcile reads a Secret whose check lacks a use (kubeconfigs::usable).
            let verdict = c.verdict(&u).cloned().ok_or_else(|| Error::Unchecked {
                secret: format!("{}/{name}", sref.namespace),
                key: key.clone(),
            })?;
            (verdict, None)
        }
    };
    Ok(verdict.map(|()| {
        Some(KubeconfigCopy {
            secret: name,
            version: source.version(),
            key,
            bytes,
        })
    }))
}

/// How the agents get their TLS material, as decided.
#[derive(Clone, Debug, PartialEq)]
pub enum TlsPlan {
    /// Plain text.
    None,
    /// Mount this Secret (the shard's own, the operator's default, or one cert-manager
    /// fills).
    Mount(String),
    /// Apply this Secret (issued by the operator) and mount it.
    Issued(Secret),
    /// Apply this cert-manager Certificate and mount the Secret it fills.
    CertManager(DynamicObject, String),
}

struct Plan<'a> {
    config: AgentConfig,
    image: &'a str,
    tls: TlsPlan,
    /// When to look again, at the latest, for what is decided here.
    due: Vec<Timestamp>,
}

/// The agent config, the image and the TLS material; or the problem that keeps the spec
/// from becoming them.
fn plan<'a>(
    f: &Fetched<'a>,
    sref: &ShardRef,
    defaults: &'a Defaults,
    served: &[&AccountSpec],
    now: Timestamp,
) -> Result<Plan<'a>, Problem> {
    let shard = f.shard;
    let hub = children::hub_address(shard, defaults).ok_or_else(|| {
        Problem::new(
            reason::CONFIG_INVALID,
            "no hub address: set spec.hub.address, or start the operator with --default-hub",
        )
    })?;
    let image = children::image(shard, defaults).ok_or_else(|| {
        Problem::new(
            reason::CONFIG_INVALID,
            "no agent image: set spec.image, or start the operator with --default-image",
        )
    })?;
    let refused = |r: policy::Refused| Problem::new(r.reason, r.message);
    policy::check_image(
        shard,
        image,
        defaults.image.as_deref(),
        &defaults.allowed_images,
    )
    .map_err(refused)?;
    policy::check_service_account(
        shard,
        defaults.service_account.as_deref(),
        &defaults.allowed_service_accounts,
    )
    .map_err(refused)?;
    let mut due = Vec::new();
    let tls = match children::tls_source(shard, defaults) {
        TlsSource::None => TlsPlan::None,
        TlsSource::Secret(name) => {
            let expires = certs::check_secret(f.tls_secret, &name, sref, now)
                .map_err(|p| Problem::new(p.reason, p.message))?;
            due.push(expires);
            TlsPlan::Mount(name)
        }
        TlsSource::Issued(name) => {
            let ca = match f.agent_ca {
                Some(Ok(ca)) => ca,
                Some(Err(why)) => return Err(Problem::new(reason::AGENT_CA_INVALID, why.clone())),
                None => {
                    return Err(Problem::new(
                        reason::AGENT_CA_INVALID,
                        "the operator's CA has not been read",
                    ));
                }
            };
            let existing = f.tls_secret.and_then(|s| s.data.as_ref());
            let lifetime = defaults.cert_lifetime;
            let data: BTreeMap<String, ByteString> = match ca.assess(existing, sref, lifetime, now)
            {
                Assessment::Keep { renew_at } => {
                    due.push(renew_at);
                    existing.cloned().unwrap_or_default()
                }
                Assessment::Reissue(why) => {
                    tracing::info!(shard = %sref, %why, "issuing the agents' client certificate");
                    let data = ca
                        .issue(sref, lifetime, now)
                        .map_err(|e| Problem::new(reason::AGENT_CA_INVALID, e))?;
                    if let Assessment::Keep { renew_at } =
                        ca.assess(Some(&data), sref, lifetime, now)
                    {
                        due.push(renew_at);
                    }
                    data
                }
            };
            TlsPlan::Issued(children::tls_secret(sref, &name, data))
        }
        TlsSource::CertManager(name) => {
            if let Some(secret) = f.tls_secret {
                let expires = certs::check_secret(Some(secret), &name, sref, now)
                    .map_err(|p| Problem::new(p.reason, p.message))?;
                due.push(expires);
            }
            let issuer = defaults
                .cert_issuer
                .as_ref()
                .ok_or_else(|| Problem::new(reason::CONFIG_INVALID, "no cert-manager issuer"))?;
            TlsPlan::CertManager(
                children::certificate(sref, &name, issuer, defaults.cert_lifetime),
                name,
            )
        }
    };
    let with_tls = !matches!(tls, TlsPlan::None);
    let mut config = children::agent_config(sref, shard, hub, served, with_tls)
        .map_err(|e| Problem::new(reason::CONFIG_INVALID, e.to_string()))?;
    // The agents check every kubeconfig again against the same allowance.
    config.allow_kubeconfig = defaults.allow_kubeconfig.clone();
    Ok(Plan {
        config,
        image,
        tls,
        due,
    })
}

fn build_children(
    shard: &AgentShard,
    sref: &ShardRef,
    defaults: &Defaults,
    config_yaml: String,
    kubeconfigs: &BTreeMap<String, KubeconfigCopy<'_>>,
    image: &str,
    tls: TlsPlan,
) -> Result<Children> {
    let owner = shard
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingField {
            what: format!("AgentShard {sref}"),
            field: "metadata.uid",
        })?;
    let own_identity = children::own_service_account(shard, defaults);
    let sa = children::service_account_name(shard, defaults);
    let (tls_mount, tls_secret, certificate) = match tls {
        TlsPlan::None => (None, None, None),
        TlsPlan::Mount(name) => (Some(name), None, None),
        TlsPlan::Issued(secret) => (
            secret.metadata.name.clone(),
            Some(children::owned(secret, &owner)),
            None,
        ),
        TlsPlan::CertManager(mut cert, name) => {
            cert.metadata.owner_references = Some(vec![owner.clone()]);
            (Some(name), None, Some(cert))
        }
    };
    Ok(Children {
        identity: own_identity.then(|| {
            (
                children::service_account(sref, &owner),
                children::role(sref, &owner),
                children::role_binding(sref, &owner),
            )
        }),
        kubeconfigs: kubeconfigs_child(sref, &owner, kubeconfigs),
        tls: tls_secret,
        certificate,
        config_map: children::config_map(sref, &owner, config_yaml),
        deployment: children::deployment(
            sref,
            shard,
            &owner,
            image,
            &sa,
            tls_mount.as_deref(),
            defaults.agent_log_format,
        ),
        pdb: children::pdb(sref, shard, &owner),
    })
}

/// The agents' kubeconfig Secret copying `kubeconfigs` (account → its copy).
fn kubeconfigs_child(
    sref: &ShardRef,
    owner: &OwnerReference,
    kubeconfigs: &BTreeMap<String, KubeconfigCopy<'_>>,
) -> KubeconfigsChild {
    let empty = children::kubeconfig_secret(sref, owner, &BTreeMap::new());
    let desired = applied::desired_hash(&(&empty, kubeconfigs));
    let unread: BTreeSet<String> = kubeconfigs
        .values()
        .filter(|c| c.bytes.is_none())
        .map(|c| c.secret.to_owned())
        .collect();
    let secret = unread.is_empty().then(|| {
        let data: BTreeMap<String, Vec<u8>> = kubeconfigs
            .iter()
            .filter_map(|(account, c)| Some((account.clone(), c.bytes?.to_vec())))
            .collect();
        children::kubeconfig_secret(sref, owner, &data)
    });
    let from = kubeconfigs
        .iter()
        .filter_map(|(account, c)| {
            let key = (c.secret.to_owned(), c.key.to_owned(), c.version?.clone());
            Some((key, account.clone()))
        })
        .collect();
    KubeconfigsChild {
        desired,
        secret,
        unread,
        from,
    }
}

/// The accounts the stored status shows in the agent config that the spec no longer
/// lists, for when the config cannot be rewritten: they stay held (in a state of the
/// config, reason Releasing) until it can.
fn still_carried(shard: &AgentShard, replicas: &Replicas) -> Vec<AccountStatus> {
    let Some(old) = &shard.status else {
        return Vec::new();
    };
    old.accounts
        .iter()
        .filter(|a| {
            shard.spec.account(&a.name).is_none()
                && (a.state.served() || a.state == AccountState::Unknown)
        })
        .map(|a| {
            let v = replicas.account(&a.name);
            AccountStatus {
                state: v.state,
                reason: reason::RELEASING.to_owned(),
                message: format!(
                    "removed from the spec; the agent config still carries it until the shard's config problem is fixed ({})",
                    v.message
                ),
                owner_shard: None,
                ..a.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod more_tests;
