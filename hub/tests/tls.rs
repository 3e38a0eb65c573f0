//! gRPC over TLS with client certificates (mTLS): an agent with a
//! certificate from the trusted CA gets a session; one without is refused.

mod common;

use common::{Result, hello, logs};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use scale_agent_hub::{Config, Hub, TlsConfig};
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::agent_hub_client::AgentHubClient;
use scale_agent_proto::v1::{AgentFrame, agent_frame, hub_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Result<Pki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "scale-agent test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |names: Vec<String>, cn: &str| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    Ok(Pki {
        ca_pem: ca.pem(),
        server: leaf(vec!["localhost".into()], "hub")?,
        client: leaf(vec!["east.spinnaker".into()], "spinnaker/east")?,
    })
}

async fn hello_over_tls(
    addr: std::net::SocketAddr,
    tls: ClientTlsConfig,
) -> Result<hub_frame::Frame> {
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = AgentHubClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(hello(
            "east",
            "east-0",
            PROTOCOL_VERSION,
        ))),
    })
    .await?;
    let mut inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    let frame = inbound
        .message()
        .await?
        .and_then(|f| f.frame)
        .ok_or("no frame")?;
    Ok(frame)
}

#[tokio::test]
async fn mtls_accepts_trusted_agents_and_refuses_others() -> Result<()> {
    logs();
    let pki = pki()?;
    let mut config = Config::local();
    config.tls = Some(TlsConfig {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: Some(pki.ca_pem.clone().into_bytes()),
    });
    let hub = Hub::start(config).await?;
    let addr = hub.grpc_addr();
    // The loopback address is reached by the name in the server certificate.
    assert!(addr.ip().is_loopback());

    let trusted = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(&pki.client.0, &pki.client.1))
        .domain_name("localhost");
    let frame = hello_over_tls(addr, trusted).await?;
    assert!(matches!(frame, hub_frame::Frame::Welcome(_)), "{frame:?}");

    let anonymous = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost");
    assert!(
        hello_over_tls(addr, anonymous).await.is_err(),
        "an agent without a client certificate must be refused"
    );
    hub.shutdown().await?;
    Ok(())
}
