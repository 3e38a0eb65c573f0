//! Connection upgrades the hub carries (exec, attach, port-forward; WebSocket or SPDY):
//! once the cluster answered `101 Switching Protocols`, the upgraded connection's bytes
//! travel as they are, neither side parsing them.
//!
//! - Cluster to hub: `KubeResponseBody` frames within the hub's `KubeWindow` grants, as
//!   any answer's body ([`crate::proxy`]); the cluster closing the connection ends the
//!   session (`done`).
//! - Hub to cluster: the client's bytes, `KubeRequestBody` frames; each part written to
//!   the cluster is granted back to the hub (`AgentFrame.kube_window`), so a process
//!   that stops reading holds back its own session only. `done` is the client's
//!   half-close, passed on as a shutdown of the sending side.
//! - The hub's `KubeCancel`, or the end of the session, drops the connection.
//!
//! The hub keeps the time limits (idle and total), in one place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use scale_agent_proto::v1::{KubeResponseBody, KubeWindow, agent_frame::Frame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};

use crate::outbound::{Closed, Outbound};

/// The client's bytes the hub may still send: its window, less what arrived, plus what
/// the agent wrote to the cluster and granted back. Kept by the proxy, which checks
/// every part against it.
#[derive(Debug)]
pub struct Credit(AtomicU64);

impl Credit {
    /// A credit of `bytes`.
    pub fn new(bytes: u64) -> Arc<Credit> {
        Arc::new(Credit(AtomicU64::new(bytes)))
    }

    /// Takes `bytes` for a part that arrived; `false` (and nothing taken) when the hub
    /// sent more than it was granted.
    pub fn take(&self, bytes: u64) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(bytes)
            })
            .is_ok()
    }

    fn give(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// Carries the upgraded connection `io` of request `id` until either end closes it;
/// `Err(Closed)` when the hub session ended.
pub async fn pump(
    out: &Outbound,
    id: u64,
    io: Upgraded,
    mut from_hub: mpsc::UnboundedReceiver<crate::proxy::Part>,
    window: &Semaphore,
    credit: &Credit,
    chunk: usize,
) -> Result<(), Closed> {
    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(io));
    let mut sent: u64 = 0;
    let mut received: u64 = 0;
    let to_hub = async {
        let mut buf = vec![0u8; chunk.max(1)];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => return Ok(String::new()),
                Ok(n) => n,
                Err(e) => return Ok(format!("the cluster's connection broke off: {e}")),
            };
            // Waits for the hub's grants: the client reads at its own pace.
            match window
                .acquire_many(u32::try_from(n).unwrap_or(u32::MAX))
                .await
            {
                Ok(p) => p.forget(),
                Err(_) => return Ok(String::new()),
            }
            out.send(Frame::KubeResponseBody(KubeResponseBody {
                id,
                chunk: Bytes::copy_from_slice(&buf[..n]),
                done: false,
                error: String::new(),
            }))
            .await?;
            sent += n as u64;
        }
    };
    let to_cluster = async {
        while let Some((part, done, _)) = from_hub.recv().await {
            if !part.is_empty() {
                let len = part.len() as u64;
                if let Err(e) = writer.write_all(&part).await {
                    return Ok(format!("writing to the cluster: {e}"));
                }
                received += len;
                credit.give(len);
                out.send(Frame::KubeWindow(KubeWindow { id, bytes: len }))
                    .await?;
            }
            if done {
                tracing::debug!("the client closed its sending side");
                if let Err(e) = writer.shutdown().await {
                    return Ok(format!("closing the sending side to the cluster: {e}"));
                }
                break;
            }
        }
        // The client is done (or the proxy dropped the request): the cluster's side
        // decides when the session ends.
        std::future::pending::<Result<String, Closed>>().await
    };
    let error = tokio::select! {
        r = to_hub => r?,
        r = to_cluster => r?,
    };
    if error.is_empty() {
        tracing::info!(sent, received, "upgraded connection closed by the cluster");
    } else {
        tracing::info!(sent, received, %error, "upgraded connection ended");
    }
    out.send(Frame::KubeResponseBody(KubeResponseBody {
        id,
        chunk: Bytes::new(),
        done: true,
        error,
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hub_gets_no_more_than_it_was_granted() {
        let credit = Credit::new(10);
        assert!(credit.take(6));
        assert!(!credit.take(5), "one byte more than the window");
        assert!(credit.take(4));
        credit.give(3);
        assert!(credit.take(3));
        assert!(!credit.take(1));
    }
}
