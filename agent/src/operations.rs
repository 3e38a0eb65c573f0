//! Operations from the hub, run against the account's cluster: apply (server-side apply,
//! field manager `scale-agent`), delete, patch, scale, rollout restart, get. Idempotent by
//! operation id (a repeated id returns the first result without running again), and
//! bounded by the operation's deadline.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::objects;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy as KubePropagation,
};
use kube::discovery::{ApiResource, Discovery, Scope};
use scale_agent_proto::v1::{
    ErrorCode, ObjectRef, Operation, OperationResult, PatchType, PropagationPolicy, operation::Kind,
};
use tokio::sync::OnceCell;

/// The field manager of every write the agent makes.
pub const FIELD_MANAGER: &str = "scale-agent";
const REMEMBERED: usize = 1024;

/// An account's cluster, as operations need it.
pub struct Cluster {
    /// Client for the cluster.
    pub client: kube::Client,
    /// The same client without retries, for the Kubernetes API requests the hub
    /// carries: their own client decides whether to try again.
    pub proxy: kube::Client,
    /// For the connection upgrades the hub carries (HTTP/1.1).
    pub upgrade: kube::Client,
    /// The cluster's API resources.
    pub discovery: Discovery,
}

/// Recent results by operation id, and the ids oldest first (to forget them in order).
type Remembered = (
    HashMap<String, Arc<OnceCell<OperationResult>>>,
    VecDeque<String>,
);

/// Runs operations and remembers recent results by id.
#[derive(Default)]
pub struct Operations {
    results: Mutex<Remembered>,
}

impl Operations {
    /// Runs `op` once per id; a repeated id waits for and returns the first run's result.
    pub async fn run(&self, op: Operation, cluster: Option<Arc<Cluster>>) -> OperationResult {
        let cell = {
            let Ok(mut guard) = self.results.lock() else {
                return failure(
                    &op.id,
                    ErrorCode::Internal,
                    500,
                    "operation table poisoned".into(),
                );
            };
            let (map, order) = &mut *guard;
            if let Some(c) = map.get(&op.id) {
                c.clone()
            } else {
                let c = Arc::new(OnceCell::new());
                map.insert(op.id.clone(), c.clone());
                order.push_back(op.id.clone());
                while order.len() > REMEMBERED {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
                c
            }
        };
        cell.get_or_init(|| execute(op, cluster)).await.clone()
    }
}

async fn execute(op: Operation, cluster: Option<Arc<Cluster>>) -> OperationResult {
    let id = op.id.clone();
    let Some(cluster) = cluster else {
        return failure(
            &id,
            ErrorCode::UnknownAccount,
            404,
            format!("account {} is not streamed by this replica", op.account),
        );
    };
    let budget = match op.deadline.as_ref() {
        Some(d) => {
            let deadline = SystemTime::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(d.seconds).unwrap_or(0),
                    u32::try_from(d.nanos).unwrap_or(0),
                );
            match deadline.duration_since(SystemTime::now()) {
                Ok(left) => left,
                Err(_) => {
                    return failure(
                        &id,
                        ErrorCode::DeadlineExceeded,
                        504,
                        "deadline passed before the operation started".into(),
                    );
                }
            }
        }
        None => Duration::from_secs(60),
    };
    let Some(kind) = op.kind else {
        return failure(
            &id,
            ErrorCode::Unsupported,
            400,
            "operation has no kind (newer hub?)".into(),
        );
    };
    match tokio::time::timeout(budget, dispatch(&cluster, kind)).await {
        Ok(Ok(obj)) => OperationResult {
            operation_id: id,
            success: true,
            message: String::new(),
            result_json: obj
                .map(|o| serde_json::to_vec(&objects::strip_result(o)).unwrap_or_default())
                .unwrap_or_default()
                .into(),
            error_code: ErrorCode::Unspecified as i32,
            http_status: 200,
        },
        Ok(Err(e)) => failure(&id, e.code, e.status, e.message),
        Err(_) => failure(
            &id,
            ErrorCode::DeadlineExceeded,
            504,
            format!("deadline of {budget:?} exceeded"),
        ),
    }
}

struct OpError {
    code: ErrorCode,
    status: i32,
    message: String,
}

