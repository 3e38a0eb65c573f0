//! nginx (Debian's) as the HTTP/2 load balancer in front of the hub, started from the
//! templates in `manifests/lb/` — the same files users deploy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::{free_port, start_on_free_ports};
use crate::process::{Proc, tail, wait_ready};
use crate::{Error, Result};

/// Which of the tested setups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `nginx-grpc-tls.conf`: TLS and client-certificate verification at nginx,
    /// `grpc_pass` over plain HTTP/2 to the hub, the certificate forwarded in a header.
    GrpcTls,
    /// `nginx-passthrough.conf`: TCP passthrough, mTLS end to end.
    Passthrough,
}

impl Mode {
    /// The template's file name in `manifests/lb/`.
    pub fn template(self) -> &'static str {
        match self {
            Mode::GrpcTls => "nginx-grpc-tls.conf",
            Mode::Passthrough => "nginx-passthrough.conf",
        }
    }
}

/// The nginx binary, or how to install it.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NGINX") {
        return Ok(PathBuf::from(p));
    }
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).is_file() {
            return Ok(PathBuf::from(p));
        }
    }
    crate::bins::which("nginx").ok_or(Error::Missing {
        program: "nginx",
        install: "apt-get install nginx libnginx-mod-stream (`just test` does this)",
    })
}

/// Fills `${NAME}` placeholders; fails on any left unfilled.
pub fn render(
    template: &str,
    vars: &BTreeMap<&str, String>,
) -> std::result::Result<String, String> {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    // Comments may mention placeholders; only live lines must be complete.
    let missing: Vec<&str> = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("${"))
        .collect();
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!("unfilled placeholders: {missing:?}"))
    }
}

/// The rendered configuration with one `server` line per hub replica: the
/// templates name one (`server ${HUB_GRPC};`), and deployments with several
/// replicas repeat the line, as done here.
pub fn upstreams(conf: &str, hubs: &[String]) -> std::result::Result<String, String> {
    let Some(first) = hubs.first() else {
        return Err("no hub to balance over".into());
    };
    let line = format!("server {first};");
    if !conf.contains(&line) {
        return Err(format!("the template has no `{line}` line"));
    }
    let all: Vec<String> = hubs.iter().map(|h| format!("server {h};")).collect();
    Ok(conf.replacen(&line, &all.join("\n        "), 1))
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    proc: Option<Proc>,
    prefix: PathBuf,
    conf: PathBuf,
    run_dir: PathBuf,
    /// `127.0.0.1:<port>` agents connect to.
    pub address: String,
    port: u16,
}

/// What the load balancer points at.
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// Which setup.
    pub mode: Mode,
    /// The gRPC address of each hub replica the load balancer spreads
    /// streams over (one, or several sharing a store).
    pub hubs_grpc: Vec<String>,
    /// The load balancer's serving certificate and key (GrpcTls).
    pub tls_cert: PathBuf,
    /// Key of `tls_cert`.
    pub tls_key: PathBuf,
    /// CA of agent certificates (GrpcTls).
    pub client_ca: PathBuf,
    /// The secret shared with the hub (`--proxy-secret-file`), sent in every
    /// request (GrpcTls); none when `None`.
    pub proxy_secret: Option<String>,
}

impl Nginx {
    /// Renders the template into `<run_dir>/nginx-<n>/nginx.conf`, checks it with
    /// `nginx -t`, and starts nginx.
    pub async fn start(opts: &NginxOptions, run_dir: &Path) -> Result<Nginx> {
        start_on_free_ports("nginx", || Nginx::start_on_a_free_port(opts, run_dir)).await
    }

