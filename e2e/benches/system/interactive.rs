//! `kube_api_interactive`: the connection upgrades of the hub's Kubernetes API (issue
//! 19's exec and port-forward through the agent's stream), against the same on the
//! cluster's API server. A node of the account's cluster has kwok as its kubelet
//! (`e2e/src/kubelet.rs`): its port-forward reaches an echo server on this machine, its
//! exec runs local commands.
//!
//! Measured: `kube_api.port_forward.throughput`, MiB a second of a [`PAYLOAD_MIB`] MiB
//! TCP payload sent through `kubectl port-forward` to the echo server and read back
//! whole (each byte goes there and back); `kube_api.exec.rtt`, the median time for a
//! line written to `kubectl exec -i ... -- cat` to come back, over [`LINES`] lines of
//! one session.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use scale_agent_e2e::bench::report::Figure;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::Ctx;
use crate::stack::{Stack, configmap_accounts};

/// MiB sent through each port-forward.
const PAYLOAD_MIB: usize = 64;
/// Lines of the exec session whose round trips are timed.
const LINES: usize = 200;
/// Runs of each measurement each way; the median is reported.
const RUNS: usize = 3;

/// The figures this scenario makes, with their units.
pub fn names() -> Vec<(String, &'static str)> {
    vec![
        ("kube_api.port_forward.throughput".into(), "MiB/s"),
        ("kube_api.exec.rtt".into(), "s"),
    ]
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let account = configmap_accounts(ctx, "kint", 1, 1)
        .await?
        .into_iter()
        .next()
        .context("no account seeded")?;
    let ns = account.name.clone();
    let dir = ctx
        .env
        .cp
        .run_dir
        .join("bench")
        .join("kube-api-interactive");
    std::fs::create_dir_all(&dir)?;
    // The account's cluster (configmap_accounts puts account 0 on cluster 0): a node
    // whose kubelet is kwok, the pod `p` on it in the account's namespace.
    let cluster = ctx
        .env
        .cp
        .target(&ctx.clusters[0])
        .context("no target cluster")?;
    let _kubelet = scale_agent_e2e::kubelet::with_pod(
        &ctx.env.cp.bins,
        &ctx.env.cp.pki,
        cluster,
        "bench-interactive-node",
        &ctx.env.cp.run_dir,
        &dir.join("work"),
        &ns,
        "p",
    )
    .await?;
    let port = scale_agent_e2e::ports::free_port()?;
    let cert = ctx
        .env
        .cp
        .pki
        .issue_server("bench-kube-api-interactive", &["127.0.0.1"])?;
    let token = format!("bench-interactive-{:016x}", std::process::id());
    let tokens = dir.join("kube-api-tokens");
    std::fs::write(&tokens, format!("{token} *\n"))?;
    let stack = Stack::start_with(
        &ctx.env,
        "kube-api-interactive",
        vec![
            format!("--kube-api-addr=127.0.0.1:{port}"),
            format!("--kube-api-tokens-file={}", tokens.display()),
            format!("--kube-api-tls-cert={}", cert.cert_file.display()),
            format!("--kube-api-tls-key={}", cert.key_file.display()),
        ],
    )
    .await?;
    let expected = std::collections::BTreeMap::from([(ns.clone(), 1)]);
    let agent = stack
        .synced_agent(
            &ctx.env,
            "kube-api-interactive",
            std::slice::from_ref(&account.account),
            &expected,
        )
        .await?;
    let server = format!("https://127.0.0.1:{port}");
    let through = crate::kube_api::hub_kubeconfig(ctx, &server, &token, &ns, &dir, "hub")?;
    let direct = ctx.kubeconfig_path(0)?;
    let kubectl = &ctx.env.cp.bins.kubectl;

    let mut forward_through = Vec::with_capacity(RUNS);
    let mut forward_direct = Vec::with_capacity(RUNS);
    let mut rtt_through = Vec::with_capacity(RUNS);
    let mut rtt_direct = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        forward_through.push(port_forward(kubectl, &through, &ns).await?);
        forward_direct.push(port_forward(kubectl, &direct, &ns).await?);
        let (k, t, n) = (kubectl.clone(), through.clone(), ns.clone());
        rtt_through.push(tokio::task::spawn_blocking(move || exec_rtt(&k, &t, &n)).await??);
        let (k, d, n) = (kubectl.clone(), direct.clone(), ns.clone());
        rtt_direct.push(tokio::task::spawn_blocking(move || exec_rtt(&k, &d, &n)).await??);
    }
    drop(agent);
    drop(stack);

    let params = ctx
        .stream_params()
        .into_iter()
        .chain([
            ("runs".to_string(), json!(RUNS)),
            (
                "client".to_string(),
                json!("the installed kubectl (WebSocket) with a kubeconfig written by `scale-agent-hub kubeconfig`"),
            ),
            (
                "kubelet".to_string(),
                json!("kwok: port-forward to an echo server, exec runs a local `cat`"),
            ),
        ])
        .collect();
    Ok(vec![
        Figure::new(
            "kube_api_interactive",
            "kube_api.port_forward.throughput",
            median(forward_through),
            "MiB/s",
        )
        .baseline(median(forward_direct), "the same port-forward on the cluster's API server")
        .params(&params)
        .param("payload_mib", json!(PAYLOAD_MIB))
        .note(format!(
            "median of the runs: {PAYLOAD_MIB} MiB written to kubectl port-forward's local port while reading the echo back, divided by the time until the last byte came back (each byte travels there and back: client → hub → agent → API server → kwok → echo server)"
        )),
        Figure::new(
            "kube_api_interactive",
            "kube_api.exec.rtt",
            median(rtt_through),
            "s",
        )
        .baseline(median(rtt_direct), "the same exec session on the cluster's API server")
        .params(&params)
        .param("lines", json!(LINES))
        .note(format!(
            "median of the runs' medians: a line written to `kubectl exec -i -- cat`'s standard input until it came back on its standard output, {LINES} lines one after another in one session"
        )),
    ])
}

