#!/usr/bin/env bash
# Builds helm from its Go module (the Go module proxy), once, into a cache outside the
# repository keyed by its version. Prints the binary's path. The chart's end-to-end test
# (e2e/tests/install/helm.rs) installs charts/scale-agent with it.
#
#   e2e/scripts/build-helm.sh                 # build if missing, print the path
#   HELM_VERSION=v4.3.1 e2e/scripts/build-helm.sh
set -euo pipefail
. "$(dirname "$0")/go-cache.sh"

version=${HELM_VERSION:-v4.3.2}
build() { GOBIN="$1" go install -trimpath -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$version"; }
go_cached helm "helm-$version" build
