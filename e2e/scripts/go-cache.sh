# Sourced by the scripts that build Go programs for the tests (build-go-tool.sh,
# build-helm.sh): one cache outside the repository, one lock per program, one way to
# put a freshly built binary in place.
#
#   go_cached NAME SLOT BUILD...
#
# prints $cache/SLOT/NAME, running `BUILD... OUTPUT_DIR` first (under a lock, once) when
# it is not there yet. BUILD writes NAME into OUTPUT_DIR; a failed build leaves nothing.

go_cached() {
    local name=$1 slot=$2
    shift 2
    command -v go >/dev/null || { echo "$name: Go is missing: install Go (https://go.dev/doc/install)" >&2; return 1; }
    local cache=${SCALE_AGENT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/scale-agent}
    local dest="$cache/$slot/$name"
    if [ -x "$dest" ]; then echo "$dest"; return 0; fi
    mkdir -p "$cache"
    exec 9>"$cache/$name.lock"
    flock 9
    if [ -x "$dest" ]; then echo "$dest"; return 0; fi
    export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN=local
    local tmp
    tmp=$(mktemp -d "$cache/$name-build.XXXXXX")
    # shellcheck disable=SC2064 # the folder is known now
    trap "rm -rf '$tmp'" EXIT
    echo "$name: building into $dest" >&2
    "$@" "$tmp" >&2
    mkdir -p "$(dirname "$dest")"
    mv "$tmp/$name" "$dest"
    echo "$dest"
}
