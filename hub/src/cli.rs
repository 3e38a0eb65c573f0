//! Command-line flags of the hub.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

/// The Clouddriver side of scale-agent: accepts agent streams over gRPC, keeps
/// the account registry and the cache of every streamed object, serves them
/// over HTTP (JSON), and routes deploy operations to the agent replica that
/// holds the account.
///
/// Serve with mTLS (--tls-cert, --tls-key, --client-ca) in production; plain
/// HTTP/2 needs an explicit --insecure.
#[derive(Debug, Parser)]
#[command(name = "scale-agent-hub", version, about, long_about)]
// Plaintext must be asked for: one of --tls-cert and --insecure is required.
#[command(group(ArgGroup::new("transport").required(true).args(["tls_cert", "insecure"])))]
pub struct Args {
    /// Address of the gRPC server agents connect to (AgentHub.Connect).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,

    /// Address of the HTTP server: the JSON API (accounts, objects,
    /// operations), /metrics and /healthz.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// How long the accounts of a dropped stream are kept (shown as
    /// Disconnected) waiting for their agent to come back, before they and
    /// their cache are removed. A number with a unit: ms, s, m, h (e.g. 600s,
    /// 10m, 1h30m).
    #[arg(long, value_name = "DURATION", default_value = "600s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// SQLite database where account bindings (name to cluster id and shard)
    /// are kept, so they survive a restart. Without it they live in memory only.
    #[arg(long, value_name = "PATH")]
    pub store: Option<PathBuf>,

    /// PEM certificate chain the gRPC server presents.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that sign agent client certificates. When set,
    /// agents without a certificate from one of them are refused (mTLS), and
    /// the certificate names the agent's shard.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// Serve gRPC without TLS (plain HTTP/2), e.g. behind a load balancer that
    /// terminates TLS, or in tests. Agents are then not authenticated.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "client_ca"])]
    pub insecure: bool,

    /// Log line format: human-readable text, or one JSON object per line for
    /// log collectors.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a duration written as numbers with units, e.g. `600s`, `10m`,
/// `1h30m`, `250ms`. A bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?}: expected a number at {rest:?}"));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => return Err(format!("{text:?}: missing unit (ms, s, m, h)")),
            unit => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
        };
        total = total.saturating_add(part);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["scale-agent-hub", "--insecure"]).expect("parses");
        assert_eq!(args.grace_period, Duration::from_secs(600));
        assert_eq!(args.grpc_addr, "0.0.0.0:9090".parse().expect("valid"));
        assert_eq!(args.http_addr, "0.0.0.0:8080".parse().expect("valid"));
        assert_eq!(args.store, None);
    }

    #[test]
    fn tls_or_insecure_is_required_and_exclusive() {
        assert!(Args::try_parse_from(["scale-agent-hub"]).is_err());
        assert!(Args::try_parse_from(["scale-agent-hub", "--tls-cert", "c.pem"]).is_err());
        assert!(
            Args::try_parse_from(["scale-agent-hub", "--insecure", "--tls-cert", "c.pem"]).is_err()
        );
        let args = Args::try_parse_from([
            "scale-agent-hub",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--client-ca",
            "ca.pem",
        ])
        .expect("mTLS flags parse");
        assert_eq!(args.client_ca, Some(PathBuf::from("ca.pem")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("600s"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Ok(Duration::from_millis(90_500))
        );
        for bad in ["", "s", "10x", "m10", "1.5s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }
}
