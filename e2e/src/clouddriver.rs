//! A stand-in for Clouddriver's account storage API, for the tests and `just up`
//! (Clouddriver itself is not to be had on this machine).
//!
//! Written from Clouddriver's source at commit
//! `2f5e98f0320a672ab2692a7ffc6841e4bc57cfa9` (2025-05-15, `v5.95.0` + 1; Spinnaker
//! 2025.x) and kork `a7b6fdea15ec2e98c80093947f194afb0ee552f3` (2025-04-08):
//! - `clouddriver-web/.../controllers/CredentialsController.java`: the paths under
//!   `/credentials`;
//! - `clouddriver-core/.../security/AccountDefinitionService.java`: what each call checks;
//!   "already exists" and "does not exist" are asked of the *loaded* credentials (what
//!   the poller has loaded), not of the stored definitions;
//! - `clouddriver-sql/.../SqlAccountDefinitionRepository.kt`: the store (a duplicate
//!   insert fails, an update or delete of a missing row is `NotFoundException`), and
//!   the listing ordered by name, `startingAccountName` inclusive (`id >= name`);
//! - `clouddriver-core/.../jackson/mixins/CredentialsDefinitionMixin.java`: the type
//!   discriminator is the property `type` (`"type": "kubernetes"`). The first version of
//!   the API (commit 264af19f4, before v5.76.0) used Jackson's default `@type`; since
//!   v5.76.0 (commit da657157d) it is `type`, and that is what this stand-in accepts;
//! - `clouddriver-kubernetes/.../KubernetesAccountProperties.java`: the properties of a
//!   `kubernetes` definition (`ManagedAccount`) and their defaults; `validate()` runs when
//!   the definition is loaded (`KubernetesCredentialsParser` skips an invalid one), not
//!   when it is stored;
//! - kork `GenericExceptionHandlers`: `InvalidRequestException`, `UserException` (so
//!   also `ConfigurationException` and `SqlAccountDefinitionException`) → 400,
//!   `NotFoundException` → 404, anything else → 500 (a body Jackson cannot read is caught
//!   by the catch-all `Exception` handler: 500); the body is Spring Boot's error
//!   document `{timestamp, status, error, message, path}`;
//! - kork `Poller`/`BasicCredentialsLoader`: every `reloadFrequencyMs`
//!   (`credentials.poller.types.kubernetes.reloadFrequencyMs`), first after one period,
//!   the stored definitions are loaded: new or changed ones parsed, missing ones removed.
//!
//! Fiat is off here (`AllowAllAccountSecurityPolicy`): every caller is an account
//! manager. `X-SPINNAKER-USER` names the caller (recorded as `last_modified_by`, else
//! `anonymous`), as `AuthenticatedRequest.getSpinnakerUser()` reads it.
//!
//! Not modelled: encrypted secrets and user secrets in definition values, revision
//! history beyond what `/history` lists, other account types' properties.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;

/// The stand-in's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `account.storage.enabled` and `account.storage.kubernetes.enabled`.
    pub storage_enabled: bool,
    /// `credentials.poller.types.kubernetes.reloadFrequencyMs`.
    pub reload: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            storage_enabled: true,
            reload: Duration::from_secs(1),
        }
    }
}

/// One stored definition (a row of `accounts`).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The definition as Jackson serializes it.
    pub body: Value,
    /// `last_modified_by`.
    pub modified_by: String,
}

#[derive(Debug, Default)]
struct Data {
    /// `accounts`: id → definition (only `kubernetes` ones here).
    accounts: BTreeMap<String, Stored>,
    /// `accounts_history`: id → revisions (`None`: deleted).
    history: BTreeMap<String, Vec<(u64, Option<Value>)>>,
    /// The credentials the poller loaded, by name (the `BasicCredentialsLoader`'s
    /// `loadedDefinitions`).
    loaded: BTreeMap<String, Value>,
    /// Names whose writes fail ([`Clouddriver::fail_writes_of`]).
    failing: std::collections::BTreeSet<String>,
}

/// The stand-in's state, kept across restarts of its listener (as Clouddriver's
/// database outlives its process).
#[derive(Debug, Clone)]
pub struct Clouddriver {
    settings: Settings,
    data: Arc<Mutex<Data>>,
}

/// Stops the listener it belongs to when stopped or dropped.
#[derive(Debug)]
struct Stop(tokio::sync::watch::Sender<bool>);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// A running listener of the stand-in.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Stop,
}

