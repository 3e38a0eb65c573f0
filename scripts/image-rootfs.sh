#!/usr/bin/env bash
# Assembles the root filesystem of the scale-agent container image: the three binaries,
# the shared libraries they load (as `ldd` names them), a passwd/group entry for the
# non-root user 65532, and the CA bundle (kubeconfigs of managed clusters may rely on
# public CAs). Nothing else: no shell, no package manager.
#
# Both image builds use it, so both images hold the same files: the Dockerfile (in its
# builder stage) and scripts/build-oci-image.sh (on the host, no container engine).
#
#   scripts/image-rootfs.sh BIN_DIR ROOTFS_DIR
#
# BIN_DIR holds scale-agent, scale-agent-operator and scale-agent-hub (e.g. target/release).
# ROOTFS_DIR must not exist yet. Run as root, the home folder is given to 65532 and /tmp
# gets mode 1777; otherwise the archive packer sets owners and modes itself.
set -euo pipefail

BINARIES=(scale-agent scale-agent-operator scale-agent-hub)
UID_GID=65532

die() { echo "image-rootfs: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 BIN_DIR ROOTFS_DIR"
bin_dir=$1
rootfs=$2
[ -e "$rootfs" ] && die "$rootfs exists; give a new folder"
for tool in ldd install; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install libc-bin coreutils)"
done

mkdir -p "$rootfs"/{usr/local/bin,etc/ssl/certs,home/nonroot,tmp}

# The binaries.
for b in "${BINARIES[@]}"; do
    [ -x "$bin_dir/$b" ] || die "$bin_dir/$b is missing; build it first (cargo build --release --bins)"
    install -m 0755 "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
done

# The shared libraries and the dynamic loader, at the paths ldd resolves them to (the
# loader's built-in search path includes them, so no ld.so.cache is needed). Copied
# through symlinks: the image holds the real files under the names the binaries ask for.
libs=$(for b in "${BINARIES[@]}"; do ldd "$bin_dir/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || die "ldd names no library; are the binaries dynamically linked ELF files?"
for lib in $libs; do
    [ -f "$lib" ] || die "ldd names $lib, which does not exist"
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    chmod 0755 "$rootfs$lib"
done

# Who 65532 is (log lines and libraries that look the user up), and how names resolve.
cat > "$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$UID_GID:$UID_GID:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<GROUP
root:x:0:
nonroot:x:$UID_GID:
GROUP
echo "hosts: files dns" > "$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs"/etc/{passwd,group,nsswitch.conf}

# Public CAs, for kubeconfigs of managed clusters (EKS, GKE, AKS) signed by them.
bundle=/etc/ssl/certs/ca-certificates.crt
if [ -f "$bundle" ]; then
    cp -L "$bundle" "$rootfs$bundle"
    chmod 0644 "$rootfs$bundle"
else
    echo "image-rootfs: warning: $bundle is missing (Debian: apt-get install ca-certificates); the image has no public CAs" >&2
fi

find "$rootfs" -type d -exec chmod 0755 {} +
chmod 1777 "$rootfs"/tmp
if [ "$(id -u)" = 0 ]; then
    chown "$UID_GID:$UID_GID" "$rootfs/home/nonroot"
fi
