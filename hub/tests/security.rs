//! Identity forwarded by a trusted load balancer, account ownership from
//! AgentShards, the maximum connection age, the HTTP API's bearer token, and
//! oversized or malformed frames: each refused clearly while other sessions
//! go on.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BufMut as _;
use common::*;
use prost::Message as _;
use scale_agent_crds::AgentShard;
use scale_agent_hub::{RunningHub, ShardSource};
use scale_agent_proto::v1::{self as pb, HubFrame, RegisterReason, agent_frame, hub_frame};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

const HEADER: &str = "x-client-cert";

async fn plain(hub: &RunningHub) -> Result<Channel> {
    Ok(Channel::from_shared(hub.grpc_url())?.connect().await?)
}

async fn open_as(
    hub: &RunningHub,
    hello_shard: &str,
    forwarded: Option<&str>,
) -> Result<Result<FakeAgent, Status>> {
    let headers: Vec<(&'static str, String)> = forwarded
        .map(|v| vec![(HEADER, v.to_owned())])
        .unwrap_or_default();
    let opened = open_on(
        plain(hub).await?,
        &headers,
        hello_frame(hello_shard, &format!("{hello_shard}-0")),
    )
    .await?;
    Ok(opened.map(FakeAgent::from_opened))
}

#[tokio::test]
async fn a_forwarded_certificate_is_believed_only_from_a_trusted_proxy() -> Result<()> {
    logs();
    let ca = Ca::new("agents")?;
    let east = ca.escaped_agent("east")?;

    // No trusted proxy: the header is ignored and Hello is believed.
    let open = hub_with(|_| {}).await?;
    let agent = open_as(&open, "west", Some(&east)).await?;
    assert!(
        agent.is_ok(),
        "the header must be ignored: {:?}",
        agent.err()
    );
    open.shutdown().await?;

    // 127.0.0.1 is trusted: the header decides.
    let trusting = hub_with(|c| trusting_localhost(c, &ca)).await?;
    let mut good = open_as(&trusting, "east", Some(&east))
        .await?
        .map_err(|s| format!("the forwarded identity matches Hello: {s:?}"))?;
    let status = open_as(&trusting, "west", Some(&east))
        .await?
        .err()
        .ok_or("Hello for another shard than the forwarded certificate")?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spinnaker/west") && status.message().contains("spinnaker/east"),
        "{}",
        status.message()
    );
    let status = open_as(&trusting, "east", None)
        .await?
        .err()
        .ok_or("a trusted proxy forwarding no certificate")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(HEADER), "{}", status.message());
    let status = open_as(&trusting, "east", Some("not%20a%20certificate"))
        .await?
        .err()
        .ok_or("an unreadable forwarded certificate")?;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    good.register(&[("prod-1", "uid-a")]).await?;
    good.barrier().await?;
    trusting.shutdown().await?;

    // Proxies are trusted, but not 127.0.0.1: its header is ignored, and
    // without it there is no identity.
    let elsewhere = hub_with(|c| {
        trusting_localhost(c, &ca);
        c.trusted_proxies = vec!["10.0.0.0/8".parse().expect("cidr")];
    })
    .await?;
    let status = open_as(&elsewhere, "east", Some(&east))
        .await?
        .err()
        .ok_or("a header from an untrusted peer must not count")?;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    elsewhere.shutdown().await?;
    Ok(())
}

/// AgentShard `spinnaker/<name>` listing `accounts`; its status (only when there are
/// `conflicts`) shows each (account, owner) in Conflict. A status that does not list
/// an account would say the name was claimed after the operator last wrote it.
fn shard(name: &str, created: i64, accounts: &[&str], conflicts: &[(&str, &str)]) -> AgentShard {
    let mut value = serde_json::json!({
        "apiVersion": "scaleagent.dev/v1alpha1",
        "kind": "AgentShard",
        "metadata": {
            "name": name, "namespace": "spinnaker",
            "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
        },
        "spec": {
            "accounts": accounts.iter().map(|a| serde_json::json!({
                "name": a, "kubeconfigSecretRef": {"name": format!("kc-{a}")}
            })).collect::<Vec<_>>(),
        },
        "status": {
            "accounts": conflicts.iter().map(|(a, owner)| serde_json::json!({
                "name": a, "state": "Conflict", "reason": "NameTaken", "ownerShard": owner
            })).collect::<Vec<_>>(),
        },
    });
    if conflicts.is_empty()
        && let Some(object) = value.as_object_mut()
    {
        object.remove("status");
    }
    serde_json::from_value(value).expect("an AgentShard")
}