impl Running {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops listening (the stored definitions stay).
    pub fn stop(self) {
        drop(self.stop);
    }
}

/// Spring Boot's error document, as kork's handlers send it.
fn error(status: StatusCode, message: impl Into<String>, path: &Uri) -> Response {
    let timestamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    (
        status,
        Json(json!({
            "timestamp": timestamp,
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or(""),
            "message": message.into(),
            "path": path.path(),
        })),
    )
        .into_response()
}

/// The properties of `ManagedAccount` with their defaults, in declaration order. Jackson
/// names `getOAuthServiceAccount` `oauthServiceAccount` (leading capitals lowered).
fn managed_account_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("name", Value::Null),
        ("environment", Value::Null),
        ("accountType", Value::Null),
        ("context", Value::Null),
        ("oauthServiceAccount", Value::Null),
        ("oauthScopes", Value::Null),
        ("kubeconfigFile", Value::Null),
        ("kubeconfigContents", Value::Null),
        ("kubectlExecutable", Value::Null),
        ("kubectlRequestTimeoutSeconds", Value::Null),
        ("serviceAccount", json!(false)),
        ("namespaces", json!([])),
        ("omitNamespaces", json!([])),
        ("cacheThreads", json!(1)),
        ("requiredGroupMembership", json!([])),
        ("permissions", json!({})),
        ("namingStrategy", json!("kubernetesAnnotations")),
        ("debug", json!(false)),
        ("metrics", json!(true)),
        ("checkPermissionsOnStartup", json!(true)),
        ("customResources", json!([])),
        ("cachingPolicies", json!([])),
        ("kinds", json!([])),
        ("omitKinds", json!([])),
        ("onlySpinnakerManaged", json!(false)),
        ("cacheIntervalSeconds", Value::Null),
        ("cacheAllApplicationRelationships", json!(false)),
        (
            "rawResourcesEndpointConfig",
            json!({"kinds": [], "omitKinds": []}),
        ),
    ]
}

/// Reads a request body as `CredentialsDefinition`: the `type` discriminator picks the
/// class; the properties of `kubernetes` (`ManagedAccount`) are kept with their defaults,
/// unknown ones dropped (Spring Boot's ObjectMapper does not fail on them). `Err` is the
/// message of the Jackson failure.
fn read_definition(body: &Value) -> Result<(String, Value), String> {
    let Some(object) = body.as_object() else {
        return Err(
            "Cannot deserialize value of type `CredentialsDefinition` from a non-object".into(),
        );
    };
    let Some(type_name) = object.get("type").and_then(Value::as_str) else {
        return Err("Could not resolve subtype of [simple type, class com.netflix.spinnaker.credentials.definition.CredentialsDefinition]: missing type id property 'type'".into());
    };
    if type_name != "kubernetes" {
        return Err(format!(
            "Could not resolve type id '{type_name}' as a subtype of `com.netflix.spinnaker.credentials.definition.CredentialsDefinition`: known type ids = [kubernetes]"
        ));
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("kubernetes"));
    for (key, default) in managed_account_defaults() {
        let value = object.get(key).cloned().unwrap_or(default);
        out.insert(key.into(), value);
    }
    let name = object
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok((name, Value::Object(out)))
}

