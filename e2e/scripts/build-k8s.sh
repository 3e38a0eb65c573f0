#!/usr/bin/env bash
# Builds the test control plane's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) from their Go modules, once, into a cache outside the repository
# keyed by the Kubernetes version and the wrapper module's go.sum. Prints the bin folder.
#
#   e2e/scripts/build-k8s.sh          # build if missing, print the folder
#   SCALE_AGENT_CACHE=/x e2e/scripts/build-k8s.sh
set -euo pipefail

here=$(cd "$(dirname "$0")/../k8s" && pwd)
command -v go >/dev/null || { echo "build-k8s: Go is missing: install Go >= 1.26 (https://go.dev/doc/install)" >&2; exit 1; }

version=$(awk '$1=="k8s.io/kubernetes"{print $2; exit}' "$here/go.mod")
version=${version#v}
minor=$(echo "$version" | cut -d. -f2)
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$0" | sha256sum | cut -c1-12)
cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
dest="$cache/k8s-v$version-$key"
bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

built() { for b in "${bins[@]}"; do [ -x "$1/$b" ] || return 1; done; }
complete() { built "$dest/bin"; }
if complete; then echo "$dest/bin"; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9
if complete; then echo "$dest/bin"; exit 0; fi

export CGO_ENABLED=0 GOWORK=off GOFLAGS=-mod=mod GOTOOLCHAIN=local
tmp="$dest.tmp.$$"
rm -rf "$tmp"; mkdir -p "$tmp/bin"
trap 'rm -rf "$tmp"' EXIT
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
echo "build-k8s: building Kubernetes v$version control plane binaries into $dest" >&2
echo "build-k8s: the first build takes several minutes on 2 cores; later runs reuse it" >&2
cd "$here"
# One `go build` for all five: the packages they share compile once, and the Go tool
# overlaps one binary's link with the others' compiles.
echo "build-k8s: go build ${bins[*]} ..." >&2
start=$SECONDS
go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/" ./etcd \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  sigs.k8s.io/kwok/cmd/kwok
echo "build-k8s: done in $((SECONDS - start))s" >&2
built "$tmp/bin" || { echo "build-k8s: go build left out one of ${bins[*]}" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "$dest/bin"
