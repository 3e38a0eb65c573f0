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

/// A hub whose Kubernetes API takes `tokens` (a tokens file's text), and one agent
/// streaming accounts `a` and `b` that carries requests as [`carry`] does; the API's
/// address, and what the agent saw.
async fn shared_agent(
    tokens: &str,
) -> Result<(
    scale_agent_hub::RunningHub,
    std::net::SocketAddr,
    Arc<Mutex<Seen>>,
)> {
    common::logs();
    let hub = common::hub_with(|c| {
        c.kube_api = Some(KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("an address"),
            TokenSource::Text(tokens.to_owned()),
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
    Ok((hub, api, seen))
}

/// The ConfigMaps of `account` through the Kubernetes API at `api` (a watch of them
/// when `watch`). Nothing of these accounts is cached: every request goes to the agent.
fn configmaps(api: std::net::SocketAddr, account: &str, watch: bool) -> String {
    format!(
        "http://{api}/accounts/{account}/api/v1/namespaces/default/configmaps{}",
        if watch { "?watch=true" } else { "" }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_accounts_watches_leave_the_agents_other_accounts_answered() -> Result<()> {
    let (hub, api, seen) = shared_agent(&format!("{TOKEN_A} a\n{TOKEN_B} b\n")).await?;
    let client = reqwest::Client::new();
    let url = |account: &str, watch: bool| configmaps(api, account, watch);
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

/// A token for every account (`*`) is one token, wherever it goes: its watches on
/// every account of the agent at once take at most its one token's share of the
/// agent's room, not each account's share, and the accounts' own tokens are still
/// carried, their watches too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_for_every_account_takes_one_tokens_share_not_every_accounts() -> Result<()> {
    const TOKEN_ALL: &str = "token-of-every-account-0123456789";
    let tokens = format!("{TOKEN_ALL} *\n{TOKEN_A} a\n{TOKEN_B} b\n");
    let (hub, api, seen) = shared_agent(&tokens).await?;
    let client = reqwest::Client::new();
    // As many watches as the agent carries, on each account.
    let watches = futures::future::join_all((0..2 * WATCHES).map(|i| {
        let account = if i % 2 == 0 { "a" } else { "b" };
        client
            .get(configmaps(api, account, true))
            .bearer_auth(TOKEN_ALL)
            .send()
    }))
    .await;
    let mut held = Vec::new();
    for w in watches {
        let w = w?;
        match w.status().as_u16() {
            200 => held.push(w),
            429 => {}
            other => panic!("a watch of the all-accounts token answered {other}"),
        }
    }
    // The long-running room is half the agent's 256; one token leaves at least half
    // of what is free to the others, on every account together.
    assert!(
        held.len() <= AGENT_IN_FLIGHT / 4,
        "the all-accounts token holds {} watches through one agent",
        held.len()
    );
    for (account, token) in [("a", TOKEN_A), ("b", TOKEN_B)] {
        for watch in [false, true] {
            let answer = client
                .get(configmaps(api, account, watch))
                .bearer_auth(token)
                .send()
                .await?;
            let status = answer.status().as_u16();
            let text = if watch {
                String::new()
            } else {
                answer.text().await?
            };
            assert_eq!(
                status,
                200,
                "account {account}'s own token (watch: {watch}) while the all-accounts token holds {} watches: {text}",
                held.len()
            );
        }
    }
    assert_eq!(
        seen.lock().expect("not poisoned").refused,
        0,
        "the hub asked the agent for more than it carries"
    );
    drop(held);
    hub.shutdown().await?;
    Ok(())
}
