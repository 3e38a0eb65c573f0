#!/usr/bin/env bash
# Builds one of the small Go programs the end-to-end tests run (e2e/<name>/: kstatus,
# informer) with the Go module proxy, once, into a cache outside the repository keyed
# by the module's go.mod, go.sum and sources. Prints the binary's path.
#
#   e2e/scripts/build-go-tool.sh informer      # build if missing, print the path
#   SCALE_AGENT_CACHE=/x e2e/scripts/build-go-tool.sh kstatus
set -euo pipefail
. "$(dirname "$0")/go-cache.sh"

name=${1:?usage: build-go-tool.sh <name of a folder of e2e/>}
here=$(cd "$(dirname "$0")/../$name" && pwd)
key=$(cat "$here/go.mod" "$here/go.sum" "$here"/*.go "$0" | sha256sum | cut -c1-12)

build() { (cd "$here" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$1/$name" .); }
go_cached "$name" "$name-$key" build