#[tokio::test]
async fn accounts_are_accepted_only_from_the_shard_that_owns_them() -> Result<()> {
    logs();
    let shards = vec![
        shard("east", 1, &["prod-east", "shared"], &[]),
        shard(
            "west",
            2,
            &["prod-west", "shared"],
            &[("shared", "spinnaker/east")],
        ),
    ];
    let hub = hub_with(|c| c.authorize = Some(ShardSource::Fixed(shards))).await?;
    let mut west = FakeAgent::connect(&hub, "west", "west-0").await?;
    let results = west
        .register(&[
            ("prod-west", "uid-w"),
            ("prod-east", "uid-e"),
            ("shared", "uid-s"),
            ("nobodys", "uid-n"),
        ])
        .await?;
    assert!(results[0].accepted, "{:?}", results[0]);
    for r in &results[1..] {
        assert!(!r.accepted, "{r:?}");
        assert_eq!(r.reason, RegisterReason::NotOwner as i32, "{r:?}");
    }
    let owner = |r: &pb::AccountResult| {
        r.owner
            .as_ref()
            .and_then(|o| o.shard.as_ref())
            .map(|s| format!("{}/{}", s.namespace, s.name))
    };
    assert_eq!(owner(&results[1]).as_deref(), Some("spinnaker/east"));
    assert_owned_by(&results[1], "spinnaker/east");
    assert_eq!(owner(&results[2]).as_deref(), Some("spinnaker/east"));
    assert!(
        results[2].message.contains("Conflict"),
        "{}",
        results[2].message
    );
    assert_eq!(owner(&results[3]), None);
    assert!(
        results[3]
            .message
            .contains("no AgentShard lists account nobodys"),
        "{}",
        results[3].message
    );

    // The owner gets its accounts; nothing of the refused ones is listed.
    let mut east = FakeAgent::connect(&hub, "east", "east-0").await?;
    let results = east
        .register(&[("prod-east", "uid-e"), ("shared", "uid-s")])
        .await?;
    assert!(results.iter().all(|r| r.accepted), "{results:?}");
    assert!(account(&hub, "nobodys").await?.is_none());
    assert_eq!(
        account(&hub, "shared").await?.ok_or("listed")?["shard"],
        "spinnaker/east"
    );
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(r#"scale_agent_hub_registrations_rejected_total{reason="not_owner"} 3"#),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_aged_session_is_drained_and_the_agent_comes_back_with_its_accounts() -> Result<()> {
    let hub = hub_with(|c| {
        c.max_connection_age = Some(Duration::from_millis(1500));
        c.max_connection_age_grace = Duration::from_millis(500);
    })
    .await?;
    let mut old = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;
    old.sync_start("prod-1", deployments(), pb::SyncMode::FullRelist)
        .await?;
    old.events("prod-1", vec![added("web", "one", "5")]).await?;
    old.sync_end("prod-1", deployments(), "5", 1).await?;

    let started = std::time::Instant::now();
    let drain = old
        .wait_for(|f| match f {
            hub_frame::Frame::Drain(d) => Some(d.clone()),
            _ => None,
        })
        .await?;
    let age = started.elapsed();
    assert!(age <= Duration::from_millis(1800), "drained after {age:?}");
    assert_eq!(drain.reason, pb::DrainReason::Rebalance as i32);
    assert_eq!(
        drain.reconnect_after,
        Some(prost_types::Duration::default()),
        "reconnect at once"
    );

    // The agent reconnects at once; the old stream is still open (grace).
    let mut new = FakeAgent::connect(&hub, "east", "east-0").await?;
    let results = new.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted, "{results:?}");
    assert_eq!(
        results[0].resume_points.len(),
        1,
        "the account kept its cache: {results:?}"
    );
    assert_eq!(object_names(&hub, "prod-1").await?, ["one"]);

    // The hub ends the drained stream after the grace period.
    let ended = async {
        loop {
            match old.next_raw().await? {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return Result::<()>::Ok(()),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), ended).await??;
    new.events("prod-1", vec![added("web", "two", "6")]).await?;
    let a = account(&hub, "prod-1").await?.ok_or("still listed")?;
    assert_eq!(a["state"], "Connected");
    assert_eq!(object_names(&hub, "prod-1").await?, ["one", "two"]);
    let metrics = hub.metrics_text();
    assert!(
        !metrics.contains("scale_agent_hub_accounts_removed_total{"),
        "no account removed: {metrics}"
    );
    assert!(
        !metrics.contains("scale_agent_hub_sessions_aged_out_total 0"),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

async fn http_status(hub: &RunningHub, path: &str, token: Option<&str>) -> Result<u16> {
    let mut request = reqwest::Client::new().get(format!("{}{path}", hub.http_url()));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    Ok(request.send().await?.status().as_u16())
}

#[tokio::test]
async fn the_http_api_needs_the_bearer_token_from_the_file() -> Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret-token\n")?;
    let hub = hub_with(|c| {
        c.api_token_file = Some(file.clone());
        c.reload_interval = Duration::from_millis(100);
    })
    .await?;
    assert_eq!(http_status(&hub, "/v1/accounts", None).await?, 401);
    assert_eq!(http_status(&hub, "/v1/accounts", Some("wrong")).await?, 401);
    assert_eq!(
        http_status(&hub, "/v1/accounts", Some("s3cret-token")).await?,
        200
    );
    assert_eq!(
        http_status(&hub, "/v1/accounts/x", Some("s3cret")).await?,
        401
    );
    let op = reqwest::Client::new()
        .post(format!("{}/v1/accounts/x/operations", hub.http_url()))
        .json(&serde_json::json!({}))
        .send()
        .await?;
    assert_eq!(op.status().as_u16(), 401, "operations need the token");
    assert!(op.headers().contains_key("www-authenticate"));
    assert_eq!(http_status(&hub, "/healthz", None).await?, 200);
    assert_eq!(http_status(&hub, "/metrics", None).await?, 200);

    // Rotation: the new token works, the old one stops working.
    std::fs::write(&file, "next-token")?;
    eventually(Duration::from_secs(5), || async {
        Ok(http_status(&hub, "/v1/accounts", Some("next-token")).await? == 200)
    })
    .await?;
    assert_eq!(
        http_status(&hub, "/v1/accounts", Some("s3cret-token")).await?,
        401
    );
    let metrics = hub.metrics_text();
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scale_agent_hub_http_unauthorized_total "))
        .ok_or("no unauthorized metric")?
        .trim()
        .parse()?;
    // Five above, plus the polls before the new token was read.
    assert!(refused >= 5, "{metrics}");
    hub.shutdown().await?;
    Ok(())
}

/// Sends frames as raw bytes (to send what no well-behaved client can) and
/// reads HubFrames.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

#[derive(Debug, Clone, Default)]
struct FrameDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = HubFrame;
    type Encoder = RawEncoder;
    type Decoder = FrameDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> FrameDecoder {
        FrameDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for FrameDecoder {
    type Item = HubFrame;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<HubFrame>, Status> {
        HubFrame::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// Opens a raw stream: Hello, then `then`; the status the stream ends with.
async fn raw_session(addr: SocketAddr, shard: &str, then: Vec<u8>) -> Result<Status> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let hello = hello_frame(shard, &format!("{shard}-0")).encode_to_vec();
    let frames = tokio_stream::iter(vec![hello, then]);
    let path = http::uri::PathAndQuery::from_static("/scaleagent.v1.AgentHub/Connect");
    let mut inbound = grpc
        .streaming(tonic::Request::new(frames), path, RawCodec)
        .await?
        .into_inner();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await? {
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the stream ended without an error".into()),
            Err(status) => return Ok(status),
        }
    }
}

#[tokio::test]
async fn oversized_and_malformed_frames_end_only_their_own_session() -> Result<()> {
    let hub = hub_with(|c| c.max_message_bytes = 64 * 1024).await?;
    let mut good = FakeAgent::registered(&hub, "east", "east-0", &[("prod-1", "uid-a")]).await?;

    let mut big = added("web", "big", "1");
    big.body_json = vec![b' '; 100 * 1024].into();
    let oversized = pb::AgentFrame {
        frame: Some(agent_frame::Frame::EventBatch(pb::EventBatch {
            account: "prod-2".into(),
            sequence: 1,
            events: vec![big],
        })),
    }
    .encode_to_vec();
    let status = raw_session(hub.grpc_addr(), "west", oversized).await?;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("65536 bytes"),
        "{}",
        status.message()
    );

    // Field 1 (Hello), length-delimited, with a length that runs off the end.
    let malformed = vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01];
    let status = raw_session(hub.grpc_addr(), "west", malformed).await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed frame"),
        "{}",
        status.message()
    );

    // The other session never noticed.
    good.events("prod-1", vec![added("web", "one", "1")])
        .await?;
    good.barrier().await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["one"]);
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(r#"scale_agent_hub_frames_ignored_total{reason="oversized"} 1"#)
            && metrics.contains(r#"scale_agent_hub_frames_ignored_total{reason="malformed"} 1"#),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

/// A GET with `token`: the status and the JSON body.
async fn get_as(hub: &RunningHub, path: &str, token: &str) -> Result<(u16, serde_json::Value)> {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", hub.http_url()))
        .bearer_auth(token)
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or_default()))
}

