//! gRPC over TLS with client certificates (mTLS): the certificate's URI SAN
//! names the agent's shard; an agent without a trusted certificate is refused
//! at the handshake, one whose Hello names another shard is refused; rotated
//! certificate files serve new connections while open streams keep going.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{
    Ca, FakeAgent, Result, added, eventually, hello_frame, hub_with, logs, object_names, open_on,
};
use scale_agent_hub::{RunningHub, TlsConfig};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn client_tls(trust: &str, identity: Option<&(String, String)>) -> ClientTlsConfig {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trust))
        .domain_name("localhost");
    match identity {
        Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
        None => tls,
    }
}

async fn channel(addr: SocketAddr, tls: ClientTlsConfig) -> Result<Channel> {
    Ok(
        Channel::from_shared(format!("https://localhost:{}", addr.port()))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?,
    )
}

/// Opens a session; any failure (handshake, refusal) is an error.
async fn try_session(addr: SocketAddr, tls: ClientTlsConfig, replica: &str) -> Result<()> {
    let ch = channel(addr, tls).await?;
    open_on(ch, &[], hello_frame("east", replica)).await??;
    Ok(())
}

async fn mtls_hub(ca: &Ca, server: &(String, String)) -> Result<RunningHub> {
    let tls = TlsConfig {
        cert_pem: server.0.clone().into_bytes(),
        key_pem: server.1.clone().into_bytes(),
        client_ca_pem: Some(ca.pem().into_bytes()),
        files: None,
    };
    hub_with(|c| c.tls = Some(tls)).await
}

#[tokio::test]
async fn mtls_accepts_trusted_agents_and_refuses_others_at_the_handshake() -> Result<()> {
    logs();
    let ca = Ca::new("scale-agent test CA")?;
    let hub = mtls_hub(&ca, &ca.server()?).await?;
    let addr = hub.grpc_addr();
    assert!(addr.ip().is_loopback());

    let east = ca.agent("spinnaker", "east")?;
    let ch = channel(addr, client_tls(&ca.pem(), Some(&east))).await?;
    let mut agent = FakeAgent::from_opened(open_on(ch, &[], hello_frame("east", "east-0")).await??);
    let results = agent.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted, "{results:?}");

    // No client certificate: refused at the handshake (the connection or
    // the first request fails; either way no session).
    assert!(
        try_session(addr, client_tls(&ca.pem(), None), "east-1")
            .await
            .is_err(),
        "an agent without a client certificate must be refused"
    );
    // A certificate from another CA: refused at the handshake too.
    let rogue_ca = Ca::new("rogue CA")?;
    let rogue = rogue_ca.agent("spinnaker", "east")?;
    assert!(
        try_session(addr, client_tls(&ca.pem(), Some(&rogue)), "east-2")
            .await
            .is_err(),
        "an agent with an untrusted certificate must be refused"
    );
    let metrics = hub.metrics_text();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("scale_agent_hub_tls_handshake_failures_total "))
        .ok_or("no handshake failure metric")?
        .trim()
        .parse()?;
    assert!(failures >= 2, "{metrics}");

    // The trusted agent kept streaming.
    agent
        .events("prod-1", vec![added("web", "one", "1")])
        .await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["one"]);
    hub.shutdown().await?;
    Ok(())
}

