//! The control plane's binaries: built from Go modules once, into a cache outside the
//! repository (see `e2e/scripts/build-k8s.sh`), and located here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Paths of the control plane's programs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// Folder holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.
    pub dir: PathBuf,
    /// The kubectl the tests drive, from `PATH` or `$KUBECTL`.
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Locates the binaries, building them first when the cache lacks them (minutes on a
    /// cold machine; the build script prints its progress). `SCALE_AGENT_K8S_BIN` points at
    /// a ready folder instead.
    pub fn ensure() -> Result<Binaries> {
        let dir = match std::env::var_os("SCALE_AGENT_K8S_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => build()?,
        };
        Ok(Binaries {
            dir,
            kubectl: kubectl()?,
        })
    }

    /// The path of one of the control plane's programs.
    pub fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

fn build() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-k8s.sh");
    if which("go").is_none() {
        return Err(Error::Missing {
            program: "go",
            install: "install Go >= 1.26 from https://go.dev/doc/install (or apt-get install golang-go when new enough)",
        });
    }
    build_script(&script, &[])
}

/// Runs a build script of `e2e/scripts/` with `args` (its progress on stderr) and returns
/// the path it prints: what it built, cached outside the repository.
pub fn build_script(script: &Path, args: &[&str]) -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Error::io("running", script, e))?;
    if !out.status.success() {
        return Err(Error::Build {
            status: format!("{} ({})", out.status, script.display()),
        });
    }
    Ok(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
    ))
}

/// The kubectl the tests drive: `$KUBECTL`, else the one on `PATH`.
pub fn kubectl() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Ok(PathBuf::from(path));
    }
    which("kubectl").ok_or(Error::Missing {
        program: "kubectl",
        install: "install kubectl (https://kubernetes.io/docs/tasks/tools/), e.g. apt-get install kubectl",
    })
}

/// The first `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