    async fn start_on_a_free_port(opts: &NginxOptions, run_dir: &Path) -> Result<Nginx> {
        let port = free_port()?;
        let prefix = run_dir.join(format!("nginx-{port}"));
        std::fs::create_dir_all(&prefix).map_err(|e| Error::io("creating", &prefix, e))?;
        let template_path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../manifests/lb")
            .join(opts.mode.template());
        let template = std::fs::read_to_string(&template_path)
            .map_err(|e| Error::io("reading", &template_path, e))?;
        let vars = BTreeMap::from([
            ("PREFIX", prefix.display().to_string()),
            ("LB_LISTEN", format!("127.0.0.1:{port}")),
            (
                "HUB_GRPC",
                opts.hubs_grpc.first().cloned().unwrap_or_default(),
            ),
            ("TLS_CERT", opts.tls_cert.display().to_string()),
            ("TLS_KEY", opts.tls_key.display().to_string()),
            ("CLIENT_CA", opts.client_ca.display().to_string()),
            (
                "PROXY_SECRET",
                opts.proxy_secret.clone().unwrap_or_default(),
            ),
            ("NGINX_MODULES", "/usr/lib/nginx/modules".to_string()),
        ]);
        let conf_text = render(&template, &vars)
            .and_then(|text| upstreams(&text, &opts.hubs_grpc))
            .map_err(|message| Error::Kubeconfig {
                path: template_path.clone(),
                message,
            })?;
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, conf_text).map_err(|e| Error::io("writing", &conf, e))?;
        let mut nginx = Nginx {
            proc: None,
            prefix,
            conf,
            run_dir: run_dir.to_path_buf(),
            address: format!("127.0.0.1:{port}"),
            port,
        };
        nginx.check()?;
        nginx.restart().await?;
        Ok(nginx)
    }

    fn check(&self) -> Result<()> {
        let out = Command::new(binary()?)
            .arg("-t")
            .arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .output()
            .map_err(|e| Error::io("running nginx -t on", &self.conf, e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::NotReady {
                component: "nginx (config test)".into(),
                seconds: 0,
                log: self.conf.clone(),
                tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Starts nginx (again), in the foreground of its own process group, and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc = None;
        let mut cmd = Command::new(binary()?);
        cmd.arg("-p")
            .arg(&self.prefix)
            .arg("-c")
            .arg(&self.conf)
            .arg("-g")
            .arg("daemon off;");
        let mut proc = Proc::spawn(&format!("nginx-{}", self.port), cmd, &self.run_dir)?;
        let port = self.port;
        wait_ready(
            &mut proc,
            Duration::from_secs(10),
            Duration::from_millis(50),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await
        .map_err(|e| match e {
            // nginx logs why it did not start into its own error log.
            Error::NotReady {
                component, seconds, ..
            } => Error::NotReady {
                component,
                seconds,
                tail: tail(&self.prefix.join("error.log"), 30),
                log: self.prefix.join("error.log"),
            },
            other => other,
        })?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops nginx (all its processes).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// nginx's process group (to freeze it with SIGSTOP, say).
    pub fn process(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// nginx's error log.
    pub fn error_log(&self) -> PathBuf {
        self.prefix.join("error.log")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_the_shipped_templates_is_filled() {
        let vars = BTreeMap::from([
            ("PREFIX", "/p".to_string()),
            ("LB_LISTEN", "127.0.0.1:1".to_string()),
            ("HUB_GRPC", "127.0.0.1:2".to_string()),
            ("TLS_CERT", "/c".to_string()),
            ("TLS_KEY", "/k".to_string()),
            ("CLIENT_CA", "/ca".to_string()),
            ("NGINX_MODULES", "/m".to_string()),
            ("PROXY_SECRET", "00ff".to_string()),
        ]);
        for mode in [Mode::GrpcTls, Mode::Passthrough] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../manifests/lb")
                .join(mode.template());
            let text = std::fs::read_to_string(&path).expect("template");
            let out = render(&text, &vars).expect("rendered");
            assert!(
                out.contains("127.0.0.1:2"),
                "{mode:?} should point at the hub"
            );
        }
        assert!(render("listen ${NOPE};", &vars).is_err());
    }

    #[test]
    fn several_hubs_get_a_server_line_each() {
        let conf = "upstream hub {\n        server 127.0.0.1:1;\n        keepalive 64;\n    }";
        let hubs = ["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        let out = upstreams(conf, &hubs).expect("rendered");
        assert!(
            out.contains("server 127.0.0.1:1;\n        server 127.0.0.1:2;\n        keepalive"),
            "{out}"
        );
        assert!(upstreams(conf, &[]).is_err());
        assert!(upstreams("upstream hub {}", &hubs).is_err());
    }
}