/// A load balancer may forward a header, but a connection with its own
/// verified client certificate is that certificate's shard: a header naming
/// another shard (even with a certificate from the same CA) changes nothing.
#[tokio::test]
async fn the_tls_sessions_own_certificate_wins_over_a_forwarded_header() -> Result<()> {
    logs();
    let ca = Ca::new("scale-agent test CA")?;
    let server = ca.server()?;
    let tls = TlsConfig {
        cert_pem: server.0.clone().into_bytes(),
        key_pem: server.1.clone().into_bytes(),
        client_ca_pem: Some(ca.pem().into_bytes()),
        files: None,
    };
    let hub = hub_with(|c| {
        common::trusting_localhost(c, &ca);
        c.tls = Some(tls);
    })
    .await?;
    let addr = hub.grpc_addr();
    let team_b = ca.agent("spinnaker", "team-b")?;
    let east_header = vec![("x-client-cert", ca.escaped_agent("east")?)];
    let ch = channel(addr, client_tls(&ca.pem(), Some(&team_b))).await?;
    let status = open_on(ch, &east_header, hello_frame("east", "east-0"))
        .await?
        .err()
        .ok_or("team-b's connection spoke for east through a header")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spinnaker/team-b"),
        "the TLS certificate's shard decides: {}",
        status.message()
    );
    let ch = channel(addr, client_tls(&ca.pem(), Some(&team_b))).await?;
    open_on(ch, &east_header, hello_frame("team-b", "b-0"))
        .await?
        .map_err(|s| format!("team-b speaking for itself: {s:?}"))?;
    hub.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_hello_for_another_shard_than_the_certificate_names_is_refused() -> Result<()> {
    logs();
    let ca = Ca::new("scale-agent test CA")?;
    let hub = mtls_hub(&ca, &ca.server()?).await?;
    let addr = hub.grpc_addr();
    let east = ca.agent("spinnaker", "east")?;

    let ch = channel(addr, client_tls(&ca.pem(), Some(&east))).await?;
    let mut good = FakeAgent::from_opened(open_on(ch, &[], hello_frame("east", "east-0")).await??);

    let ch = channel(addr, client_tls(&ca.pem(), Some(&east))).await?;
    let status = open_on(ch, &[], hello_frame("west", "west-0"))
        .await?
        .err()
        .ok_or("a Hello for another shard must be refused")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("spinnaker/west") && status.message().contains("spinnaker/east"),
        "{}",
        status.message()
    );

    // A trusted certificate that names no shard.
    let nameless = ca.leaf(&["agent.example"], &["https://example.org/agent"])?;
    let ch = channel(addr, client_tls(&ca.pem(), Some(&nameless))).await?;
    let status = open_on(ch, &[], hello_frame("east", "east-9"))
        .await?
        .err()
        .ok_or("a certificate without a shard identity must be refused")?;
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("names no shard"),
        "{}",
        status.message()
    );

    // The good session is untouched.
    good.register(&[("prod-1", "uid-a")]).await?;
    good.barrier().await?;
    let metrics = hub.metrics_text();
    assert!(
        metrics.contains(r#"scale_agent_hub_sessions_rejected_total{reason="wrong_shard"} 1"#),
        "{metrics}"
    );
    hub.shutdown().await?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    // Write then rename, as Kubernetes' atomic Secret volume updates do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[tokio::test]
async fn rotated_certificate_files_serve_new_connections_and_open_streams_keep_going() -> Result<()>
{
    logs();
    let dir = tempfile::tempdir()?;
    let (cert, key, client_ca) = (
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    let old_ca = Ca::new("old CA")?;
    let old_server = old_ca.server()?;
    write(&cert, &old_server.0)?;
    write(&key, &old_server.1)?;
    write(&client_ca, &old_ca.pem())?;
    let tls = TlsConfig::from_files(&cert, &key, Some(&client_ca))?;
    let hub = hub_with(|c| {
        c.tls = Some(tls);
        c.reload_interval = Duration::from_millis(100);
    })
    .await?;
    let addr = hub.grpc_addr();

    let old_agent = old_ca.agent("spinnaker", "east")?;
    let ch = channel(addr, client_tls(&old_ca.pem(), Some(&old_agent))).await?;
    let mut open = FakeAgent::from_opened(open_on(ch, &[], hello_frame("east", "east-0")).await??);
    open.register(&[("prod-1", "uid-a")]).await?;
    open.events("prod-1", vec![added("web", "before", "1")])
        .await?;

    // Rotate everything to a new CA: server certificate, key and client CA.
    let new_ca = Ca::new("new CA")?;
    let new_server = new_ca.server()?;
    write(&key, &new_server.1)?;
    write(&cert, &new_server.0)?;
    write(&client_ca, &new_ca.pem())?;
    let new_agent = new_ca.agent("spinnaker", "east")?;

    // A new connection sees the new server certificate and needs a client
    // certificate of the new CA.
    eventually(Duration::from_secs(10), || async {
        let Ok(ch) = channel(addr, client_tls(&new_ca.pem(), Some(&new_agent))).await else {
            return Ok(false);
        };
        Ok(open_on(ch, &[], hello_frame("east", "east-1"))
            .await?
            .is_ok())
    })
    .await?;
    assert!(
        try_session(addr, client_tls(&old_ca.pem(), Some(&old_agent)), "east-2")
            .await
            .is_err(),
        "after the rotation the old server certificate and the old client CA are gone"
    );
    assert!(
        hub.metrics_text()
            .contains("scale_agent_hub_tls_reloads_total 1")
    );

    // The stream opened before the rotation keeps working.
    open.events("prod-1", vec![added("web", "after", "2")])
        .await?;
    open.barrier().await?;
    assert_eq!(object_names(&hub, "prod-1").await?, ["after", "before"]);

    // A broken write (a key that does not match) is not taken; the hub keeps
    // serving with the last good material.
    write(&key, &old_server.1)?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let ch = channel(addr, client_tls(&new_ca.pem(), Some(&new_agent))).await?;
    assert!(
        open_on(ch, &[], hello_frame("east", "east-3"))
            .await?
            .is_ok()
    );
    hub.shutdown().await?;
    Ok(())
}
