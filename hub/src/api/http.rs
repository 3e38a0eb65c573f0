//! The HTTP JSON API: accounts, cached objects, operations; `/metrics` and
//! `/healthz`.
//!
//! - `GET /v1/accounts` → `[Account]` (`clusterId` only with an API token)
//! - `GET /v1/accounts/{account}` → `Account` with `resumePoints` (404 when unknown)
//! - `GET /v1/accounts/{account}/objects?kind=&namespace=` → `[Object]`
//! - `GET /v1/accounts/{account}/objects/{kind}/{namespace}/{name}` → `Object`
//!   (`_` for the namespace of cluster-scoped objects; kind case-insensitive,
//!   `Kind.group` to pick a group; 404 when absent, 409 when ambiguous)
//! - `POST /v1/accounts/{account}/operations` → `Outcome`: 200 success, 422
//!   the agent or API server refused it, 400 malformed request, 404 unknown
//!   account, 409 the request's `id` was used on this account for a
//!   different request, 503 account disconnected, 504 no result before the
//!   deadline. An `id` is the caller's, scoped to the account: the same
//!   request with the same id is answered once and the result returned again.
//!
//! Lists come in pages ([`page`]): `?limit=` (default 500, at most 5000)
//! and `?continue=` with the token of the `x-continue` response header.
//!
//! Errors are `{"error": "..."}`.
//!
//! With an API token (`--api-token-file`), every `/v1/...` request needs
//! `Authorization: Bearer <token>`; without it or with another token the answer
//! is 401. The file holds one token for every account, or lines of `<token>
//! <accounts>` as the Kubernetes API's tokens file ([`auth`]): a token for some
//! accounts lists only those, and gets 403 for anything about another (known or
//! not). `/healthz` and `/metrics` stay open. The file is re-read when it
//! changes, so a token can be rotated without a restart.

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;

use crate::api::page::{self, PageQuery};
use crate::core::cache::{AccountCache, CachedObject, ObjectKey, ObjectRef};
use crate::core::operation_request::{self, OperationRequest};
use crate::core::operations::Outcome;
use crate::core::registry::{Account, AccountState};
use crate::kubeapi::auth::{self, Scope, Tokens};
use crate::replicas;
use crate::state::{Core, Shared};
use crate::stream::routing::{self, NotRouted, Operated};

async fn require_token(
    State((shared, tokens)): State<(Arc<Shared>, Arc<Tokens>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let (status, message) = match tokens.scope(request.headers()) {
        Ok((line, scope)) => {
            // A token for some accounts may list them (the list shows only those)
            // and use each; anything else about an account is refused, known or not,
            // so that a token cannot probe for the names of others.
            let allowed = match replicas::forward::account_in_path(path) {
                Some(account) => scope.allows(&account),
                None => scope == Scope::All || path == "/v1/accounts",
            };
            if allowed {
                request.extensions_mut().insert(scope);
                return next.run(request).await;
            }
            warn!(path = %path, token_line = line, "HTTP API request refused: the token is not allowed this account");
            (
                StatusCode::FORBIDDEN,
                "the bearer token is not allowed this account",
            )
        }
        Err(_) if auth::bearer(request.headers()).is_some() => {
            (StatusCode::UNAUTHORIZED, "the bearer token is not valid")
        }
        Err(_) => (
            StatusCode::UNAUTHORIZED,
            "this API needs an Authorization: Bearer <token> header",
        ),
    };
    shared.metrics.http_unauthorized.inc();
    let mut response = ApiError::new(status, message).into_response();
    if status == StatusCode::UNAUTHORIZED {
        warn!(path = %path, message, "HTTP API request refused");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"scale-agent-hub\""),
        );
    }
    response
}

/// The router over the shared state; `/v1/...` needs `token` when set.
pub fn router(shared: Arc<Shared>, token: Option<Arc<Tokens>>) -> Router {
    let mut api = Router::new()
        .route("/v1/accounts", get(list_accounts))
        .route("/v1/accounts/{account}", get(get_account))
        .route("/v1/accounts/{account}/objects", get(list_objects))
        .route(
            "/v1/accounts/{account}/objects/{kind}/{namespace}/{name}",
            get(get_object),
        )
        .route("/v1/accounts/{account}/operations", post(post_operation))
        .with_state(Arc::clone(&shared))
        // Requests about an account another replica holds go there (after
        // the token check below, which runs first).
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            crate::replicas::forward::json_api,
        ));
    if let Some(token) = token {
        api = api.layer(middleware::from_fn_with_state(
            (Arc::clone(&shared), token),
            require_token,
        ));
    }
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(Arc::clone(&shared))
        .merge(probes(shared))
        .merge(api)
}

