//! Attacks on one hub, each reproduced with real gRPC streams and HTTP
//! requests, and each now failing to do harm: a forged forwarded
//! certificate, a process posing as the load balancer, another shard taking
//! an account, a session answering an operation it was not sent, an
//! operation id reused across accounts and requests, a Register of many
//! accounts, slow and idle HTTP clients, and Secret data in an operation's
//! result.

mod common;

use std::time::{Duration, Instant};

use common::*;
use scale_agent_hub::RunningHub;
use scale_agent_proto::v1::{self as pb, RegisterReason, agent_frame, hub_frame};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;
use tonic::transport::Channel;

const LONG: Duration = Duration::from_secs(600);

/// Opens a session straight to the hub's gRPC port (from 127.0.0.1) with
/// these request headers.
async fn direct(
    hub: &RunningHub,
    shard: &str,
    headers: &[(&'static str, String)],
) -> Result<Result<FakeAgent, tonic::Status>> {
    let channel = Channel::from_shared(hub.grpc_url())?.connect().await?;
    let opened = open_on(channel, headers, hello_frame(shard, &format!("{shard}-0"))).await?;
    Ok(opened.map(FakeAgent::from_opened))
}

fn cert(value: String) -> Vec<(&'static str, String)> {
    vec![("x-client-cert", value)]
}

/// The attacker of issue "forged forwarded certificate": from a trusted
/// address, a self-signed certificate naming prod-east in the header. Before,
/// it was believed, took cluster-1 over, got its resume points and planted
/// an object; now the stream is refused and the real agent keeps streaming.
#[tokio::test]
async fn a_forged_forwarded_certificate_takes_nothing() -> Result<()> {
    logs();
    let ca = Ca::new("agents")?;
    let hub = hub_with(|c| {
        c.grace_period = LONG;
        trusting_localhost(c, &ca);
    })
    .await?;
    let mut real = direct(&hub, "prod-east", &cert(ca.escaped_agent("prod-east")?))
        .await?
        .map_err(|s| format!("the real agent: {s:?}"))?;
    assert!(real.register(&[("cluster-1", "uid-1")]).await?[0].accepted);
    real.sync_start("cluster-1", deployments(), pb::SyncMode::FullRelist)
        .await?;
    real.events("cluster-1", vec![added("web", "real", "10")])
        .await?;
    real.sync_end("cluster-1", deployments(), "10", 1).await?;
    real.barrier().await?;

    let forged = forged_escaped_cert("prod-east")?;
    let status = direct(&hub, "prod-east", &cert(forged))
        .await?
        .err()
        .ok_or("a self-signed certificate in the header opened a session")?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("not trusted"),
        "{}",
        status.message()
    );

    // A certificate from another CA is no better.
    let rogue = Ca::new("rogue")?.escaped_agent("prod-east")?;
    let status = direct(&hub, "prod-east", &cert(rogue))
        .await?
        .err()
        .ok_or("a certificate of another CA opened a session")?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Nothing moved: the real agent holds the account and its objects.
    real.events("cluster-1", vec![added("web", "still-real", "11")])
        .await?;
    assert_eq!(
        object_names(&hub, "cluster-1").await?,
        ["real", "still-real"]
    );
    let held = account(&hub, "cluster-1").await?.ok_or("listed")?;
    assert_eq!(held["replica"], "prod-east-0");
    assert!(
        real.backlog.is_empty(),
        "the real agent was told something: {:?}",
        real.backlog
    );
    hub.shutdown().await?;
    Ok(())
}

/// With a proxy secret, a process that connects from the load balancer's
/// address with a genuine certificate (certificates are not secret) is still
/// not the load balancer.
#[tokio::test]
async fn a_process_without_the_proxy_secret_is_not_the_load_balancer() -> Result<()> {
    logs();
    let ca = Ca::new("agents")?;
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("proxy-secret");
    std::fs::write(&secret, "lb-and-hub-only\n")?;
    let hub = hub_with(|c| {
        trusting_localhost(c, &ca);
        c.proxy_secret_file = Some(secret.clone());
    })
    .await?;
    let genuine = ca.escaped_agent("prod-east")?;
    for presented in [None, Some("guess")] {
        let mut headers = cert(genuine.clone());
        if let Some(s) = presented {
            headers.push(("x-scale-agent-proxy-secret", s.to_owned()));
        }
        let status = direct(&hub, "prod-east", &headers)
            .await?
            .err()
            .ok_or("no proxy secret, yet believed")?;
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("proxy secret"),
            "{}",
            status.message()
        );
    }
    let mut headers = cert(genuine);
    headers.push(("x-scale-agent-proxy-secret", "lb-and-hub-only".to_owned()));
    let mut agent = direct(&hub, "prod-east", &headers)
        .await?
        .map_err(|s| format!("the load balancer with the secret: {s:?}"))?;
    assert!(agent.register(&[("cluster-1", "uid-1")]).await?[0].accepted);
    hub.shutdown().await?;
    Ok(())
}

