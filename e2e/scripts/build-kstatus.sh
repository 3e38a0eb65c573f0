#!/usr/bin/env bash
# Builds e2e/kstatus (the real sigs.k8s.io/cli-utils kstatus library run on AgentShards)
# with the Go module proxy, once, into a cache outside the repository keyed by the
# module's go.sum and sources. Prints the binary's path.
#
#   e2e/scripts/build-kstatus.sh          # build if missing, print the path
#   SCALE_AGENT_CACHE=/x e2e/scripts/build-kstatus.sh
set -euo pipefail

here=$(cd "$(dirname "$0")/../kstatus" && pwd)
command -v go >/dev/null || { echo "build-kstatus: Go is missing: install Go (https://go.dev/doc/install)" >&2; exit 1; }

key=$(cat "$here/go.mod" "$here/go.sum" "$here/main.go" "$0" | sha256sum | cut -c1-12)
cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
dest="$cache/kstatus-$key/kstatus"
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/kstatus.lock"
flock 9
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
tmp="$dest.tmp.$$"
mkdir -p "$(dirname "$dest")"
trap 'rm -f "$tmp"' EXIT
echo "build-kstatus: go build e2e/kstatus into $dest" >&2
cd "$here"
go build -trimpath -ldflags "-s -w" -o "$tmp" .
mv "$tmp" "$dest"
trap - EXIT
echo "$dest"
