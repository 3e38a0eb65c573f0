//! The hub TLS files (CA bundle, client certificate and key), read at each connection,
//! and noticed when they change: the operator (or cert-manager) renews the client
//! certificate in the mounted Secret well before it expires, and the kubelet swaps the
//! files in place. The session then reconnects with the new certificate and resumes
//! every watch from the hub's resume points: no restart, no event lost.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use scale_agent_crds::TlsConfig;

use crate::{Error, Result};

/// The TLS material as read from the files, and a fingerprint of it.
#[derive(Clone)]
pub struct Material {
    /// The CA bundle the hub's certificate must chain to (PEM).
    pub ca: Vec<u8>,
    /// The client certificate (PEM).
    pub cert: Vec<u8>,
    /// Its key (PEM).
    pub key: Vec<u8>,
}

impl Material {
    /// Reads the three files of `tls`.
    pub fn read(tls: &TlsConfig) -> Result<Self> {
        let read = |p: &str| std::fs::read(p).map_err(|e| Error::Tls(format!("reading {p}: {e}")));
        Ok(Self {
            ca: read(&tls.ca_file)?,
            cert: read(&tls.cert_file)?,
            key: read(&tls.key_file)?,
        })
    }

    /// A fingerprint of the contents (not a secret: it stays in this process).
    pub fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.ca, &self.cert, &self.key).hash(&mut h);
        h.finish()
    }
}

/// The fingerprint of the files of `tls` now; `None` while any cannot be read.
pub fn fingerprint(tls: &TlsConfig) -> Option<u64> {
    Material::read(tls).ok().map(|m| m.fingerprint())
}

/// Resolves once the files of `tls` hold something other than `current` (the
/// fingerprint of what the session connected with), the same on two reads `every`
/// apart, so a Secret being rewritten file by file is read whole.
pub async fn changed(tls: TlsConfig, current: u64, every: Duration) {
    let mut last = Some(current);
    loop {
        tokio::time::sleep(every).await;
        let now = fingerprint(&tls);
        if now.is_some() && now != Some(current) && now == last {
            return;
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &std::path::Path, cert: &str) -> TlsConfig {
        for (name, text) in [("ca.crt", "ca"), ("tls.crt", cert), ("tls.key", "key")] {
            std::fs::write(dir.join(name), text).expect("write");
        }
        let p = |n: &str| dir.join(n).display().to_string();
        TlsConfig {
            ca_file: p("ca.crt"),
            cert_file: p("tls.crt"),
            key_file: p("tls.key"),
            server_name: None,
        }
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_noticed_once_it_is_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let tls = files(dir.path(), "cert-1");
        let first = fingerprint(&tls).expect("readable");
        let watch = tokio::spawn(changed(tls.clone(), first, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!watch.is_finished(), "nothing changed");
        files(dir.path(), "cert-2");
        tokio::time::timeout(Duration::from_secs(2), watch)
            .await
            .expect("noticed")
            .expect("joins");
    }

    #[tokio::test]
    async fn missing_files_are_not_a_change() {
        let dir = tempfile::tempdir().expect("dir");
        let tls = files(dir.path(), "cert-1");
        let first = fingerprint(&tls).expect("readable");
        std::fs::remove_file(&tls.cert_file).expect("rm");
        let watch = tokio::spawn(changed(tls.clone(), first, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!watch.is_finished());
        watch.abort();
        let e = Material::read(&tls).err().expect("unreadable");
        assert!(e.to_string().contains("tls.crt"), "{e}");
    }
}