/// Without `--authorize-shards`: team-b asks for prod-east's account, reads
/// the cluster id from the refusal (or the API), and registers again with
/// it. Before, the second try superseded prod-east and the two flapped for
/// ever. Now no refusal or anonymous API answer carries the id, the id
/// grants nothing, and prod-east is never superseded.
#[tokio::test]
async fn another_shard_never_takes_an_account_nor_learns_its_cluster() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut east = FakeAgent::connect(&hub, "prod-east", "east-0").await?;
    assert!(east.register(&[("cluster-1", "uid-secret-1")]).await?[0].accepted);
    let mut team_b = FakeAgent::connect(&hub, "team-b", "b-0").await?;
    let refused = team_b.register(&[("cluster-1", "guess")]).await?;
    let line = &refused[0];
    assert_eq!(line.reason, RegisterReason::NotOwner as i32, "{line:?}");
    assert!(
        !format!("{line:?}").contains("uid-secret-1"),
        "leaked: {line:?}"
    );
    let owner = line.owner.as_ref().ok_or("the owner")?;
    assert_eq!(
        owner.shard.as_ref().map(|s| s.name.as_str()),
        Some("prod-east")
    );
    let (_, accounts) = get(&hub, "/v1/accounts").await?;
    assert_eq!(accounts[0]["name"], "cluster-1");
    assert_eq!(accounts[0].get("clusterId"), None, "{accounts}");

    // Knowing the id anyway changes nothing, however often it is tried.
    for _ in 0..5 {
        let refused = team_b.register(&[("cluster-1", "uid-secret-1")]).await?;
        assert_eq!(refused[0].reason, RegisterReason::NotOwner as i32);
        east.events("cluster-1", vec![added("web", "east", "1")])
            .await?;
    }
    east.barrier().await?;
    assert!(
        east.backlog
            .iter()
            .all(|f| !matches!(f, hub_frame::Frame::RegisterResult(_))),
        "prod-east was told something: {:?}",
        east.backlog
    );
    let held = account(&hub, "cluster-1").await?.ok_or("listed")?;
    assert_eq!(held["shard"], "spinnaker/prod-east");
    assert_eq!(held["replica"], "east-0");
    let metrics = hub.metrics_text();
    assert!(
        !metrics.contains("scale_agent_hub_registrations_superseded_total 1"),
        "{metrics}"
    );
    // Another replica of the same shard still takes over (SUPERSEDED).
    let mut east_1 = FakeAgent::connect(&hub, "prod-east", "east-1").await?;
    assert!(east_1.register(&[("cluster-1", "uid-secret-1")]).await?[0].accepted);
    let notice = east
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => Some(r.accounts[0].clone()),
            _ => None,
        })
        .await?;
    assert_eq!(notice.reason, RegisterReason::Superseded as i32);
    hub.shutdown().await?;
    Ok(())
}

/// POSTs an operation in the background; its (status, body).
fn post_later(
    hub: &RunningHub,
    account: &str,
    body: Value,
) -> tokio::task::JoinHandle<Result<(u16, Value)>> {
    let url = format!("{}/v1/accounts/{account}/operations", hub.http_url());
    tokio::spawn(async move {
        let resp = reqwest::Client::new().post(url).json(&body).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await?))
    })
}

