//! Load for the fault and replica tests: ConfigMaps created, updated and deleted
//! continuously in every account's namespace while something breaks, so that a test
//! can prove no change was lost once the churn stops and the hub's cache converges.

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::converge::put_cm;

/// The running churn: one task per namespace, until [`Churn::stop`].
#[derive(Debug)]
pub struct Churn {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<u64>>,
}

/// Changes ConfigMaps `churn-0` .. `churn-14` of every api continuously (every 30 ms:
/// four writes, then a delete), each value padded with `value_bytes` bytes, until
/// stopped. Failures (a cluster restarting) are skipped.
pub fn churn(apis: Vec<Api<ConfigMap>>, value_bytes: usize) -> Churn {
    let (stop, rx) = watch::channel(false);
    let tasks = apis
        .into_iter()
        .map(|api| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let (mut ok, mut i) = (0u64, 0u64);
                let pad = "x".repeat(value_bytes);
                while !*rx.borrow() {
                    i += 1;
                    let name = format!("churn-{}", i % 15);
                    let done = if i.is_multiple_of(5) {
                        api.delete(&name, &DeleteParams::default()).await.is_ok()
                    } else {
                        put_cm(&api, &name, &format!("{i}{pad}")).await.is_ok()
                    };
                    ok += u64::from(done);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                ok
            })
        })
        .collect();
    Churn { stop, tasks }
}

impl Churn {
    /// Stops every task; returns how many changes the clusters accepted.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        let mut n = 0;
        for t in self.tasks {
            n += t.await.unwrap_or(0);
        }
        n
    }
}
