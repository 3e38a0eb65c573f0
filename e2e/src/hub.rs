//! The hub as a process, for `just up` and the end-to-end tests: plain HTTP/2 (the
//! insecure development mode) or TLS, on free loopback ports.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::controlplane::http_get;
use crate::ports::{free_port, start_on_free_ports};
use crate::process::{Proc, wait_ready};
use crate::{Error, Result};

/// How to start the hub.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The `scale-agent-hub` binary.
    pub bin: PathBuf,
    /// Grace period for dropped streams (e.g. "3s").
    pub grace_period: String,
    /// SQLite file for bindings; in memory when `None`.
    pub store: Option<PathBuf>,
    /// Extra flags.
    pub args: Vec<String>,
    /// Kubeconfig of the cluster holding the AgentShards (for `--authorize-shards`).
    pub kubeconfig: Option<PathBuf>,
}

/// A running hub.
#[derive(Debug)]
pub struct HubProcess {
    proc: Option<Proc>,
    opts: HubOptions,
    run_dir: PathBuf,
    /// `127.0.0.1:<port>` of the gRPC endpoint.
    pub grpc: String,
    /// `http://127.0.0.1:<port>` of the HTTP API.
    pub http: String,
    http_port: u16,
    /// The bearer token [`HubProcess::get`] and [`HubProcess::post`] send, when the hub
    /// runs with `--api-token-file`.
    pub api_token: Option<String>,
}

impl HubProcess {
    /// Starts the hub and waits for `/healthz`.
    pub async fn start(opts: HubOptions, run_dir: &std::path::Path) -> Result<HubProcess> {
        start_on_free_ports("hub", || {
            let opts = opts.clone();
            async move {
                let grpc_port = free_port()?;
                let http_port = free_port()?;
                let mut hub = HubProcess {
                    proc: None,
                    opts,
                    run_dir: run_dir.to_path_buf(),
                    grpc: format!("127.0.0.1:{grpc_port}"),
                    http: format!("http://127.0.0.1:{http_port}"),
                    http_port,
                    api_token: None,
                };
                hub.restart().await?;
                Ok(hub)
            }
        })
        .await
    }

    /// Stops the hub (SIGTERM, then SIGKILL).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// The hub's process id (also its process group).
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// The hub's process.
    pub fn process(&mut self) -> Option<&mut Proc> {
        self.proc.as_mut()
    }

    /// Starts the hub again on the same ports (after [`HubProcess::stop`]).
    pub async fn restart(&mut self) -> Result<()> {
        self.proc = None;
        let mut cmd = Command::new(&self.opts.bin);
        cmd.arg(format!("--grpc-addr={}", self.grpc))
            .arg(format!("--http-addr=127.0.0.1:{}", self.http_port))
            .arg(format!("--grace-period={}", self.opts.grace_period))
            .args(&self.opts.args);
        if !self.opts.args.iter().any(|a| a.starts_with("--tls-cert")) {
            cmd.arg("--insecure");
        }
        if let Some(kc) = &self.opts.kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        if let Some(store) = &self.opts.store {
            cmd.arg(format!("--store={}", store.display()));
        }
        let mut proc = Proc::spawn("hub", cmd, &self.run_dir)?;
        let port = self.http_port;
        wait_ready(
            &mut proc,
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async move {
                http_get(port, "/healthz")
                    .await
                    .is_ok_and(|body| body.starts_with("HTTP/1.") && body.contains(" 200 "))
            },
        )
        .await?;
        self.proc = Some(proc);
        Ok(())
    }

    /// `GET` a path of the HTTP API; returns the status code and the body as JSON
    /// (`Null` when it is not JSON).
    pub async fn get(&self, path: &str) -> Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `POST` JSON to a path of the HTTP API.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.http);
        let mut req = reqwest::Client::new()
            .request(method, &url)
            .timeout(Duration::from_secs(60));
        if let Some(b) = body {
            req = req.json(b);
        }
        if let Some(token) = &self.api_token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| Error::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| Error::Http {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((status, json))
    }
}

/// Splits a raw HTTP/1.x response into status code and body.
pub fn split_response(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}
