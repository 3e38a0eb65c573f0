//! Attacks that take more than one process, against the setup `just up` runs: the hub
//! behind nginx, which verifies agent certificates and forwards them with a secret it
//! shares with the hub; a real agent streaming a real cluster through nginx. Each attack
//! is made from this test process, as any local process could, and each ends with the
//! real agent still streaming and the hub's cache equal to the cluster.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, ensure};
use scale_agent_crds::{ShardRef, TlsConfig, shard_identity_uri};
use scale_agent_e2e::converge::{account_state, configmaps, converge, put_cm, wait_state};
use scale_agent_e2e::hubstack::{behind_nginx, nginx_in_front};
use scale_agent_e2e::metrics::{require, sample, scrape};
use scale_agent_e2e::nginx::{Mode, Nginx};
use scale_agent_e2e::scenario::*;
use scale_agent_e2e::{Env, runner};
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::agent_hub_client::AgentHubClient;
use scale_agent_proto::v1::{AgentFrame, Hello, HubFrame, agent_frame, hub_frame};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn main() {
    runner::main(
        &["cluster-1", "cluster-2"],
        vec![
            ("forged_and_replayed_certificates_get_nowhere", |e| {
                Box::pin(forged_certificates(e))
            }),
            ("another_shard_cannot_take_a_streaming_account", |e| {
                Box::pin(another_shard(e))
            }),
        ],
    );
}

/// The hub as `just up` runs it, its proxy secret, and nginx in front of it.
struct Stack {
    s: Scenario,
    nginx: Nginx,
    secret: String,
}

async fn stack(env: &Env, name: &str) -> anyhow::Result<Stack> {
    let pki = &env.cp.pki;
    let secret = format!(
        "{:032x}",
        std::process::id() as u128 * 0x9e37_79b9_7f4a_7c15
    );
    let secret_dir = tempfile::tempdir()?;
    let secret_file = secret_dir.path().join("proxy-secret");
    std::fs::write(&secret_file, &secret)?;
    let hub_args = behind_nginx(pki, Some(&secret_file));
    let s = scenario_with(env, name, "120s", None, hub_args).await?;
    // The hub read the file at startup and keeps it; a copy stays for its reloads.
    let kept = env.test_dir(&s.ns).join("hub-proxy-secret");
    std::fs::copy(&secret_file, &kept)?;
    let nginx = nginx_in_front(
        pki,
        &format!("lb-{name}"),
        Mode::GrpcTls,
        vec![s.hub.grpc.clone()],
        Some(secret.clone()),
        &env.test_dir(&s.ns),
    )
    .await?;
    Ok(Stack { s, nginx, secret })
}

/// A client certificate naming shard `ns/shard`: (cert PEM, key PEM, agent TLS settings).
fn client_cert(env: &Env, ns: &str, shard: &str) -> anyhow::Result<(String, String, TlsConfig)> {
    let pki = &env.cp.pki;
    let identity = shard_identity_uri(&ShardRef::new(ns.to_string(), shard.to_string()));
    let stem = format!("attack-{ns}-{shard}");
    let pair = pki.issue_client(&stem, &stem, None, &[&identity])?;
    let tls = TlsConfig {
        ca_file: pki.ca_file.display().to_string(),
        cert_file: pair.cert_file.display().to_string(),
        key_file: pair.key_file.display().to_string(),
        server_name: None,
    };
    Ok((pair.cert_pem, pair.key_pem, tls))
}

