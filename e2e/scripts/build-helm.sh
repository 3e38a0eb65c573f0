#!/usr/bin/env bash
# Builds helm from its Go module (the Go module proxy), once, into a cache outside the
# repository keyed by its version. Prints the binary's path. The chart's end-to-end test
# (e2e/tests/helm.rs) installs charts/scale-agent with it.
#
#   e2e/scripts/build-helm.sh                 # build if missing, print the path
#   HELM_VERSION=v4.3.1 e2e/scripts/build-helm.sh
set -euo pipefail

version=${HELM_VERSION:-v4.3.2}
command -v go >/dev/null || { echo "build-helm: Go is missing: install Go (https://go.dev/doc/install)" >&2; exit 1; }

cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
dest="$cache/helm-$version/helm"
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/helm.lock"
flock 9
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi

export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local
tmp=$(mktemp -d "$cache/helm-build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "build-helm: go install helm.sh/helm/v4/cmd/helm@$version into $dest" >&2
GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$version"
mkdir -p "$(dirname "$dest")"
mv "$tmp/helm" "$dest"
echo "$dest"
