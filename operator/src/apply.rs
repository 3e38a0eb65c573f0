//! The reconciler's writes: the children by server-side apply (field manager
//! `scale-agent-operator`, forced: the operator owns them), the status through the status
//! subresource as a merge patch of what changed, and the Events its transitions deserve.
//! [`crate::decide`] says what to write and in which order.

use std::time::Instant;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use scale_agent_crds::{AgentShard, AgentShardStatus, ShardRef, deployment_name};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::applied::{self, Applied, ChildKey, Record, Seen, Watched};
use crate::children::{self, FIELD_MANAGER};
use crate::decide::Children;
use crate::error::{Error, Result};
use crate::status;

/// What the operator applies: a shard's child, a typed namespaced object.
trait ChildObject:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Serialize
    + DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> ChildObject for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug
{
}

/// Server-side applies `obj` in `ns`; returns it as the server has it.
async fn apply<K: ChildObject>(client: &Client, ns: &str, obj: &K) -> Result<K> {
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| Error::kube(format!("applying {} {ns}/{name}", K::kind(&())), e))
}

/// Applies every child of `shard` (whose uid is `owner_uid`) that needs it
/// ([`applied::needs_apply`]): the agents' identity, then at once the kubeconfigs, the
/// TLS Secret or cert-manager Certificate, and the config (the Deployment mounts them),
/// then the Deployment, and the PodDisruptionBudget — or deletes the budget the shard
/// owns when it needs none.
/// Returns the Deployment as the server has it, with its status (as the watch shows it
/// when it was left as it is).
pub async fn children(
    client: &Client,
    shard: &ShardRef,
    owner_uid: Option<&str>,
    c: &Children,
    applied: &Applied,
    watched: &Watched,
) -> Result<Deployment> {
    let ns = shard.namespace.as_str();
    let child = Child {
        client,
        shard,
        applied,
        now: Instant::now(),
    };
    if let Some((sa, role, binding)) = &c.identity {
        child.apply(sa, Seen::Unwatched).await?;
        child.apply(role, Seen::Unwatched).await?;
        child.apply(binding, Seen::Unwatched).await?;
    }
    let seen_secret = |s: &Secret| watched.secret(ns, s.metadata.name.as_deref().unwrap_or(""));
    let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
    // What the Deployment mounts, at once: each is its own volume, which kubelet
    // refreshes on its own, so their order would promise the agents nothing, and an
    // edit waits for one round trip instead of one each.
    let kubeconfigs = async {
        // Without its data the reconcile found it need not be applied (kubeconfigs_due).
        if let Some(kubeconfigs) = &c.kubeconfigs.secret {
            child
                .apply_as(kubeconfigs, c.kubeconfigs.desired, seen_secret(kubeconfigs))
                .await?;
        }
        Ok::<_, Error>(())
    };
    let tls = async {
        if let Some(tls) = &c.tls {
            child.apply(tls, seen_secret(tls)).await?;
        }
        if let Some(cert) = &c.certificate {
            child.apply_certificate(cert).await?;
        }
        Ok::<_, Error>(())
    };
    let config = async {
        child
            .apply(
                &c.config_map,
                watched.config_map(ns, &name(&c.config_map.metadata)),
            )
            .await?;
        Ok::<_, Error>(())
    };
    futures::try_join!(kubeconfigs, tls, config)?;
    let dep_name = name(&c.deployment.metadata);
    let dep = match child
        .apply(&c.deployment, watched.deployment(ns, &dep_name))
        .await?
    {
        Some(d) => d,
        None => match watched
            .deployments
            .get(&ObjectRef::new(&dep_name).within(ns))
        {
            Some(d) => d.as_ref().clone(),
            // Not in the watch (it lags behind, or the Deployment went since it was
            // looked at): as the API server has it, else applied.
            None => match read_deployment(client, shard).await? {
                Some(d) => d,
                None => apply::<Deployment>(client, ns, &c.deployment).await?,
            },
        },
    };
    match &c.pdb {
        Some(pdb) => {
            child
                .apply(pdb, watched.pdb(ns, &name(&pdb.metadata)))
                .await?;
        }
        None => {
            // Only a budget the watch shows can be the shard's (the watch brings one that
            // appears, and with it a reconcile).
            if watched.pdb(ns, &deployment_name(&shard.name)) != Seen::Watched(None) {
                delete_owned_pdb(client, shard, owner_uid).await?;
            }
        }
    }
    Ok(dep)
}

