//! The agents' client certificates: issued by the operator from a CA it is given
//! (`--agent-ca-secret`), renewed at two thirds of their lifetime, and the checks of a
//! TLS Secret a shard names itself. Pure functions of the Secrets' contents and the
//! time; the reconciler fetches the Secrets and applies what [`crate::decide`] chose.
//!
//! A certificate the operator issues names its shard in a URI SAN,
//! `spiffe://scaleagent.dev/ns/<namespace>/shard/<name>` (the identity the hub reads),
//! is for client authentication only, and lives in the shard's Secret
//! `<shard>-agent-tls` with `tls.crt`, `tls.key` and `ca.crt` (what agents trust the
//! hub's certificate with). Agents reload it when it changes, without a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use scale_agent_crds::{ShardRef, parse_shard_identity_uri, shard_identity_uri};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use crate::status::reason;

/// The key of the client certificate in a TLS Secret.
pub const TLS_CRT: &str = "tls.crt";
/// The key of its private key.
pub const TLS_KEY: &str = "tls.key";
/// The key of the CA bundle agents verify the hub with.
pub const CA_CRT: &str = "ca.crt";
/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(30);

/// Why a TLS Secret cannot be used: a stable reason and a message naming the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsProblem {
    /// Stable CamelCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl TlsProblem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// The CA the operator signs agents' certificates with.
pub struct AgentCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, DER (issued certificates are checked against it).
    cert_der: Vec<u8>,
    /// What agents trust the hub with: the Secret's `ca.crt`, else the CA certificate.
    trust_pem: String,
}

impl std::fmt::Debug for AgentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCa").finish_non_exhaustive()
    }
}

fn key_text<'a>(data: &'a BTreeMap<String, ByteString>, key: &str) -> Option<&'a str> {
    data.get(key)
        .and_then(|v| std::str::from_utf8(&v.0).ok())
        .filter(|s| !s.trim().is_empty())
}

fn first_cert(pem: &str) -> Result<(Vec<u8>, Timestamp, Timestamp, Vec<String>), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("it holds no PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("its certificate does not parse ({e})"))?;
    let (nb, na) = validity(&cert)?;
    Ok((pem.contents.clone(), nb, na, uris(&cert)))
}

fn validity(cert: &X509Certificate<'_>) -> Result<(Timestamp, Timestamp), String> {
    let v = cert.validity();
    let ts = |t: i64| {
        Timestamp::from_second(t).map_err(|e| format!("its validity is out of range ({e})"))
    };
    Ok((ts(v.not_before.timestamp())?, ts(v.not_after.timestamp())?))
}

