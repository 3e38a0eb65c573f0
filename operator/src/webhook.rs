//! The validating admission webhook: answers a create or update of an AgentShard that
//! claims an account name another shard holds, naming the owner — with an admission
//! warning (mode `warn`, the default: GitOps moves apply in any order and complete by
//! themselves) or a rejection (mode `deny`). `failurePolicy: Ignore`: the reconciler stays
//! the authority when the webhook is down or bypassed.
//!
//! The operator makes its own serving certificate: a CA and a leaf kept in a Secret (so
//! every replica serves the same one), regenerated when the hosts change or expiry nears;
//! it keeps the ValidatingWebhookConfiguration's caBundle and address current.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::{Api, Client};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use scale_agent_crds::{AgentShard, ShardRef};

use crate::children::FIELD_MANAGER;
use crate::claims_index::ClaimsHandle;
use crate::cli::WebhookMode;
use crate::error::{Error, Result};
use crate::metrics::{AdmissionLabels, Metrics};

/// The path the API server posts AdmissionReviews to.
pub const PATH: &str = "/validate";

/// An account a request claims that another shard owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    /// The account name.
    pub account: String,
    /// The shard that owns it.
    pub owner: ShardRef,
}

impl From<(String, ShardRef)> for Taken {
    /// An account name and its owner, as [`crate::claims_index::ClaimsIndex::taken`]
    /// gives them.
    fn from((account, owner): (String, ShardRef)) -> Self {
        Self { account, owner }
    }
}

impl Taken {
    /// The message shown to the user (as a warning, or as the rejection).
    pub fn message(&self) -> String {
        format!(
            "account {} is already owned by AgentShard {}: the oldest claim wins, so this shard will leave it out until {} releases it",
            self.account, self.owner, self.owner
        )
    }
}

/// The shard a create or update of an AgentShard asks for, and the stored one it
/// replaces; `None` for any other operation, or an object that does not decode (the API
/// server's schema validation speaks for the shape).
pub fn admitted(req: &AdmissionRequest<DynamicObject>) -> Option<(AgentShard, Option<AgentShard>)> {
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return None;
    }
    let parse = |o: &Option<DynamicObject>| -> Option<AgentShard> {
        let v = serde_json::to_value(o.as_ref()?).ok()?;
        serde_json::from_value(v).ok()
    };
    let mut new = parse(&req.object)?;
    if new.metadata.namespace.is_none() {
        new.metadata.namespace = req.namespace.clone();
    }
    Some((new, parse(&req.old_object)))
}

/// The answer to one AdmissionReview, given the names it would take from other shards
/// (as the claims index says: [`crate::claims_index::ClaimsIndex::taken`]).
pub fn answer(
    req: &AdmissionRequest<DynamicObject>,
    mode: WebhookMode,
    taken: &[Taken],
) -> (AdmissionResponse, &'static str) {
    let resp = AdmissionResponse::from(req);
    if taken.is_empty() {
        return (resp, "allowed");
    }
    let messages: Vec<String> = taken.iter().map(Taken::message).collect();
    match mode {
        WebhookMode::Deny => (resp.deny(messages.join("; ")), "denied"),
        WebhookMode::Warn => {
            let mut resp = resp;
            resp.warnings = Some(messages);
            (resp, "warned")
        }
    }
}

#[derive(Clone)]
struct WebhookState {
    mode: WebhookMode,
    claims: ClaimsHandle,
    metrics: Arc<Metrics>,
}

async fn handle(
    State(state): State<WebhookState>,
    Json(review_in): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let req: AdmissionRequest<DynamicObject> = match review_in.try_into() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "webhook: malformed AdmissionReview");
            return Json(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let (resp, result) = match admitted(&req) {
        None => (AdmissionResponse::from(&req), "allowed"),
        Some((new, old)) => match state.claims.taken(new, old).await {
            Ok(taken) => {
                let taken: Vec<Taken> = taken.into_iter().map(Taken::from).collect();
                answer(&req, state.mode, &taken)
            }
            // The index ends only with the process; the reconciler stays the authority.
            Err(e) => {
                tracing::warn!(error = %e, "webhook: no claims index to ask; allowed");
                (AdmissionResponse::from(&req), "allowed")
            }
        },
    };
    tracing::info!(
        shard = %format!("{}/{}", req.namespace.clone().unwrap_or_default(), req.name),
        result,
        "webhook: reviewed"
    );
    state
        .metrics
        .admission_reviews
        .get_or_create(&AdmissionLabels {
            result: result.to_owned(),
        })
        .inc();
    Json(resp.into_review())
}