/// One reconcile's applies of a shard's children, each only when it needs it.
struct Child<'a> {
    client: &'a Client,
    shard: &'a ShardRef,
    applied: &'a Applied,
    now: Instant,
}

impl Child<'_> {
    /// Applies `obj` unless it is what the operator last applied and still sees
    /// (`seen`); returns it as the server has it when applied.
    async fn apply<K: ChildObject>(&self, obj: &K, seen: Seen) -> Result<Option<K>> {
        self.apply_as(obj, applied::desired_hash(obj), seen).await
    }

    /// [`Self::apply`], with `desired` standing for the object's content.
    async fn apply_as<K: ChildObject>(
        &self,
        obj: &K,
        desired: u64,
        seen: Seen,
    ) -> Result<Option<K>> {
        let key = ChildKey {
            kind: K::kind(&()).into_owned(),
            name: obj.meta().name.clone().unwrap_or_default(),
        };
        if !self.due::<K>(&key, desired, seen).await? {
            return Ok(None);
        }
        let written = self
            .write(key, desired, apply(self.client, &self.shard.namespace, obj))
            .await?;
        Ok(Some(written))
    }

    /// Whether the child `key`, whose desired object hashes to `desired`, seen as
    /// `seen`, must be applied ([`applied::needs_apply`]).
    async fn due<K: ChildObject>(&self, key: &ChildKey, desired: u64, seen: Seen) -> Result<bool> {
        let last = self.applied.get(self.shard, key);
        if let Some(last) = &last
            && applied::unconfirmed(last, desired, seen)
        {
            // The watch has not shown the operator's last apply of this very object
            // yet (it lags behind, or the child is gone): a read tells which, where
            // applying it again would be a write, and a watch event, for nothing.
            let ns = &self.shard.namespace;
            let found = Api::<K>::namespaced(self.client.clone(), ns)
                .get_metadata_opt(&key.name)
                .await
                .map_err(|e| Error::kube(format!("reading {} {ns}/{}", key.kind, key.name), e))?;
            return Ok(found.is_none_or(|m| applied::fingerprint(&m.metadata) != last.observed));
        }
        Ok(applied::needs_apply(last.as_ref(), desired, seen, self.now))
    }

    /// [`apply_certificate`], when it needs it (the Certificate is not watched).
    async fn apply_certificate(&self, cert: &DynamicObject) -> Result<()> {
        let key = ChildKey {
            kind: "Certificate".to_owned(),
            name: cert.metadata.name.clone().unwrap_or_default(),
        };
        let desired = applied::desired_hash(cert);
        let last = self.applied.get(self.shard, &key);
        if !applied::needs_apply(last.as_ref(), desired, Seen::Unwatched, self.now) {
            return Ok(());
        }
        let write = apply_certificate(self.client, &self.shard.namespace, cert);
        self.write(key, desired, write).await?;
        Ok(())
    }

    /// Runs `write` (the apply of `key`, whose desired object hashes to `desired`) and
    /// records what it left.
    async fn write<K: Resource>(
        &self,
        key: ChildKey,
        desired: u64,
        write: impl Future<Output = Result<K>>,
    ) -> Result<K> {
        match write.await {
            Ok(k) => {
                let record = Record {
                    desired,
                    observed: applied::fingerprint(k.meta()),
                    at: self.now,
                };
                self.applied.record(self.shard, key, record);
                Ok(k)
            }
            Err(e) => {
                self.applied.forget_child(self.shard, &key);
                Err(e)
            }
        }
    }
}

/// Whether the agents' kubeconfig Secret of `shard`, whose content hashes to `desired`
/// ([`crate::decide::KubeconfigsChild`]), must be applied: the reconcile reads the
/// Secrets it copies only then.
pub async fn kubeconfigs_due(
    client: &Client,
    shard: &ShardRef,
    desired: u64,
    applied: &Applied,
    watched: &Watched,
) -> Result<bool> {
    let child = Child {
        client,
        shard,
        applied,
        now: Instant::now(),
    };
    let name = scale_agent_crds::kubeconfig_secret_name(&shard.name);
    let seen = watched.secret(&shard.namespace, &name);
    let key = ChildKey {
        kind: Secret::kind(&()).into_owned(),
        name,
    };
    child.due::<Secret>(&key, desired, seen).await
}