/// team-b's own session answers an operation routed to prod-east's agent,
/// by the wire id and by the caller's id. Before, the API caller got the
/// forged answer; now only prod-east's answer counts.
#[tokio::test]
async fn only_the_session_an_operation_went_to_can_answer_it() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut east = FakeAgent::connect(&hub, "prod-east", "east-0").await?;
    assert!(east.register(&[("cluster-1", "uid-1")]).await?[0].accepted);
    let mut team_b = FakeAgent::connect(&hub, "team-b", "b-0").await?;
    assert!(team_b.register(&[("team-b-1", "uid-b")]).await?[0].accepted);

    let http = post_later(
        &hub,
        "cluster-1",
        json!({"id": "deploy-7", "type": "delete", "kind": "Deployment", "namespace": "web", "name": "frontend"}),
    );
    let op = east.expect_operation().await?;
    for id in [op.id.as_str(), "deploy-7"] {
        team_b
            .answer(id, true, "forged: deleted", json!({"forged": true}))
            .await?;
    }
    team_b.barrier().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !http.is_finished(),
        "a forged answer completed the operation"
    );
    east.answer(
        &op.id,
        false,
        "deployments.apps \"frontend\" not found",
        Value::Null,
    )
    .await?;
    let (status, body) = http.await??;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["id"], "deploy-7");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("not found"),
        "{body}"
    );
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(
            r#"scale_agent_hub_frames_ignored_total{reason="operation_result_wrong_session"} 1"#
        ),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

/// An id used for a scale of one account, reused for a delete of it and for
/// a delete of another account. Before, both returned the scale's result (a
/// delete "succeeded" without running); now the first is refused with 409
/// and the second runs as its own operation.
#[tokio::test]
async fn operation_ids_are_per_account_and_never_stand_for_another_request() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::connect(&hub, "prod-east", "east-0").await?;
    let results = agent
        .register(&[("cluster-1", "uid-1"), ("cluster-2", "uid-2")])
        .await?;
    assert!(results.iter().all(|r| r.accepted), "{results:?}");
    let scale = json!({"id": "op-1", "type": "scale", "kind": "Deployment", "namespace": "web", "name": "frontend", "replicas": 3});
    let http = post_later(&hub, "cluster-1", scale.clone());
    let first = agent.expect_operation().await?;
    agent
        .answer(&first.id, true, "scaled", json!({"kind": "Deployment"}))
        .await?;
    let (status, scaled) = http.await??;
    assert_eq!(status, 200, "{scaled}");

    let delete = json!({"id": "op-1", "type": "delete", "kind": "Deployment", "namespace": "web", "name": "frontend"});
    let (status, body) = post(&hub, "/v1/accounts/cluster-1/operations", &delete).await?;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("op-1"),
        "{body}"
    );

    let http = post_later(&hub, "cluster-2", delete);
    let second = agent.expect_operation().await?;
    assert_eq!(second.account, "cluster-2");
    assert_ne!(second.id, first.id, "the agent must see another operation");
    assert!(matches!(second.kind, Some(pb::operation::Kind::Delete(_))));
    agent
        .answer(&second.id, true, "deleted", json!({"kind": "Status"}))
        .await?;
    let (status, deleted) = http.await??;
    assert_eq!(
        (status, deleted["message"].as_str()),
        (200, Some("deleted"))
    );

    // The same request again is answered from the first result, and the
    // agent sees nothing.
    let (status, again) = post(&hub, "/v1/accounts/cluster-1/operations", &scale).await?;
    assert_eq!((status, &again), (200, &scaled));
    agent.barrier().await?;
    assert!(
        agent
            .backlog
            .iter()
            .all(|f| !matches!(f, hub_frame::Frame::Operation(_))),
        "{:?}",
        agent.backlog
    );
    hub.shutdown().await?;
    Ok(())
}

