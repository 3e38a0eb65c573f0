//! A secret read from a file and re-read when the file changes: the HTTP
//! API's bearer token, and the secret a trusted load balancer proves itself
//! with. Compared in constant time; never logged.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The current contents of a secret file (surrounding whitespace trimmed).
pub struct SecretFile {
    /// What the secret is for, in log lines ("API token", "proxy secret").
    what: &'static str,
    path: PathBuf,
    current: RwLock<Vec<u8>>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFile")
            .field("what", &self.what)
            .field("path", &self.path)
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
        let first = read(path)?;
        let secret = Arc::new(SecretFile {
            what,
            path: path.to_owned(),
            current: RwLock::new(first),
        });
        let watched = Arc::clone(&secret);
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
                let path = watched.path.clone();
                let Ok(next) = tokio::task::spawn_blocking(move || read(&path)).await else {
                    continue;
                };
                match next {
                    Ok(next) => {
                        last_error.clear();
                        let mut current =
                            watched.current.write().unwrap_or_else(|p| p.into_inner());
                        if *current != next {
                            *current = next;
                            info!(path = %watched.path.display(), what = watched.what, "secret file changed; the new secret is in use");
                        }
                    }
                    Err(err) => {
                        if err != last_error {
                            warn!(path = %watched.path.display(), what = watched.what, %err, "cannot read the secret file; the previous secret stays in use");
                            last_error = err;
                        }
                    }
                }
            }
        });
        Ok(secret)
    }

    /// True when `presented` is the secret (compared in constant time).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        bool::from(current.as_slice().ct_eq(presented))
    }

    /// The file it is read from.
    pub fn path(&self) -> &Path {
        &self.path
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
