#!/usr/bin/env bash
# Builds the scale-agent container image without a container engine: an OCI image
# archive (an OCI image layout in a tar file, plus Docker's manifest.json) holding the
# scale-agent executable (package scale-agent-cmd: the agent, operator and hub in one),
# built first with `cargo auditable build` so that it carries its crate list for
# scanners (scripts/cargo-auditable.sh installs cargo-auditable once, outside the
# repository), and its SBOM beside the archive.
#
#   scripts/build-oci-image.sh [--profile release|debug] [--out FILE]
#
# Defaults: --profile release, --out target/images/scale-agent-<version>.oci.tar
# (scale-agent-<version>-debug.oci.tar for debug builds, tagged v<version>-debug).
# The SBOM (CycloneDX JSON, scripts/sbom.py: exactly the crates compiled into the
# executable, as its embedded list names them) goes beside the archive, its name with
# .cdx.json for .oci.tar: target/images/scale-agent-<version>.cdx.json.
# IMAGE=<registry/name> changes the image name (default ghcr.io/scale-agent/scale-agent).
#
# The image has one layer (scripts/image-rootfs.sh: the executable and the operator's
# and hub's names as links to it, its shared libraries, passwd/group for 65532, the CA
# bundle), runs as 65532:65532, and its entrypoint is the agent (the operator starts
# agent pods with arguments only; the operator and hub Deployments set their command). The archive is reproducible: the
# same binaries and commit give the same digests (file times are the commit's time,
# owners and order are fixed, gzip stores no name or time).
#
# Load it with `docker load -i FILE`, `podman load -i FILE`, `kind load image-archive
# FILE`, or push it with `skopeo copy oci-archive:FILE docker://REGISTRY/NAME:TAG`.
set -euo pipefail

die() { echo "build-oci-image: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
profile=release
out=
while [ $# -gt 0 ]; do
    case $1 in
        --profile) profile=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        *) die "unknown argument $1 (usage: $0 [--profile release|debug] [--out FILE])" ;;
    esac
done
case $profile in release|debug) ;; *) die "--profile is release or debug, not $profile" ;; esac
for tool in tar gzip sha256sum ldd stat date python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install tar gzip coreutils libc-bin python3)"
done

version=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^version *=/ { print $2; exit }' "$root/Cargo.toml")
[ -n "$version" ] || die "no version in [workspace.package] of Cargo.toml"
repository=$(awk -F'"' '/^\[workspace.package\]/ { p = 1 } p && /^repository *=/ { print $2; exit }' "$root/Cargo.toml")
image=${IMAGE:-ghcr.io/scale-agent/scale-agent}
[[ $image =~ ^[a-z0-9][a-z0-9._/:-]*$ ]] || die "IMAGE=$image is not an image name (lower case, digits, . _ / : -)"
tag=v$version
suffix=
if [ "$profile" = debug ]; then tag=$tag-debug; suffix=-debug; fi
target_dir=${CARGO_TARGET_DIR:-$root/target}
out=${out:-$target_dir/images/scale-agent-$version$suffix.oci.tar}
bin_dir=$target_dir/$profile

case $(uname -m) in
    x86_64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) die "unsupported machine $(uname -m)" ;;
esac
revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)

# The executable, its crate list embedded (the .dep-v0 section) by cargo auditable.
auditable=$("$root/scripts/cargo-auditable.sh")
build=(auditable build --locked -p scale-agent-cmd)
if [ "$profile" = release ]; then build+=(--release); fi
echo "build-oci-image: cargo ${build[*]}" >&2
(cd "$root" && PATH="$(dirname "$auditable"):$PATH" cargo "${build[@]}")
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

work=$(mktemp -d "${TMPDIR:-/tmp}/scale-agent-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$root/scripts/image-rootfs.sh" "$bin_dir" "$work/rootfs"

# The layer: everything owned by root except the user's home, in name order, with one
# fixed time and no per-run PAX headers.
tar_opts=(--format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
    --sort=name --mtime="@$epoch" --numeric-owner -C "$work/rootfs")
mapfile -t top < <(cd "$work/rootfs" && ls -A | sort)
tar "${tar_opts[@]}" --owner=0 --group=0 --exclude=./home/nonroot --exclude=home/nonroot \
    -cf "$work/layer.tar" "${top[@]}"
tar "${tar_opts[@]}" --owner=65532 --group=65532 -rf "$work/layer.tar" home/nonroot
diff_id=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
gzip -n -c "$work/layer.tar" > "$work/layer.tar.gz"
rm "$work/layer.tar"

blobs=$work/layout/blobs/sha256
mkdir -p "$blobs"
# Moves a file into blobs/sha256/<digest>; prints "<digest> <size>".
add_blob() {
    local digest size
    digest=$(sha256sum "$1" | cut -d' ' -f1)
    size=$(stat -c %s "$1")
    mv "$1" "$blobs/$digest"
    echo "$digest $size"
}
read -r layer_digest layer_size < <(add_blob "$work/layer.tar.gz")

cat > "$work/config.json" <<JSON
{"architecture":"$arch","os":"linux","created":"$created","config":{"User":"65532:65532","Entrypoint":["/usr/local/bin/scale-agent"],"Env":["PATH=/usr/local/bin"],"WorkingDir":"/home/nonroot","Labels":{"org.opencontainers.image.title":"scale-agent","org.opencontainers.image.description":"scale-agent, scale-agent-operator and scale-agent-hub","org.opencontainers.image.version":"$version","org.opencontainers.image.revision":"$revision","org.opencontainers.image.source":"$repository","org.opencontainers.image.licenses":"Apache-2.0"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created":"$created","created_by":"scripts/build-oci-image.sh --profile $profile"}]}
JSON
read -r config_digest config_size < <(add_blob "$work/config.json")

cat > "$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}],"annotations":{"org.opencontainers.image.created":"$created","org.opencontainers.image.version":"$version","org.opencontainers.image.revision":"$revision"}}
JSON
read -r manifest_digest manifest_size < <(add_blob "$work/manifest.json")

layout=$work/layout
echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
cat > "$layout/index.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"annotations":{"io.containerd.image.name":"$image:$tag","org.opencontainers.image.ref.name":"$tag"}}]}
JSON
# What `docker load` reads (Docker before 25 knows no OCI layout).
cat > "$layout/manifest.json" <<JSON
[{"Config":"blobs/sha256/$config_digest","RepoTags":["$image:$tag"],"Layers":["blobs/sha256/$layer_digest"]}]
JSON

mkdir -p "$(dirname "$out")"
tar --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
    -C "$layout" -cf "$out.tmp" blobs index.json manifest.json oci-layout
mv "$out.tmp" "$out"

# The SBOM, beside the archive; cargo metadata adds the licenses when it can.
sbom=${out%.tar}
sbom=${sbom%.oci}.cdx.json
metadata=()
host=$(rustc -vV | sed -n 's/^host: //p')
if (cd "$root" && cargo metadata --format-version 1 --locked --offline --filter-platform "$host") \
    > "$work/metadata.json" 2>/dev/null; then
    metadata=("$work/metadata.json")
else
    echo "build-oci-image: warning: cargo metadata failed; the SBOM names no licenses" >&2
fi
python3 "$root/scripts/sbom.py" "$bin_dir/scale-agent" "$image:$tag" "$version" "$revision" \
    "$created" "${metadata[@]}" > "$sbom.tmp"
mv "$sbom.tmp" "$sbom"
echo "built $out: $image:$tag, manifest sha256:$manifest_digest, layer $((layer_size / 1048576)) MiB compressed; SBOM $sbom" >&2
