//! Hub replicas sharing a real PostgreSQL prove to each other which replica they are
//! when one forwards a Kubernetes API request to another, over real TLS both ways: a
//! request marked forwarded is served only to the replica the mark names, shown by
//! its client certificate; and an address read from the database gets a caller's
//! token only when the certificate served there names the replica the database says
//! holds the account.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Ca, FakeAgent, ReplicaCa, Result, deployments, object, postgres};
use http_body_util::{BodyExt as _, Empty};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use scale_agent_hub::RunningHub;
use scale_agent_hub::config::StoreLocation;
use scale_agent_proto::v1::EventType;

const TOKEN: &str = "replica-trust-token-0123456789";
/// An account's Deployments, answered from the holder's cache.
const DEPLOYMENTS: &str = "/accounts/prod-1/apis/apps/v1/deployments";

/// Replica `id` on the database at `url`, serving the Kubernetes API over TLS under
/// the replicas' CA `cas`, and the JSON API with `TOKEN` too.
async fn replica(url: &str, id: &str, cas: &ReplicaCa) -> Result<RunningHub> {
    let api = cas.kube_api(id, &format!("{TOKEN} *\n"))?;
    let token_file = cas.file.with_file_name(format!("{id}-api-token"));
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    common::hub_with(|c| {
        c.store = StoreLocation::Postgres(url.to_owned());
        c.hub_id = id.to_owned();
        c.grace_period = Duration::from_secs(600);
        c.replica_heartbeat = Duration::from_millis(200);
        c.replica_timeout = Duration::from_secs(2);
        c.kube_api = Some(api);
        c.api_token_file = Some(token_file);
    })
    .await
}

/// Two replicas, `hub-a` holding account `prod-1` (one Deployment, `frontend`, in its
/// cache) and `hub-b`; the agent must stay alive.
struct Pair {
    a: RunningHub,
    b: RunningHub,
    _agent: FakeAgent,
}

async fn pair(url: &str, cas: &ReplicaCa) -> Result<Pair> {
    let a = replica(url, "hub-a", cas).await?;
    let b = replica(url, "hub-b", cas).await?;
    common::eventually(Duration::from_secs(10), || async {
        Ok(
            common::get(&a, "/readyz").await?.0 == 200
                && common::get(&b, "/readyz").await?.0 == 200,
        )
    })
    .await?;
    // It carries requests: the hub answers from the cache only for such agents.
    let mut agent = FakeAgent::connect_carrying_requests(&a, "east", "east-0").await?;
    agent
        .register_and_start_sync("prod-1", "uid-a", deployments(), "deployments")
        .await?;
    agent
        .events(
            "prod-1",
            vec![object(
                EventType::Added,
                deployments(),
                "web",
                "frontend",
                "10",
            )],
        )
        .await?;
    agent.sync_end("prod-1", deployments(), "10", 1).await?;
    agent.barrier().await?;
    Ok(Pair {
        a,
        b,
        _agent: agent,
    })
}