/// `ManagedAccount.validate()`: `Err` is its message.
fn validate(definition: &Value) -> Result<(), String> {
    let text = |k: &str| definition.get(k).and_then(Value::as_str).unwrap_or("");
    let nonempty = |k: &str| {
        definition
            .get(k)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if text("name").is_empty() {
        return Err("Account name for Kubernetes provider missing.".into());
    }
    if nonempty("omitNamespaces") && nonempty("namespaces") {
        return Err("At most one of 'namespaces' and 'omitNamespaces' can be specified".into());
    }
    if nonempty("omitKinds") && nonempty("kinds") {
        return Err("At most one of 'kinds' and 'omitKinds' can be specified".into());
    }
    Ok(())
}

fn user(headers: &HeaderMap) -> String {
    headers
        .get("X-SPINNAKER-USER")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or("anonymous")
        .to_owned()
}

/// The credentials controller's rendering of loaded credentials (`renderAccountCredentials`).
fn render(definition: &Value, expand: bool) -> Value {
    let name = definition.get("name").cloned().unwrap_or(Value::Null);
    let or_name = |k: &str| match definition.get(k) {
        Some(Value::String(s)) => json!(s),
        _ => name.clone(),
    };
    let mut out = Map::new();
    out.insert("name".into(), name.clone());
    out.insert("environment".into(), or_name("environment"));
    out.insert("accountType".into(), or_name("accountType"));
    out.insert("cloudProvider".into(), json!("kubernetes"));
    out.insert(
        "requiredGroupMembership".into(),
        definition
            .get("requiredGroupMembership")
            .cloned()
            .unwrap_or(json!([])),
    );
    out.insert(
        "permissions".into(),
        definition.get("permissions").cloned().unwrap_or(json!({})),
    );
    if expand {
        for key in [
            "namespaces",
            "omitNamespaces",
            "kinds",
            "omitKinds",
            "context",
        ] {
            if let Some(v) = definition.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
    }
    out.insert("type".into(), json!("kubernetes"));
    out.insert("challengeDestructiveActions".into(), json!(false));
    out.insert("primaryAccount".into(), json!(false));
    Value::Object(out)
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    limit: Option<String>,
    starting_account_name: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ExpandQuery {
    expand: Option<bool>,
}

const STORAGE_DISABLED: &str =
    "Cannot use AccountDefinitionService endpoints without enabling AccountDefinitionService bean";

impl Clouddriver {
    /// A stand-in with nothing stored.
    pub fn new(settings: Settings) -> Clouddriver {
        Clouddriver {
            settings,
            data: Arc::new(Mutex::new(Data::default())),
        }
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stored definition of `name` (what `GET /credentials/type/kubernetes` lists).
    pub fn stored(&self, name: &str) -> Option<Stored> {
        self.data().accounts.get(name).cloned()
    }

    /// Every revision of `name` so far, oldest first (`None`: deleted), as
    /// `/credentials/{name}/history` keeps them.
    pub fn revisions(&self, name: &str) -> Vec<Option<Value>> {
        self.data()
            .history
            .get(name)
            .map(|h| h.iter().map(|(_, body)| body.clone()).collect())
            .unwrap_or_default()
    }

    /// Every stored name.
    pub fn names(&self) -> Vec<String> {
        self.data().accounts.keys().cloned().collect()
    }

    /// Removes the stored definition of `name`, as an operator would by hand; false
    /// when there was none.
    pub fn remove(&self, name: &str) -> bool {
        let mut data = self.data();
        let removed = data.accounts.remove(name).is_some();
        if removed {
            self.record(&mut data, name, None);
        }
        removed
    }

    /// Stores a definition directly, as an operator with another tool would.
    pub fn put(&self, body: Value, user: &str) -> Result<(), String> {
        let (name, body) = read_definition(&body)?;
        let mut data = self.data();
        let version = data.history.get(&name).map_or(0, Vec::len) as u64 + 1;
        data.history
            .entry(name.clone())
            .or_default()
            .push((version, Some(body.clone())));
        data.accounts.insert(
            name,
            Stored {
                body,
                modified_by: user.to_owned(),
            },
        );
        Ok(())
    }

    /// A fault a test injects: from now on every create, update or delete of `name`
    /// fails as when Clouddriver's database refuses the row (the SQL error becomes an
    /// `SqlAccountDefinitionException`, a `UserException`: 400, its message quoting the
    /// definition, token included, as Clouddriver's does). Other names are unaffected.
    pub fn fail_writes_of(&self, name: &str) {
        self.data().failing.insert(name.to_owned());
    }

    /// The 400 of a refused write of `name`, if a test made its writes fail.
    fn failing(&self, name: &str, body: Option<&Value>, uri: &Uri) -> Option<Response> {
        self.data().failing.contains(name).then(|| {
            let shown = body.map_or_else(|| name.to_owned(), Value::to_string);
            error(
                StatusCode::BAD_REQUEST,
                format!("Cannot create account with definition {shown}"),
                uri,
            )
        })
    }

    /// One run of the poller: the loaded credentials follow the stored definitions; an
    /// invalid definition is skipped (not loaded), as `KubernetesCredentialsParser` does.
    pub fn poll_once(&self) {
        let mut data = self.data();
        let stored: Vec<(String, Value)> = data
            .accounts
            .iter()
            .map(|(k, v)| (k.clone(), v.body.clone()))
            .collect();
        data.loaded
            .retain(|name, _| stored.iter().any(|(n, _)| n == name));
        for (name, body) in stored {
            if data.loaded.get(&name) == Some(&body) {
                continue;
            }
            match validate(&body) {
                Ok(()) => {
                    data.loaded.insert(name, body);
                }
                Err(why) => {
                    tracing::warn!(account = %name, %why, "Skipping invalid account definition");
                }
            }
        }
    }

    /// Serves on `addr` (port 0: any) until stopped; the poller runs while it serves.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<Running> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let app = axum::Router::new()
            .route("/credentials", get(list).post(create).put(save))
            .route(
                "/credentials/{name}",
                get(details).put(update).delete(delete),
            )
            .route("/credentials/{name}/history", get(history))
            .route("/credentials/type/{type}", get(list_by_type))
            .with_state(self.clone());
        let mut stop_server = rx.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop_server.wait_for(|s| *s).await;
                })
                .await;
        });
        let poller = self.clone();
        tokio::spawn(async move {
            let period = poller.settings.reload;
            loop {
                tokio::select! {
                    _ = rx.wait_for(|s| *s) => break,
                    () = tokio::time::sleep(period) => poller.poll_once(),
                }
            }
        });
        Ok(Running {
            addr,
            stop: Stop(tx),
        })
    }

    fn enabled(&self, uri: &Uri) -> Result<(), Box<Response>> {
        if self.settings.storage_enabled {
            Ok(())
        } else {
            Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                STORAGE_DISABLED,
                uri,
            )))
        }
    }

    fn record(&self, data: &mut Data, name: &str, body: Option<Value>) {
        let history = data.history.entry(name.to_owned()).or_default();
        let version = history.len() as u64 + 1;
        history.push((version, body));
    }
}

