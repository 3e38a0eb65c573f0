#!/usr/bin/env bash
# Assembles the root filesystem of the scale-agent container image: the one executable
# (`scale-agent`: the agent, operator and hub, chosen by the name it runs as) and the two
# other names as symbolic links to it, the shared libraries it loads (as `ldd` names
# them), a passwd/group entry for the non-root user 65532, and the CA bundle (kubeconfigs
# of managed clusters may rely on public CAs). Nothing else: no shell, no package manager.
#
# Both image builds use it, so both images hold the same files: the Dockerfile (in its
# builder stage) and scripts/build-oci-image.sh (on the host, no container engine).
#
#   scripts/image-rootfs.sh BIN_DIR ROOTFS_DIR
#
# BIN_DIR holds the scale-agent executable built by the scale-agent-cmd package (e.g.
# target/release).
# ROOTFS_DIR must not exist yet. Run as root, the home folder is given to 65532 and /tmp
# gets mode 1777; otherwise the archive packer sets owners and modes itself.
set -euo pipefail

BINARY=scale-agent
# The names the manifests start the operator and the hub by (their `command`).
LINKS=(scale-agent-operator scale-agent-hub)
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

# The executable, and the other programs' names as links to it.
[ -x "$bin_dir/$BINARY" ] || die "$bin_dir/$BINARY is missing; build it first (cargo build --release -p scale-agent-cmd)"
install -m 0755 "$bin_dir/$BINARY" "$rootfs/usr/local/bin/$BINARY"
for name in "${LINKS[@]}"; do
    ln -s "$BINARY" "$rootfs/usr/local/bin/$name"
done

# The shared libraries and the dynamic loader, at the paths ldd resolves them to (the
# loader's built-in search path includes them, so no ld.so.cache is needed). Copied
# through symlinks: the image holds the real files under the names the binaries ask for.
libs=$(ldd "$bin_dir/$BINARY" |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || die "ldd names no library; is $BINARY a dynamically linked ELF file?"
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
