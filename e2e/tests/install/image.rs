//! Running the image's binaries as a container runtime would, on a host with no runtime:
//! from the unpacked root filesystem (chroot), as the image's user.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use serde_json::Value;

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

/// The SBOM the image script writes beside `archive`: its file name with `.cdx.json` for
/// `.oci.tar`.
pub fn sbom_path(archive: &Path) -> PathBuf {
    let name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".tar").unwrap_or(&name);
    let stem = stem.strip_suffix(".oci").unwrap_or(stem);
    archive.with_file_name(format!("{stem}.cdx.json"))
}

/// The crate list `cargo auditable` embedded in the 64-bit little-endian ELF executable
/// at `path`, read as its format says (the `.dep-v0` section: zlib-compressed JSON),
/// independently of scripts/sbom.py; `None` when it has none.
pub fn embedded_crates(path: &Path) -> anyhow::Result<Option<Value>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        data.starts_with(b"\x7fELF") && data.get(4) == Some(&2) && data.get(5) == Some(&1),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let int = |at: usize, len: usize| -> anyhow::Result<usize> {
        let bytes = data
            .get(at..at + len)
            .context("the ELF file is cut short")?;
        let mut le = [0u8; 8];
        le[..len].copy_from_slice(bytes);
        Ok(usize::try_from(u64::from_le_bytes(le))?)
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (int(0x28, 8)?, int(0x3a, 2)?, int(0x3c, 2)?, int(0x3e, 2)?);
    // A section header: name (4 bytes), type (4), flags (8), addr (8), offset (8), size (8).
    let section = |i: usize| -> anyhow::Result<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((int(h, 4)?, int(h + 24, 8)?, int(h + 32, 8)?))
    };
    let (_, names, _) = section(shstrndx)?;
    for i in 0..shnum {
        let (name, offset, size) = section(i)?;
        let start = names + name;
        let len = data
            .get(start..)
            .and_then(|rest| rest.iter().position(|&b| b == 0))
            .context("a section name runs off the end")?;
        if &data[start..start + len] == b".dep-v0" {
            let compressed = data
                .get(offset..offset + size)
                .context(".dep-v0 runs off the end")?;
            let mut json = Vec::new();
            flate2::read::ZlibDecoder::new(compressed)
                .read_to_end(&mut json)
                .context("inflating .dep-v0")?;
            return Ok(Some(
                serde_json::from_slice(&json).context("parsing .dep-v0")?,
            ));
        }
    }
    Ok(None)
}

/// The label keys of the Dockerfile's `LABEL` instructions.
pub fn dockerfile_labels(dockerfile: &str) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    let mut in_label = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("LABEL ") {
            in_label = true;
            keys.extend(label_keys(rest));
        } else if in_label {
            keys.extend(label_keys(line));
        }
        if !line.ends_with('\\') {
            in_label = false;
        }
    }
    keys
}

fn label_keys(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_whitespace()
        .filter_map(|word| word.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| !k.is_empty() && !k.starts_with('"'))
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