type Body = Result<Json<Value>, axum::extract::rejection::JsonRejection>;

/// The body as a definition, or the 500 the catch-all handler gives a body Jackson
/// cannot read.
fn definition_of(body: Body, uri: &Uri) -> Result<(String, Value), Box<Response>> {
    let Json(value) =
        body.map_err(|e| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, e.body_text(), uri)))?;
    read_definition(&value).map_err(|m| Box::new(error(StatusCode::INTERNAL_SERVER_ERROR, m, uri)))
}

async fn list(State(cd): State<Clouddriver>, Query(q): Query<ExpandQuery>) -> Json<Value> {
    let expand = q.expand.unwrap_or(false);
    let data = cd.data();
    Json(Value::Array(
        data.loaded.values().map(|d| render(d, expand)).collect(),
    ))
}

async fn details(State(cd): State<Clouddriver>, Path(name): Path<String>, uri: Uri) -> Response {
    let data = cd.data();
    match data.loaded.get(&name) {
        Some(d) => Json(render(d, true)).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("Account does not exist (name: {name})"),
            &uri,
        ),
    }
}

async fn list_by_type(
    State(cd): State<Clouddriver>,
    Path(type_name): Path<String>,
    Query(q): Query<ListQuery>,
    uri: Uri,
) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => 100,
        Some(Ok(n)) => n,
        // Spring's conversion failure of an Integer parameter.
        Some(Err(_)) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Failed to convert value of type 'java.lang.String' to required type 'java.lang.Integer'",
                &uri,
            );
        }
    };
    let data = cd.data();
    let items: Vec<Value> = if type_name != "kubernetes" {
        Vec::new()
    } else {
        data.accounts
            .iter()
            .filter(|(name, _)| {
                q.starting_account_name
                    .as_deref()
                    .is_none_or(|start| name.as_str() >= start)
            })
            .take(usize::try_from(limit.max(0)).unwrap_or(0))
            .map(|(_, s)| s.body.clone())
            .collect()
    };
    Json(Value::Array(items)).into_response()
}

async fn create(
    State(cd): State<Clouddriver>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    let (name, body) = match definition_of(body, &uri) {
        Ok(d) => d,
        Err(e) => return *e,
    };
    if let Some(refused) = cd.failing(&name, Some(&body), &uri) {
        return refused;
    }
    let mut data = cd.data();
    if data.loaded.contains_key(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Cannot create an account which already exists (name: {name})"),
            &uri,
        );
    }
    if data.accounts.contains_key(&name) {
        // The insert's duplicate key: SqlAccountDefinitionException, a UserException.
        return error(
            StatusCode::BAD_REQUEST,
            format!("Cannot create account with definition {body}"),
            &uri,
        );
    }
    cd.record(&mut data, &name, Some(body.clone()));
    data.accounts.insert(
        name,
        Stored {
            body: body.clone(),
            modified_by: user(&headers),
        },
    );
    Json(body).into_response()
}

