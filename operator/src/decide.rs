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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::DynamicObject;
use scale_agent_crds::{
    AccountSpec, AccountState, AccountStatus, AgentConfig, AgentShard, KubeconfigProblem, ShardRef,
    claims,
};

use crate::certs::{self, AgentCa, Assessment};
use crate::children::{self, Defaults, TlsSource};
use crate::claims_index::Resolution;
use crate::error::{Error, Result};
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
    /// The kubeconfig Secrets of the accounts the shard owns, by name; `None`: not found.
    pub secrets: &'a BTreeMap<String, Option<Secret>>,
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
    pub kubeconfigs: Secret,
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
    fn or_sooner(self, at: Option<Duration>) -> Self {
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
        .filter_map(|a| a.kubeconfig_secret_name().map(str::to_owned))
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
    let at = now.0;
    let mut due: Vec<Timestamp> = f
        .replicas
        .next_expiry()
        .and_then(|t| t.checked_add(EXPIRY_MARGIN).ok())
        .into_iter()
        .collect();

    let mut accounts: Vec<AccountStatus> = Vec::with_capacity(shard.spec.accounts.len());
    let mut served: Vec<&AccountSpec> = Vec::new();
    let mut kubeconfigs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut waiting = false;
    for a in &shard.spec.accounts {
        let state = match f.resolutions.get(&a.name) {
            Some(Resolution::Owned) => match kubeconfig(&sref, a, f.secrets, defaults) {
                Ok(bytes) => {
                    if let Some(bytes) = bytes {
                        kubeconfigs.insert(a.name.clone(), bytes);
                    }
                    served.push(a);
                    let v = f.replicas.account(&a.name);
                    status::account(&a.name, v.state, &v.reason, v.message, None)
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
    })
}

/// The account's kubeconfig, checked (`None` for an in-cluster account); or why it
/// cannot be used (reason, message).
fn kubeconfig(
    sref: &ShardRef,
    a: &AccountSpec,
    secrets: &BTreeMap<String, Option<Secret>>,
    defaults: &Defaults,
) -> Result<Option<Vec<u8>>, (&'static str, String)> {
    let Some(r) = &a.kubeconfig_secret_ref else {
        return if a.in_cluster {
            Ok(None)
        } else {
            Err((
                reason::KUBECONFIG_INVALID,
                "set kubeconfigSecretRef or inCluster: true".to_owned(),
            ))
        };
    };
    if a.in_cluster {
        return Err((
            reason::KUBECONFIG_INVALID,
            "kubeconfigSecretRef and inCluster cannot both be set".to_owned(),
        ));
    }
    let (name, key) = (&r.name, &r.key);
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
    scale_agent_crds::check_kubeconfig(
        &bytes.0,
        a.scope.context.as_deref(),
        &defaults.allow_kubeconfig,
    )
    .map(|_| Some(bytes.0.clone()))
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
    kubeconfigs: &BTreeMap<String, Vec<u8>>,
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
        kubeconfigs: children::kubeconfig_secret(sref, &owner, kubeconfigs),
        tls: tls_secret,
        certificate,
        config_map: children::config_map(sref, &owner, config_yaml),
        deployment: children::deployment(sref, shard, &owner, image, &sa, tls_mount.as_deref()),
        pdb: children::pdb(sref, shard, &owner),
    })
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
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::report::{AccountReport, HubLink, HubState, ReplicaReport, StreamState};
    use scale_agent_crds::{AgentShardStatus, CONFIG_KEY, condition_type};

    use super::*;
    use crate::replicas::ReplicaView;
    use crate::status::DeploymentView;

    /// One live replica streaming `accounts`, its Lease expiring at 1 010.
    fn streaming_replicas(accounts: &[&str]) -> Replicas {
        Replicas {
            members: vec![ReplicaView {
                replica: "east-agent-x".into(),
                expires: Timestamp::from_second(1_010).expect("t"),
                report: Ok(ReplicaReport {
                    hub: HubLink {
                        state: HubState::Connected,
                        message: String::new(),
                    },
                    accounts: accounts
                        .iter()
                        .map(|a| ((*a).to_owned(), AccountReport::new(StreamState::Streaming)))
                        .collect(),
                    truncated: false,
                }),
            }],
            ignored: Vec::new(),
        }
    }

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";

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
                tls_secret: None,
                agent_ca: None,
                replicas: &Replicas::default(),
            },
            &defaults(),
            &t(1_000),
        )
        .expect("decides")
    }

    /// Decides `s` owning its account a, whose kubeconfig is valid.
    fn decide_a(s: &AgentShard, replicas: &Replicas, defaults: &Defaults, now: i64) -> Decision {
        decide(
            Fetched {
                shard: s,
                resolutions: &owned(&["a"]),
                secrets: &secrets(&[("kc-a", secret(Some(KUBECONFIG)))]),
                tls_secret: None,
                agent_ca: None,
                replicas,
            },
            defaults,
            &t(now),
        )
        .expect("decides")
    }

    /// The operator's defaults for these tests: the shards' image is its own.
    fn defaults() -> Defaults {
        Defaults {
            image: Some("example.com/agent:1".into()),
            ..Defaults::default()
        }
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
        // No replica runs yet: in the config, not streaming.
        assert_eq!(
            states(&d),
            [
                ("a".into(), AccountState::NoReplica, "NoReplica".into()),
                ("b".into(), AccountState::NoReplica, "NoReplica".into())
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
        let seen = status::compute(None, &first.observed, t(1_000));
        s.status = Some(status::compute(Some(&seen), &first.observed, t(1_000)));
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
                ("a".into(), AccountState::NoReplica, "NoReplica".into()),
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
        // Nothing streams yet; one account is in the config, two are left out.
        assert_eq!((st.active_accounts, st.conflicts), (0, 2));
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
                "NoReplica"
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

    /// An account pointed at a Secret that is not a kubeconfig (a service-account token, a
    /// private key) is Invalid; its message says where the YAML broke, never what the
    /// Secret holds: whoever may write AgentShards must not read Secrets through them.
    #[test]
    fn a_secret_that_is_not_a_kubeconfig_is_never_quoted() {
        const JWT: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6Ik1ZS0VZIn0.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6ZGVmYXVsdDphZG1pbiJ9.U0lHTkFUVVJFU0lHTkFUVVJF";
        const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIHNlY3JldHNlY3JldHNlY3JldHNlY3JldHNlY3JldHNlY3JldA==\n-----END EC PRIVATE KEY-----\n";
        let s = shard(&["token", "key"]);
        let d = run(
            &s,
            &owned(&["token", "key"]),
            &secrets(&[
                ("kc-token", secret(Some(JWT))),
                ("kc-key", secret(Some(KEY))),
            ]),
        );
        for a in &d.observed.accounts {
            assert_eq!(a.reason, "KubeconfigInvalid", "{a:?}");
            assert!(
                a.message.contains(&format!("Secret kc-{}", a.name)),
                "{}",
                a.message
            );
            for secret in ["eyJhbGci", "U0lHTkFU", "MHcCAQEE", "c2VjcmV0"] {
                assert!(!a.message.contains(secret), "{}", a.message);
            }
        }
    }

    /// A kubeconfig that would run a program in the agent is Invalid (KubeconfigRefused)
    /// and left out of the agent config, unless the operator allows exec; the agents get
    /// the same allowance, to check again.
    #[test]
    fn kubeconfigs_that_run_code_are_refused_unless_allowed() {
        let exec = KUBECONFIG.replace(
            "user: {}",
            "user:\n    exec: { apiVersion: client.authentication.k8s.io/v1, command: /bin/sh }",
        );
        let s = shard(&["exec", "ok"]);
        let sec = secrets(&[
            ("kc-exec", secret(Some(&exec))),
            ("kc-ok", secret(Some(KUBECONFIG))),
        ]);
        let d = run(&s, &owned(&["exec", "ok"]), &sec);
        let got = states(&d);
        assert_eq!(got[0].2, "KubeconfigRefused", "{got:?}");
        let st = status::compute(None, &d.observed, t(1_000));
        let exec_status = st.account("exec").expect("exec account");
        assert_eq!(exec_status.state, AccountState::Invalid);
        assert!(
            exec_status.message.contains("exec")
                && exec_status.message.contains("--allow-kubeconfig=exec"),
            "{}",
            exec_status.message
        );
        assert_eq!(config(&d).accounts.len(), 1);
        assert!(config(&d).allow_kubeconfig.is_empty());

        let allowing = Defaults {
            allow_kubeconfig: scale_agent_crds::KubeconfigAllow(vec![
                scale_agent_crds::KubeconfigFeature::Exec,
            ]),
            ..defaults()
        };
        let d = decide(
            Fetched {
                shard: &s,
                resolutions: &owned(&["exec", "ok"]),
                secrets: &sec,
                tls_secret: None,
                agent_ca: None,
                replicas: &Replicas::default(),
            },
            &allowing,
            &t(1_000),
        )
        .expect("decides");
        assert_eq!(config(&d).accounts.len(), 2);
        assert_eq!(config(&d).allow_kubeconfig, allowing.allow_kubeconfig);
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
                .as_ref()
                .is_some_and(|p| p.message.contains("--default-hub"))
        );
        assert_eq!(
            states(&d),
            [
                ("a".into(), AccountState::NoReplica, "NoReplica".into()),
                ("b".into(), AccountState::NoReplica, "Releasing".into()),
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
            ..Defaults::default()
        };
        let d = decide_a(&s, &Replicas::default(), &defaults, 1);
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
        let streaming = streaming_replicas(&["a"]);
        let mut d = decide_a(&s, &streaming, &defaults(), 1_000);
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
        // Ready is Unknown on first sight, then what the replicas and the rollout say.
        let first = status::compute(None, &d.observed, t(1_000));
        assert!(
            first
                .condition(condition_type::READY)
                .is_some_and(|c| c.status == "Unknown")
        );
        let st = status::compute(Some(&first), &d.observed, t(1_000));
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
                tls_secret: None,
                agent_ca: None,
                replicas: &Replicas::default(),
            },
            &defaults(),
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

#[cfg(test)]
mod more_tests {
    //! Streaming states, certificates, policy and timing.

    use k8s_openapi::ByteString;
    use k8s_openapi::jiff::Timestamp;
    use scale_agent_crds::report::{AccountReport, HubLink, ReplicaReport, StreamState};
    use scale_agent_crds::{CONFIG_KEY, HubSpec, LocalObjectRef};

    use super::*;
    use crate::replicas::ReplicaView;

    const KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://192.0.2.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n";
    const NOW: i64 = 1_800_000_000;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).expect("valid"))
    }

    fn shard(spec: serde_json::Value) -> AgentShard {
        let mut s = AgentShard::new("east", serde_json::from_value(spec).expect("spec"));
        s.metadata.namespace = Some("ns".into());
        s.metadata.uid = Some("uid-1".into());
        s.metadata.generation = Some(1);
        s.metadata.creation_timestamp = Some(t(100));
        s
    }

    fn one_account() -> AgentShard {
        shard(serde_json::json!({
            "hub": { "address": "hub.example.com:443" },
            "accounts": [{ "name": "a", "kubeconfigSecretRef": { "name": "kc-a" } }]
        }))
    }

    fn kc() -> BTreeMap<String, Option<Secret>> {
        [(
            "kc-a".to_owned(),
            Some(Secret {
                data: Some(
                    [(
                        "kubeconfig".to_owned(),
                        ByteString(KUBECONFIG.as_bytes().to_vec()),
                    )]
                    .into(),
                ),
                ..Secret::default()
            }),
        )]
        .into()
    }

    fn defaults() -> Defaults {
        Defaults {
            image: Some("ghcr.io/scale-agent/scale-agent:v1".into()),
            ..Defaults::default()
        }
    }

    fn replica(connected: bool, accounts: &[(&str, StreamState)]) -> Replicas {
        Replicas {
            members: vec![ReplicaView {
                replica: "east-agent-x".into(),
                expires: Timestamp::from_second(NOW + 7).expect("t"),
                report: Ok(ReplicaReport {
                    hub: HubLink::new(
                        connected,
                        "TLS: reading /etc/scale-agent/tls/ca.crt: No such file",
                    ),
                    accounts: accounts
                        .iter()
                        .map(|(a, s)| {
                            (
                                (*a).to_owned(),
                                AccountReport::because(
                                    *s,
                                    if *s == StreamState::Refused {
                                        "NotOwner"
                                    } else {
                                        ""
                                    },
                                    "why",
                                ),
                            )
                        })
                        .collect(),
                    truncated: false,
                }),
            }],
            ignored: Vec::new(),
        }
    }

    fn run_with(
        s: &AgentShard,
        d: &Defaults,
        replicas: &Replicas,
        tls_secret: Option<&Secret>,
        agent_ca: Option<&std::result::Result<AgentCa, String>>,
    ) -> Decision {
        decide(
            Fetched {
                shard: s,
                resolutions: &[("a".to_owned(), Resolution::Owned)].into(),
                secrets: &kc(),
                tls_secret,
                agent_ca,
                replicas,
            },
            d,
            &t(NOW),
        )
        .expect("decides")
    }

    fn state(d: &Decision) -> (AccountState, String) {
        let a = &d.observed.accounts[0];
        (a.state, a.reason.clone())
    }

    #[test]
    fn an_account_is_active_only_while_a_live_replica_reports_it_streaming() {
        let s = one_account();
        for (replicas, expected) in [
            (
                replica(true, &[("a", StreamState::Streaming)]),
                (AccountState::Active, "Streaming"),
            ),
            (
                replica(true, &[("a", StreamState::Syncing)]),
                (AccountState::Syncing, "Syncing"),
            ),
            (
                replica(true, &[("a", StreamState::Refused)]),
                (AccountState::RefusedByHub, "NotOwner"),
            ),
            (
                replica(true, &[("a", StreamState::ClusterUnreachable)]),
                (AccountState::ClusterUnreachable, "ClusterUnreachable"),
            ),
            (
                replica(false, &[("a", StreamState::Streaming)]),
                (AccountState::HubUnreachable, "HubUnreachable"),
            ),
            (replica(true, &[]), (AccountState::NoReplica, "NoReplica")),
            (Replicas::default(), (AccountState::NoReplica, "NoReplica")),
        ] {
            let d = run_with(&s, &defaults(), &replicas, None, None);
            assert_eq!(state(&d), (expected.0, expected.1.to_owned()));
            // Every such state keeps the name this shard's.
            assert!(d.observed.accounts[0].state.holds());
        }
    }

    #[test]
    fn the_shard_is_looked_at_again_when_a_replica_lease_expires() {
        let d = run_with(
            &one_account(),
            &defaults(),
            &replica(true, &[("a", StreamState::Streaming)]),
            None,
            None,
        );
        assert_eq!(d.next, Next::At(Duration::from_secs(8)));
        let quiet = run_with(
            &one_account(),
            &defaults(),
            &Replicas::default(),
            None,
            None,
        );
        assert_eq!(quiet.next, Next::Resync);
    }

    #[test]
    fn an_image_or_service_account_not_allowed_is_a_config_problem_and_nothing_rolls_out() {
        let mut s = one_account();
        s.spec.image = Some("attacker.example.com/miner:latest".into());
        let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
        assert!(d.children.is_none());
        assert_eq!(
            d.observed.config_problem.as_ref().map(|p| p.reason),
            Some("ImageNotAllowed")
        );
        let mut s = one_account();
        s.spec.service_account_name = Some("cluster-admin".into());
        let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
        assert_eq!(
            d.observed.config_problem.as_ref().map(|p| p.reason),
            Some("ServiceAccountNotAllowed")
        );
        let allowed = Defaults {
            allowed_images: crate::policy::Allowed::new(["attacker.example.com/*"]),
            ..defaults()
        };
        let mut s = one_account();
        s.spec.image = Some("attacker.example.com/miner:latest".into());
        assert!(
            run_with(&s, &allowed, &Replicas::default(), None, None)
                .children
                .is_some()
        );
    }

    #[test]
    fn a_tls_secret_the_agents_could_not_use_is_reported_not_rolled_out() {
        let mut s = one_account();
        s.spec.hub = Some(HubSpec {
            address: "hub:443".into(),
            tls_secret_ref: Some(LocalObjectRef {
                name: "mtls".into(),
            }),
        });
        let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
        assert!(d.children.is_none());
        let p = d.observed.config_problem.expect("a problem");
        assert_eq!(p.reason, "TlsSecretNotFound");
        assert!(p.message.contains("mtls"), "{}", p.message);
    }

    #[test]
    fn the_operator_issues_the_certificate_mounts_it_and_keeps_it_until_renewal() {
        let ca = test_ca();
        let issuing = Defaults {
            agent_ca: Some(ShardRef::new("system", "ca")),
            cert_lifetime: Duration::from_secs(120),
            ..defaults()
        };
        let d = run_with(
            &one_account(),
            &issuing,
            &Replicas::default(),
            None,
            Some(&Ok(ca.clone_for_test())),
        );
        let c = d.children.expect("children");
        let tls = c.tls.expect("the issued Secret");
        assert_eq!(tls.metadata.name.as_deref(), Some("east-agent-tls"));
        assert_eq!(
            tls.metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].kind.as_str()),
            Some("AgentShard")
        );
        let pod = c
            .deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert!(
            pod.volumes.iter().flatten().any(|v| v
                .secret
                .as_ref()
                .and_then(|s| s.secret_name.as_deref())
                == Some("east-agent-tls"))
        );
        let config =
            AgentConfig::from_yaml(&c.config_map.data.expect("data")[CONFIG_KEY]).expect("config");
        assert!(config.hub.tls.is_some());
        // Renewal due at two thirds of the lifetime (the certificate starts 30 s early).
        assert!(
            matches!(d.next, Next::At(d) if (65..=75).contains(&d.as_secs())),
            "{:?}",
            d.next
        );
        // Next time the same certificate is kept.
        let again = run_with(
            &one_account(),
            &issuing,
            &Replicas::default(),
            Some(&tls),
            Some(&Ok(ca.clone_for_test())),
        );
        assert_eq!(
            again.children.and_then(|c| c.tls).and_then(|s| s.data),
            tls.data
        );
        // A CA that cannot issue is a config problem.
        let broken = run_with(
            &one_account(),
            &issuing,
            &Replicas::default(),
            None,
            Some(&Err("the CA Secret system/ca does not exist".into())),
        );
        assert_eq!(
            broken.observed.config_problem.map(|p| p.reason),
            Some("AgentCaInvalid")
        );
    }

    /// A CA for tests, as the Secret the operator reads.
    struct TestCa(Secret);

    impl TestCa {
        fn clone_for_test(&self) -> AgentCa {
            AgentCa::from_secret(&self.0, "system/ca").expect("CA")
        }
    }

    fn test_ca() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("cert");
        TestCa(Secret {
            data: Some(
                [
                    ("tls.crt".to_owned(), ByteString(cert.pem().into_bytes())),
                    (
                        "tls.key".to_owned(),
                        ByteString(key.serialize_pem().into_bytes()),
                    ),
                ]
                .into(),
            ),
            ..Secret::default()
        })
    }

    #[test]
    fn an_in_cluster_account_needs_no_kubeconfig() {
        let s = shard(serde_json::json!({
            "hub": { "address": "hub.example.com:443" },
            "accounts": [{ "name": "a", "inCluster": true }]
        }));
        let d = run_with(&s, &defaults(), &Replicas::default(), None, None);
        assert_eq!(d.observed.accounts[0].state, AccountState::NoReplica);
        let c = d.children.expect("children");
        let config =
            AgentConfig::from_yaml(&c.config_map.data.expect("data")[CONFIG_KEY]).expect("config");
        assert!(config.accounts[0].in_cluster);
        assert!(c.kubeconfigs.data.unwrap_or_default().is_empty());
    }
}