/// The agent of a shard returns a Secret with its data and managedFields
/// (an old or broken agent): the API caller never sees them, first time or
/// from the stored result.
#[tokio::test]
async fn an_operations_result_never_carries_secret_data_or_managed_fields() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut agent = FakeAgent::connect(&hub, "prod-east", "east-0").await?;
    assert!(agent.register(&[("cluster-1", "uid-1")]).await?[0].accepted);
    let get_secret =
        json!({"id": "read-1", "type": "get", "kind": "Secret", "namespace": "web", "name": "db"});
    let http = post_later(&hub, "cluster-1", get_secret.clone());
    let op = agent.expect_operation().await?;
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "db", "namespace": "web", "managedFields": [{"manager": "kubectl"}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
        "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"
    });
    agent.answer(&op.id, true, "read", secret).await?;
    let (status, body) = http.await??;
    assert_eq!(status, 200, "{body}");
    let (_, stored) = post(&hub, "/v1/accounts/cluster-1/operations", &get_secret).await?;
    for answer in [&body, &stored] {
        let text = answer.to_string();
        assert!(!text.contains("aHVudGVyMg"), "Secret data returned: {text}");
        assert!(!text.contains("managedFields"), "{text}");
        assert_eq!(answer["result"]["metadata"]["name"], "db");
    }
    hub.shutdown().await?;
    Ok(())
}

/// One Register of 20,000 accounts (the attack sent 300,000): only the
/// frame's limit is taken, the rest is refused saying why, the answer comes
/// in frames of bounded size, another session is not held up, and the
/// account list comes in pages.
/// On a multi-threaded runtime, as the hub binary runs: the flood's session and the
/// other session are served side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_of_many_accounts_is_capped_and_answered_in_bounded_frames() -> Result<()> {
    let hub = hub(LONG).await?;
    let mut other = FakeAgent::connect(&hub, "team-b", "b-0").await?;
    assert!(other.register(&[("team-b-1", "uid-b")]).await?[0].accepted);
    let mut flood = FakeAgent::connect(&hub, "prod-east", "east-0").await?;
    let total = 20_000;
    let accounts = (0..total)
        .map(|i| pb::Account {
            name: format!("flood-{i:05}"),
            cluster_id: format!("uid-{i}"),
            ..Default::default()
        })
        .collect();
    let sent = Instant::now();
    flood
        .send(agent_frame::Frame::Register(pb::Register { accounts }))
        .await?;
    // The other session's events need the registry lock the Register takes.
    let started = Instant::now();
    other
        .events("team-b-1", vec![added("web", "meanwhile", "1")])
        .await?;
    let other_waited = started.elapsed();
    let mut lines = Vec::new();
    let mut frames = 0;
    while lines.len() < total {
        let frame = flood
            .wait_for(|f| match f {
                hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
                _ => None,
            })
            .await?;
        assert!(frame.len() <= 1_000, "a frame of {} lines", frame.len());
        frames += 1;
        lines.extend(frame);
    }
    let answered_in = sent.elapsed();
    let accepted = lines.iter().filter(|l| l.accepted).count();
    assert_eq!(accepted, 1_000, "the frame limit");
    let refused = lines.iter().find(|l| !l.accepted).ok_or("a refusal")?;
    assert_eq!(refused.reason, RegisterReason::Invalid as i32);
    assert!(
        refused.message.contains("at most 1000 per frame"),
        "{}",
        refused.message
    );
    eprintln!(
        "register of {total} accounts: answered in {answered_in:?} over {frames} frames; another session's events acked in {other_waited:?} meanwhile"
    );
    assert!(other_waited < Duration::from_secs(2), "{other_waited:?}");

    // The account list comes in pages that add up to everything.
    let client = reqwest::Client::new();
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut request = client.get(format!("{}/v1/accounts", hub.http_url()));
        if let Some(t) = &token {
            request = request.query(&[("continue", t.as_str())]);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 200);
        token = response
            .headers()
            .get("x-continue")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let page: Vec<Value> = response.json().await?;
        assert!(page.len() <= 500, "a page of {}", page.len());
        names.extend(
            page.iter()
                .filter_map(|a| a["name"].as_str().map(str::to_owned)),
        );
        pages += 1;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(names.len(), 1_001, "every account once, over {pages} pages");
    let mut sorted = names.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), names.len());
    hub.shutdown().await?;
    Ok(())
}

