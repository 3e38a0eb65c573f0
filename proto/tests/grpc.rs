//! The generated client and server talk to each other over a real socket:
//! a tiny AgentHub answers Hello with Welcome and echoes heartbeats, on
//! 127.0.0.1 with an OS-chosen port.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use prost_types::Timestamp;
use scale_agent_proto::PROTOCOL_VERSION;
use scale_agent_proto::v1::agent_hub_client::AgentHubClient;
use scale_agent_proto::v1::agent_hub_server::{AgentHub, AgentHubServer};
use scale_agent_proto::v1::{
    AgentFrame, Heartbeat, Hello, HubFrame, ShardRef, Welcome, agent_frame, hub_frame,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Answers Hello with Welcome, heartbeats with heartbeats; ignores the rest.
struct EchoHub;

#[tonic::async_trait]
impl AgentHub for EchoHub {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<HubFrame, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentFrame>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = inbound.next().await {
                let reply = match frame.frame {
                    Some(agent_frame::Frame::Hello(hello)) => hub_frame::Frame::Welcome(Welcome {
                        session_id: format!("session-of-{}", hello.replica_id),
                        hub_id: "test-hub".into(),
                        protocol_version: hello.protocol_version.min(PROTOCOL_VERSION),
                        ..Default::default()
                    }),
                    Some(agent_frame::Frame::Heartbeat(beat)) => {
                        hub_frame::Frame::Heartbeat(Heartbeat {
                            sent_at: beat.sent_at,
                            reply_to: beat.sent_at,
                        })
                    }
                    _ => continue,
                };
                let frame = HubFrame { frame: Some(reply) };
                if tx.send(Ok(frame)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

async fn start_hub() -> Result<(SocketAddr, oneshot::Sender<()>), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        Server::builder()
            .add_service(AgentHubServer::new(EchoHub))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );
    Ok((addr, stop))
}

async fn next_frame(inbound: &mut Streaming<HubFrame>) -> Result<hub_frame::Frame, Error> {
    let frame = tokio::time::timeout(Duration::from_secs(10), inbound.message())
        .await??
        .ok_or("the hub ended the stream")?;
    Ok(frame.frame.ok_or("empty frame")?)
}

#[tokio::test]
async fn hello_gets_welcome_over_tcp() -> Result<(), Error> {
    let (addr, stop) = start_hub().await?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = AgentHubClient::new(channel);

    let (tx, rx) = mpsc::channel(4);
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            shard: Some(ShardRef {
                namespace: "spinnaker".into(),
                name: "prod-east".into(),
            }),
            replica_id: "prod-east-agent-0".into(),
            agent_version: "test".into(),
            capabilities: vec![],
        })),
    })
    .await?;
    let mut inbound = tokio::time::timeout(
        Duration::from_secs(10),
        client.connect(ReceiverStream::new(rx)),
    )
    .await??
    .into_inner();

    match next_frame(&mut inbound).await? {
        hub_frame::Frame::Welcome(welcome) => {
            assert_eq!(welcome.session_id, "session-of-prod-east-agent-0");
            assert_eq!(welcome.protocol_version, PROTOCOL_VERSION);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }

    // The stream stays open both ways after the handshake.
    let sent_at = Some(Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    });
    tx.send(AgentFrame {
        frame: Some(agent_frame::Frame::Heartbeat(Heartbeat {
            sent_at,
            reply_to: None,
        })),
    })
    .await?;
    match next_frame(&mut inbound).await? {
        hub_frame::Frame::Heartbeat(beat) => assert_eq!(beat.reply_to, sent_at),
        other => panic!("expected Heartbeat, got {other:?}"),
    }

    // Closing the agent's side ends the hub's side cleanly.
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await??;
    assert!(end.is_none());

    stop.send(()).ok();
    Ok(())
}