fn uris(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                GeneralName::URI(u) => Some((*u).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl AgentCa {
    /// The CA in Secret `what` (`namespace/name`, for messages): `tls.crt` (the CA
    /// certificate), `tls.key` (its PKCS#8 key) and, optionally, `ca.crt` (what agents
    /// trust the hub with; the CA certificate when absent).
    pub fn from_secret(secret: &Secret, what: &str) -> Result<Self, String> {
        let empty = BTreeMap::new();
        let data = secret.data.as_ref().unwrap_or(&empty);
        let cert_pem = key_text(data, TLS_CRT)
            .ok_or_else(|| format!("the CA Secret {what} has no key {TLS_CRT}"))?;
        let key_pem = key_text(data, TLS_KEY)
            .ok_or_else(|| format!("the CA Secret {what} has no key {TLS_KEY}"))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| {
            format!("the CA Secret {what}: {TLS_CRT} holds no PEM certificate ({e})")
        })?;
        let cert = pem
            .parse_x509()
            .map_err(|e| format!("the CA Secret {what}: its certificate does not parse ({e})"))?;
        if !cert.is_ca() {
            return Err(format!(
                "the CA Secret {what}: its certificate is not a CA (basicConstraints CA:true)"
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            format!(
                "the CA Secret {what}: {TLS_KEY} is not a PKCS#8 key the operator can use ({e}); convert it with `openssl pkcs8 -topk8 -nocrypt`, or set privateKey.encoding: PKCS8 on its cert-manager Certificate"
            )
        })?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(format!(
                "the CA Secret {what}: {TLS_KEY} is not the key of its certificate"
            ));
        }
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| format!("the CA Secret {what}: {e}"))?;
        let trust_pem = key_text(data, CA_CRT).unwrap_or(cert_pem).to_owned();
        Ok(Self {
            issuer,
            cert_der: pem.contents.clone(),
            trust_pem,
        })
    }

    /// Issues `shard`'s client certificate valid from a little before `now` for
    /// `lifetime`: the Secret data (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn issue(
        &self,
        shard: &ShardRef,
        lifetime: Duration,
        now: Timestamp,
    ) -> Result<BTreeMap<String, ByteString>, String> {
        let fail = |e: rcgen::Error| format!("issuing the client certificate of {shard}: {e}");
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, shard.name.clone());
        params.distinguished_name = dn;
        let uri = shard_identity_uri(shard);
        params.subject_alt_names = vec![SanType::URI(uri.try_into().map_err(fail)?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = offset(now, -signed(BACKDATE))?;
        params.not_after = offset(now, signed(lifetime))?;
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(BTreeMap::from([
            (TLS_CRT.to_owned(), ByteString(cert.pem().into_bytes())),
            (
                TLS_KEY.to_owned(),
                ByteString(key.serialize_pem().into_bytes()),
            ),
            (
                CA_CRT.to_owned(),
                ByteString(self.trust_pem.clone().into_bytes()),
            ),
        ]))
    }

    /// Whether the certificate in `data` (a Secret's data, `None` when it does not
    /// exist) can stay: issued by this CA for `shard`, trusting what agents should
    /// trust, and not due for renewal at `now`. Renewal is due at two thirds of its
    /// lifetime, or of `lifetime` when that is shorter (the flag was lowered).
    pub fn assess(
        &self,
        data: Option<&BTreeMap<String, ByteString>>,
        shard: &ShardRef,
        lifetime: Duration,
        now: Timestamp,
    ) -> Assessment {
        let Some(data) = data else {
            return Assessment::Reissue("there is none yet".to_owned());
        };
        let (Some(cert_pem), Some(_), Some(trust)) = (
            key_text(data, TLS_CRT),
            key_text(data, TLS_KEY),
            key_text(data, CA_CRT),
        ) else {
            return Assessment::Reissue("a key is missing".to_owned());
        };
        if trust != self.trust_pem {
            return Assessment::Reissue("the CA bundle changed".to_owned());
        }
        let parsed = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes());
        let Ok((_, pem)) = parsed else {
            return Assessment::Reissue("the certificate does not parse".to_owned());
        };
        let Ok(cert) = pem.parse_x509() else {
            return Assessment::Reissue("the certificate does not parse".to_owned());
        };
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(&self.cert_der) else {
            return Assessment::Reissue("the CA does not parse".to_owned());
        };
        if cert.verify_signature(Some(ca.public_key())).is_err() {
            return Assessment::Reissue("it was not issued by the current CA".to_owned());
        }
        if !uris(&cert).contains(&shard_identity_uri(shard)) {
            return Assessment::Reissue("it does not name this shard".to_owned());
        }
        let Ok((nb, na)) = validity(&cert) else {
            return Assessment::Reissue("its validity is out of range".to_owned());
        };
        let own = na.duration_since(nb);
        let wanted = signed(lifetime)
            .checked_add(signed(BACKDATE))
            .unwrap_or(own);
        let span = if wanted < own { wanted } else { own };
        let renew_at = nb
            .checked_add(span.checked_mul(2).unwrap_or(span) / 3)
            .unwrap_or(na);
        if now >= renew_at {
            Assessment::Reissue("it is due for renewal".to_owned())
        } else {
            Assessment::Keep { renew_at }
        }
    }
}

/// What to do with the certificate a shard has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assessment {
    /// Keep it until `renew_at`.
    Keep {
        /// When it is due for renewal.
        renew_at: Timestamp,
    },
    /// Issue a new one; why.
    Reissue(String),
}