/// The serving certificate, swappable while serving.
#[derive(Debug)]
pub struct CertResolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().ok().map(|k| k.clone())
    }
}

impl CertResolver {
    fn set(&self, key: Arc<CertifiedKey>) {
        if let Ok(mut k) = self.0.write() {
            *k = key;
        }
    }
}

/// The webhook's CA and serving certificate, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertBundle {
    /// The CA certificate: the caBundle.
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving key.
    pub key_pem: String,
}

const HOSTS_ANNOTATION: &str = "scaleagent.dev/webhook-hosts";
const NOT_AFTER_ANNOTATION: &str = "scaleagent.dev/webhook-not-after";
const VALIDITY_DAYS: i64 = 365;
const RENEW_BEFORE_DAYS: i64 = 30;

/// Generates a CA and a serving certificate for `hosts` (DNS names or IP addresses).
pub fn generate(hosts: &[String]) -> Result<(CertBundle, i64)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let err = |e: rcgen::Error| Error::Certificate(e.to_string());
    let now = Timestamp::now();
    let not_after_ts = now
        .checked_add(k8s_openapi::jiff::SignedDuration::from_hours(
            24 * VALIDITY_DAYS,
        ))
        .map_err(|e| Error::Certificate(e.to_string()))?;
    let date = not_after_ts
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date();
    let not_after = rcgen::date_time_ymd(
        i32::from(date.year()),
        u8::try_from(date.month()).unwrap_or(1),
        u8::try_from(date.day()).unwrap_or(1),
    );
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "scale-agent-operator webhook CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        hosts
            .first()
            .map(String::as_str)
            .unwrap_or("scale-agent-operator"),
    );
    leaf.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(err)?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.not_after = not_after;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    Ok((
        CertBundle {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        not_after_ts.as_second(),
    ))
}

fn certified_key(bundle: &CertBundle) -> Result<Arc<CertifiedKey>> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::Certificate(format!("reading the serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("reading the serving key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::Certificate(format!("loading the serving key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// Where the webhook's certificate lives and what it must cover.
#[derive(Clone, Debug)]
pub struct CertSecret {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Hosts the serving certificate must name.
    pub hosts: Vec<String>,
}

impl CertSecret {
    /// Reads the certificate from the Secret; creates (or renews) it when absent, naming
    /// other hosts, or near expiry.
    pub async fn ensure(&self, client: &Client) -> Result<CertBundle> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        let want_hosts = self.hosts.join(",");
        for _attempt in 0..3 {
            let existing = api.get_opt(&self.name).await.map_err(|e| {
                Error::kube(
                    format!("reading Secret {}/{}", self.namespace, self.name),
                    e,
                )
            })?;
            if let Some(s) = &existing
                && let Some(bundle) = self.usable(s, &want_hosts)
            {
                return Ok(bundle);
            }
            let (bundle, not_after) = generate(&self.hosts)?;
            let mut secret = Secret {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    namespace: Some(self.namespace.clone()),
                    annotations: Some(BTreeMap::from([
                        (HOSTS_ANNOTATION.to_owned(), want_hosts.clone()),
                        (NOT_AFTER_ANNOTATION.to_owned(), not_after.to_string()),
                    ])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(BTreeMap::from([
                    (
                        "ca.crt".to_owned(),
                        ByteString(bundle.ca_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.crt".to_owned(),
                        ByteString(bundle.cert_pem.clone().into_bytes()),
                    ),
                    (
                        "tls.key".to_owned(),
                        ByteString(bundle.key_pem.clone().into_bytes()),
                    ),
                ])),
                ..Secret::default()
            };
            let result = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(old) => {
                    secret.metadata.resource_version = old.metadata.resource_version;
                    api.replace(&self.name, &PostParams::default(), &secret)
                        .await
                }
            };
            match result {
                Ok(_) => {
                    tracing::info!(secret = %self.name, hosts = %want_hosts, "webhook: new serving certificate");
                    return Ok(bundle);
                }
                // Another replica wrote it first: read theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    return Err(Error::kube(
                        format!("writing Secret {}/{}", self.namespace, self.name),
                        e,
                    ));
                }
            }
        }
        Err(Error::Certificate(format!(
            "Secret {}/{} kept changing while writing it",
            self.namespace, self.name
        )))
    }

    fn usable(&self, s: &Secret, want_hosts: &str) -> Option<CertBundle> {
        let ann = s.metadata.annotations.as_ref()?;
        if ann.get(HOSTS_ANNOTATION)? != want_hosts {
            return None;
        }
        let not_after: i64 = ann.get(NOT_AFTER_ANNOTATION)?.parse().ok()?;
        if not_after - Timestamp::now().as_second() < RENEW_BEFORE_DAYS * 86_400 {
            return None;
        }
        let data = s.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        let bundle = CertBundle {
            ca_pem: text("ca.crt")?,
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
        };
        certified_key(&bundle).ok()?;
        Some(bundle)
    }
}

/// How the API server reaches the webhook.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// clientConfig.url.
    Url(String),
    /// clientConfig.service (namespace, name), port 443.
    Service(String, String),
}