/// `/healthz` (the process serves) and `/readyz` (see [`readyz`]): on the HTTP API's
/// port, and alone on `--probe-addr`.
pub fn probes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// 200 when the hub can do all it should; 503 with the reason when not (its
/// shared store does not answer: it serves what it holds, but takes no new
/// accounts).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.ready() {
        Ok(()) => "ok\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
}

/// One account, as listed.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    name: String,
    /// The bound cluster's id; shown only to authenticated callers (with
    /// `--api-token-file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    /// `namespace/name` of the AgentShard.
    shard: String,
    replica: String,
    state: AccountState,
    objects: usize,
    server_url: String,
    kubernetes_version: String,
    /// The live session, when Connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    /// Seconds since the last state change.
    since_seconds: u64,
    /// With a shared store: the hub replica that holds (or last held) the
    /// account's stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    hub_replica: Option<String>,
    /// The account is Disconnected and its Kubernetes API answers reads from the
    /// cache's last known state (not followed since `sinceSeconds` ago).
    serving_stale: bool,
}

impl AccountView {
    /// An account as the shared store has it (held by another replica); the
    /// cluster id only for `authenticated` callers.
    fn stored(
        row: crate::store::postgres::AccountRow,
        now: SystemTime,
        authenticated: bool,
    ) -> AccountView {
        AccountView {
            state: if row.session.is_some() {
                AccountState::Connected
            } else {
                AccountState::Disconnected
            },
            objects: usize::try_from(row.objects).unwrap_or(usize::MAX),
            since_seconds: now.duration_since(row.since).map_or(0, |d| d.as_secs()),
            name: row.name,
            cluster_id: authenticated.then_some(row.binding.cluster_id),
            shard: row.binding.shard.to_string(),
            replica: row.agent_replica,
            server_url: row.binding.server_url,
            kubernetes_version: row.kubernetes_version,
            session: row.session,
            hub_replica: Some(row.holder),
            serving_stale: false,
        }
    }
}

fn account_view(shared: &Shared, core: &Core, a: &Account, now: SystemTime) -> AccountView {
    // Without an API token every caller is anonymous: the cluster id grants
    // nothing, but it is the cluster's identity and stays between the hub and
    // the callers it knows.
    let authenticated = shared.config.api_token_file.is_some();
    AccountView {
        name: a.name.clone(),
        cluster_id: authenticated.then(|| a.binding.cluster_id.clone()),
        shard: a.binding.shard.to_string(),
        replica: a.replica.clone(),
        state: a.state(),
        objects: core.cache.account(&a.name).map_or(0, AccountCache::len),
        server_url: a.binding.server_url.clone(),
        kubernetes_version: a.kubernetes_version.clone(),
        session: a.session.as_ref().map(ToString::to_string),
        since_seconds: now.duration_since(a.since).map_or(0, |d| d.as_secs()),
        hub_replica: shared.replicas.as_ref().map(|r| r.id()),
        serving_stale: crate::kubeapi::stale::serving(
            shared
                .config
                .kube_api
                .as_ref()
                .is_some_and(|k| k.stale_reads),
            a.session.is_some(),
            core.cache
                .account(&a.name)
                .is_some_and(|c| c.scope().is_some()),
        ),
    }
}

/// A JSON array answer, with the next page's token when more remain.
fn page_response<T: Serialize>(items: &[T], next: Option<String>) -> Response {
    let mut response = json_response(serde_json::to_vec(items));
    if let Some(token) = next
        && let Ok(value) = header::HeaderValue::from_str(&token)
    {
        response.headers_mut().insert(page::CONTINUE_HEADER, value);
    }
    response
}

fn bad_page(message: String) -> Response {
    ApiError::new(StatusCode::BAD_REQUEST, message).into_response()
}