/// Slow and idle HTTP clients: connections that never finish their headers,
/// and more of them than the cap. Before, they were held for ever (at the
/// fd limit agents could not connect); now each is closed after the header
/// timeout and a real request gets through.
#[tokio::test]
async fn slow_and_idle_http_clients_are_cut_off_and_capped() -> Result<()> {
    let hub = hub_with(|c| {
        c.http_limits.header_timeout = Duration::from_millis(500);
        c.http_limits.max_connections = 4;
    })
    .await?;
    let addr = hub.http_addr();
    let mut held = Vec::new();
    for i in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if i % 2 == 0 {
            // Half a request, never finished.
            stream
                .write_all(b"GET /v1/accounts HTTP/1.1\r\nHost: hub\r\n")
                .await?;
        }
        held.push(stream);
    }
    let started = Instant::now();
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(10), get(&hub, "/healthz")).await??;
    assert_eq!(status, 200);
    let got_through = started.elapsed();
    let mut closed = 0;
    for mut stream in held {
        let mut buf = [0u8; 256];
        // A closed connection reads EOF (or an error, or a 408 answer).
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        if read.is_ok() {
            closed += 1;
        }
    }
    eprintln!(
        "8 slow clients, cap 4: a real request got through after {got_through:?}; {closed} of 8 closed by the hub"
    );
    assert_eq!(closed, 8, "every slow or idle connection is closed");
    hub.shutdown().await?;
    Ok(())
}

/// A hub serving the Kubernetes API on a free loopback port, with one token for every
/// account, its settings changed by `change`; the hub and the API's address.
async fn kube_api_hub(
    change: impl FnOnce(&mut scale_agent_hub::Config, &mut scale_agent_hub::kubeapi::KubeApiConfig),
) -> Result<(RunningHub, std::net::SocketAddr)> {
    use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
    let hub = hub_with(|c| {
        let mut api = KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("a socket address"),
            TokenSource::Text("a-token-of-the-kube-api *\n".into()),
        );
        change(c, &mut api);
        c.kube_api = Some(api);
    })
    .await?;
    let addr = hub.kube_api_addr().expect("the Kubernetes API is served");
    Ok((hub, addr))
}

/// The Kubernetes API of the accounts is a listener of its own, with the same
/// header timeout as the HTTP API: a client that never finishes its headers,
/// or stays idle, is closed, and a real request is still answered.
#[tokio::test]
async fn slow_and_idle_kube_api_clients_are_cut_off() -> Result<()> {
    let (hub, addr) =
        kube_api_hub(|c, _| c.http_limits.header_timeout = Duration::from_millis(500)).await?;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        if i % 2 == 0 {
            stream
                .write_all(b"GET /accounts/a/api HTTP/1.1\r\nHost: hub\r\n")
                .await?;
        }
        held.push(stream);
    }
    let mut real = tokio::net::TcpStream::connect(addr).await?;
    real.write_all(b"GET /accounts/a/api HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), real.read_to_end(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "a request without a token is refused: {answer}"
    );
    let started = Instant::now();
    let mut closed = 0;
    for mut stream in held {
        let mut buf = [0u8; 256];
        if tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    eprintln!(
        "4 slow Kubernetes API clients: {closed} closed by the hub within {:?}",
        started.elapsed()
    );
    assert_eq!(closed, 4, "every slow or idle connection is closed");
    hub.shutdown().await?;
    Ok(())
}

