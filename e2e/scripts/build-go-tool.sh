#!/usr/bin/env bash
# Builds one of the small Go programs the end-to-end tests run (e2e/<name>/: kstatus,
# informer) with the Go module proxy, once, into a cache outside the repository keyed
# by the module's go.mod, go.sum and sources. Prints the binary's path.
#
#   e2e/scripts/build-go-tool.sh informer      # build if missing, print the path
#   SCALE_AGENT_CACHE=/x e2e/scripts/build-go-tool.sh kstatus
set -euo pipefail

name=${1:?usage: build-go-tool.sh <name of a folder of e2e/>}
here=$(cd "$(dirname "$0")/../$name" && pwd)
command -v go >/dev/null || { echo "build-go-tool: Go is missing: install Go (https://go.dev/doc/install)" >&2; exit 1; }

key=$(cat "$here/go.mod" "$here/go.sum" "$here"/*.go "$0" | sha256sum | cut -c1-12)
cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
dest="$cache/$name-$key/$name"
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/$name.lock"
flock 9
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
tmp="$dest.tmp.$$"
mkdir -p "$(dirname "$dest")"
trap 'rm -f "$tmp"' EXIT
echo "build-go-tool: go build e2e/$name into $dest" >&2
cd "$here"
go build -trimpath -ldflags "-s -w" -o "$tmp" .
mv "$tmp" "$dest"
trap - EXIT
echo "$dest"