async fn list_accounts(
    State(shared): State<Arc<Shared>>,
    scope: Option<Extension<Scope>>,
    Query(query): Query<PageQuery>,
) -> Response {
    // Without an API token, every account; with one, those its token may use.
    let visible = |name: &str| scope.as_ref().is_none_or(|s| s.allows(name));
    let (limit, after) = match query
        .limit()
        .and_then(|l| Ok((l, query.after::<String>()?)))
    {
        Ok(page) => page,
        Err(message) => return bad_page(message),
    };
    if let Some(replicas) = &shared.replicas {
        // Every replica's accounts, as the shared store has them; those this
        // replica streams, as it sees them (its object count is current).
        // When the store does not answer, what this replica holds.
        match replicas.store().accounts(replicas.timing().timeout).await {
            Ok(rows) => {
                let me = replicas.id();
                let authenticated = shared.config.api_token_file.is_some();
                let now = SystemTime::now();
                let core = shared.core();
                let (views, next) = page::take(
                    rows.into_iter()
                        .filter(|row| after.as_ref().is_none_or(|a| row.name > *a))
                        .filter(|row| visible(&row.name))
                        .map(|row| {
                            let name = row.name.clone();
                            let view = match core.registry.get(&name) {
                                Some(a) if row.holder == me && a.session.is_some() => {
                                    account_view(&shared, &core, a, now)
                                }
                                _ => AccountView::stored(row, now, authenticated),
                            };
                            (name, view)
                        }),
                    limit,
                );
                drop(core);
                return page_response(&views, next);
            }
            Err(err) => {
                warn!(%err, "listing accounts: the shared store does not answer; listing this replica's")
            }
        }
    }
    let (views, next) = {
        let core = shared.core();
        let now = SystemTime::now();
        page::take(
            core.registry
                .accounts_after(after.as_deref())
                .filter(|a| visible(&a.name))
                .map(|a| (a.name.clone(), account_view(&shared, &core, a, now))),
            limit,
        )
    };
    page_response(&views, next)
}

/// One account, asked for by name: as listed, and where each kind's watch resumes
/// when its agent reconnects, so whoever wonders whether a kind will resume or be
/// listed again can see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountDetail {
    #[serde(flatten)]
    account: AccountView,
    resume_points: Vec<ResumeView>,
}

/// The resume point of one kind: empty when the kind has cached objects and will be
/// listed again.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResumeView {
    group: String,
    kind: String,
    resource_version: String,
}

async fn get_account(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
) -> Result<Json<AccountDetail>, ApiError> {
    let core = shared.core();
    let a = core
        .registry
        .get(&account)
        .ok_or_else(|| unknown_account(&account))?;
    let resume_points = core
        .cache
        .account(&account)
        .map(AccountCache::resume_points)
        .unwrap_or_default()
        .into_iter()
        .map(|r| ResumeView {
            group: r.kind.group,
            kind: r.kind.kind,
            resource_version: r.resource_version,
        })
        .collect();
    Ok(Json(AccountDetail {
        account: account_view(&shared, &core, a, SystemTime::now()),
        resume_points,
    }))
}

fn unknown_account(account: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("account {account} is not known to this hub"),
    )
}

/// One cached object.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectView<'a> {
    kind: &'a str,
    group: &'a str,
    version: &'a str,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    resource_version: &'a str,
    object: &'a RawValue,
}

fn view<'a>(key: ObjectRef<'a>, object: &'a CachedObject) -> ObjectView<'a> {
    ObjectView {
        kind: key.kind,
        group: key.group,
        version: &object.version,
        namespace: key.namespace,
        name: key.name,
        uid: &object.uid,
        resource_version: &object.resource_version,
        object: &object.body,
    }
}

/// The key of an object in a continue token.
type TokenKey = (String, String, String, String);

fn token_key(key: ObjectRef<'_>) -> TokenKey {
    (
        key.group.to_owned(),
        key.kind.to_owned(),
        key.namespace.to_owned(),
        key.name.to_owned(),
    )
}

/// A page of the objects of a known account that `keep` selects, borrowed
/// from the cache, with the next page's token; 404 when the hub does not know
/// the account.
fn object_views<'a>(
    core: &'a Core,
    account: &str,
    after: Option<&ObjectKey>,
    limit: usize,
    keep: impl Fn(ObjectRef<'_>) -> bool,
) -> Result<(Vec<ObjectView<'a>>, Option<String>), ApiError> {
    if core.registry.get(account).is_none() {
        return Err(unknown_account(account));
    }
    Ok(core
        .cache
        .account(account)
        .map(|cache| {
            page::take(
                cache
                    .objects_after(after)
                    .filter(|(k, _)| keep(*k))
                    .map(|(k, o)| (token_key(k), view(k, o))),
                limit,
            )
        })
        .unwrap_or_default())
}

/// A kind filter: case-insensitive kind, optional exact group.
struct KindFilter {
    kind: String,
    group: Option<String>,
}

impl KindFilter {
    fn parse(text: &str) -> KindFilter {
        let (kind, group) = operation_request::split_kind(text.trim());
        KindFilter {
            kind: kind.to_owned(),
            group: group.map(str::to_owned),
        }
    }