/// A TLS client trusting `ca`, presenting `identity` (cert, key PEM) when given.
fn tls_client(ca: &Ca, identity: Option<&(String, String)>) -> Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One GET of `path` from the Kubernetes API at `addr` over `tls`, with the token and
/// `headers`: the status, the `x-scale-agent-served-by` header and the body.
async fn get(
    tls: &tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, String, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tls
        .connect(ServerName::try_from("127.0.0.1")?.to_owned(), tcp)
        .await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-scale-agent-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        served_by,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// A request marked as forwarded by replica `hub-b` is served by the holder only when
/// its connection's certificate names `hub-b`: anyone with a token who sets the header
/// without it is refused, as is another replica claiming to be `hub-b`; the replicas
/// themselves forward with their certificates.
#[tokio::test]
async fn a_forwarded_request_is_served_only_to_the_replica_it_names() -> Result<()> {
    let (_pg, url, _dir) = postgres("forged_forwarded").await?;
    let cas = ReplicaCa::new()?;
    let ca = &cas.ca;
    let pair = pair(&url, &cas).await?;
    let a = pair.a.kube_api_addr().expect("served");
    let b = pair.b.kube_api_addr().expect("served");
    let anonymous = tls_client(ca, None)?;

    // The holder answers; the other replica forwards to it, both proving who they are.
    let (status, _, body) = get(&anonymous, a, DEPLOYMENTS, &[]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("frontend"), "{body}");
    let (status, served_by, body) = get(&anonymous, b, DEPLOYMENTS, &[]).await?;
    assert_eq!((status, served_by.as_str()), (200, "hub-a"), "{body}");
    assert!(body.contains("frontend"), "{body}");

    // A token holder who marks the request as forwarded, with no certificate.
    let forged = [("x-scale-agent-forwarded-by", "hub-b")];
    let (status, _, body) = get(&anonymous, a, DEPLOYMENTS, &forged).await?;
    assert_eq!(status, 403, "a forged forwarded request was served: {body}");
    assert!(
        body.contains("hub-b") && body.contains("certificate"),
        "{body}"
    );
    // A replica's valid certificate, of another replica than the one claimed.
    let other = tls_client(ca, Some(&cas.cert("hub-c")?))?;
    let (status, _, body) = get(&other, a, DEPLOYMENTS, &forged).await?;
    assert_eq!(status, 403, "hub-c passed for hub-b: {body}");
    assert!(body.contains("hub-c"), "{body}");
    // The replica named, with its certificate: served.
    let real = tls_client(ca, Some(&cas.cert("hub-b")?))?;
    let (status, _, body) = get(&real, a, DEPLOYMENTS, &forged).await?;
    assert_eq!(status, 200, "{body}");
    let metrics = pair.a.metrics_text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "scale_agent_hub_forwarded_requests_total{outcome=\"refused_unproven\"} 2"
        )),
        "{metrics}"
    );
    pair.a.shutdown().await?;
    pair.b.shutdown().await?;
    Ok(())
}

/// A server on the loopback, over TLS presenting `cert` when given (else plain HTTP),
/// that answers every request 200 and keeps each request's `Authorization` header: a
/// process the database could point at.
async fn recording_server(
    cert: Option<&(String, String)>,
) -> Result<(std::net::SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let acceptor = match cert {
        Some(cert) => {
            let config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(cert.0.as_bytes())?],
                PrivateKeyDer::from_pem_slice(cert.1.as_bytes())?,
            )?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = Arc::clone(&recorded);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let token = req
                            .headers()
                            .get(http::header::AUTHORIZATION)
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .unwrap_or_default();
                        seen.lock().expect("not poisoned").push(token);
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(
                                    b"answered by the impostor",
                                )),
                            ))
                        }
                    });
                let http = hyper::server::conn::http1::Builder::new();
                let _ = match acceptor {
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                .await
                        }
                        Err(_) => return,
                    },
                    None => {
                        http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await
                    }
                };
            });
        }
    });
    Ok((addr, seen))
}

/// The database says account `prod-1` is held by replica `hub-x`, at an address where a
/// process serves a valid certificate of another replica (`hub-c`): the replica asked
/// refuses to forward (503) and the caller's token never reaches that process.
#[tokio::test]
async fn an_address_in_the_database_gets_no_token_unless_its_certificate_names_the_holder()
-> Result<()> {
    let (pg, url, _dir) = postgres("row_impostor").await?;
    let cas = ReplicaCa::new()?;
    let pair = pair(&url, &cas).await?;
    let b = pair.b.kube_api_addr().expect("served");
    let (impostor, seen) = recording_server(Some(&cas.cert("hub-c")?)).await?;
    pg.psql(
        "row_impostor",
        &format!(
            "INSERT INTO replicas (id, api_url, kube_api_url, heartbeat_at)
             VALUES ('hub-x', '', 'https://{impostor}', now() + interval '1 hour');
             UPDATE accounts SET holder = 'hub-x' WHERE name = 'prod-1'"
        ),
    )?;
    let client = tls_client(&cas.ca, None)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, served_by, body) = get(&client, b, DEPLOYMENTS, &[]).await?;
        // Until replica b reads the row, it may still forward to hub-a.
        if served_by != "hub-a" || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tokens = seen.lock().expect("not poisoned").clone();
    assert!(
        tokens.is_empty(),
        "the caller's token reached the process the database pointed at: {tokens:?}"
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("hub-x") && body.contains("hub-c"), "{body}");
    pair.a.shutdown().await?;
    pair.b.shutdown().await?;
    Ok(())
}

