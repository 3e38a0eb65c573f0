//! Running the image's binaries as a container runtime would, on a host with no runtime:
//! from the unpacked root filesystem (chroot), as the image's user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// The archive to test: `$SCALE_AGENT_IMAGE_ARCHIVE`, else the one `just test` builds
/// (`scripts/build-oci-image.sh --profile debug`:
/// `target/images/scale-agent-<version>-debug.oci.tar`), by path. An error when it is
/// missing, or older than the debug binaries it should hold (left from an earlier build).
pub fn image_archive() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SCALE_AGENT_IMAGE_ARCHIVE") {
        let p = PathBuf::from(p);
        ensure!(
            p.is_file(),
            "SCALE_AGENT_IMAGE_ARCHIVE={} is not a file",
            p.display()
        );
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let version = env!("CARGO_PKG_VERSION");
    let archive = target.join(format!("images/scale-agent-{version}-debug.oci.tar"));
    let built = std::fs::metadata(&archive)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "no image archive at {}: build it with `scripts/build-oci-image.sh --profile debug` \
                 (`just test` does), or name one in SCALE_AGENT_IMAGE_ARCHIVE",
                archive.display()
            )
        })?;
    for bin in ["scale-agent", "scale-agent-hub", "scale-agent-operator"] {
        let binary = target.join("debug").join(bin);
        if let Ok(compiled) = std::fs::metadata(&binary).and_then(|m| m.modified()) {
            ensure!(
                built >= compiled,
                "{} is older than {}: rebuild it with `scripts/build-oci-image.sh --profile debug`",
                archive.display(),
                binary.display()
            );
        }
    }
    Ok(archive)
}

/// Runs `argv` inside `rootfs` as `user` (uid:gid) with no supplementary group; its stdout.
pub fn in_image(rootfs: &Path, user: &str, argv: &[&str]) -> anyhow::Result<String> {
    let gid = user.split(':').nth(1).unwrap_or(user);
    let out = Command::new(chroot()?)
        .arg(format!("--userspec={user}"))
        .arg(format!("--groups={gid}"))
        .arg(rootfs)
        .args(argv)
        .env_clear()
        .output()
        .with_context(|| format!("running {argv:?} in the image"))?;
    ensure!(
        out.status.success(),
        "{argv:?} in the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's chroot (coreutils), found before the child's environment is cleared.
pub fn chroot() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .context("chroot is missing (Debian: apt-get install coreutils)")
}

/// Real, effective, saved and filesystem uids; the same gids; supplementary groups.
pub fn ids(pid: u32) -> anyhow::Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok((field("Uid:"), field("Gid:"), field("Groups:")))
}

/// What the root filesystem must not hold: a shell, set-user-ID files, files the
/// non-root user owns outside its home.
pub fn file_problems(rootfs: &Path) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut problems = Vec::new();
    for sh in ["bin/sh", "usr/bin/sh", "bin/bash"] {
        if rootfs.join(sh).exists() {
            problems.push(format!("the image has a shell: /{sh}"));
        }
    }
    for_each_file(rootfs, &mut |path, meta| {
        let rel = path.strip_prefix(rootfs).unwrap_or(path);
        if meta.mode() & 0o6000 != 0 {
            problems.push(format!("{} is set-user-ID or set-group-ID", rel.display()));
        }
        if meta.uid() != 0 && !rel.starts_with("home/nonroot") {
            problems.push(format!("{} is owned by {}", rel.display(), meta.uid()));
        }
        Ok(())
    })?;
    Ok(problems)
}

fn for_each_file(
    dir: &Path,
    f: &mut dyn FnMut(&Path, &std::fs::Metadata) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        f(&path, &meta)?;
        if meta.is_dir() {
            for_each_file(&path, f)?;
        }
    }
    Ok(())
}