    fn matches(&self, key: ObjectRef<'_>) -> bool {
        key.kind.eq_ignore_ascii_case(&self.kind)
            && self.group.as_deref().is_none_or(|g| g == key.group)
    }
}

fn namespace_param(ns: &str) -> &str {
    if ns == "_" { "" } else { ns }
}

#[derive(Debug, Deserialize)]
struct ObjectQuery {
    kind: Option<String>,
    namespace: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

fn json_response(body: Result<Vec<u8>, serde_json::Error>) -> Response {
    match body {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/json")], bytes).into_response(),
        Err(err) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding: {err}"),
        )
        .into_response(),
    }
}

async fn list_objects(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    Query(query): Query<ObjectQuery>,
) -> Response {
    let filter = query
        .kind
        .as_deref()
        .filter(|k| !k.is_empty())
        .map(KindFilter::parse);
    let namespace = query
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .map(namespace_param);
    let (limit, after) = match query
        .page
        .limit()
        .and_then(|l| Ok((l, query.page.after::<TokenKey>()?)))
    {
        Ok(page) => page,
        Err(message) => return bad_page(message),
    };
    let after = after.map(|(group, kind, namespace, name)| ObjectKey {
        group,
        kind,
        namespace,
        name,
    });
    let core = shared.core();
    // Serialized under the lock: bodies are borrowed, not copied twice.
    let (views, next) = match object_views(&core, &account, after.as_ref(), limit, |k| {
        filter.as_ref().is_none_or(|f| f.matches(k)) && namespace.is_none_or(|ns| k.namespace == ns)
    }) {
        Ok(page) => page,
        Err(err) => return err.into_response(),
    };
    let response = page_response(&views, next);
    drop(views);
    drop(core);
    response
}

async fn get_object(
    State(shared): State<Arc<Shared>>,
    Path((account, kind, namespace, name)): Path<(String, String, String, String)>,
) -> Response {
    let filter = KindFilter::parse(&kind);
    let namespace = namespace_param(&namespace);
    let core = shared.core();
    // At most a few objects share a name across groups: two are enough to
    // call it ambiguous.
    let matches = match object_views(&core, &account, None, 16, |k| {
        filter.matches(k) && k.namespace == namespace && k.name == name
    }) {
        Ok((views, _)) => views,
        Err(err) => return err.into_response(),
    };
    let response = match matches.as_slice() {
        [] => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no {kind} {namespace}/{name} in account {account}"),
        )
        .into_response(),
        [one] => json_response(serde_json::to_vec(one)),
        many => ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{kind} is ambiguous: {}; write it as Kind.group",
                many.iter()
                    .map(|v| format!("{}.{}", v.kind, v.group))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .into_response(),
    };
    drop(matches);
    drop(core);
    response
}

/// Maps an outcome to its HTTP status.
fn outcome_status(outcome: &Outcome) -> StatusCode {
    if outcome.success {
        return StatusCode::OK;
    }
    match outcome.code() {
        Some("DEADLINE_EXCEEDED") => StatusCode::GATEWAY_TIMEOUT,
        Some("UNKNOWN_ACCOUNT" | "UNAVAILABLE") => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

fn outcome_label(status: StatusCode) -> &'static str {
    match status {
        StatusCode::OK => "success",
        StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "failed",
    }
}

async fn post_operation(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: OperationRequest = serde_json::from_slice(&body).map_err(|err| {
        shared.metrics.operation("invalid");
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid operation request: {err}"),
        )
    })?;
    match routing::operate(&shared, &account, request).await {
        Ok(Operated::Finished(outcome)) => {
            let status = outcome_status(&outcome);
            shared.metrics.operation(outcome_label(status));
            Ok((status, Json(outcome)).into_response())
        }
        Ok(Operated::Known(outcome)) => {
            let status = outcome_status(&outcome);
            Ok((status, Json(outcome)).into_response())
        }
        Ok(Operated::NoResult(outcome)) => {
            Ok((StatusCode::GATEWAY_TIMEOUT, Json(outcome)).into_response())
        }
        Err(refused) => {
            let status = match &refused {
                NotRouted::Invalid(_) => StatusCode::BAD_REQUEST,
                NotRouted::UnknownAccount => return Err(unknown_account(&account)),
                NotRouted::Disconnected(_) => StatusCode::SERVICE_UNAVAILABLE,
                NotRouted::Conflict(_) => StatusCode::CONFLICT,
            };
            Err(ApiError::new(status, refused.to_string()))
        }
    }
}
