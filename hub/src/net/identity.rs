//! Who is speaking: the shard identity of an agent session.
//!
//! An agent's client certificate carries a URI SAN naming its shard,
//! `spiffe://scaleagent.dev/ns/<namespace>/shard/<name>`
//! ([`scale_agent_crds::shard_identity_uri`]). The hub reads it from one of two
//! places:
//!
//! 1. The TLS session, when the hub terminates TLS with `--client-ca` (mTLS,
//!    directly or through a TCP-passthrough load balancer). When a session
//!    has its own verified certificate, that certificate decides, whatever
//!    headers the request carries.
//! 2. A request header set by a trusted load balancer that terminated TLS and
//!    verified the client certificate (nginx: `grpc_set_header x-client-cert
//!    $ssl_client_escaped_cert;`, the URL-encoded PEM). The header is believed
//!    only when the TCP peer is in a `--trusted-proxy` CIDR, the peer sends
//!    the shared proxy secret (`--proxy-secret-file`, when set), and the
//!    certificate chains to the agents' CA (`--client-ca`) and is valid now:
//!    the hub checks it exactly as its own TLS handshake would, so a header
//!    holding a self-signed or expired certificate gets nowhere. From any
//!    other peer the header is ignored with a warning.
//!
//! Which sessions need an identity: with `--client-ca` every TLS session has a
//! verified certificate, and it must name a shard; with `--trusted-proxy` every
//! session must carry one (from the header or the TLS session), so that an
//! agent cannot get around the load balancer; otherwise (`--insecure` without
//! trusted proxies, or TLS without client certificates) the shard named in
//! Hello is taken on trust.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use scale_agent_crds::parse_shard_identity_uri;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use x509_parser::extensions::GeneralName;

use crate::core::clip::clip;
use crate::core::registry::ShardRef;
use crate::net::secret::SecretFile;

/// The default header a trusted load balancer forwards the client certificate in.
pub const DEFAULT_CLIENT_CERT_HEADER: &str = "x-client-cert";

/// The header a trusted load balancer proves itself with: the contents of
/// `--proxy-secret-file`, which the load balancer and the hub share.
pub const PROXY_SECRET_HEADER: &str = "x-scale-agent-proxy-secret";

/// What the transport knows about a connection, attached to every request
/// (tonic connect info).
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The TCP peer (the load balancer, when there is one).
    pub remote_addr: SocketAddr,
    /// The verified client certificate of the TLS session (end entity), if any.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// Where a session's shard identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The client certificate of the TLS session.
    Certificate,
    /// The certificate a trusted load balancer forwarded in a header.
    Forwarded,
    /// Nothing: the shard in Hello is taken on trust (insecure mode).
    Hello,
}

impl IdentitySource {
    /// Label for logs.
    pub fn label(self) -> &'static str {
        match self {
            IdentitySource::Certificate => "certificate",
            IdentitySource::Forwarded => "forwarded-certificate",
            IdentitySource::Hello => "hello",
        }
    }
}