/// The ValidatingWebhookConfiguration `name`.
pub fn configuration(
    name: &str,
    endpoint: &Endpoint,
    ca_pem: &str,
) -> Result<ValidatingWebhookConfiguration> {
    let client_config = match endpoint {
        Endpoint::Url(url) => {
            serde_json::json!({ "url": url, "caBundle": ByteString(ca_pem.as_bytes().to_vec()) })
        }
        Endpoint::Service(ns, svc) => serde_json::json!({
            "service": { "namespace": ns, "name": svc, "path": PATH, "port": 443 },
            "caBundle": ByteString(ca_pem.as_bytes().to_vec()),
        }),
    };
    let v = serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": name, "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER } },
        "webhooks": [{
            "name": "agentshards.scaleagent.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Ignore",
            "matchPolicy": "Equivalent",
            "timeoutSeconds": 5,
            "clientConfig": client_config,
            "rules": [{
                "apiGroups": [scale_agent_crds::GROUP],
                "apiVersions": [scale_agent_crds::VERSION],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["agentshards"],
                "scope": "Namespaced",
            }],
        }],
    });
    serde_json::from_value(v).map_err(|source| Error::Json {
        what: format!("ValidatingWebhookConfiguration {name}"),
        source,
    })
}

/// Applies the webhook configuration (server-side apply: a no-op when nothing changed).
pub async fn register(
    client: &Client,
    name: &str,
    endpoint: &Endpoint,
    ca_pem: &str,
) -> Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let config = configuration(name, endpoint, ca_pem)?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&config),
    )
    .await
    .map_err(|e| Error::kube(format!("applying ValidatingWebhookConfiguration {name}"), e))?;
    Ok(())
}

/// Everything the webhook server needs.
pub struct WebhookServer {
    /// Listen address.
    pub addr: SocketAddr,
    /// warn or deny.
    pub mode: WebhookMode,
    /// The certificate Secret.
    pub cert: CertSecret,
    /// ValidatingWebhookConfiguration to keep current; `None`: do not register.
    pub config_name: Option<String>,
    /// How the API server calls us.
    pub endpoint: Endpoint,
}

