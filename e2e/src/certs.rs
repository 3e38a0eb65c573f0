//! Certificates generated per run: the control plane's CA that signs the API servers'
//! serving certificates and their clients' certificates, and a service-account signing
//! key; the hub's agents get a CA of their own ([`Pki::create_named`]), so that no
//! agent certificate logs in to an API server.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use scale_agent_crds::{ShardRef, TlsConfig, shard_identity_uri};

use crate::{Error, Result};

/// A certificate and its key, PEM encoded, with the files they were written to.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Where the certificate was written.
    pub cert_file: PathBuf,
    /// Where the key was written.
    pub key_file: PathBuf,
}

/// The run's certificate authority.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    /// The CA's private key file (PKCS#8 PEM), for components that issue certificates
    /// themselves (the operator's agent certificates).
    pub ca_key_file: PathBuf,
    /// The service-account signing key (PKCS#8 PEM file).
    pub sa_key_file: PathBuf,
    /// The service-account public key (PEM file) that verifies tokens.
    pub sa_pub_file: PathBuf,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

impl Pki {
    /// Creates a new CA and service-account key in `dir`.
    pub fn create(dir: &Path) -> Result<Pki> {
        Pki::create_named(dir, "scale-agent test CA")
    }

    /// Creates a new CA named `common_name` (and a service-account key) in `dir`.
    pub fn create_named(dir: &Path, common_name: &str) -> Result<Pki> {
        fs::create_dir_all(dir).map_err(|e| Error::io("creating", dir, e))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let ca_pem = cert.pem();
        let ca_file = write(dir, "ca.crt", &ca_pem)?;
        let ca_key_file = write(dir, "ca.key", &key.serialize_pem())?;
        let sa = KeyPair::generate()?;
        let sa_key_file = write(dir, "sa.key", &sa.serialize_pem())?;
        let sa_pub_file = write(dir, "sa.pub", &sa.public_key_pem())?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            ca_pem,
            ca_file,
            ca_key_file,
            sa_key_file,
            sa_pub_file,
        })
    }

    /// Issues a serving certificate for the given DNS names and IP addresses, written as
    /// `<file_stem>.crt` / `<file_stem>.key`.
    pub fn issue_server(&self, file_stem: &str, hosts: &[&str]) -> Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(hosts.first().copied().unwrap_or(file_stem), None);
        params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file_stem, params)
    }

    /// Issues hub replica `id`'s certificate: serving its Kubernetes API on `hosts`, and
    /// its identity to the other replicas (the URI SAN naming it, client use too), as
    /// `--kube-api-replica-ca` asks for.
    pub fn issue_replica(&self, file_stem: &str, id: &str, hosts: &[&str]) -> Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(id, None);
        params.subject_alt_names = hosts.iter().map(|h| san(h)).collect::<Result<_>>()?;
        params
            .subject_alt_names
            .push(san(&scale_agent_crds::hub_replica_identity_uri(id))?);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(file_stem, params)
    }

    /// The CA as a Secret `name` in namespace `ns` (`tls.crt`, `tls.key`), as the
    /// operator's `--agent-ca-secret` reads it: created, or replaced.
    pub fn ca_secret_yaml(&self, ns: &str, name: &str) -> Result<String> {
        use base64::Engine as _;
        let b64 = |p: &Path| {
            fs::read(p)
                .map(|b| base64::engine::general_purpose::STANDARD.encode(b))
                .map_err(|e| Error::io("reading", p, e))
        };
        Ok(format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {ns}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(&self.ca_file)?,
            b64(&self.ca_key_file)?
        ))
    }

    /// Issues a client certificate with common name `cn` and organization `org` (the API
    /// server reads them as user name and group), plus optional URI/DNS SANs.
    pub fn issue_client(
        &self,
        file_stem: &str,
        cn: &str,
        org: Option<&str>,
        sans: &[&str],
    ) -> Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(cn, org);
        params.subject_alt_names = sans.iter().map(|h| san(h)).collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params)
    }

    /// A client certificate naming shard `ns/shard` (its URI SAN, as the operator issues
    /// them and the hub reads them), as an agent's TLS settings trusting this CA.
    pub fn agent_tls(&self, ns: &str, shard: &str) -> Result<TlsConfig> {
        let identity = shard_identity_uri(&ShardRef::new(ns.to_string(), shard.to_string()));
        let stem = format!("agent-{ns}-{shard}");
        let client = self.issue_client(&stem, &stem, None, &[&identity])?;
        Ok(TlsConfig {
            ca_file: self.ca_file.display().to_string(),
            cert_file: client.cert_file.display().to_string(),
            key_file: client.key_file.display().to_string(),
            server_name: None,
        })
    }

    fn issue(&self, file_stem: &str, mut params: CertificateParams) -> Result<CertPair> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cert_file = write(&self.dir, &format!("{file_stem}.crt"), &cert_pem)?;
        let key_file = write(&self.dir, &format!("{file_stem}.key"), &key_pem)?;
        Ok(CertPair {
            cert_pem,
            key_pem,
            cert_file,
            key_file,
        })
    }
}

fn name(cn: &str, org: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

fn san(host: &str) -> Result<SanType> {
    if let Ok(ip) = host.parse() {
        return Ok(SanType::IpAddress(ip));
    }
    if host.contains("://") {
        return Ok(SanType::URI(host.try_into()?));
    }
    Ok(SanType::DnsName(host.try_into()?))
}

fn write(dir: &Path, file: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    fs::write(&path, text).map_err(|e| Error::io("writing", &path, e))?;
    Ok(path)
}