/// Server-side applies a cert-manager Certificate; returns it as the server has it.
async fn apply_certificate(
    client: &Client,
    ns: &str,
    cert: &DynamicObject,
) -> Result<DynamicObject> {
    let name = cert.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &children::certificate_api_resource());
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(cert),
    )
    .await
    .map_err(|e| {
        Error::kube(
            format!("applying Certificate {ns}/{name} (is cert-manager installed?)"),
            e,
        )
    })
}

async fn delete_owned_pdb(
    client: &Client,
    shard: &ShardRef,
    owner_uid: Option<&str>,
) -> Result<()> {
    let ns = shard.namespace.as_str();
    let api: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    let name = deployment_name(&shard.name);
    let Some(existing) = api
        .get_metadata_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("reading PodDisruptionBudget {ns}/{name}"), e))?
    else {
        return Ok(());
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(o.uid.as_str()) == owner_uid);
    if !ours {
        return Ok(());
    }
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("deleting PodDisruptionBudget {ns}/{name}"),
            e,
        )),
    }
}

/// The shard's agent Deployment, when the children are left as they are.
pub async fn read_deployment(client: &Client, shard: &ShardRef) -> Result<Option<Deployment>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), &shard.namespace);
    api.get_opt(&deployment_name(&shard.name))
        .await
        .map_err(|e| Error::kube(format!("reading the Deployment of {shard}"), e))
}

/// What became of a status write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Written {
    /// Written; the shard's new resourceVersion.
    Yes(Option<String>),
    /// Nothing to write: the status is already what it should be.
    Unchanged,
    /// Not written: the shard changed since it was read (the cache is behind the
    /// operator's own writes, or the shard was deleted or created again). The watch
    /// brings the newer version and a new reconcile.
    Stale,
}

/// Records the accounts of `reserved` ([`status::reserved`]) in the shard's status
/// (`old`) before its agent config carries them (the other conditions follow with the
/// full status write), only onto the version of the shard they were decided from
/// (`resource_version`).
pub async fn reserve(
    client: &Client,
    shard: &ShardRef,
    resource_version: Option<&str>,
    old: Option<&AgentShardStatus>,
    reserved: &AgentShardStatus,
) -> Result<Written> {
    let Some(patch) = status::patch(old, reserved) else {
        return Ok(Written::Unchanged);
    };
    patch_status(client, shard, resource_version, patch).await
}

/// Writes `new` as the status of `shard` (as read, at `resource_version`, its status
/// then `stored`: the one read, or what the reserve just wrote) when it differs from
/// `stored` (only the fields that changed, and only onto that version), and publishes
/// the Events its transitions since the status read deserve.
pub async fn status(
    client: &Client,
    recorder: &Recorder,
    shard: &AgentShard,
    sref: &ShardRef,
    resource_version: Option<&str>,
    stored: Option<&AgentShardStatus>,
    new: &AgentShardStatus,
) -> Result<Written> {
    let old = shard.status.as_ref();
    let Some(patch) = status::patch(stored, new) else {
        return Ok(Written::Unchanged);
    };
    let written = patch_status(client, sref, resource_version, patch).await?;
    if !matches!(written, Written::Yes(_)) {
        return Ok(written);
    }
    let reference = shard.object_ref(&());
    for n in status::notices(old, new) {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.to_owned(),
            note: Some(n.note.clone()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = n.reason, "publishing an Event failed");
        }
    }
    Ok(written)
}

/// Merge-patches the status subresource with `status`, on the condition that the shard
/// is still at `resource_version` (the status was decided from that version; another
/// one, even the same name created again, gets a 409).
async fn patch_status(
    client: &Client,
    shard: &ShardRef,
    resource_version: Option<&str>,
    status: serde_json::Value,
) -> Result<Written> {
    let api: Api<AgentShard> = Api::namespaced(client.clone(), &shard.namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": resource_version },
        "status": status,
    });
    match api
        .patch_status(&shard.name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(s) => Ok(Written::Yes(s.metadata.resource_version)),
        // Changed, or deleted, meanwhile.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(Written::Stale),
        Err(e) => Err(Error::kube(
            format!("writing the status of AgentShard {shard}"),
            e,
        )),
    }
}