async fn save(State(cd): State<Clouddriver>, headers: HeaderMap, uri: Uri, body: Body) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    let (name, body) = match definition_of(body, &uri) {
        Ok(d) => d,
        Err(e) => return *e,
    };
    let mut data = cd.data();
    cd.record(&mut data, &name, Some(body.clone()));
    data.accounts.insert(
        name,
        Stored {
            body: body.clone(),
            modified_by: user(&headers),
        },
    );
    Json(body).into_response()
}

async fn update(
    State(cd): State<Clouddriver>,
    Path(account_name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Body,
) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    let (name, body) = match definition_of(body, &uri) {
        Ok(d) => d,
        Err(e) => return *e,
    };
    if account_name != name {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "Mismatched account names. URI value: {account_name}. Request body value: {name}."
            ),
            &uri,
        );
    }
    if let Some(refused) = cd.failing(&name, Some(&body), &uri) {
        return refused;
    }
    let mut data = cd.data();
    if !data.loaded.contains_key(&name) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Cannot update an account which does not exist (name: {name})"),
            &uri,
        );
    }
    let Some(row) = data.accounts.get_mut(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("No account found with name {name}"),
            &uri,
        );
    };
    row.body = body.clone();
    row.modified_by = user(&headers);
    cd.record(&mut data, &name, Some(body.clone()));
    Json(body).into_response()
}

async fn delete(State(cd): State<Clouddriver>, Path(name): Path<String>, uri: Uri) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    if let Some(refused) = cd.failing(&name, None, &uri) {
        return refused;
    }
    let mut data = cd.data();
    if data.accounts.remove(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            format!("No account found with name {name}"),
            &uri,
        );
    }
    cd.record(&mut data, &name, None);
    StatusCode::OK.into_response()
}

async fn history(State(cd): State<Clouddriver>, Path(name): Path<String>, uri: Uri) -> Response {
    if let Err(e) = cd.enabled(&uri) {
        return *e;
    }
    let data = cd.data();
    let revisions: Vec<Value> = data
        .history
        .get(&name)
        .map(|h| {
            h.iter()
                .rev()
                .map(|(version, body)| json!({"version": version, "account": body}))
                .collect()
        })
        .unwrap_or_default();
    Json(Value::Array(revisions)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let mut req = client.request(method.parse().expect("method"), url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the stand-in answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn the_account_storage_api_answers_as_clouddrivers_source_does() {
        let cd = Clouddriver::new(Settings {
            storage_enabled: true,
            reload: Duration::from_secs(3600),
        });
        let running = cd
            .serve("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("serves");
        let base = running.url();
        let def = json!({"type": "kubernetes", "name": "east", "namespaces": ["a"]});
        let (s, body) = call("POST", &format!("{base}/credentials"), Some(def.clone())).await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["cacheThreads"], json!(1), "defaults filled: {body}");
        // Stored but not loaded: a second create hits the duplicate row (400), an update
        // finds no loaded account (400).
        let (s, _) = call("POST", &format!("{base}/credentials"), Some(def.clone())).await;
        assert_eq!(s, 400);
        let (s, body) = call(
            "PUT",
            &format!("{base}/credentials/east"),
            Some(def.clone()),
        )
        .await;
        assert_eq!(s, 400);
        assert_eq!(
            body["message"],
            json!("Cannot update an account which does not exist (name: east)")
        );
        cd.poll_once();
        let (s, body) = call("POST", &format!("{base}/credentials"), Some(def.clone())).await;
        assert_eq!(s, 400);
        assert_eq!(
            body["message"],
            json!("Cannot create an account which already exists (name: east)")
        );
        let (s, _) = call(
            "PUT",
            &format!("{base}/credentials/west"),
            Some(def.clone()),
        )
        .await;
        assert_eq!(s, 400, "mismatched names");
        let (s, _) = call(
            "PUT",
            &format!("{base}/credentials/east"),
            Some(def.clone()),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(
            "POST",
            &format!("{base}/credentials"),
            Some(json!({"@type": "kubernetes", "name": "x"})),
        )
        .await;
        assert_eq!(s, 500, "`@type` is not the discriminator since v5.76.0");
        let (s, list) = call(
            "GET",
            &format!("{base}/credentials/type/kubernetes?limit=1&startingAccountName=east"),
            None,
        )
        .await;
        assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)));
        let (s, _) = call("DELETE", &format!("{base}/credentials/east"), None).await;
        assert_eq!(s, 200);
        let (s, _) = call("DELETE", &format!("{base}/credentials/east"), None).await;
        assert_eq!(s, 404);
        running.stop();
    }
}