/// The agents' CA as forwarded certificates are checked against it: a
/// forwarded certificate is believed only when it chains to this bundle and
/// is valid now, exactly as the TLS handshake would check it. Follows its
/// file when it has one.
#[derive(Debug)]
pub struct ForwardedCa {
    verifier: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl ForwardedCa {
    /// From a PEM bundle; an error when it holds no usable CA.
    pub fn new(pem: &[u8]) -> Result<Arc<ForwardedCa>, crate::Error> {
        Ok(Arc::new(ForwardedCa {
            verifier: RwLock::new(crate::net::tls::client_verifier(pem)?),
        }))
    }

    /// Checks that `cert` chains to the CA and is valid at `now`.
    pub fn verify(&self, cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), String> {
        let verifier = Arc::clone(&self.verifier.read().unwrap_or_else(|p| p.into_inner()));
        verifier
            .verify_client_cert(cert, &[], now)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Re-reads `file` every `interval`; a changed bundle that loads is used
    /// for the next forwarded certificate, one that does not is logged and
    /// the old one stays.
    pub fn watch(
        self: &Arc<Self>,
        file: PathBuf,
        first: Vec<u8>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let ca = Arc::clone(self);
        tokio::spawn(async move {
            let mut last = first;
            let mut last_error = String::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
                let path = file.clone();
                let Ok(read) = tokio::task::spawn_blocking(move || std::fs::read(path)).await
                else {
                    continue;
                };
                let next = match read {
                    Ok(next) if next != last => next,
                    Ok(_) => continue,
                    Err(err) => {
                        let text = err.to_string();
                        if text != last_error {
                            warn!(file = %file.display(), %err, "cannot read the client CA bundle; forwarded certificates are checked against the one loaded before");
                            last_error = text;
                        }
                        continue;
                    }
                };
                match crate::net::tls::client_verifier(&next) {
                    Ok(verifier) => {
                        *ca.verifier.write().unwrap_or_else(|p| p.into_inner()) = verifier;
                        info!(file = %file.display(), "client CA bundle changed; forwarded certificates are checked against the new one");
                        last = next;
                        last_error.clear();
                    }
                    Err(err) => {
                        let text = err.to_string();
                        if text != last_error {
                            warn!(file = %file.display(), %err, "the client CA bundle changed but does not load; the one loaded before stays in use");
                            last_error = text;
                        }
                    }
                }
            }
        });
    }
}

/// How sessions are authenticated.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    /// Load balancers whose forwarded certificate header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The header they put it in (lower case).
    pub client_cert_header: String,
    /// True when the TLS layer requires client certificates (`--client-ca`).
    pub mtls: bool,
    /// What a forwarded certificate must chain to; without it no forwarded
    /// certificate is believed.
    pub forwarded_ca: Option<Arc<ForwardedCa>>,
    /// When set, a trusted load balancer must also send this secret in
    /// [`PROXY_SECRET_HEADER`]: an address alone does not prove who is
    /// speaking.
    pub proxy_secret: Option<Arc<SecretFile>>,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        IdentityPolicy {
            trusted_proxies: Vec::new(),
            client_cert_header: DEFAULT_CLIENT_CERT_HEADER.into(),
            mtls: false,
            forwarded_ca: None,
            proxy_secret: None,
        }
    }
}

/// What the request carried besides its connection: the forwarded client
/// certificate header and the proxy secret header, when present.
#[derive(Debug, Clone, Copy, Default)]
pub struct Presented<'a> {
    /// The value of the client certificate header.
    pub client_cert: Option<&'a str>,
    /// The value of [`PROXY_SECRET_HEADER`].
    pub proxy_secret: Option<&'a str>,
}

/// Why a session has no usable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// No identity where one is required (gRPC UNAUTHENTICATED).
    Missing(String),
    /// A certificate that names no shard, cannot be read or is not trusted
    /// (PERMISSION_DENIED).
    Invalid(String),
}

impl IdentityPolicy {
    /// The policy of checked settings ([`crate::Config::checked`]): reads
    /// the forwarded certificates' CA and the proxy secret, and follows their
    /// files until `shutdown`.
    pub fn start(
        config: &crate::Config,
        shutdown: &CancellationToken,
    ) -> Result<IdentityPolicy, crate::Error> {
        let forwarded_ca = match &config.forwarded_client_ca {
            Some(bundle) => {
                let ca = ForwardedCa::new(&bundle.pem)?;
                if let Some(file) = &bundle.file {
                    ca.watch(
                        file.clone(),
                        bundle.pem.clone(),
                        config.reload_interval,
                        shutdown.clone(),
                    );
                }
                Some(ca)
            }
            None => None,
        };
        let proxy_secret = match &config.proxy_secret_file {
            Some(path) => Some(
                SecretFile::watch(
                    "proxy secret",
                    path,
                    config.reload_interval,
                    shutdown.clone(),
                )
                .map_err(|message| crate::Error::Setting {
                    setting: "--proxy-secret-file",
                    message: format!("{}: {message}", path.display()),
                })?,
            ),
            None => None,
        };
        Ok(IdentityPolicy {
            trusted_proxies: config.trusted_proxies.clone(),
            client_cert_header: config.client_cert_header.clone(),
            mtls: config
                .tls
                .as_ref()
                .is_some_and(|t| t.client_ca_pem.is_some()),
            forwarded_ca,
            proxy_secret,
        })
    }