/// An HTTP/2 connection to the Kubernetes API that sends requests without a valid token
/// is closed once the header timeout has passed since it opened: it cannot hold one of
/// the API's connections by asking again and again (HTTP/2 has no idle timeout of its
/// own).
#[tokio::test]
async fn an_http2_connection_that_never_authenticates_is_closed() -> Result<()> {
    use http_body_util::Empty;
    let (hub, addr) =
        kube_api_hub(|c, _| c.http_limits.header_timeout = Duration::from_millis(500)).await?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    let driven = tokio::spawn(conn);
    let request = || {
        hyper::Request::get("http://hub/accounts/a/api")
            .body(Empty::<bytes::Bytes>::new())
            .expect("a request")
    };
    // Asking without a token, every 200 ms, for twice the header timeout.
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(1) {
        match sender.send_request(request()).await {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 401);
                refused += 1;
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused >= 1, "the first request is answered (401)");
    let ended = tokio::time::timeout(Duration::from_secs(5), driven).await;
    assert!(
        ended.is_ok(),
        "the connection stays open after {refused} unauthenticated requests"
    );
    hub.shutdown().await?;
    Ok(())
}

/// With two connections held from 127.0.0.1 to `addr` (capped at two per address), a
/// third from there is closed without an answer to `request_line`, while one from
/// 127.0.0.2 is answered, its status line starting with `answered`.
async fn two_per_address(
    addr: std::net::SocketAddr,
    request_line: &[u8],
    answered: &str,
) -> Result<()> {
    // Connects from `source` (another loopback address is another client).
    let from = |source: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse()?)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(socket.connect(addr).await?)
    };
    let request = [
        request_line,
        b" HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let _held = [from("127.0.0.1").await?, from("127.0.0.1").await?];
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A third from the same address is closed without an answer ...
    let mut third = from("127.0.0.1").await?;
    let _ = third.write_all(&request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty(),
        "a third connection from one address was answered: {}",
        String::from_utf8_lossy(&answer)
    );
    // ... while another address is answered.
    let mut other = from("127.0.0.2").await?;
    other.write_all(&request).await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_end(&mut answer)).await??;
    assert!(
        String::from_utf8_lossy(&answer).starts_with(answered),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// One client address holding its most Kubernetes API connections has its next ones
/// closed at once, while another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_kube_api_connection() -> Result<()> {
    let (hub, addr) = kube_api_hub(|_, api| api.max_connections_per_address = 2).await?;
    // Another address is answered 401: no token.
    two_per_address(addr, b"GET /accounts/a/api", "HTTP/1.1 401").await?;
    hub.shutdown().await?;
    Ok(())
}

/// Opens an HTTP/2 connection to the Kubernetes API; the sender and the task driving
/// the connection (it ends when the hub closes the connection).
async fn http2_to(
    addr: std::net::SocketAddr,
) -> Result<(
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    Ok((sender, tokio::spawn(conn)))
}

fn with_token(token: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get("http://hub/accounts/a/api")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .expect("a request")
}

/// An HTTP/2 connection that authenticated once and then sends nothing is closed after
/// the idle timeout: idle connections cannot pile up to the API's limit.
#[tokio::test]
async fn an_idle_authenticated_http2_connection_is_closed() -> Result<()> {
    use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
    const TOKEN: &str = "a-token-of-the-kube-api";
    let hub = hub_with(|c| {
        let mut api = KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("a socket address"),
            TokenSource::Text(format!("{TOKEN} *\n")),
        );
        api.idle_timeout = Duration::from_millis(500);
        c.kube_api = Some(api);
    })
    .await?;
    let addr = hub.kube_api_addr().expect("the Kubernetes API is served");
    let (mut sender, driven) = http2_to(addr).await?;
    let answer = sender.send_request(with_token(TOKEN)).await?;
    assert_ne!(answer.status().as_u16(), 401, "the token is valid");
    drop(answer);
    let ended = tokio::time::timeout(Duration::from_secs(5), driven).await;
    assert!(
        ended.is_ok(),
        "an authenticated HTTP/2 connection stayed open while idle"
    );
    hub.shutdown().await?;
    Ok(())
}