fn escaped(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A self-signed certificate naming `ns/shard`: what anyone can make.
fn forged(ns: &str, shard: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names.push(rcgen::SanType::URI(
        shard_identity_uri(&ShardRef::new(ns.to_string(), shard.to_string())).try_into()?,
    ));
    Ok(params.self_signed(&key)?.pem())
}

/// Opens a stream on `channel` with `headers`, saying Hello for `ns/shard`: the hub's
/// status when it refused the stream, `None` when it welcomed it.
async fn attempt(
    channel: Channel,
    headers: &[(&'static str, String)],
    ns: &str,
    shard: &str,
) -> anyhow::Result<Option<tonic::Status>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            shard: Some(scale_agent_proto::v1::ShardRef {
                namespace: ns.into(),
                name: shard.into(),
            }),
            replica_id: "attacker-0".into(),
            agent_version: "attack".into(),
            capabilities: Vec::new(),
        })),
    })
    .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse()?);
    }
    let mut inbound = match AgentHubClient::new(channel).connect(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok(Some(status)),
    };
    match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await? {
        Ok(Some(HubFrame {
            frame: Some(hub_frame::Frame::Welcome(_)),
        })) => Ok(None),
        Ok(other) => anyhow::bail!("expected Welcome or a refusal, got {other:?}"),
        Err(status) => Ok(Some(status)),
    }
}

async fn direct(hub_grpc: &str) -> anyhow::Result<Channel> {
    Ok(Channel::from_shared(format!("http://{hub_grpc}"))?
        .connect()
        .await?)
}