    /// True when the TCP peer is a trusted load balancer.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The shard identity of a new stream: `Ok(None)` when none is needed and
    /// none was given (the Hello's shard is then used).
    ///
    /// The TLS session's own verified certificate always decides when there
    /// is one. Otherwise a forwarded certificate is believed only from a
    /// trusted proxy (with the proxy secret, when one is set), and only when
    /// it chains to the agents' CA and is valid at `now`.
    pub fn resolve(
        &self,
        peer: Option<&PeerInfo>,
        presented: Presented<'_>,
        now: UnixTime,
    ) -> Result<Option<(ShardRef, IdentitySource)>, IdentityError> {
        let peer_text = || peer.map_or_else(|| "unknown".to_owned(), |p| p.remote_addr.to_string());
        if let Some(cert) = peer.and_then(|p| p.client_cert.as_ref()) {
            if presented.client_cert.is_some() {
                debug!(peer = %peer_text(), header = %self.client_cert_header,
                    "a client certificate header on a connection with its own client certificate; the TLS session's certificate decides");
            }
            let shard = shard_from_cert(cert)
                .map_err(|e| IdentityError::Invalid(format!("the client certificate: {e}")))?;
            return Ok(Some((shard, IdentitySource::Certificate)));
        }
        let trusted = peer.is_some_and(|p| self.is_trusted_proxy(p.remote_addr.ip()));
        match presented.client_cert {
            Some(value) if trusted => {
                self.check_proxy_secret(presented.proxy_secret)?;
                return self
                    .forwarded(value, now)
                    .map(|shard| Some((shard, IdentitySource::Forwarded)));
            }
            Some(_) => {
                warn!(
                    peer = %peer_text(),
                    header = %self.client_cert_header,
                    "a client certificate header from a peer that is not a trusted proxy (--trusted-proxy); ignored"
                );
            }
            None => {}
        }
        if !self.trusted_proxies.is_empty() {
            let message = if trusted {
                format!(
                    "the load balancer forwarded no client certificate (header {})",
                    self.client_cert_header
                )
            } else {
                format!(
                    "no client certificate: connect through a trusted load balancer that forwards it in header {}, or with mTLS",
                    self.client_cert_header
                )
            };
            return Err(IdentityError::Missing(message));
        }
        if self.mtls {
            // The TLS layer refuses a handshake without a certificate; a
            // plaintext connection cannot reach an mTLS hub.
            return Err(IdentityError::Missing("no client certificate".into()));
        }
        Ok(None)
    }

    /// A trusted peer proves it is the load balancer with the shared secret,
    /// when one is set.
    fn check_proxy_secret(&self, presented: Option<&str>) -> Result<(), IdentityError> {
        let Some(secret) = &self.proxy_secret else {
            return Ok(());
        };
        match presented {
            Some(value) if secret.matches(value.trim().as_bytes()) => Ok(()),
            Some(_) => Err(IdentityError::Missing(format!(
                "the proxy secret in header {PROXY_SECRET_HEADER} is wrong: a forwarded certificate is believed only from the load balancer that holds the hub's --proxy-secret-file"
            ))),
            None => Err(IdentityError::Missing(format!(
                "a forwarded certificate without the proxy secret (header {PROXY_SECRET_HEADER}): it is believed only from the load balancer that holds the hub's --proxy-secret-file"
            ))),
        }
    }

