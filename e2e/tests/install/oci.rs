//! Reading an OCI image archive (an OCI image layout in a tar file) the way a container
//! runtime does: every blob checked against its digest and size, the config's diff_ids
//! against the uncompressed layers, then the layers unpacked in order into a root
//! filesystem. Written from the OCI image spec, independently of the script that builds
//! the archive.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use sha2::{Digest, Sha256};

const INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An unpacked image.
pub struct Image {
    /// The image config (`config.User`, `config.Entrypoint`, ...).
    pub config: Value,
    /// The unpacked root filesystem.
    pub rootfs: PathBuf,
    /// The image name Docker's `manifest.json` tags it with.
    pub repo_tag: String,
}

/// Checks the archive at `archive` and unpacks its one image into `dest/rootfs`.
pub fn unpack(archive: &Path, dest: &Path) -> anyhow::Result<Image> {
    let files = read_tar(archive)?;
    let layout: Value = json(&files, "oci-layout")?;
    ensure!(
        layout["imageLayoutVersion"] == "1.0.0",
        "oci-layout: {layout}"
    );
    let index: Value = json(&files, "index.json")?;
    ensure!(
        index["schemaVersion"] == 2,
        "index.json schemaVersion: {index}"
    );
    if let Some(t) = index.get("mediaType") {
        ensure!(t == INDEX, "index.json mediaType {t}");
    }
    let manifests = index["manifests"]
        .as_array()
        .context("index.json: no manifests")?;
    ensure!(
        manifests.len() == 1,
        "index.json: {} manifests, want 1",
        manifests.len()
    );
    let manifest: Value = serde_json::from_slice(blob(&files, &manifests[0], MANIFEST)?)
        .context("parsing the manifest")?;
    ensure!(manifest["schemaVersion"] == 2, "manifest: {manifest}");
    let config_bytes = blob(&files, &manifest["config"], CONFIG)?;
    let config: Value = serde_json::from_slice(config_bytes).context("parsing the config")?;
    let layers = manifest["layers"]
        .as_array()
        .context("manifest: no layers")?;
    let diff_ids = config["rootfs"]["diff_ids"]
        .as_array()
        .context("config: no rootfs.diff_ids")?;
    ensure!(
        config["rootfs"]["type"] == "layers",
        "config rootfs: {}",
        config["rootfs"]
    );
    ensure!(
        diff_ids.len() == layers.len(),
        "{} diff_ids for {} layers",
        diff_ids.len(),
        layers.len()
    );

    let rootfs = dest.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let compressed = blob(&files, layer, LAYER_GZIP)?;
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(compressed)
            .read_to_end(&mut tar)
            .context("gunzipping a layer")?;
        let want = diff_id.as_str().context("diff_id is not a string")?;
        ensure!(
            want == format!("sha256:{}", sha256(&tar)),
            "the layer {} does not match its diff_id {want}",
            layer["digest"]
        );
        unpack_layer(&tar, &rootfs)?;
    }

    // Docker's manifest.json (for `docker load`) names the same config and layers.
    let docker: Value = json(&files, "manifest.json")?;
    let entry = &docker[0];
    let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
    ensure!(
        entry["Config"] == format!("blobs/sha256/{}", hex(config_digest)),
        "manifest.json Config {} is not the config {config_digest}",
        entry["Config"]
    );
    let docker_layers: Vec<String> = layers
        .iter()
        .map(|l| {
            format!(
                "blobs/sha256/{}",
                hex(l["digest"].as_str().unwrap_or_default())
            )
        })
        .collect();
    ensure!(
        entry["Layers"] == serde_json::json!(docker_layers),
        "manifest.json Layers {} are not the manifest's layers",
        entry["Layers"]
    );
    let repo_tag = entry["RepoTags"][0]
        .as_str()
        .context("manifest.json: no RepoTags")?
        .to_owned();
    Ok(Image {
        config,
        rootfs,
        repo_tag,
    })
}

fn read_tar(path: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes)?;
        files.insert(name, bytes);
    }
    Ok(files)
}

fn json(files: &HashMap<String, Vec<u8>>, name: &str) -> anyhow::Result<Value> {
    let bytes = files
        .get(name)
        .with_context(|| format!("the archive has no {name}"))?;
    serde_json::from_slice(bytes).with_context(|| format!("parsing {name}"))
}

/// The blob a descriptor points at, checked against its media type, digest and size.
fn blob<'a>(
    files: &'a HashMap<String, Vec<u8>>,
    descriptor: &Value,
    media_type: &str,
) -> anyhow::Result<&'a [u8]> {
    ensure!(
        descriptor["mediaType"] == media_type,
        "descriptor {descriptor}: want mediaType {media_type}"
    );
    let digest = descriptor["digest"]
        .as_str()
        .with_context(|| format!("descriptor {descriptor}: no digest"))?;
    let Some(hex_digest) = digest.strip_prefix("sha256:") else {
        bail!("descriptor {descriptor}: not a sha256 digest");
    };
    let bytes = files
        .get(&format!("blobs/sha256/{hex_digest}"))
        .with_context(|| format!("the archive has no blob {digest}"))?;
    ensure!(
        sha256(bytes) == hex_digest,
        "blob {digest} does not match its digest"
    );
    ensure!(
        descriptor["size"].as_u64() == Some(bytes.len() as u64),
        "blob {digest} is {} bytes, its descriptor says {}",
        bytes.len(),
        descriptor["size"]
    );
    Ok(bytes)
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unpacks one layer as a runtime does: owners and modes kept, nothing outside `rootfs`.
/// The images here have one layer, so whiteout files (deletions) are refused, not applied.
fn unpack_layer(tar_bytes: &[u8], rootfs: &Path) -> anyhow::Result<()> {
    let mut archive = tar::Archive::new(tar_bytes);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        ensure!(
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".wh.")),
            "whiteout entry {} in a single-layer image",
            path.display()
        );
        ensure!(
            entry.unpack_in(rootfs)?,
            "layer entry {} points outside the root filesystem",
            path.display()
        );
    }
    Ok(())
}
