//! Hub replicas in-process sharing a real PostgreSQL (Debian's, started by
//! the e2e harness), driven by fake agents over real gRPC: one holder per
//! account whatever the races, takeovers that resume from the written-behind
//! cache, forwarding between replicas, and a database that goes away and
//! comes back.

mod common;

use std::time::{Duration, Instant};

use common::*;
use scale_agent_e2e::postgres::Postgres;
use scale_agent_hub::RunningHub;
use scale_agent_hub::config::StoreLocation;
use scale_agent_proto::v1::{RegisterReason, hub_frame};

const LONG: Duration = Duration::from_secs(600);

/// The settings of hub replica `id` on the database at `url`, heartbeating every 200 ms.
fn replica_config(c: &mut scale_agent_hub::Config, url: &str, id: &str) {
    c.grace_period = LONG;
    c.store = StoreLocation::Postgres(url.to_owned());
    c.hub_id = id.to_owned();
    c.replica_heartbeat = Duration::from_millis(200);
    c.replica_timeout = Duration::from_secs(2);
}

/// A hub replica on the database at `url`, heartbeating every 200 ms.
async fn replica(url: &str, id: &str) -> Result<RunningHub> {
    hub_with(|c| replica_config(c, url, id)).await
}

/// Replica `id` as [`replica`], also serving the Kubernetes API under the replicas'
/// CA `cas`: the listener where the others forward it requests (both APIs').
async fn forwarding_replica(url: &str, id: &str, cas: &ReplicaCa) -> Result<RunningHub> {
    let api = cas.kube_api(id, "unused-kube-api-token *\n")?;
    hub_with(|c| {
        replica_config(c, url, id);
        c.kube_api = Some(api);
    })
    .await
}

/// Replicas `hub-a` and `hub-b` on the database at `url`, forwarding requests to each
/// other, once both are ready.
async fn two_replicas(url: &str) -> Result<(RunningHub, RunningHub)> {
    // Its file is read when the replicas start.
    let cas = ReplicaCa::new()?;
    let a = forwarding_replica(url, "hub-a", &cas).await?;
    let b = forwarding_replica(url, "hub-b", &cas).await?;
    eventually("both ready", || async {
        Ok(ready(&a).await? && ready(&b).await?)
    })
    .await?;
    Ok((a, b))
}