impl WebhookServer {
    /// Serves the webhook until the process ends, and every minute re-reads the
    /// certificate Secret and re-applies the webhook configuration, so a rotated
    /// certificate or an edited caBundle is put right.
    pub async fn run(
        self,
        client: Client,
        claims: ClaimsHandle,
        metrics: Arc<Metrics>,
    ) -> Result<()> {
        let bundle = self.cert.ensure(&client).await?;
        let resolver = Arc::new(CertResolver(RwLock::new(certified_key(&bundle)?)));
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Certificate(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|source| Error::Serve {
                what: "webhook",
                addr: self.addr.to_string(),
                source,
            })?;
        tracing::info!(addr = %self.addr, mode = ?self.mode, "webhook listening");
        let app = Router::new()
            .route(PATH, post(handle))
            .with_state(WebhookState {
                mode: self.mode,
                claims,
                metrics,
            });

        // Keep the certificate and the registration current.
        let keeper = {
            let client = client.clone();
            let cert = self.cert.clone();
            let config_name = self.config_name.clone();
            let endpoint = self.endpoint.clone();
            let resolver = resolver.clone();
            let mut current = bundle;
            async move {
                loop {
                    if let Some(name) = &config_name
                        && let Err(e) = register(&client, name, &endpoint, &current.ca_pem).await
                    {
                        tracing::warn!(error = %e, "webhook: registering failed; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    match cert.ensure(&client).await {
                        Ok(b) if b != current => match certified_key(&b) {
                            Ok(k) => {
                                resolver.set(k);
                                current = b;
                                tracing::info!("webhook: serving certificate reloaded");
                            }
                            Err(e) => tracing::warn!(error = %e, "webhook: bad certificate"),
                        },
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "webhook: checking the certificate failed")
                        }
                    }
                }
            }
        };
        tokio::spawn(keeper);