/// From this process (a local process like any other): a self-signed certificate in
/// the header, straight to the hub's port; a genuine certificate of the shard (they
/// are not secret) without the proxy secret; and through nginx, with the attacker's own
/// certificate of another shard and forged headers. Every attempt is refused, and the
/// real agent keeps its account.
async fn forged_certificates(env: Arc<Env>) -> anyhow::Result<()> {
    let stack = stack(&env, "forged").await?;
    let s = &stack.s;
    let (_, _, victim_tls) = client_cert(&env, &s.ns, "prod-east")?;
    let mut cfg = config(s, "prod-east", vec![account("victim", &s.ns)]);
    cfg.hub.address = stack.nginx.address.clone();
    cfg.hub.tls = Some(victim_tls);
    let kcs = kubeconfigs(&env, &[("victim", "cluster-1")])?;
    let agent = start_agent(
        &env,
        s,
        "prod-east-0",
        &cfg,
        &kcs,
        &["--lease-renew-interval=500ms"],
    )?;
    wait_state(&s.hub, "victim", "Connected", Duration::from_secs(40))
        .await
        .with_context(|| agent_log(&agent))?;
    let api = configmaps(target(&env, "cluster-1")?, &s.ns).await?;
    put_cm(&api, "before", "1").await?;
    converge(&s.hub, "victim", &api, &s.ns, Duration::from_secs(30)).await?;

    // Straight to the hub's port: a self-signed certificate, then a genuine one of the
    // shard (certificates are not secret). Without the proxy secret neither is read.
    let forged_pem = forged(&s.ns, "prod-east")?;
    let (genuine_pem, _, _) = client_cert(&env, &s.ns, "prod-east")?;
    for (what, pem) in [("forged", &forged_pem), ("replayed", &genuine_pem)] {
        let headers = vec![("x-client-cert", escaped(pem))];
        let refused = attempt(direct(&s.hub.grpc).await?, &headers, &s.ns, "prod-east")
            .await?
            .with_context(|| {
                format!("a {what} certificate without the proxy secret opened a session")
            })?;
        ensure!(
            refused.code() == tonic::Code::Unauthenticated,
            "{what}: {refused:?}"
        );
    }
    // Even with the secret (say it leaked), a certificate the agents' CA did not sign
    // is refused.
    let headers = vec![
        ("x-client-cert", escaped(&forged_pem)),
        ("x-scale-agent-proxy-secret", stack.secret.clone()),
    ];
    let refused = attempt(direct(&s.hub.grpc).await?, &headers, &s.ns, "prod-east")
        .await?
        .context("a self-signed certificate with the proxy secret opened a session")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied
            && refused.message().contains("not trusted"),
        "forged with the secret: {refused:?}"
    );

    let (own_pem, own_key, _) = client_cert(&env, &s.ns, "intruder")?;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(&env.cp.pki.ca_file)?))
        .identity(Identity::from_pem(own_pem, own_key))
        .domain_name("localhost");
    let through_lb =
        Channel::from_shared(format!("https://localhost:{}", port(&stack.nginx.address)?))?
            .tls_config(tls)?
            .connect()
            .await?;
    let headers = vec![
        ("x-client-cert", escaped(&genuine_pem)),
        ("x-scale-agent-proxy-secret", "guess".to_owned()),
    ];
    let refused = attempt(through_lb, &headers, &s.ns, "prod-east")
        .await?
        .context("an intruder's headers through nginx spoke for prod-east")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied && refused.message().contains("intruder"),
        "through nginx: {refused:?}"
    );

    let held = account_state(&s.hub, "victim").await.context("listed")?;
    ensure!(
        held["replica"] == "prod-east-0" && held["state"] == "Connected",
        "the account moved: {held}"
    );
    put_cm(&api, "after", "2").await?;
    converge(&s.hub, "victim", &api, &s.ns, Duration::from_secs(30))
        .await
        .with_context(|| agent_log(&agent))?;
    let text = scrape(hub_addr(s)).await?;
    let refusals: f64 = ["bad_identity", "unauthenticated", "wrong_shard"]
        .iter()
        .map(|r| {
            sample(
                &text,
                &format!("scale_agent_hub_sessions_rejected_total{{reason=\"{r}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum();
    ensure!(refusals >= 4.0, "four refusals counted: {text}");
    eprintln!(
        "forged, replayed, forged-with-secret and smuggled certificates: 4 of 4 refused; the real agent kept its account"
    );
    Ok(())
}

/// `127.0.0.1:<port>` of the scenario hub's HTTP server.
fn hub_addr(s: &Scenario) -> &str {
    s.hub.http.trim_start_matches("http://")
}

fn port(address: &str) -> anyhow::Result<u16> {
    address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .with_context(|| format!("no port in {address}"))
}

/// Two real agents of two shards name the same account for the same cluster (the
/// cluster id is no secret: the second names exactly the first's). Before, the second
/// superseded the first and the two flapped for ever; now the second is refused
/// NOT_OWNER, the first is never superseded, and its cache stays equal to the cluster.
async fn another_shard(env: Arc<Env>) -> anyhow::Result<()> {
    let s = scenario(&env, "takeover", "120s").await?;
    let first = stream_one(&env, &s, "prod-east", "contested", "cluster-2").await?;
    let api = configmaps(target(&env, "cluster-2")?, &s.ns).await?;
    put_cm(&api, "owned", "1").await?;
    converge(&s.hub, "contested", &api, &s.ns, Duration::from_secs(30)).await?;
    let cfg = config(&s, "team-b", vec![account("contested", &s.ns)]);
    let second = start_agent(
        &env,
        &s,
        "team-b-0",
        &cfg,
        &kubeconfigs(&env, &[("contested", "cluster-2")])?,
        &["--lease-renew-interval=500ms"],
    )?;
    wait_logged(
        &second,
        "team-b's agent to log its refusal",
        &["hub rejected the account", "NotOwner"],
    )
    .await?;
    // Long enough for several retries of team-b's agent.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let held = account_state(&s.hub, "contested").await.context("listed")?;
        ensure!(
            held["shard"] == format!("{}/prod-east", s.ns).as_str()
                && held["replica"] == "prod-east-0"
                && held["state"] == "Connected",
            "after {i} rounds the account moved: {held}"
        );
        put_cm(&api, &format!("round-{i}"), "x").await?;
    }
    let text = scrape(hub_addr(&s)).await?;
    // The counter must exist: a renamed metric would otherwise read as "never superseded".
    let superseded = require(&text, "scale_agent_hub_registrations_superseded_total")?;
    ensure!(
        superseded == 0.0,
        "prod-east was superseded {superseded} times"
    );
    converge(&s.hub, "contested", &api, &s.ns, Duration::from_secs(30))
        .await
        .with_context(|| agent_log(&first))?;
    Ok(())
}
