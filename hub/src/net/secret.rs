//! A secret read from a file and re-read when the file changes: the secret a
//! trusted load balancer proves itself with (the APIs' bearer tokens are the Kubernetes
//! API's tokens file, in kubeapi/auth.rs). Compared in constant time; never logged.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::net::reload::{Reload, Reloaded};

/// The current contents of a secret file (surrounding whitespace trimmed).
pub struct SecretFile {
    /// What the secret is for, in log lines ("proxy secret").
    what: &'static str,
    file: Arc<Reloaded<Vec<u8>>>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("what", &self.what)
            .field("path", &self.file.path())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let secret = bytes.trim_ascii();
    if secret.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(secret.to_vec())
}

impl SecretFile {
    /// Reads the secret (an error when the file is unreadable or empty), and
    /// checks the file every `interval` for a new one. A file that becomes
    /// unreadable or empty keeps the old secret (logged once per change).
    pub fn watch(
        what: &'static str,
        path: &Path,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> Result<Arc<SecretFile>, String> {
        let file = Reloaded::watch(
            path,
            interval,
            shutdown,
            read,
            |current, next| current != next,
            move |path, reload| match reload {
                Reload::Changed(_) => {
                    info!(path = %path.display(), what, "secret file changed; the new secret is in use");
                }
                Reload::Failed(err) => {
                    warn!(path = %path.display(), what, %err, "cannot read the secret file; the previous secret stays in use");
                }
            },
        )?;
        Ok(Arc::new(SecretFile { what, file }))
    }

    /// True when `presented` is the secret (compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        bool::from(self.file.current().as_slice().ct_eq(presented))
    }

    /// The file it is read from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_secret_is_trimmed_compared_whole_and_follows_the_file() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "  s3cret\n").expect("write");
        let shutdown = CancellationToken::new();
        let secret = SecretFile::watch(
            "test secret",
            &path,
            Duration::from_millis(20),
            shutdown.clone(),
        )
        .expect("readable");
        assert!(secret.matches(b"s3cret"));
        assert!(!secret.matches(b"s3cre"));
        assert!(!secret.matches(b"s3cret "));
        std::fs::write(&path, "next").expect("write");
        for _ in 0..200 {
            if secret.matches(b"next") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(secret.matches(b"next"));
        // An emptied file keeps the last secret.
        std::fs::write(&path, "").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(secret.matches(b"next"));
        shutdown.cancel();
        std::fs::write(&path, "").expect("write");
        assert!(SecretFile::watch("x", &path, Duration::from_secs(1), shutdown).is_err());
    }
}