        loop {
            let (tcp, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::debug!(error = %e, "webhook: TLS handshake failed");
                        return;
                    }
                };
                let svc = hyper_util::service::TowerToHyperService::new(app);
                if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await
                {
                    tracing::debug!(error = %e, "webhook: connection ended with an error");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims_index::ClaimsIndex;
    use crate::status::{account, reason};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use scale_agent_crds::{
        AccountSpec, AccountState, AgentShardSpec, AgentShardStatus, SecretKeyRef,
    };

    fn shard(ns: &str, name: &str, created: i64, accounts: &[&str]) -> AgentShard {
        let spec: AgentShardSpec = serde_json::from_value(serde_json::json!({
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": { "name": format!("kc-{a}") }
            })).collect::<Vec<_>>()
        }))
        .expect("spec");
        let mut s = AgentShard::new(name, spec);
        s.metadata.namespace = Some(ns.into());
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).expect("t")));
        s
    }

    /// What the webhook answers with `others` known to the claims index.
    fn check(new: &AgentShard, old: Option<&AgentShard>, others: &[Arc<AgentShard>]) -> Vec<Taken> {
        let mut index = ClaimsIndex::new();
        for o in others {
            index.observe(o);
        }
        taken(&index, new, old)
    }

    fn taken(index: &ClaimsIndex, new: &AgentShard, old: Option<&AgentShard>) -> Vec<Taken> {
        index.taken(new, old).into_iter().map(Taken::from).collect()
    }

    #[test]
    fn a_name_granted_before_its_status_shows_it_is_taken() {
        // Both created in the same second: the tie goes to the name that sorts first
        // ("a-late" before "b-owner") unless the owner's status shows it serving. The
        // owner's reconcile has been given x, its status is not written (or not watched)
        // yet: the webhook answers as the reconciles will, x is the owner's.
        let owner = shard("b-owner", "owner", 10, &["x"]);
        let late = shard("a-late", "late", 10, &["x"]);
        let mut index = ClaimsIndex::new();
        index.observe(&owner);
        assert!(
            taken(&index, &late, None).is_empty(),
            "the tie alone gives x to late"
        );
        index.resolve(&owner);
        assert_eq!(
            taken(&index, &late, None),
            vec![Taken {
                account: "x".into(),
                owner: ShardRef::new("b-owner", "owner")
            }]
        );
    }

    #[test]
    fn names_the_oldest_claimant_when_no_one_serves() {
        let a = Arc::new(shard("ns1", "a", 10, &["x"]));
        let b = Arc::new(shard("ns2", "b", 5, &["x"]));
        let new = shard("ns3", "c", 20, &["x", "y"]);
        let t = check(&new, None, &[a, b]);
        assert_eq!(
            t,
            vec![Taken {
                account: "x".into(),
                owner: ShardRef::new("ns2", "b")
            }]
        );
        assert!(t[0].message().contains("ns2/b"));
    }

    #[test]
    fn the_serving_shard_is_the_owner() {
        let mut a = shard("ns1", "a", 10, &["x"]);
        a.status = Some(AgentShardStatus {
            accounts: vec![account(
                "x",
                AccountState::Active,
                reason::SERVING,
                String::new(),
                None,
            )],
            ..AgentShardStatus::default()
        });
        let b = shard("ns2", "b", 5, &["x"]);
        let t = check(
            &shard("ns3", "c", 20, &["x"]),
            None,
            &[Arc::new(a), Arc::new(b)],
        );
        assert_eq!(t[0].owner, ShardRef::new("ns1", "a"));
    }

    #[test]
    fn a_shard_releasing_a_name_still_owns_it() {
        // a's spec dropped x, its status still holds it: x is a's until it lets it go.
        let mut a = shard("ns1", "a", 10, &["other"]);
        a.status = Some(AgentShardStatus {
            accounts: vec![account(
                "x",
                AccountState::Active,
                reason::SERVING,
                String::new(),
                None,
            )],
            ..AgentShardStatus::default()
        });
        let unrelated = Arc::new(shard("ns2", "b", 1, &["y"]));
        let t = check(
            &shard("ns3", "c", 20, &["x"]),
            None,
            &[unrelated, Arc::new(a)],
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].owner, ShardRef::new("ns1", "a"));
    }

    #[test]
    fn names_already_claimed_before_the_update_pass() {
        let a = Arc::new(shard("ns1", "a", 10, &["x"]));
        let old = shard("ns3", "c", 20, &["x"]);
        let mut new = old.clone();
        new.spec.image = Some("other".into());
        assert!(check(&new, Some(&old), std::slice::from_ref(&a)).is_empty());
        // The shard itself is not its own rival.
        assert!(check(&a, None, std::slice::from_ref(&a)).is_empty());
    }

    #[test]
    fn deny_and_warn() {
        let a = Arc::new(shard("ns1", "a", 10, &["x"]));
        let new = shard("ns3", "c", 20, &["x"]);
        let review_json = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": { "group": "scaleagent.dev", "version": "v1alpha1", "kind": "AgentShard" },
                "resource": { "group": "scaleagent.dev", "version": "v1alpha1", "resource": "agentshards" },
                "name": "c", "namespace": "ns3", "operation": "CREATE",
                "userInfo": { "username": "u" },
                "object": serde_json::to_value(&new).expect("json"),
            }
        });
        let review_in: AdmissionReview<DynamicObject> =
            serde_json::from_value(review_json).expect("review");
        let req: AdmissionRequest<DynamicObject> = review_in.try_into().expect("request");
        let (new, old) = admitted(&req).expect("an AgentShard create");
        let t = check(&new, old.as_ref(), std::slice::from_ref(&a));
        let (resp, result) = answer(&req, WebhookMode::Deny, &t);
        assert_eq!(result, "denied");
        assert!(!resp.allowed && resp.result.message.contains("ns1/a"));
        let (resp, result) = answer(&req, WebhookMode::Warn, &t);
        assert_eq!(result, "warned");
        assert!(resp.allowed);
        assert!(resp.warnings.expect("warnings")[0].contains("ns1/a"));
        let _ = SecretKeyRef::new("x");
        let _: Option<AccountSpec> = None;
    }

    #[test]
    fn generated_certificate_loads() {
        let (b, not_after) = generate(&["127.0.0.1".into(), "svc.ns.svc".into()]).expect("gen");
        assert!(not_after > Timestamp::now().as_second());
        certified_key(&b).expect("loads");
        let c = configuration(
            "x",
            &Endpoint::Url("https://127.0.0.1:1/validate".into()),
            &b.ca_pem,
        )
        .expect("vwc");
        let w = &c.webhooks.expect("webhooks")[0];
        assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    }
}
