#!/usr/bin/env bash
# Prints the path of cargo-auditable, installing it first (once: `cargo install --locked`,
# a few minutes) into a cache outside the repository, the way e2e/scripts/go-cache.sh
# keeps the Go tools: $SCALE_AGENT_CACHE, else $XDG_CACHE_HOME/scale-agent, else
# ~/.cache/scale-agent.
#
# `cargo auditable build` embeds the crate list of a binary in it (the `.dep-v0` section:
# zlib-compressed JSON naming every crate, its version and source), which `cargo audit
# bin`, syft, trivy and grype read, so a scanner knows what the image's executable holds
# without its Cargo.lock. scripts/build-oci-image.sh builds the image's executable so:
#
#   PATH="$(dirname "$(scripts/cargo-auditable.sh)"):$PATH" cargo auditable build ...
set -euo pipefail

VERSION=0.7.7

command -v cargo >/dev/null || { echo "cargo-auditable: cargo is missing: install Rust (https://rustup.rs)" >&2; exit 1; }
cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
dest=$cache/cargo-auditable-$VERSION
bin=$dest/bin/cargo-auditable
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache"
exec 9>"$cache/cargo-auditable.lock"
flock 9
if [ ! -x "$bin" ]; then
    tmp=$(mktemp -d "$cache/cargo-auditable-build.XXXXXX")
    # shellcheck disable=SC2064 # the folder is known now
    trap "rm -rf '$tmp'" EXIT
    echo "cargo-auditable: installing $VERSION into $dest (once)" >&2
    CARGO_TARGET_DIR="$tmp/target" cargo install --quiet --locked --root "$tmp/root" \
        "cargo-auditable@$VERSION" >&2
    rm -rf "$dest"
    mv "$tmp/root" "$dest"
fi
echo "$bin"