/// The middle of `values` (sorted).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// MiB a second of [`PAYLOAD_MIB`] MiB through `kubectl port-forward` to the pod's
/// echo server and back.
async fn port_forward(kubectl: &Path, kubeconfig: &Path, ns: &str) -> anyhow::Result<f64> {
    let local = scale_agent_e2e::ports::free_port()?;
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["port-forward", "-n", ns, "pod/p"])
        .arg(format!("{local}:80"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let measured = async {
        let mut conn =
            scale_agent_e2e::ports::connect_when_listening(local, Duration::from_secs(20)).await?;
        let chunk = vec![0x5au8; 1 << 20];
        let total = PAYLOAD_MIB << 20;
        let (mut r, mut w) = conn.split();
        let started = Instant::now();
        let write = async {
            for _ in 0..PAYLOAD_MIB {
                w.write_all(&chunk).await?;
            }
            w.flush().await
        };
        let read = async {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < total {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n;
            }
            Ok::<_, std::io::Error>(got)
        };
        let (wrote, got) = tokio::time::timeout(Duration::from_secs(300), async {
            tokio::join!(write, read)
        })
        .await
        .context("the port-forwarded echo did not come back in 300 s")?;
        wrote?;
        let got = got?;
        let elapsed = started.elapsed();
        ensure!(got == total, "{got} of {total} bytes came back");
        Ok(PAYLOAD_MIB as f64 / elapsed.as_secs_f64())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    measured
}

/// The median time for a line written to `kubectl exec -i -- cat` to come back, over
/// [`LINES`] lines of one session.
fn exec_rtt(kubectl: &Path, kubeconfig: &Path, ns: &str) -> anyhow::Result<f64> {
    let mut child = Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["exec", "-i", "-n", ns, "p", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let measured = (|| {
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        let rx =
            scale_agent_e2e::kubectl::lines_of(child.stdout.take().context("kubectl's stdout")?);
        let mut times = Vec::with_capacity(LINES);
        // The first line also waits for the session to begin: not timed.
        for i in 0..=LINES {
            let line = format!("line-{i}");
            let sent = Instant::now();
            writeln!(stdin, "{line}")?;
            stdin.flush()?;
            let back = rx
                .recv_timeout(Duration::from_secs(30))
                .with_context(|| format!("{line} did not come back in 30 s"))?;
            ensure!(back == line, "sent {line:?}, got {back:?}");
            if i > 0 {
                times.push(sent.elapsed().as_secs_f64());
            }
        }
        Ok(median(times))
    })();
    let _ = child.kill();
    let _ = child.wait();
    measured
}