/// A busy HTTP/2 connection is asked to close once past its age, so no connection is
/// held for ever by a client that keeps it busy.
#[tokio::test]
async fn an_http2_connection_past_its_age_is_closed() -> Result<()> {
    use scale_agent_hub::kubeapi::{KubeApiConfig, TokenSource};
    const TOKEN: &str = "a-token-of-the-kube-api";
    let hub = hub_with(|c| {
        let mut api = KubeApiConfig::new(
            "127.0.0.1:0".parse().expect("a socket address"),
            TokenSource::Text(format!("{TOKEN} *\n")),
        );
        api.idle_timeout = Duration::ZERO;
        api.max_connection_age = Duration::from_secs(1);
        c.kube_api = Some(api);
    })
    .await?;
    let addr = hub.kube_api_addr().expect("the Kubernetes API is served");
    let (mut sender, driven) = http2_to(addr).await?;
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(5) && !driven.is_finished() {
        match sender.send_request(with_token(TOKEN)).await {
            Ok(r) => {
                assert_ne!(r.status().as_u16(), 401);
                answered += 1;
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driven).await;
    assert!(
        ended.is_ok(),
        "a connection kept busy ({answered} requests) outlived its age"
    );
    hub.shutdown().await?;
    Ok(())
}

/// One client address holding its most JSON API connections has its next ones closed
/// at once, while another address is still served.
#[tokio::test]
async fn one_address_cannot_take_every_json_api_connection() -> Result<()> {
    let hub = hub_with(|c| {
        c.http_limits.max_connections_per_address = 2;
    })
    .await?;
    two_per_address(hub.http_addr(), b"GET /healthz", "HTTP/1.1 200").await?;
    hub.shutdown().await?;
    Ok(())
}

/// Sends one raw HTTP/1.1 request to `addr` (`Connection: close`); the whole answer.
async fn raw_answer(addr: std::net::SocketAddr, head: &str) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// An account's host name (`--kube-api-host-suffix`) selects the account and nothing
/// else: a token allowed account `a` sent to `b.<domain>` is refused 403 (HTTP/1.1
/// `Host`, HTTP/2 `:authority`, and a path naming `b` under `a`'s host name alike),
/// while at `a.<domain>` it reaches account `a` (here unknown: no agent streams it).
#[tokio::test]
async fn an_accounts_host_name_takes_nothing_from_the_token() -> Result<()> {
    use scale_agent_hub::kubeapi::TokenSource;
    const TOKEN_A: &str = "a-token-for-account-a-only";
    let (hub, addr) = kube_api_hub(|_, api| {
        api.tokens = TokenSource::Text(format!("{TOKEN_A} a\nthe-token-for-account-b-only b\n"));
        api.host_suffix = Some("hub.test".into());
    })
    .await?;
    let get = |path: &str, host: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN_A}")
    };
    for (path, host) in [
        ("/api", "b.hub.test"),
        ("/api", "B.HUB.TEST:8443"),
        ("/accounts/b/api", "a.hub.test"),
    ] {
        let answer = raw_answer(addr, &get(path, host)).await?;
        assert!(
            answer.starts_with("HTTP/1.1 403"),
            "{path} at {host} with a's token: {answer}"
        );
    }
    let answer = raw_answer(addr, &get("/api", "a.hub.test:8443")).await?;
    assert!(
        answer.starts_with("HTTP/1.1 404") && answer.contains("account \\\"a\\\" is not known"),
        "/api at a's host name with a's token reaches account a: {answer}"
    );
    // The hub's own name is no account: the answer says where accounts are.
    let answer = raw_answer(addr, &get("/api", "hub.test")).await?;
    assert!(
        answer.starts_with("HTTP/1.1 404") && answer.contains("https://<account>.hub.test/"),
        "{answer}"
    );
    // HTTP/2 names its host in `:authority`.
    let (mut sender, _conn) = http2_to(addr).await?;
    let request = hyper::Request::get("http://b.hub.test/api")
        .header("authorization", format!("Bearer {TOKEN_A}"))
        .body(http_body_util::Empty::new())?;
    let status = sender.send_request(request).await?.status();
    assert_eq!(status, 403, "HTTP/2 to b's host name with a's token");
    hub.shutdown().await?;
    Ok(())
}