    /// The shard of a forwarded certificate that chains to the agents' CA.
    fn forwarded(&self, value: &str, now: UnixTime) -> Result<ShardRef, IdentityError> {
        let header = &self.client_cert_header;
        let der = decode_forwarded_cert(value).map_err(|e| {
            IdentityError::Invalid(format!(
                "the client certificate forwarded in header {header} cannot be read: {e}"
            ))
        })?;
        let Some(ca) = &self.forwarded_ca else {
            return Err(IdentityError::Invalid(format!(
                "the client certificate forwarded in header {header} cannot be checked: this hub has no client CA (--client-ca)"
            )));
        };
        ca.verify(&der, now).map_err(|e| {
            IdentityError::Invalid(format!(
                "the client certificate forwarded in header {header} is not trusted: {e}"
            ))
        })?;
        shard_from_cert(&der).map_err(|e| {
            IdentityError::Invalid(format!(
                "the client certificate forwarded in header {header}: {e}"
            ))
        })
    }
}

/// What is risky about trusting these proxies, one sentence each, for the
/// hub's startup log: a network that holds every address, and trust by
/// address alone (anything that can connect from a trusted address can
/// replay a certificate it has seen).
pub fn trust_warnings(trusted_proxies: &[IpNet], proxy_secret: bool) -> Vec<String> {
    let mut warnings: Vec<String> = trusted_proxies
        .iter()
        .filter(|net| net.prefix_len() == 0)
        .map(|net| {
            format!(
                "--trusted-proxy {net} trusts EVERY peer: anything that reaches the gRPC port may forward a certificate; name the load balancer's own addresses"
            )
        })
        .collect();
    if !trusted_proxies.is_empty() && !proxy_secret {
        warnings.push(format!(
            "trusted proxies are recognised by address only (no --proxy-secret-file): any process that can connect to the gRPC port from a trusted address can forward any agent certificate it has seen; share a secret with the load balancer (header {PROXY_SECRET_HEADER})"
        ));
    }
    warnings
}

/// Decodes the URL-encoded PEM nginx puts in `$ssl_client_escaped_cert`
/// (plain PEM is accepted too) into the DER of the first certificate.
pub fn decode_forwarded_cert(value: &str) -> Result<CertificateDer<'static>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err("the header is empty".into());
    }
    let pem = percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map_err(|e| format!("not URL-encoded UTF-8: {e}"))?;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))
}

/// The URI SANs of certificate `der`; why they cannot be read, as the rest of a
/// sentence about the certificate.
fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("is not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("has a bad subjectAltName extension: {e}"))?;
    Ok(san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect())
}

/// The one thing `parse` finds in the URI SANs of certificate `der` (several URIs
/// naming the same are fine): `Ok(None)` when none names anything, `Err` with the
/// two when two name different things.
fn one_named<T: PartialEq>(
    der: &[u8],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Result<Option<T>, (T, T)>, String> {
    let mut found: Option<T> = None;
    for uri in uri_sans(der)? {
        let Some(named) = parse(&uri) else { continue };
        match found {
            Some(other) if other != named => return Ok(Err((other, named))),
            _ => found = Some(named),
        }
    }
    Ok(Ok(found))
}

/// The shard a certificate's URI SANs name. Exactly one shard must be named
/// (several URIs naming the same shard are fine).
pub fn shard_from_cert(der: &[u8]) -> Result<ShardRef, String> {
    let named = one_named(der, |uri| {
        parse_shard_identity_uri(uri).map(|shard| ShardRef {
            namespace: shard.namespace,
            name: shard.name,
        })
    })
    .map_err(|e| format!("it {e}"))?;
    match named {
        Ok(Some(shard)) => Ok(shard),
        Ok(None) => Err(
            "it names no shard: a URI SAN spiffe://scaleagent.dev/ns/<namespace>/shard/<name> is required"
                .to_owned(),
        ),
        Err((one, other)) => Err(format!(
            "it names two shards ({one} and {other}); it must name one"
        )),
    }
}

/// The hub replica a certificate's URI SANs name
/// (`spiffe://scaleagent.dev/hub/<id>`, [`scale_agent_crds::hub_replica_identity_uri`]).
/// Exactly one replica must be named. Why not, as the rest of a sentence about the
/// certificate ("the certificate ...").
pub fn replica_from_cert(der: &[u8]) -> Result<String, String> {
    let named = one_named(der, |uri| {
        scale_agent_crds::parse_hub_replica_identity_uri(uri).map(str::to_owned)
    })?;
    match named {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(
            "names no hub replica (a URI SAN spiffe://scaleagent.dev/hub/<replica id>)".to_owned(),
        ),
        Err((one, other)) => Err(format!(
            "names two hub replicas ({}, {}); it must name one",
            clip(&one),
            clip(&other)
        )),
    }
}

/// Checks that the certificate `der` names hub replica `id`; why not otherwise, as
/// the rest of a sentence about the certificate.
pub fn check_replica(der: &[u8], id: &str) -> Result<(), String> {
    let named = replica_from_cert(der)?;
    if named == id {
        Ok(())
    } else {
        Err(format!(
            "names hub replica {}, not {}",
            clip(&named),
            clip(id)
        ))
    }
}

/// Parses a `--trusted-proxy` value: a CIDR, or a bare address (a /32 or
/// /128). A CIDR with host bits set (`10.0.0.5/8`) is refused: it is either a
/// typo for the address or for the network, and guessing wrong trusts 16
/// million addresses.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: write the network ({}) or the address ({}/{})",
                net.trunc(),
                net.addr(),
                net.max_prefix_len()
            ));
        }
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is neither a CIDR (10.0.0.0/8) nor an IP address"))
}

