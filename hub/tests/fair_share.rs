//! One agent serves several accounts: one account's (one token's) long watches must not
//! take every request the agent carries, or the other accounts of the same agent
//! answer 429 (issue 21, item 9). The fake agent here carries requests as the real one
//! does (`agent/src/proxy.rs`): at most 256 at once, 429 past it, watches held open.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{FakeAgent, Result};
use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
use scale_agent_proto::v1::{
    HttpHeader, KubeResponseBody, KubeResponseHead, agent_frame, hub_frame,
};

const TOKEN_A: &str = "token-of-account-a-0123456789";
const TOKEN_B: &str = "token-of-account-b-0123456789";
/// What the real agent carries at once (`MAX_IN_FLIGHT` in `agent/src/proxy.rs`).
const AGENT_IN_FLIGHT: usize = 256;
/// Watches account a opens: more than the agent carries.
const WATCHES: usize = 260;

/// What the fake agent saw.
#[derive(Default)]
struct Seen {
    in_flight: HashSet<u64>,
    /// Requests it had to refuse because it already carried its most.
    refused: usize,
}

fn head(id: u64, status: u32) -> agent_frame::Frame {
    agent_frame::Frame::KubeResponseHead(KubeResponseHead {
        id,
        status,
        headers: vec![HttpHeader {
            name: "content-type".into(),
            value: Bytes::from_static(b"application/json"),
        }],
    })
}

fn last(id: u64, body: &'static [u8]) -> agent_frame::Frame {
    agent_frame::Frame::KubeResponseBody(KubeResponseBody {
        id,
        chunk: Bytes::from_static(body),
        done: true,
        error: String::new(),
    })
}

/// Carries requests as the agent does: a watch gets its head and stays open, any
/// other request is answered at once; past 256 in flight, 429.
async fn carry(mut agent: FakeAgent, seen: Arc<Mutex<Seen>>) {
    loop {
        let frame = match agent.next_raw().await {
            Err(_) => continue, // nothing for a while
            Ok(Ok(Some(f))) => f,
            Ok(_) => return,
        };
        let replies = {
            let mut seen = seen.lock().expect("not poisoned");
            match frame.frame {
                Some(hub_frame::Frame::KubeRequest(r))
                    if seen.in_flight.len() >= AGENT_IN_FLIGHT =>
                {
                    seen.refused += 1;
                    vec![
                        head(r.id, 429),
                        last(r.id, br#"{"kind":"Status","code":429}"#),
                    ]
                }
                Some(hub_frame::Frame::KubeRequest(r)) if r.path.contains("watch=true") => {
                    seen.in_flight.insert(r.id);
                    vec![head(r.id, 200)]
                }
                Some(hub_frame::Frame::KubeRequest(r)) => {
                    vec![
                        head(r.id, 200),
                        last(r.id, br#"{"kind":"ConfigMapList","items":[]}"#),
                    ]
                }
                Some(hub_frame::Frame::KubeCancel(c)) => {
                    seen.in_flight.remove(&c.id);
                    vec![]
                }
                _ => vec![],
            }
        };
        for reply in replies {
            if agent.send(reply).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_accounts_watches_leave_the_agents_other_accounts_answered() -> Result<()> {
    common::logs();
    let hub = common::hub_with(|c| {
        c.kube_api = Some(KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(format!("{TOKEN_A} a\n{TOKEN_B} b\n")),
        ));
    })
    .await?;
    let api = hub.kube_api_addr().expect("the Kubernetes API is served");
    let mut agent = FakeAgent::connect_carrying_requests(&hub, "shared", "shared-0").await?;
    let results = agent
        .register(&[("a", "cluster-a"), ("b", "cluster-b")])
        .await?;
    assert!(results.iter().all(|r| r.accepted), "{results:?}");
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(carry(agent, Arc::clone(&seen)));

    // Nothing of these accounts is cached: every request goes to the agent.
    let client = reqwest::Client::new();
    let url = |account: &str, watch: bool| {
        format!(
            "http://{api}/accounts/{account}/api/v1/namespaces/default/configmaps{}",
            if watch { "?watch=true" } else { "" }
        )
    };
    let watches = futures::future::join_all(
        (0..WATCHES).map(|_| client.get(url("a", true)).bearer_auth(TOKEN_A).send()),
    )
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for w in watches {
        let w = w?;
        match w.status().as_u16() {
            200 => held.push(w),
            429 => refused += 1,
            other => panic!("a watch of account a answered {other}"),
        }
    }
    assert!(
        refused > 0,
        "{WATCHES} watches of one token were all carried"
    );

    // Account b, same agent: its short requests and its watches are still carried.
    for _ in 0..20 {
        let get = client
            .get(url("b", false))
            .bearer_auth(TOKEN_B)
            .send()
            .await?;
        let status = get.status().as_u16();
        let text = get.text().await?;
        assert_eq!(
            status,
            200,
            "account b's list while account a holds {} watches: {text}",
            held.len()
        );
    }
    let watch_b = client
        .get(url("b", true))
        .bearer_auth(TOKEN_B)
        .send()
        .await?;
    assert_eq!(watch_b.status().as_u16(), 200, "account b's watch");
    assert_eq!(
        seen.lock().expect("not poisoned").refused,
        0,
        "the hub asked the agent for more than it carries"
    );

    // An ended watch gives its place back.
    drop(held);
    drop(watch_b);
    let again = Instant::now() + Duration::from_secs(10);
    loop {
        let w = client
            .get(url("a", true))
            .bearer_auth(TOKEN_A)
            .send()
            .await?;
        if w.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < again,
            "ended watches never gave their places back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    hub.shutdown().await?;
    Ok(())
}