/// Waits until `check` holds (at most 10 s).
async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if check().await? {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(hub: &RunningHub) -> Result<bool> {
    Ok(get(hub, "/readyz").await?.0 == 200)
}

/// The holder of each account, as database `db` has it.
fn holders(pg: &Postgres, db: &str) -> Result<Vec<(String, String, String)>> {
    let text = pg.psql(
        db,
        "SELECT name, holder, COALESCE(session, '') FROM accounts ORDER BY name",
    )?;
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.split('|').map(str::to_owned);
            (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test]
async fn any_replica_answers_for_an_account_another_holds() -> Result<()> {
    logs();
    // Stopped when the test ends.
    let (_pg, url, _dir) = postgres("forwarding").await?;
    let (a, b) = two_replicas(&url).await?;
    let mut agent = FakeAgent::connect(&a, "east", "east-0").await?;
    assert!(agent.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    agent
        .events("prod-1", vec![added("web", "frontend", "10")])
        .await?;

    // Through the replica without the stream: forwarded to the holder.
    let (status, objects) = get(&b, "/v1/accounts/prod-1/objects").await?;
    assert_eq!(status, 200, "{objects}");
    assert_eq!(objects[0]["name"], "frontend");
    let (status, account) = get(&b, "/v1/accounts/prod-1").await?;
    assert_eq!(status, 200, "{account}");
    assert_eq!(account["hubReplica"], "hub-a");
    // Every replica lists every account.
    let (_, listed) = get(&b, "/v1/accounts").await?;
    assert_eq!(listed[0]["name"], "prod-1", "{listed}");
    assert_eq!(listed[0]["state"], "Connected");
    assert_eq!(listed[0]["hubReplica"], "hub-a");

    // A request forwarded once is never forwarded again.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/accounts/prod-1/objects", b.http_url()))
        .header("x-scale-agent-forwarded-by", "hub-x")
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    let text = response.text().await?;
    assert!(text.contains("hub-x") && text.contains("retry"), "{text}");

    // Unknown everywhere: 404 from whichever replica is asked.
    assert_eq!(get(&b, "/v1/accounts/nope/objects").await?.0, 404);
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn forwarded_requests_carry_the_callers_token_and_the_holder_checks_it() -> Result<()> {
    logs();
    // Stopped when the test ends.
    let (_pg, url, _dir) = postgres("forwarding_token").await?;
    let dir = tempfile::tempdir()?;
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n")?;
    let cas = ReplicaCa::new()?;
    let with_token = |id: &'static str| {
        let (url, token) = (url.clone(), token.clone());
        let api = cas.kube_api(id, "unused-kube-api-token *\n");
        async move {
            let api = api?;
            hub_with(move |c| {
                c.store = StoreLocation::Postgres(url);
                c.hub_id = id.into();
                c.replica_heartbeat = Duration::from_millis(200);
                c.replica_timeout = Duration::from_secs(2);
                c.api_token_file = Some(token);
                c.kube_api = Some(api);
            })
            .await
        }
    };
    let a = with_token("hub-a").await?;
    let b = with_token("hub-b").await?;
    eventually("both ready", || async {
        Ok(ready(&a).await? && ready(&b).await?)
    })
    .await?;
    let mut agent = FakeAgent::connect(&a, "east", "east-0").await?;
    assert!(agent.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    let client = reqwest::Client::new();
    let objects = format!("{}/v1/accounts/prod-1/objects", b.http_url());
    // Without the token: refused by the replica asked, never forwarded.
    let refused = client.get(&objects).send().await?;
    assert_eq!(refused.status(), 401);
    assert!(refused.headers().get("x-scale-agent-served-by").is_none());
    // With it: forwarded, and accepted by the holder, which checks it again.
    let served = client.get(&objects).bearer_auth("s3cret").send().await?;
    assert_eq!(served.status(), 200);
    assert_eq!(
        served
            .headers()
            .get("x-scale-agent-served-by")
            .map(|v| v.as_bytes()),
        Some(&b"hub-a"[..])
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_replica_that_lost_an_account_cannot_write_over_its_new_holder() -> Result<()> {
    use scale_agent_hub::core::cache::Changes;
    use scale_agent_hub::core::registry::{Binding, ShardRef};
    use scale_agent_hub::store::postgres::{ClaimWrite, FlushError, PgStore};
    logs();
    // Stopped when the test ends.
    let (_pg, url, _dir) = postgres("fencing").await?;
    let store = PgStore::new(&url)?;
    store.migrate().await?;
    // Migrations are applied once, whoever starts first.
    assert!(store.migrate().await?.is_empty());
    let write = |session: &str| ClaimWrite {
        name: "prod-1".into(),
        binding: Binding {
            cluster_id: "uid-a".into(),
            shard: ShardRef {
                namespace: "spinnaker".into(),
                name: "east".into(),
            },
            server_url: String::new(),
        },
        session: session.into(),
        agent_replica: "east-0".into(),
        kubernetes_version: String::new(),
    };
    let names = ["prod-1".to_owned()];
    let none = std::collections::HashMap::new();
    let timeout = Duration::from_secs(2);
    let (_, a) = store
        .claim("hub-a", &names, &none, timeout, |_| ((), vec![write("s1")]))
        .await
        .map_err(|f| f.error)?;
    let (_, b) = store
        .claim("hub-b", &names, &none, timeout, |_| ((), vec![write("s2")]))
        .await
        .map_err(|f| f.error)?;
    assert_eq!((a[0].1, b[0].1), (1, 2), "each claim raises the epoch");
    let changes = Changes {
        objects: 7,
        ..Changes::default()
    };
    assert!(matches!(
        store.flush("hub-a", "prod-1", a[0].1, &changes).await,
        Err(FlushError::Lost)
    ));
    assert!(!store.release("hub-a", "prod-1", a[0].1).await?);
    assert!(!store.remove("hub-a", "prod-1", a[0].1).await?);
    store.flush("hub-b", "prod-1", b[0].1, &changes).await?;
    let rows = store.accounts(timeout).await?;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            rows[0].holder.as_str(),
            rows[0].session.as_deref(),
            rows[0].objects
        ),
        ("hub-b", Some("s2"), 7)
    );
    Ok(())
}

#[tokio::test]
async fn a_replica_taking_an_account_over_resumes_from_the_written_behind_cache() -> Result<()> {
    logs();
    let (pg, url, _dir) = postgres("takeover").await?;
    let (a, b) = two_replicas(&url).await?;
    let mut first = FakeAgent::connect(&a, "east", "east-0").await?;
    assert!(first.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    first
        .sync_start_selecting(
            "prod-1",
            deployments(),
            scale_agent_proto::v1::SyncMode::FullRelist,
            "sel-east",
        )
        .await?;
    first
        .events(
            "prod-1",
            vec![added("web", "frontend", "10"), added("web", "api", "11")],
        )
        .await?;
    first.sync_end("prod-1", deployments(), "12", 2).await?;
    first.barrier().await?;
    // Written behind within a flush interval, with the selection listed.
    eventually("the cache written behind", || async {
        let text = pg.psql(
            "takeover",
            "SELECT (SELECT count(*) FROM objects), (SELECT string_agg(resource_version || '/' || selection, ',') FROM resume_points)",
        )?;
        Ok(text == "2|12/sel-east")
    })
    .await?;

    // Another replica of the shard reaches the other hub: it takes the
    // account over, resuming where the first left off.
    let mut second = FakeAgent::connect(&b, "east", "east-1").await?;
    let results = second.register(&[("prod-1", "uid-a")]).await?;
    assert!(results[0].accepted, "{results:?}");
    // With the selection the objects were listed with: an agent selecting
    // otherwise relists rather than resuming into a cache its filters did not make.
    let points: Vec<(&str, &str, &str)> = results[0]
        .resume_points
        .iter()
        .map(|p| {
            (
                p.kind.as_ref().map_or("", |k| k.kind.as_str()),
                p.resource_version.as_str(),
                p.selection.as_str(),
            )
        })
        .collect();
    assert_eq!(points, [("Deployment", "12", "sel-east")]);
    assert_eq!(object_names(&b, "prod-1").await?, ["api", "frontend"]);
    // The first session is told it lost the account, and its late events
    // change nothing anywhere.
    let notice = first
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) => Some(r.accounts.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(
        notice[0].reason,
        RegisterReason::Superseded as i32,
        "{notice:?}"
    );
    first
        .events_unacked("prod-1", vec![added("web", "late", "13")])
        .await?;
    first.barrier().await?;
    second
        .events("prod-1", vec![added("web", "fresh", "14")])
        .await?;
    for hub in [&a, &b] {
        assert_eq!(
            object_names(hub, "prod-1").await?,
            ["api", "fresh", "frontend"]
        );
    }
    assert_eq!(
        holders(&pg, "takeover")?,
        [(
            "prod-1".to_owned(),
            "hub-b".to_owned(),
            second.welcome.session_id.clone()
        )]
    );
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn replicas_racing_for_new_names_bind_each_once() -> Result<()> {
    logs();
    let (pg, url, _dir) = postgres("races").await?;
    let (a, b) = two_replicas(&url).await?;
    const NAMES: usize = 20;
    let mut east = FakeAgent::connect(&a, "east", "east-0").await?;
    let mut west = FakeAgent::connect(&b, "east", "east-1").await?;
    let mut won = (0, 0);
    for i in 0..NAMES {
        let name = format!("race-{i}");
        // The same new name from two clusters at the same time, one at each
        // replica: exactly one binds it.
        let (to_east, to_west) = ([(name.as_str(), "uid-east")], [(name.as_str(), "uid-west")]);
        let (x, y) = tokio::join!(east.register(&to_east), west.register(&to_west));
        let (x, y) = (x?.remove(0), y?.remove(0));
        assert!(x.accepted != y.accepted, "{name}: {x:?} / {y:?}");
        let loser = if x.accepted { &y } else { &x };
        assert_eq!(
            loser.reason,
            RegisterReason::ClusterMismatch as i32,
            "{loser:?}"
        );
        if x.accepted {
            won.0 += 1;
        } else {
            won.1 += 1;
        }
    }
    eprintln!(
        "races for new names: hub-a bound {}, hub-b bound {}",
        won.0, won.1
    );
    let bound = holders(&pg, "races")?;
    assert_eq!(bound.len(), NAMES);
    let mut east_sessions = 0;
    for (name, holder, session) in &bound {
        let expected = if holder == "hub-a" {
            east_sessions += 1;
            &east.welcome.session_id
        } else {
            &west.welcome.session_id
        };
        assert_eq!(session, expected, "{name}");
    }
    assert_eq!(east_sessions, won.0);

    // The same cluster racing itself (two replicas of a shard during a
    // lease change): both are accepted in turn, the later one holds it,
    // the earlier is told, and the replicas agree.
    let (x, y) = tokio::join!(
        east.register(&[("shared", "uid-s")]),
        west.register(&[("shared", "uid-s")])
    );
    assert!(x?[0].accepted && y?[0].accepted);
    let (_, holder, session) = holders(&pg, "races")?
        .into_iter()
        .find(|(n, _, _)| n == "shared")
        .ok_or("no row")?;
    let (winner, loser, loser_hub) = if holder == "hub-a" {
        (&east, &mut west, &b)
    } else {
        (&west, &mut east, &a)
    };
    assert_eq!(session, winner.welcome.session_id);
    let notice = loser
        .wait_for(|f| match f {
            hub_frame::Frame::RegisterResult(r) if r.accounts[0].name == "shared" => {
                Some(r.accounts[0].clone())
            }
            _ => None,
        })
        .await?;
    assert_eq!(notice.reason, RegisterReason::Superseded as i32);
    eventually("the losing replica to let the account go", || async {
        let (_, view) = get(loser_hub, "/v1/accounts/shared").await?;
        Ok(view["hubReplica"] == holder.as_str())
    })
    .await?;
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn without_its_database_a_replica_serves_what_it_holds_and_recovers() -> Result<()> {
    logs();
    let (mut pg, url, _dir) = postgres("outage").await?;
    let a = replica(&url, "hub-a").await?;
    eventually("ready", || ready(&a)).await?;
    let mut agent = FakeAgent::connect(&a, "east", "east-0").await?;
    assert!(agent.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    agent
        .events("prod-1", vec![added("web", "one", "1")])
        .await?;

    pg.stop();
    eventually("unready", || async { Ok(!ready(&a).await?) }).await?;
    let (_, body) = get(&a, "/readyz").await?;
    assert!(
        body.as_str().unwrap_or_default().contains("shared store"),
        "{body}"
    );
    // What it holds streams on and is served.
    agent
        .events("prod-1", vec![added("web", "two", "2")])
        .await?;
    assert_eq!(object_names(&a, "prod-1").await?, ["one", "two"]);
    // Nothing new is bound.
    let refused = agent.register(&[("prod-2", "uid-b")]).await?;
    assert!(!refused[0].accepted);
    assert_eq!(refused[0].reason, RegisterReason::Unavailable as i32);
    assert!(refused[0].message.contains("shared store"), "{refused:?}");

    pg.restart().await?;
    eventually("ready again", || ready(&a)).await?;
    assert!(agent.register(&[("prod-2", "uid-b")]).await?[0].accepted);
    // What arrived during the outage reached the database.
    eventually("the outage's changes written behind", || async {
        let text = pg.psql(
            "outage",
            "SELECT string_agg(name, ',' ORDER BY name) FROM objects WHERE account = 'prod-1'",
        )?;
        Ok(text == "one,two")
    })
    .await?;
    a.shutdown().await?;
    Ok(())
}

/// A free port on 127.0.0.1.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the hub binary on the PostgreSQL store `url` with `args` and `envs` until it is
/// ready (at most 20 s): whether it got there, what it answered last, and its log.
async fn hub_binary(
    url: &str,
    args: &[String],
    envs: &[(&str, &str)],
    log: &std::path::Path,
) -> Result<(bool, String, String)> {
    let http = free_port()?;
    let mut hub = std::process::Command::new(env!("CARGO_BIN_EXE_scale-agent-hub"))
        .args([
            "--insecure".to_owned(),
            format!("--grpc-addr=127.0.0.1:{}", free_port()?),
            format!("--http-addr=127.0.0.1:{http}"),
            format!("--store={url}"),
            "--hub-id=hub-bin".to_owned(),
        ])
        .args(args)
        .env_remove("PGPASSWORD")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let readyz = format!("http://127.0.0.1:{http}/readyz");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let ready = loop {
        match reqwest::get(&readyz).await {
            Ok(r) if r.status().as_u16() == 200 => break true,
            Ok(r) => last = r.text().await.unwrap_or_default(),
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    hub.kill()?;
    hub.wait()?;
    Ok((ready, last, std::fs::read_to_string(log)?))
}

/// The database password reaches the hub from the environment (PGPASSWORD) or a file
/// (`--store-password-file`), so it is on no command line; one left in the URL still
/// works, is warned about, and appears in no log line.
#[tokio::test]
async fn the_stores_password_comes_from_a_file_or_the_environment_not_the_command_line()
-> Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let reaper = scale_agent_e2e::process::spawn_reaper(dir.path(), std::process::id())?;
    std::mem::forget(reaper);
    let pg = Postgres::start(dir.path()).await?;
    const PASSWORD: &str = "s3cretPassw0rd";
    // A URL with no password in it.
    let url = pg.database_with_password("password_env", "hub_role", PASSWORD)?;
    let log = dir.path().join("hub.log");

    let (ready, last, _) = hub_binary(&url, &[], &[("PGPASSWORD", PASSWORD)], &log).await?;
    assert!(
        ready,
        "with PGPASSWORD the hub never reached its store: {last}"
    );

    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n"))?;
    let with_file = [format!("--store-password-file={}", file.display())];
    let (ready, last, _) = hub_binary(&url, &with_file, &[], &log).await?;
    assert!(
        ready,
        "with --store-password-file the hub never reached its store: {last}"
    );

    let in_url = url.replacen("hub_role@", &format!("hub_role:{PASSWORD}@"), 1);
    let (ready, last, text) = hub_binary(&in_url, &[], &[], &log).await?;
    assert!(
        ready,
        "with the password in the URL the hub never reached its store: {last}"
    );
    assert!(
        text.contains("holds the database password"),
        "no warning about the password in the URL:\n{text}"
    );
    assert!(
        !text.contains(PASSWORD),
        "the password appears in the hub's log:\n{text}"
    );
    Ok(())
}

/// The hub reaches PostgreSQL over TLS, the server's certificate checked against the
/// CA the URL names (`sslmode=verify-full`, also the default), and refuses a server
/// whose certificate does not chain to it.
#[tokio::test]
async fn the_store_is_reached_over_tls_and_an_unknown_server_is_refused() -> Result<()> {
    let (pg, url, dir) = postgres("store_tls").await?;
    let a = replica(&url, "hub-tls").await?;
    eventually("ready", || ready(&a)).await?;
    let sessions = pg.psql(
        "store_tls",
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = 'scale-agent-hub'",
    )?;
    assert!(
        !sessions.is_empty() && sessions.lines().all(|l| l == "t"),
        "the hub's sessions, TLS or not: {sessions:?}"
    );
    a.shutdown().await?;

    // The same server, checked against another CA: the server cannot prove it is the
    // database named, and the hub says so instead of sending its queries.
    let other = scale_agent_e2e::certs::Pki::create_named(&dir.path().join("other-ca"), "other")?;
    let impostor_url = url.replace(
        &pg.ca_file.display().to_string(),
        &other.ca_file.display().to_string(),
    );
    assert_ne!(impostor_url, url);
    let b = replica(&impostor_url, "hub-untrusting").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let (status, body) = get(&b, "/readyz").await?;
        assert_ne!(status, 200, "ready on a server it cannot trust");
        let body = body.to_string();
        if body.contains("certificate") || Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(answer.contains("certificate"), "{answer}");
    eprintln!("an unknown server: {answer}");
    b.shutdown().await?;
    Ok(())
}

/// An operation's request (an apply's manifest may carry a Secret's data) is kept in
/// the shared store while it is in flight (another replica sends it again should its
/// replica die) and dropped once answered; its outcome, and the digest that tells a
/// repeated POST from another request, stay.
#[tokio::test]
async fn an_operations_request_is_not_kept_past_its_answer() -> Result<()> {
    use scale_agent_hub::store::postgres::PgStore;
    use serde_json::json;
    const SECRET: &str = "hunter2-in-a-manifest";
    let (pg, url, _dir) = postgres("op_payloads").await?;
    let (a, b) = two_replicas(&url).await?;
    let mut agent = FakeAgent::connect(&a, "east", "east-0").await?;
    assert!(agent.register(&[("prod-1", "uid-a")]).await?[0].accepted);
    let apply = json!({
        "type": "apply",
        "id": "op-secret",
        "manifest": {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": "web"},
            "stringData": {"password": SECRET}
        }
    });
    // Through the replica without the stream.
    let posted = {
        let url = format!("{}/v1/accounts/prod-1/operations", b.http_url());
        let apply = apply.clone();
        tokio::spawn(async move {
            let resp = reqwest::Client::new().post(url).json(&apply).send().await?;
            let status = resp.status().as_u16();
            Ok::<_, Error>((status, resp.text().await?))
        })
    };
    let op = agent.expect_operation().await?;
    let holding = |sql: &str| pg.psql("op_payloads", sql);
    let with_secret = format!(
        "SELECT count(*) FROM operations
         WHERE position('{SECRET}' in encode(frame, 'escape')) > 0
            OR position('{SECRET}' in COALESCE(outcome::text, '')) > 0"
    );
    assert_eq!(
        holding(&with_secret)?,
        "1",
        "in flight, the request is recorded"
    );
    agent
        .answer(
            &op.id,
            true,
            "applied",
            json!({"kind": "Secret", "metadata": {"name": "db", "namespace": "web"}}),
        )
        .await?;
    let (status, body) = posted.await??;
    assert_eq!(status, 200, "{body}");
    eventually("the outcome recorded", || async {
        Ok(holding("SELECT count(*) FROM operations WHERE outcome IS NOT NULL")? == "1")
    })
    .await?;
    assert_eq!(
        holding(&with_secret)?,
        "0",
        "the answered operation's manifest is still in the store: {}",
        holding("SELECT encode(frame, 'escape') FROM operations")?
    );
    assert_eq!(holding("SELECT length(frame) FROM operations")?, "0");
    // Any replica still finds the outcome of the caller's id, and the request's digest.
    let store = PgStore::new(&url)?;
    let (wire_id, outcome) = store
        .find_outcome("prod-1", "op-secret")
        .await?
        .ok_or("the outcome is found")?;
    assert_eq!(wire_id, op.id);
    assert_eq!(outcome["success"], true, "{outcome}");
    a.shutdown().await?;
    b.shutdown().await?;
    Ok(())
}

/// A password rotated in `--store-password-file` (as a Kubernetes Secret is updated in
/// place) is used from the next connection on: once the database takes only the new
/// one and drops the hub's connections, the hub connects again, without a restart.
#[tokio::test]
async fn a_password_rotated_in_its_file_is_used_when_the_store_reconnects() -> Result<()> {
    logs();
    let (pg, _, dir) = postgres("password_rotated").await?;
    let url = pg.database_with_password("rotated", "rotated_role", "firstPassw0rd")?;
    let file = dir.path().join("store-password");
    std::fs::write(&file, "firstPassw0rd\n")?;
    let hub = hub_with(|c| {
        c.grace_period = LONG;
        c.store = StoreLocation::Postgres(url.clone());
        c.store_password_file = Some(file.clone());
        c.hub_id = "hub-rotated".into();
        c.replica_heartbeat = Duration::from_millis(200);
        c.replica_timeout = Duration::from_secs(2);
    })
    .await?;
    eventually("ready", || ready(&hub)).await?;

    std::fs::write(&file, "secondPassw0rd\n")?;
    pg.psql(
        "rotated",
        "ALTER ROLE rotated_role PASSWORD 'secondPassw0rd'",
    )?;
    pg.psql(
        "rotated",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'rotated_role'",
    )?;
    // A registration needs the store (its claim): accepted once the hub connects
    // again, with the new password.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut agent = FakeAgent::connect(&hub, "east", "east-0").await?;
        let results = agent.register(&[("prod-1", "uid-a")]).await;
        match results {
            Ok(results) if results.first().is_some_and(|r| r.accepted) => break,
            other => assert!(
                Instant::now() < deadline,
                "the hub never used the rotated password: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("ready again", || ready(&hub)).await?;
    hub.shutdown().await?;
    Ok(())
}