impl From<kube::Error> for OpError {
    fn from(e: kube::Error) -> Self {
        match e {
            kube::Error::Api(s) => OpError {
                code: match s.code {
                    400 | 422 => ErrorCode::Invalid,
                    404 => ErrorCode::NotFound,
                    409 => ErrorCode::Conflict,
                    401 | 403 => ErrorCode::Forbidden,
                    _ => ErrorCode::Internal,
                },
                status: i32::from(s.code),
                message: s.message,
            },
            other => OpError {
                code: ErrorCode::Unavailable,
                status: 503,
                message: other.to_string(),
            },
        }
    }
}

fn invalid(message: String) -> OpError {
    OpError {
        code: ErrorCode::Invalid,
        status: 400,
        message,
    }
}

fn failure(id: &str, code: ErrorCode, status: i32, message: String) -> OperationResult {
    OperationResult {
        operation_id: id.to_string(),
        success: false,
        message,
        result_json: Default::default(),
        error_code: code as i32,
        http_status: status,
    }
}

/// Resolves a group/kind (version optional) to the cluster's resource and scope. An
/// empty group that the core group does not serve matches the one group that does
/// (`Deployment` means `Deployment.apps`).
fn resolve(
    discovery: &Discovery,
    group: &str,
    version: &str,
    kind: &str,
) -> Result<(ApiResource, bool), OpError> {
    let matches = |ar: &ApiResource| {
        ar.kind.eq_ignore_ascii_case(kind) && (version.is_empty() || ar.version == version)
    };
    let mut loose = Vec::new();
    for g in discovery.groups() {
        let exact = g.name() == group;
        if !exact && !group.is_empty() {
            continue;
        }
        let mut found: Vec<(ApiResource, bool)> = g
            .recommended_resources()
            .into_iter()
            .filter(|(ar, _)| matches(ar))
            .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced))
            .collect();
        if found.is_empty() && !version.is_empty() {
            for v in g.versions() {
                found.extend(
                    g.versioned_resources(v)
                        .into_iter()
                        .filter(|(ar, _)| matches(ar))
                        .map(|(ar, caps)| (ar, caps.scope == Scope::Namespaced)),
                );
            }
        }
        if exact {
            if let Some(first) = found.into_iter().next() {
                return Ok(first);
            }
        } else {
            loose.extend(found);
        }
    }
    match loose.len() {
        1 => Ok(loose.remove(0)),
        0 => Err(OpError {
            code: ErrorCode::NotFound,
            status: 404,
            message: format!("the cluster does not serve kind {kind} in group {group:?}"),
        }),
        _ => Err(invalid(format!(
            "kind {kind} is served by several groups ({}); name the group",
            loose
                .iter()
                .map(|(ar, _)| ar.group.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn api_for(
    cluster: &Cluster,
    target: &ObjectRef,
) -> Result<(Api<DynamicObject>, ApiResource), OpError> {
    let gvk = target.kind.clone().unwrap_or_default();
    let (ar, namespaced) = resolve(&cluster.discovery, &gvk.group, &gvk.version, &gvk.kind)?;
    let api = if namespaced {
        let ns = if target.namespace.is_empty() {
            "default"
        } else {
            &target.namespace
        };
        Api::namespaced_with(cluster.client.clone(), ns, &ar)
    } else {
        Api::all_with(cluster.client.clone(), &ar)
    };
    Ok((api, ar))
}

async fn dispatch(cluster: &Cluster, kind: Kind) -> Result<Option<serde_json::Value>, OpError> {
    match kind {
        Kind::Apply(a) => {
            let obj: DynamicObject = serde_json::from_slice(&a.manifest_json)
                .map_err(|e| invalid(format!("manifest is not a Kubernetes object: {e}")))?;
            let types = obj
                .types
                .clone()
                .ok_or_else(|| invalid("manifest has no apiVersion/kind".into()))?;
            let (group, version) = match types.api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), types.api_version.clone()),
            };
            let name = obj
                .metadata
                .name
                .clone()
                .ok_or_else(|| invalid("manifest has no metadata.name".into()))?;
            let target = ObjectRef {
                kind: Some(scale_agent_proto::v1::GroupVersionKind {
                    group,
                    version,
                    kind: types.kind.clone(),
                }),
                namespace: obj.metadata.namespace.clone().unwrap_or_default(),
                name: name.clone(),
            };
            let (api, _) = api_for(cluster, &target)?;
            let manager = if a.field_manager.is_empty() {
                FIELD_MANAGER
            } else {
                &a.field_manager
            };
            let mut pp = PatchParams::apply(manager);
            pp.force = a.force;
            let out = api.patch(&name, &pp, &Patch::Apply(&obj)).await?;
            answer(out)
        }
        Kind::Delete(d) => {
            let target = d.target.unwrap_or_default();
            let (api, _) = api_for(cluster, &target)?;
            let propagation_policy =
                match PropagationPolicy::try_from(d.propagation_policy).unwrap_or_default() {
                    PropagationPolicy::Orphan => Some(KubePropagation::Orphan),
                    PropagationPolicy::Background => Some(KubePropagation::Background),
                    PropagationPolicy::Foreground => Some(KubePropagation::Foreground),
                    PropagationPolicy::Unspecified => None,
                };
            let dp = DeleteParams {
                propagation_policy,
                grace_period_seconds: d.grace_period_seconds.and_then(|s| u32::try_from(s).ok()),
                ..DeleteParams::default()
            };
            api.delete(&target.name, &dp).await?;
            Ok(None)
        }
        Kind::Patch(p) => {
            let target = p.target.unwrap_or_default();
            let (api, _) = api_for(cluster, &target)?;
            let body: serde_json::Value = serde_json::from_slice(&p.patch)
                .map_err(|e| invalid(format!("patch is not JSON: {e}")))?;
            let manager = if p.field_manager.is_empty() {
                FIELD_MANAGER
            } else {
                &p.field_manager
            };
            let out = match PatchType::try_from(p.patch_type).unwrap_or_default() {
                PatchType::Merge | PatchType::Unspecified => {
                    api.patch(&target.name, &PatchParams::default(), &Patch::Merge(&body))
                        .await?
                }
                PatchType::Strategic => {
                    api.patch(
                        &target.name,
                        &PatchParams::default(),
                        &Patch::Strategic(&body),
                    )
                    .await?
                }
                PatchType::Apply => {
                    let mut pp = PatchParams::apply(manager);
                    pp.force = p.force;
                    api.patch(&target.name, &pp, &Patch::Apply(&body)).await?
                }
                PatchType::Json => json_patch(cluster, &api, &target.name, &p.patch).await?,
            };
            answer(out)
        }
        Kind::Scale(s) => {
            let target = s.target.unwrap_or_default();
            let (api, _) = api_for(cluster, &target)?;
            let replicas = serde_json::json!({ "spec": { "replicas": s.replicas } });
            let params = PatchParams::default();
            answer(
                api.patch_scale(&target.name, &params, &Patch::Merge(&replicas))
                    .await?,
            )
        }
        Kind::RolloutRestart(r) => {
            let target = r.target.unwrap_or_default();
            let (api, _) = api_for(cluster, &target)?;
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let restart = serde_json::json!({ "spec": { "template": { "metadata": { "annotations": {
                "kubectl.kubernetes.io/restartedAt": now
            }}}}});
            answer(
                api.patch(
                    &target.name,
                    &PatchParams::default(),
                    &Patch::Merge(&restart),
                )
                .await?,
            )
        }
        Kind::Get(g) => {
            let target = g.target.unwrap_or_default();
            let (api, _) = api_for(cluster, &target)?;
            answer(api.get(&target.name).await?)
        }
    }
}

/// What an operation returns: the object as the API server answered it.
fn answer(object: impl serde::Serialize) -> Result<Option<serde_json::Value>, OpError> {
    Ok(Some(serde_json::to_value(object).unwrap_or_default()))
}

/// A JSON patch (RFC 6902) sent as is.
async fn json_patch(
    cluster: &Cluster,
    api: &Api<DynamicObject>,
    name: &str,
    patch: &[u8],
) -> Result<DynamicObject, OpError> {
    let url = format!("{}/{}", api.resource_url(), name);
    let req = http::Request::patch(url)
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(patch.to_vec())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(cluster.client.request::<DynamicObject>(req).await?)
}