#[tokio::test]
async fn an_api_token_for_some_accounts_reads_and_operates_only_on_them() -> Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("tokens");
    let all = "0123456789abcdef-all";
    let team = "0123456789abcdef-team-a";
    std::fs::write(&file, format!("{all} *\n{team} team-a\n"))?;
    let hub = hub_with(|c| c.api_token_file = Some(file.clone())).await?;
    let _agent = FakeAgent::registered(
        &hub,
        "team-shard",
        "team-shard-0",
        &[("team-a", "cluster-a"), ("team-b", "cluster-b")],
    )
    .await?;

    let names = |body: &serde_json::Value| -> Vec<String> {
        body.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (status, body) = get_as(&hub, "/v1/accounts", all).await?;
    assert_eq!(
        (status, names(&body)),
        (200, vec!["team-a".into(), "team-b".into()])
    );
    // The team's token sees only its account, and is refused the other's.
    let (status, body) = get_as(&hub, "/v1/accounts", team).await?;
    assert_eq!((status, names(&body)), (200, vec!["team-a".into()]));
    assert_eq!(get_as(&hub, "/v1/accounts/team-a", team).await?.0, 200);
    for path in [
        "/v1/accounts/team-b",
        "/v1/accounts/team-b/objects",
        "/v1/accounts/team-b/objects/Deployment/default/web",
        "/v1/accounts/team%2Db/objects",
        "/v1/accounts/no-such-account",
    ] {
        assert_eq!(get_as(&hub, path, team).await?.0, 403, "{path}");
    }
    let op = reqwest::Client::new()
        .post(format!("{}/v1/accounts/team-b/operations", hub.http_url()))
        .bearer_auth(team)
        .json(&serde_json::json!({"type": "apply", "manifest": {}}))
        .send()
        .await?;
    assert_eq!(op.status().as_u16(), 403, "an operation on another account");
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn probes_answer_on_their_own_port_while_the_api_connections_are_full() -> Result<()> {
    logs();
    let hub = hub_with(|c| {
        c.http_limits.max_connections = 2;
        c.probe_addr = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await?;
    // Two idle connections hold every slot of the JSON API's port ...
    let _idle = [
        tokio::net::TcpStream::connect(hub.http_addr()).await?,
        tokio::net::TcpStream::connect(hub.http_addr()).await?,
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let api = client
        .get(format!("{}/healthz", hub.http_url()))
        .send()
        .await;
    assert!(api.is_err(), "the API's port is full: {api:?}");
    // ... and the probes, on their port, still answer.
    let probes = hub.probe_addr().ok_or("no probe address")?;
    for path in ["/healthz", "/readyz"] {
        let status = client
            .get(format!("http://{probes}{path}"))
            .send()
            .await?
            .status();
        assert_eq!(status.as_u16(), 200, "{path}");
    }
    hub.shutdown().await?;
    Ok(())
}
