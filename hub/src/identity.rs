//! Who is speaking: the shard identity of an agent session.
//!
//! An agent's client certificate carries a URI SAN naming its shard,
//! `spiffe://scaleagent.dev/ns/<namespace>/shard/<name>`
//! ([`scale_agent_crds::shard_identity_uri`]). The hub reads it from one of two
//! places:
//!
//! 1. The TLS session, when the hub terminates TLS with `--client-ca` (mTLS,
//!    directly or through a TCP-passthrough load balancer).
//! 2. A request header set by a trusted load balancer that terminated TLS and
//!    verified the client certificate (nginx: `grpc_set_header x-client-cert
//!    $ssl_client_escaped_cert;`, the URL-encoded PEM). The header is believed
//!    only when the TCP peer is in a `--trusted-proxy` CIDR; from anyone else it
//!    is ignored with a warning.
//!
//! Which sessions need an identity: with `--client-ca` every TLS session has a
//! verified certificate, and it must name a shard; with `--trusted-proxy` every
//! session must carry one (from the header or the TLS session), so that an
//! agent cannot get around the load balancer; otherwise (`--insecure` without
//! trusted proxies, or TLS without client certificates) the shard named in
//! Hello is taken on trust.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use scale_agent_crds::parse_shard_identity_uri;
use x509_parser::extensions::GeneralName;

use crate::registry::ShardKey;

/// The default header a trusted load balancer forwards the client certificate in.
pub const DEFAULT_CLIENT_CERT_HEADER: &str = "x-client-cert";

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

/// How sessions are authenticated.
#[derive(Debug, Clone)]
pub struct IdentityPolicy {
    /// Load balancers whose forwarded certificate header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The header they put it in (lower case).
    pub client_cert_header: String,
    /// True when the TLS layer requires client certificates (`--client-ca`).
    pub mtls: bool,
}

impl Default for IdentityPolicy {
    fn default() -> Self {
        IdentityPolicy {
            trusted_proxies: Vec::new(),
            client_cert_header: DEFAULT_CLIENT_CERT_HEADER.into(),
            mtls: false,
        }
    }
}

/// Why a session has no usable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// No identity where one is required (gRPC UNAUTHENTICATED).
    Missing(String),
    /// A certificate that names no shard or cannot be read (PERMISSION_DENIED).
    Invalid(String),
}

impl IdentityPolicy {
    /// True when the TCP peer is a trusted load balancer.
    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The shard identity of a new stream: `Ok(None)` when none is needed and
    /// none was given (the Hello's shard is then used).
    ///
    /// `forwarded` is the value of the client certificate header, if present.
    pub fn resolve(
        &self,
        peer: Option<&PeerInfo>,
        forwarded: Option<&str>,
    ) -> Result<Option<(ShardKey, IdentitySource)>, IdentityError> {
        let trusted = peer.is_some_and(|p| self.is_trusted_proxy(p.remote_addr.ip()));
        match forwarded {
            Some(value) if trusted => {
                let der = decode_forwarded_cert(value).map_err(|e| {
                    IdentityError::Invalid(format!(
                        "the client certificate forwarded in header {} cannot be read: {e}",
                        self.client_cert_header
                    ))
                })?;
                let shard = shard_from_cert(&der).map_err(|e| {
                    IdentityError::Invalid(format!(
                        "the client certificate forwarded in header {}: {e}",
                        self.client_cert_header
                    ))
                })?;
                return Ok(Some((shard, IdentitySource::Forwarded)));
            }
            Some(_) => {
                tracing::warn!(
                    peer = %peer.map_or_else(|| "unknown".to_owned(), |p| p.remote_addr.to_string()),
                    header = %self.client_cert_header,
                    "a client certificate header from a peer that is not a trusted proxy (--trusted-proxy); ignored"
                );
            }
            None => {}
        }
        if let Some(cert) = peer.and_then(|p| p.client_cert.as_ref()) {
            let shard = shard_from_cert(cert)
                .map_err(|e| IdentityError::Invalid(format!("the client certificate: {e}")))?;
            return Ok(Some((shard, IdentitySource::Certificate)));
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

/// The shard a certificate's URI SANs name. Exactly one shard must be named
/// (several URIs naming the same shard are fine).
pub fn shard_from_cert(der: &[u8]) -> Result<ShardKey, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName extension: {e}"))?;
    let mut found: Option<ShardKey> = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name
            && let Some(shard) = parse_shard_identity_uri(uri)
        {
            let shard = ShardKey {
                namespace: shard.namespace,
                name: shard.name,
            };
            match &found {
                Some(other) if *other != shard => {
                    return Err(format!(
                        "it names two shards ({other} and {shard}); it must name one"
                    ));
                }
                _ => found = Some(shard),
            }
        }
    }
    found.ok_or_else(|| {
        "it names no shard: a URI SAN spiffe://scaleagent.dev/ns/<namespace>/shard/<name> is required"
            .to_owned()
    })
}

/// Parses a `--trusted-proxy` value: a CIDR, or a bare address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
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

    fn shard(ns: &str, name: &str) -> ShardKey {
        ShardKey {
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

    #[test]
    fn decodes_nginx_escaped_pem() {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names.push(SanType::URI(
            "spiffe://scaleagent.dev/ns/spinnaker/shard/east"
                .try_into()
                .expect("ia5"),
        ));
        let cert = params.self_signed(&key).expect("cert");
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
        assert_eq!(
            parse_cidr("10.1.2.3/8").expect("cidr").to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn resolve_policy() {
        let cert = cert_with(&["spiffe://scaleagent.dev/ns/spinnaker/shard/east"]);
        let peer = |ip: &str, cert: Option<CertificateDer<'static>>| PeerInfo {
            remote_addr: SocketAddr::new(ip.parse().expect("ip"), 1234),
            client_cert: cert,
        };
        // Insecure, nobody trusted: Hello's shard.
        let open = IdentityPolicy::default();
        assert_eq!(open.resolve(Some(&peer("10.0.0.1", None)), None), Ok(None));
        // A certificate from the TLS session.
        assert_eq!(
            open.resolve(Some(&peer("10.0.0.1", Some(cert.clone()))), None),
            Ok(Some((
                shard("spinnaker", "east"),
                IdentitySource::Certificate
            )))
        );
        // With trusted proxies every session needs an identity.
        let proxied = IdentityPolicy {
            trusted_proxies: vec![parse_cidr("10.0.0.0/8").expect("cidr")],
            ..IdentityPolicy::default()
        };
        assert!(matches!(
            proxied.resolve(Some(&peer("10.0.0.1", None)), None),
            Err(IdentityError::Missing(_))
        ));
        assert!(matches!(
            proxied.resolve(Some(&peer("192.168.0.1", None)), Some("whatever")),
            Err(IdentityError::Missing(_))
        ));
        assert!(matches!(
            proxied.resolve(Some(&peer("10.0.0.1", None)), Some("garbage")),
            Err(IdentityError::Invalid(_))
        ));
    }
}