/// JSON API requests go between replicas the same way, with the replicas' identities:
/// forwarded to the holder, and never to an address the database names that does not
/// prove it is the holder. Here the database says account `prod-1` is held by replica
/// `hub-x`, whose JSON API address is a plain HTTP listener and whose Kubernetes API
/// address serves another replica's certificate (`hub-c`): the replica asked answers
/// 503 and the caller's token reaches neither.
#[tokio::test]
async fn a_json_api_request_reaches_no_address_in_the_database_but_the_holder() -> Result<()> {
    let (pg, url, _dir) = postgres("json_impostor").await?;
    let cas = ReplicaCa::new()?;
    let pair = pair(&url, &cas).await?;
    let client = reqwest::Client::new();
    let objects = format!("{}/v1/accounts/prod-1/objects", pair.b.http_url());
    let served = client.get(&objects).bearer_auth(TOKEN).send().await?;
    let served_by = served
        .headers()
        .get("x-scale-agent-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (status, body) = (served.status().as_u16(), served.text().await?);
    assert_eq!((status, served_by.as_str()), (200, "hub-a"), "{body}");
    assert!(body.contains("frontend"), "{body}");
    // At the holder's Kubernetes API port, a JSON API request marked forwarded is
    // served only from the replica the mark names.
    let a = pair.a.kube_api_addr().expect("served");
    let json = "/v1/accounts/prod-1/objects";
    let forged = [("x-scale-agent-forwarded-by", "hub-b")];
    let (status, _, body) = get(&tls_client(&cas.ca, None)?, a, json, &forged).await?;
    assert_eq!(
        status, 403,
        "a forged forwarded JSON API request was served: {body}"
    );
    let real = tls_client(&cas.ca, Some(&cas.cert("hub-b")?))?;
    let (status, _, body) = get(&real, a, json, &forged).await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("frontend"), "{body}");

    let (plain, seen_plain) = recording_server(None).await?;
    let (tls, seen_tls) = recording_server(Some(&cas.cert("hub-c")?)).await?;
    pg.psql(
        "json_impostor",
        &format!(
            "INSERT INTO replicas (id, api_url, kube_api_url, heartbeat_at)
             VALUES ('hub-x', 'http://{plain}', 'https://{tls}', now() + interval '1 hour');
             UPDATE accounts SET holder = 'hub-x' WHERE name = 'prod-1'"
        ),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let answer = client.get(&objects).bearer_auth(TOKEN).send().await?;
        let served_by = answer
            .headers()
            .get("x-scale-agent-served-by")
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let (status, body) = (answer.status().as_u16(), answer.text().await?);
        // Until replica b reads the row, it may still forward to hub-a.
        if served_by != b"hub-a" || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tokens: Vec<String> = [seen_plain, seen_tls]
        .iter()
        .flat_map(|seen| seen.lock().expect("not poisoned").clone())
        .collect();
    assert!(
        tokens.is_empty(),
        "the caller's token reached a process the database pointed at: {tokens:?}"
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("hub-x") && body.contains("hub-c"), "{body}");
    pair.a.shutdown().await?;
    pair.b.shutdown().await?;
    Ok(())
}