/// Checks a `--client-cert-header` value: gRPC metadata keys are lower-case
/// ASCII header names, and a name that cannot be one would never match.
pub fn check_header_name(name: &str) -> Result<(), String> {
    let lower = name.to_ascii_lowercase();
    tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(lower.as_bytes())
        .map(drop)
        .map_err(|_| format!("{name:?} is not a valid header name"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with(uris: &[&str]) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["agent.example".to_owned()]).expect("params");
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().expect("ia5")));
        }
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn shard(ns: &str, name: &str) -> ShardRef {
        ShardRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    #[test]
    fn reads_the_shard_from_the_uri_san() {
        let cert = cert_with(&[
            "https://example.org/other",
            "spiffe://scaleagent.dev/ns/spinnaker/shard/east",
        ]);
        assert_eq!(shard_from_cert(&cert), Ok(shard("spinnaker", "east")));
        let none = cert_with(&[]);
        assert!(shard_from_cert(&none).is_err_and(|e| e.contains("names no shard")));
        let two = cert_with(&[
            "spiffe://scaleagent.dev/ns/a/shard/x",
            "spiffe://scaleagent.dev/ns/a/shard/y",
        ]);
        assert!(shard_from_cert(&two).is_err_and(|e| e.contains("two shards")));
        assert!(shard_from_cert(b"garbage").is_err());
    }

    /// A self-signed certificate naming shard spinnaker/east.
    fn east_self_signed() -> rcgen::Certificate {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names.push(SanType::URI(
            "spiffe://scaleagent.dev/ns/spinnaker/shard/east"
                .try_into()
                .expect("ia5"),
        ));
        params.self_signed(&key).expect("cert")
    }

    #[test]
    fn decodes_nginx_escaped_pem() {
        let cert = east_self_signed();
        let escaped: String =
            percent_encoding::utf8_percent_encode(&cert.pem(), percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert!(escaped.contains("%0A") || escaped.contains("%0a"));
        let der = decode_forwarded_cert(&escaped).expect("decodes");
        assert_eq!(der.as_ref(), cert.der().as_ref());
        // Plain PEM works too.
        assert!(decode_forwarded_cert(&cert.pem()).is_ok());
        assert!(decode_forwarded_cert("").is_err());
        assert!(decode_forwarded_cert("%2D%2D%2Dnot-pem").is_err());
    }

    #[test]
    fn trusted_proxies_and_cidrs() {
        let policy = IdentityPolicy {
            trusted_proxies: vec![
                parse_cidr("10.0.0.0/8").expect("cidr"),
                parse_cidr("127.0.0.1").expect("ip"),
            ],
            ..IdentityPolicy::default()
        };
        assert!(policy.is_trusted_proxy("10.1.2.3".parse().expect("ip")));
        assert!(policy.is_trusted_proxy("127.0.0.1".parse().expect("ip")));
        assert!(policy.is_trusted_proxy("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(!policy.is_trusted_proxy("127.0.0.2".parse().expect("ip")));
        assert!(parse_cidr("nonsense").is_err());
        let host_bits = parse_cidr("10.0.0.5/8").expect_err("host bits set");
        assert!(
            host_bits.contains("10.0.0.0/8") && host_bits.contains("10.0.0.5/32"),
            "{host_bits}"
        );
        assert!(parse_cidr("fd00::1/64").is_err());
        assert_eq!(
            parse_cidr("10.1.0.0/16").expect("cidr").to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(parse_cidr("0.0.0.0/0").expect("cidr").prefix_len(), 0);
    }

    #[test]
    fn trusting_every_peer_or_an_address_alone_is_warned_about() {
        let nets = |list: &[&str]| -> Vec<IpNet> {
            list.iter().map(|n| parse_cidr(n).expect("cidr")).collect()
        };
        assert!(trust_warnings(&[], false).is_empty());
        assert!(trust_warnings(&nets(&["10.0.0.0/8"]), true).is_empty());
        let everyone = trust_warnings(&nets(&["0.0.0.0/0", "::/0"]), true);
        assert_eq!(everyone.len(), 2, "{everyone:?}");
        assert!(everyone.iter().all(|w| w.contains("EVERY peer")));
        let by_address = trust_warnings(&nets(&["127.0.0.1/32"]), false);
        assert_eq!(by_address.len(), 1);
        assert!(by_address[0].contains("--proxy-secret-file"));
    }

    /// A CA and a certificate it signed naming `spinnaker/east`, valid
    /// from 2020 to 2040.
    fn signed_by_a_ca() -> (String, rcgen::Certificate) {
        use rcgen::{BasicConstraints, CertifiedIssuer, IsCa};
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
        let mut leaf = CertificateParams::new(Vec::<String>::new()).expect("params");
        leaf.subject_alt_names.push(SanType::URI(
            "spiffe://scaleagent.dev/ns/spinnaker/shard/east"
                .try_into()
                .expect("ia5"),
        ));
        leaf.not_before = rcgen::date_time_ymd(2020, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2040, 1, 1);
        let cert = leaf
            .signed_by(&KeyPair::generate().expect("key"), &ca)
            .expect("leaf");
        (ca.pem(), cert)
    }

    fn escaped(cert: &rcgen::Certificate) -> String {
        percent_encoding::utf8_percent_encode(&cert.pem(), percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    fn at(year: i32) -> UnixTime {
        let seconds = rcgen::date_time_ymd(year, 6, 1).unix_timestamp();
        UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(seconds).expect("after 1970"),
        ))
    }

    #[test]
    fn resolve_policy() {
        let (ca_pem, signed) = signed_by_a_ca();
        let self_signed = east_self_signed();
        let peer = |ip: &str, cert: Option<CertificateDer<'static>>| PeerInfo {
            remote_addr: SocketAddr::new(ip.parse().expect("ip"), 1234),
            client_cert: cert,
        };
        let header = |value: &str| Presented {
            client_cert: Some(Box::leak(value.to_owned().into_boxed_str())),
            proxy_secret: None,
        };
        let now = at(2030);
        // Insecure, nobody trusted: Hello's shard.
        let open = IdentityPolicy::default();
        assert_eq!(
            open.resolve(Some(&peer("10.0.0.1", None)), Presented::default(), now),
            Ok(None)
        );
        // A certificate from the TLS session.
        assert_eq!(
            open.resolve(
                Some(&peer("10.0.0.1", Some(self_signed.der().clone()))),
                Presented::default(),
                now
            ),
            Ok(Some((
                shard("spinnaker", "east"),
                IdentitySource::Certificate
            )))
        );
        // With trusted proxies every session needs an identity.
        let proxied = IdentityPolicy {
            trusted_proxies: vec![parse_cidr("10.0.0.0/8").expect("cidr")],
            forwarded_ca: Some(ForwardedCa::new(ca_pem.as_bytes()).expect("a CA")),
            ..IdentityPolicy::default()
        };
        assert!(matches!(
            proxied.resolve(Some(&peer("10.0.0.1", None)), Presented::default(), now),
            Err(IdentityError::Missing(_))
        ));
        assert!(matches!(
            proxied.resolve(Some(&peer("192.168.0.1", None)), header("whatever"), now),
            Err(IdentityError::Missing(_))
        ));
        assert!(matches!(
            proxied.resolve(Some(&peer("10.0.0.1", None)), header("garbage"), now),
            Err(IdentityError::Invalid(_))
        ));
        // A forwarded certificate signed by the CA and valid now is believed.
        assert_eq!(
            proxied.resolve(
                Some(&peer("10.0.0.1", None)),
                header(&escaped(&signed)),
                now
            ),
            Ok(Some((
                shard("spinnaker", "east"),
                IdentitySource::Forwarded
            )))
        );
        // A self-signed one, or one not valid now, is not.
        for (cert, when, why) in [
            (&self_signed, now, "self-signed"),
            (&signed, at(2045), "expired"),
            (&signed, at(2019), "not yet valid"),
        ] {
            match proxied.resolve(Some(&peer("10.0.0.1", None)), header(&escaped(cert)), when) {
                Err(IdentityError::Invalid(message)) => {
                    assert!(message.contains("not trusted"), "{why}: {message}");
                }
                other => panic!("{why}: {other:?}"),
            }
        }
        // The TLS session's own certificate wins over a header.
        let west = cert_with(&["spiffe://scaleagent.dev/ns/spinnaker/shard/west"]);
        assert_eq!(
            proxied.resolve(
                Some(&peer("10.0.0.1", Some(west))),
                header(&escaped(&signed)),
                now
            ),
            Ok(Some((
                shard("spinnaker", "west"),
                IdentitySource::Certificate
            )))
        );
    }

    #[tokio::test]
    async fn a_proxy_secret_must_come_with_the_forwarded_certificate() {
        let (ca_pem, signed) = signed_by_a_ca();
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("proxy-secret");
        std::fs::write(&path, "shared\n").expect("write");
        let shutdown = CancellationToken::new();
        let policy = IdentityPolicy {
            trusted_proxies: vec![parse_cidr("127.0.0.1").expect("ip")],
            forwarded_ca: Some(ForwardedCa::new(ca_pem.as_bytes()).expect("a CA")),
            proxy_secret: Some(
                SecretFile::watch(
                    "proxy secret",
                    &path,
                    Duration::from_secs(60),
                    shutdown.clone(),
                )
                .expect("readable"),
            ),
            ..IdentityPolicy::default()
        };
        let peer = PeerInfo {
            remote_addr: "127.0.0.1:1234".parse().expect("addr"),
            client_cert: None,
        };
        let cert = escaped(&signed);
        let with = |secret: Option<&'static str>| Presented {
            client_cert: Some(Box::leak(cert.clone().into_boxed_str())),
            proxy_secret: secret,
        };
        for secret in [None, Some("guess")] {
            match policy.resolve(Some(&peer), with(secret), at(2030)) {
                Err(IdentityError::Missing(message)) => {
                    assert!(message.contains(PROXY_SECRET_HEADER), "{message}");
                }
                other => panic!("{secret:?}: {other:?}"),
            }
        }
        assert_eq!(
            policy.resolve(Some(&peer), with(Some("shared")), at(2030)),
            Ok(Some((
                shard("spinnaker", "east"),
                IdentitySource::Forwarded
            )))
        );
        shutdown.cancel();
    }
}