/// Checks the TLS Secret `name` a shard uses (`None`: not found) as the agents will:
/// `tls.crt`, `tls.key` and `ca.crt` present, the certificate parses, names this shard
/// (and no other) and is valid at `now`. Returns when it expires.
pub fn check_secret(
    secret: Option<&Secret>,
    name: &str,
    shard: &ShardRef,
    now: Timestamp,
) -> Result<Timestamp, TlsProblem> {
    let secret = secret.ok_or_else(|| {
        TlsProblem::new(
            reason::TLS_SECRET_NOT_FOUND,
            format!(
                "TLS Secret {name} not found in namespace {}",
                shard.namespace
            ),
        )
    })?;
    let empty = BTreeMap::new();
    let data = secret.data.as_ref().unwrap_or(&empty);
    let missing: Vec<&str> = [TLS_CRT, TLS_KEY, CA_CRT]
        .into_iter()
        .filter(|k| key_text(data, k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(TlsProblem::new(
            reason::TLS_SECRET_KEY_NOT_FOUND,
            format!("TLS Secret {name} has no {}", missing.join(", ")),
        ));
    }
    let invalid = |why: String| {
        TlsProblem::new(
            reason::TLS_CERTIFICATE_INVALID,
            format!("TLS Secret {name}: {why}"),
        )
    };
    let (_, nb, na, uris) = first_cert(key_text(data, TLS_CRT).unwrap_or_default())
        .map_err(|why| invalid(format!("{TLS_CRT}: {why}")))?;
    let named: Vec<ShardRef> = uris
        .iter()
        .filter_map(|u| parse_shard_identity_uri(u))
        .collect();
    if named.as_slice() != std::slice::from_ref(shard) {
        let names = if named.is_empty() {
            "no shard".to_owned()
        } else {
            named
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(TlsProblem::new(
            reason::TLS_CERTIFICATE_WRONG_SHARD,
            format!(
                "TLS Secret {name}: its certificate names {names}, not this shard ({}); the hub would refuse every account of this shard",
                shard_identity_uri(shard)
            ),
        ));
    }
    if now < nb {
        return Err(invalid(format!("its certificate is not valid before {nb}")));
    }
    if now >= na {
        return Err(invalid(format!("its certificate expired at {na}")));
    }
    if let Some(key) = key_text(data, TLS_KEY).and_then(|k| KeyPair::from_pem(k).ok()) {
        let cert_pem = key_text(data, TLS_CRT).unwrap_or_default();
        let matches = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .ok()
            .and_then(|(_, p)| {
                p.parse_x509()
                    .ok()
                    .map(|c| c.public_key().raw == key.subject_public_key_info())
            })
            .unwrap_or(false);
        if !matches {
            return Err(invalid(format!(
                "{TLS_KEY} is not the key of its certificate"
            )));
        }
    }
    Ok(na)
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn offset(now: Timestamp, by: SignedDuration) -> Result<time::OffsetDateTime, String> {
    let t = now
        .checked_add(by)
        .map_err(|e| format!("certificate time out of range: {e}"))?;
    time::OffsetDateTime::from_unix_timestamp(t.as_second())
        .map_err(|e| format!("certificate time out of range: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> (AgentCa, Secret) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "test CA");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key).expect("self-signed");
        let secret = Secret {
            data: Some(BTreeMap::from([
                (TLS_CRT.to_owned(), ByteString(cert.pem().into_bytes())),
                (
                    TLS_KEY.to_owned(),
                    ByteString(key.serialize_pem().into_bytes()),
                ),
            ])),
            ..Secret::default()
        };
        (
            AgentCa::from_secret(&secret, "ns/ca").expect("a CA"),
            secret,
        )
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).expect("valid")
    }

    fn shard() -> ShardRef {
        ShardRef::new("team", "east")
    }

    fn secret(data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            data: Some(data),
            ..Secret::default()
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_800_000_000;

    #[test]
    fn an_issued_certificate_names_the_shard_and_is_renewed_at_two_thirds() {
        let (ca, _) = ca();
        let data = ca.issue(&shard(), DAY, at(NOW)).expect("issued");
        let expires = check_secret(
            Some(&secret(data.clone())),
            "east-agent-tls",
            &shard(),
            at(NOW),
        )
        .expect("usable by the agents");
        assert_eq!(expires, at(NOW + 86_400));
        match ca.assess(Some(&data), &shard(), DAY, at(NOW + 3_600)) {
            Assessment::Keep { renew_at } => {
                let due = (86_400 + 30) * 2 / 3 - 30;
                assert!(
                    (renew_at.as_second() - (NOW + due)).abs() <= 1,
                    "{renew_at}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ca.assess(Some(&data), &shard(), DAY, at(NOW + 60_000)),
            Assessment::Reissue(_)
        ));
        // A shorter lifetime asked for later renews sooner.
        assert!(matches!(
            ca.assess(
                Some(&data),
                &shard(),
                Duration::from_secs(600),
                at(NOW + 3_600)
            ),
            Assessment::Reissue(_)
        ));
    }

    #[test]
    fn what_the_ca_did_not_issue_for_this_shard_is_reissued() {
        let (ca, _) = ca();
        let (other, _) = ca_other();
        let foreign = other.issue(&shard(), DAY, at(NOW)).expect("issued");
        let mut foreign_trust = foreign.clone();
        foreign_trust.insert(
            CA_CRT.into(),
            ca.issue(&shard(), DAY, at(NOW)).expect("i")[CA_CRT].clone(),
        );
        assert!(matches!(
            ca.assess(Some(&foreign_trust), &shard(), DAY, at(NOW)),
            Assessment::Reissue(why) if why.contains("current CA")
        ));
        let west = ca
            .issue(&ShardRef::new("team", "west"), DAY, at(NOW))
            .expect("i");
        assert!(matches!(
            ca.assess(Some(&west), &shard(), DAY, at(NOW)),
            Assessment::Reissue(why) if why.contains("name this shard")
        ));
        assert!(matches!(
            ca.assess(None, &shard(), DAY, at(NOW)),
            Assessment::Reissue(_)
        ));
    }

    fn ca_other() -> (AgentCa, Secret) {
        ca()
    }

    #[test]
    fn provided_secrets_are_checked_like_the_agents_use_them() {
        let (ca, _) = ca();
        let good = ca.issue(&shard(), DAY, at(NOW)).expect("issued");
        let check = |data: Option<BTreeMap<String, ByteString>>, now: i64| {
            check_secret(data.map(secret).as_ref(), "mtls", &shard(), at(now)).map_err(|p| p.reason)
        };
        assert_eq!(check(None, NOW), Err("TlsSecretNotFound"));
        let mut no_ca = good.clone();
        no_ca.remove(CA_CRT);
        assert_eq!(check(Some(no_ca), NOW), Err("TlsSecretKeyNotFound"));
        let west = ca
            .issue(&ShardRef::new("team", "west"), DAY, at(NOW))
            .expect("i");
        assert_eq!(check(Some(west), NOW), Err("TlsCertificateWrongShard"));
        assert_eq!(
            check(Some(good.clone()), NOW + 2 * 86_400),
            Err("TlsCertificateInvalid")
        );
        let mut garbage = good.clone();
        garbage.insert(TLS_CRT.into(), ByteString(b"not a certificate".to_vec()));
        assert_eq!(check(Some(garbage), NOW), Err("TlsCertificateInvalid"));
        let mut other_key = good.clone();
        other_key.insert(
            TLS_KEY.into(),
            ByteString(KeyPair::generate().expect("k").serialize_pem().into_bytes()),
        );
        assert_eq!(check(Some(other_key), NOW), Err("TlsCertificateInvalid"));
        assert!(check(Some(good), NOW).is_ok());
    }

    #[test]
    fn a_ca_secret_must_hold_a_usable_ca() {
        let (_, good) = ca();
        let mut no_key = good.clone();
        if let Some(d) = no_key.data.as_mut() {
            d.remove(TLS_KEY);
        }
        let e = AgentCa::from_secret(&no_key, "ns/ca").expect_err("no key");
        assert!(e.contains("tls.key"), "{e}");
        // A leaf certificate is not a CA.
        let (ca, _) = ca();
        let leaf = ca.issue(&shard(), DAY, at(NOW)).expect("issued");
        let e = AgentCa::from_secret(&secret(leaf), "ns/ca").expect_err("leaf");
        assert!(e.contains("not a CA"), "{e}");
    }
}
