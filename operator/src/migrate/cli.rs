//! `scale-agent migrate`'s flags and I/O: reads the configuration and the kubeconfig
//! files it names, writes the manifests, says what was not carried over.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use scale_agent_crds::{KubeconfigAllow, KubeconfigFeature};

use super::{GroupBy, MigrateError, NoteKind, Options, check_options, plan, read_accounts};

/// Turns a Clouddriver configuration's Kubernetes accounts (kubernetes.accounts[]) into
/// AgentShards and their kubeconfig Secrets, and says on stderr what it could not carry
/// over.
///
/// The manifests go to stdout (or --out), Secrets first: review them, then
/// `kubectl apply -f`. They hold the accounts' credentials, as the configuration did.
/// Accounts are cut into shards of --accounts-per-shard, in the configuration's order,
/// after grouping them by --group-by. Relative kubeconfigFile paths are read from the
/// configuration's folder.
#[derive(Debug, Parser)]
#[command(name = "scale-agent migrate", version, about, long_about)]
pub struct Args {
    /// The Clouddriver configuration holding kubernetes.accounts (clouddriver.yml,
    /// clouddriver-local.yml, a profile's file); `-` reads stdin. Every YAML document
    /// with kubernetes.accounts counts.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,

    /// Namespace of the AgentShards and Secrets (one the operator is opened to).
    #[arg(short = 'n', long, default_value = "spinnaker")]
    pub namespace: String,

    /// Most accounts in one AgentShard (one agent Deployment), 1 to 500.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub accounts_per_shard: usize,

    /// Group accounts into shards by this field first (shards named
    /// <prefix>-<group>-<n>); accounts without it go to the group `default`.
    #[arg(long, value_enum, default_value_t = GroupBy::None)]
    pub group_by: GroupBy,

    /// Shards are named <prefix>-<n> (or <prefix>-<group>-<n>).
    #[arg(long, value_name = "PREFIX", default_value = "clouddriver")]
    pub shard_prefix: String,

    /// The hub's gRPC address (host:port) the shards stream to; unset: the operator's
    /// default hub.
    #[arg(long, value_name = "HOST:PORT")]
    pub hub: Option<String>,

    /// The kubeconfig features the operator runs allowing (its --allow-kubeconfig):
    /// an account whose kubeconfig needs another is noted.
    #[arg(long, value_name = "FEATURES", value_delimiter = ',')]
    pub allow_kubeconfig: Vec<KubeconfigFeature>,

    /// Write the manifests to this file (mode 0600: it holds credentials) instead of
    /// stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Why migrate stopped.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Migrate(#[from] MigrateError),
}

/// `scale-agent migrate`'s `main`: `args` are its command line, the program name first.
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scale-agent migrate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), CliError> {
    let options = Options {
        namespace: args.namespace.clone(),
        shard_prefix: args.shard_prefix.clone(),
        accounts_per_shard: args.accounts_per_shard,
        group_by: args.group_by,
        hub: args.hub.clone(),
        allow: KubeconfigAllow(args.allow_kubeconfig.clone()),
    };
    check_options(&options)?;
    let stdin = args.file == Path::new("-");
    let text = if stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|source| CliError::Read {
                path: "stdin".to_owned(),
                source,
            })?;
        text
    } else {
        std::fs::read_to_string(&args.file).map_err(|source| CliError::Read {
            path: args.file.display().to_string(),
            source,
        })?
    };
    let base = if stdin {
        PathBuf::from(".")
    } else {
        args.file
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let (accounts, documents) = read_accounts(&text)?;
    if documents > 1 {
        eprintln!(
            "scale-agent migrate: note: {documents} YAML documents have kubernetes.accounts; the accounts of all of them are read (Spring profiles are not told apart)"
        );
    }
    let plan = plan(&accounts, &options, |path| {
        let full = base.join(path);
        std::fs::read(&full).map_err(|e| format!("{}: {e}", full.display()))
    });
    let yaml = plan.to_yaml()?;
    match &args.out {
        Some(path) => write_private(path, yaml.as_bytes()).map_err(|source| CliError::Write {
            path: path.display().to_string(),
            source,
        })?,
        None => std::io::stdout()
            .write_all(yaml.as_bytes())
            .map_err(|source| CliError::Write {
                path: "stdout".to_owned(),
                source,
            })?,
    }
    for note in &plan.notes {
        eprintln!("{note}");
    }
    let skipped = plan
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::Skipped)
        .count();
    let not_carried = plan
        .notes
        .iter()
        .filter(|n| n.kind == NoteKind::NotCarried)
        .count();
    eprintln!(
        "scale-agent migrate: {} of {} accounts in {} AgentShards and {} Secrets (namespace {}); {skipped} skipped, {not_carried} settings not carried",
        plan.accounts_written,
        plan.accounts_read,
        plan.shards.len(),
        plan.secrets.len(),
        options.namespace
    );
    Ok(())
}

/// Writes `bytes` to a new or truncated file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}
