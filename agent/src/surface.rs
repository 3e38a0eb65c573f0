//! What an account's cluster serves (its discovery and OpenAPI) changes only with its
//! CustomResourceDefinitions and APIServices. The agent watches both (names and
//! versions only) and tells the hub (`ApiSurface`): once both are listed, that it
//! follows them, and again on every change after, so the hub drops what it kept of
//! the cluster's discovery and OpenAPI answers; on an error (no right to list them,
//! the cluster away), that it no longer follows them, so the hub keeps nothing.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use kube::Client;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::discovery::ApiResource;
use kube::runtime::watcher::{self, Event, watcher};
use scale_agent_proto::v1::{ApiSurface, agent_frame::Frame};

use crate::outbound::{Closed, Outbound};

/// The capability both sides list when the agent sends `ApiSurface`.
pub const CAPABILITY: &str = "api-surface";

/// How long after an error the watch starts again.
const RETRY: Duration = Duration::from_secs(10);

/// What happened to one of the watched kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Its list (or relist) is complete.
    Listed,
    /// Part of a list.
    Initial,
    /// A change.
    Changed,
    /// The watch failed.
    Failed,
}

/// Where the watch of both kinds stands.
#[derive(Debug, Default)]
struct Follow {
    listed: [bool; KINDS],
    following: bool,
}

impl Follow {
    /// What the hub is told after `seen` of kind `kind`: `Some(true)` once both kinds
    /// are listed (again after a relist, which may hide changes) and on every change
    /// after; `Some(false)` once on an error; `None` otherwise.
    fn decide(&mut self, kind: usize, seen: Seen) -> Option<bool> {
        match seen {
            Seen::Listed => {
                if let Some(l) = self.listed.get_mut(kind) {
                    *l = true;
                }
                self.following = self.listed.iter().all(|l| *l);
                self.following.then_some(true)
            }
            Seen::Initial => None,
            Seen::Changed => self.following.then_some(true),
            Seen::Failed => {
                self.listed = [false; KINDS];
                std::mem::replace(&mut self.following, false).then_some(false)
            }
        }
    }
}

const KINDS: usize = 2;
/// The watches an account keeps open for this (one per kind, never ending): counted in
/// the streams it reserves on its cluster's connection.
pub const WATCHES: usize = KINDS;

fn resources() -> [ApiResource; KINDS] {
    [
        ApiResource {
            group: "apiextensions.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            plural: "customresourcedefinitions".into(),
        },
        ApiResource {
            group: "apiregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiregistration.k8s.io/v1".into(),
            kind: "APIService".into(),
            plural: "apiservices".into(),
        },
    ]
}

/// Follows `account`'s CRDs and APIServices until the session closes.
pub async fn run(client: Client, account: String, out: Outbound) -> Result<(), Closed> {
    follow(client, |followed| {
        out.send(Frame::ApiSurface(ApiSurface {
            account: account.clone(),
            followed,
        }))
    })
    .await
}

/// Tells `account`'s hub what the follower its identity shares ([`crate::shared`])
/// decides: followed on joining when it is, and on every change after; no longer
/// followed once, when it was.
pub async fn run_shared(
    mut surface: tokio::sync::watch::Receiver<crate::shared::Surface>,
    account: String,
    out: Outbound,
) -> Result<(), Closed> {
    let mut told = 0u64;
    let mut followed = false;
    loop {
        let now = *surface.borrow_and_update();
        if now.told != told {
            told = now.told;
            let tell = match now.followed {
                Some(true) => Some(true),
                Some(false) => followed.then_some(false),
                None => None,
            };
            if let Some(f) = tell {
                followed = f;
                out.send(Frame::ApiSurface(ApiSurface {
                    account: account.clone(),
                    followed: f,
                }))
                .await?;
            }
        }
        if surface.changed().await.is_err() {
            // The follower is gone (it ends only once nobody listens).
            return std::future::pending().await;
        }
    }
}

/// Follows a cluster's CRDs and APIServices with `client`, and `tell`s each decision
/// (followed or not), until telling fails.
pub async fn follow<F, T>(client: Client, mut tell: F) -> Result<(), Closed>
where
    F: FnMut(bool) -> T,
    T: std::future::Future<Output = Result<(), Closed>>,
{
    loop {
        let watches = resources().into_iter().enumerate().map(|(i, ar)| {
            // Names and versions only: a CRD's schema can be large.
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &ar);
            watcher(api, watcher::Config::default())
                .map_ok(|e| match e {
                    Event::InitDone => Seen::Listed,
                    Event::Init | Event::InitApply(_) => Seen::Initial,
                    Event::Apply(_) | Event::Delete(_) => Seen::Changed,
                })
                .map(move |r| (i, r.unwrap_or(Seen::Failed)))
                .boxed()
        });
        let mut seen = stream::select_all(watches);
        let mut follow = Follow::default();
        while let Some((kind, s)) = seen.next().await {
            if let Some(followed) = follow.decide(kind, s) {
                tell(followed).await?;
            }
            if s == Seen::Failed {
                tracing::info!(
                    "watching the cluster's CRDs and APIServices failed; the hub keeps none of its discovery until it works again"
                );
                break;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followed_once_both_are_listed_then_every_change_and_an_error_says_so() {
        let mut follow = Follow::default();
        let mut tell = |kind, s| follow.decide(kind, s);
        assert_eq!(tell(0, Seen::Initial), None);
        assert_eq!(tell(0, Seen::Listed), None, "one of two listed");
        assert_eq!(tell(0, Seen::Changed), None, "not followed yet");
        assert_eq!(tell(1, Seen::Listed), Some(true));
        assert_eq!(tell(1, Seen::Changed), Some(true));
        assert_eq!(
            tell(0, Seen::Listed),
            Some(true),
            "a relist may hide changes"
        );
        assert_eq!(tell(1, Seen::Failed), Some(false));
        assert_eq!(tell(0, Seen::Failed), None, "said once");
        assert_eq!(tell(0, Seen::Changed), None, "not listed again yet");
    }
}
