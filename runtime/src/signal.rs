//! Shutdown signals.

/// Resolves at the first SIGTERM (what Kubernetes sends a pod) or Ctrl-C. When no
/// SIGTERM handler can be installed, Ctrl-C alone.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
