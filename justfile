# scale-agent tasks. `just up` starts the local environment, `just test` runs every test.

set shell := ["bash", "-euo", "pipefail", "-c"]

dev := justfile_directory() / ".dev"

# List the recipes.
default:
    @just --list

# Start everything locally: control plane + 3 target clusters, CRD, hub, nginx, operator,
# example shards and their agents; ends with `kubectl get agentshards -A`.
# SCALE_AGENT_HUB_REPLICAS=2 just up: two hub replicas behind nginx sharing PostgreSQL.
up: prereqs
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -f "{{dev}}/dev.pid" ] && kill -0 "$(cat "{{dev}}/dev.pid")" 2>/dev/null; then
        echo "already up (pid $(cat "{{dev}}/dev.pid")); run 'just down' first" >&2; exit 1
    fi
    mkdir -p "{{dev}}"
    # The control plane's Go build (its module downloads above all) runs beside cargo's.
    e2e/scripts/build-k8s.sh > "{{dev}}/build-k8s.log" 2>&1 &
    k8s=$!
    echo "building scale-agent and (first run only) the control plane (log: .dev/build-k8s.log) ..."
    cargo build -q --workspace --bins
    wait "$k8s" || { echo "building the control plane failed; last lines of .dev/build-k8s.log:" >&2; tail -n 30 "{{dev}}/build-k8s.log" >&2; exit 1; }
    rm -f "{{dev}}/ready"
    nohup setsid target/debug/scale-agent-dev up --dir "{{dev}}" > "{{dev}}/dev.log" 2>&1 &
    echo $! > "{{dev}}/dev.pid"
    echo "starting the control plane (log: .dev/dev.log) ..."
    for _ in $(seq 1 600); do
        [ -f "{{dev}}/ready" ] && break
        if ! kill -0 "$(cat "{{dev}}/dev.pid")" 2>/dev/null; then
            echo "the environment failed to start; last lines of .dev/dev.log:" >&2
            tail -n 30 "{{dev}}/dev.log" >&2; exit 1
        fi
        sleep 0.5
    done
    [ -f "{{dev}}/ready" ] || { echo "timed out; see .dev/dev.log" >&2; exit 1; }
    echo "up. Use it with:  . .dev/env"
    # The example shards settle (streaming, or stalled with a reason) within seconds.
    kubectl --kubeconfig "{{dev}}/kubeconfig" wait --for=condition=Reconciling=false \
        agentshards --all -A --timeout=120s >/dev/null || true
    kubectl --kubeconfig "{{dev}}/kubeconfig" get agentshards -A

# Stop everything `just up` started and check that no process is left behind.
down:
    #!/usr/bin/env bash
    set -uo pipefail
    if [ -f "{{dev}}/dev.pid" ]; then
        pid=$(cat "{{dev}}/dev.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$pid" 2>/dev/null || true
        rm -f "{{dev}}/dev.pid" "{{dev}}/ready"
    fi
    if [ -f "{{dev}}/run/pgids" ]; then
        while read -r g; do kill -KILL -- "-$g" 2>/dev/null || true; done < "{{dev}}/run/pgids"
    fi
    sleep 0.5
    if pgrep -f "{{dev}}/run" >/dev/null; then
        echo "processes left behind:" >&2; pgrep -af "{{dev}}/run" >&2; exit 1
    fi
    echo "down: no process left"

# Run every test: unit, golden, and end-to-end against the real control plane.
test: prereqs build-k8s
    @echo "building the binaries the end-to-end tests run ..."
    cargo build --workspace --bins
    @# The tests' build can rebuild a binary (dev-dependencies add features), so build it
    @# before the image: the image test checks the archive is not older than the binaries.
    cargo test --workspace --no-run
    @# The image test runs this archive (and its SBOM); a debug build spares a release build.
    scripts/build-oci-image.sh --profile debug
    cargo test --workspace --no-fail-fast

# Run only the end-to-end tests.
e2e: prereqs build-k8s
    cargo build --workspace --bins
    cargo test -p scale-agent-e2e --no-fail-fast

# System benchmarks on the real control plane with release builds; the report goes to
# bench-results/latest.{json,md}. Scale and selection flags follow `--`, e.g.
# `just bench -- --only initial_sync,reconnect --accounts 10,100` (`-- --help` lists them).
bench *ARGS: prereqs build-k8s
    #!/usr/bin/env bash
    set -euo pipefail
    args=({{ARGS}})
    if [ "${args[0]:-}" = "--" ]; then args=("${args[@]:1}"); fi
    # hub_ingest's events per second come from the criterion benchmark, run first
    # unless --only leaves hub_ingest out.
    only="${BENCH_ONLY:-}"
    for ((i = 0; i < ${#args[@]}; i++)); do
        case "${args[$i]}" in
            --only=*) only="${args[$i]#--only=}" ;;
            --only) only="${args[$((i + 1))]:-}" ;;
            --help|-h) only="none" ;;
        esac
    done
    cargo build --release --workspace --bins
    if [ -z "$only" ] || [[ ",$only," == *",hub_ingest,"* ]]; then
        export BENCH_INGEST_SINCE="$(date +%s)"
        cargo bench -p scale-agent-hub --bench ingest
    fi
    BENCH_COMMAND="just bench {{ARGS}}" SCALE_AGENT_PROFILE=release \
        cargo bench -p scale-agent-e2e --bench system -- "${args[@]}"

# Formatting and lints, as CI wants them.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate the checked-in CRD YAML from the Rust types.
crds:
    cargo run -q -p scale-agent-crds --bin crdgen -- crds/agentshards.scaleagent.dev.yaml

# Build the container image, with no container engine, into target/images/ (`just image debug`: from debug binaries).
image profile="release":
    #!/usr/bin/env bash
    set -euo pipefail
    # Output: target/images/scale-agent-<version>[-debug].oci.tar. Load it with `docker load -i`,
    # or push it with `skopeo copy oci-archive:<file> docker://<registry>/<name>:<tag>`.
    # The image is written by scripts/build-oci-image.sh with tar, gzip, coreutils, ldd and
    # python3 (the SBOM); it builds the executable itself, with cargo auditable.
    missing=()
    for tool in tar gzip sha256sum ldd python3; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing ${missing[*]} (Debian packages tar gzip coreutils libc-bin python3) ..."
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tar gzip coreutils libc-bin python3 >/dev/null
        else
            echo "missing: ${missing[*]} — install with: sudo apt-get install tar gzip coreutils libc-bin python3" >&2; exit 1
        fi
    fi
    case "{{profile}}" in
        release|debug) scripts/build-oci-image.sh --profile "{{profile}}" ;;
        *) echo "profile is release or debug" >&2; exit 1 ;;
    esac

# Build (once, cached outside the repository) the Kubernetes binaries of the test control plane.
build-k8s:
    @e2e/scripts/build-k8s.sh > /dev/null

# Check what `just up` and `just test` need, naming how to install what is missing.
prereqs:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=0
    need() { command -v "$1" >/dev/null || { echo "missing: $1 — install with: $2" >&2; missing=1; }; }
    need cargo "https://rustup.rs (curl ... | sh)"
    need go "Go >= 1.26 from https://go.dev/doc/install"
    need kubectl "https://kubernetes.io/docs/tasks/tools/ (or apt-get install kubectl)"
    need setsid "apt-get install util-linux"
    # nginx (with the stream module) is the load balancer of `just up` and the tests.
    if [ ! -x /usr/sbin/nginx ] || [ ! -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing nginx (Debian packages nginx, libnginx-mod-stream) ..."
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-stream >/dev/null
        else
            echo "missing: nginx with the stream module — install with: sudo apt-get install nginx libnginx-mod-stream" >&2
            missing=1
        fi
    fi
    # Lua 5.1 (the dialect Argo CD embeds) runs the Argo CD health check's test cases.
    if ! command -v lua5.1 >/dev/null; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing Lua 5.1 (Debian package lua5.1) ..."
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.1 >/dev/null
        else
            echo "missing: lua5.1 — install with: sudo apt-get install lua5.1" >&2
            missing=1
        fi
    fi
    # PostgreSQL is the store hub replicas share (`SCALE_AGENT_HUB_REPLICAS=2 just up`, the replica tests).
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo "installing PostgreSQL (Debian package postgresql) ..."
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        else
            echo "missing: PostgreSQL — install with: sudo apt-get install postgresql" >&2
            missing=1
        fi
    fi
    exit $missing

# Fuzz the hub's frame handling and the agent's config parser, each for FUZZ_SECONDS (default 60); not in CI.
fuzz:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    seconds="${FUZZ_SECONDS:-60}"
    cd fuzz
    for target in agent_config hub_frames; do
        echo "fuzzing $target for ${seconds}s (corpus fuzz/corpus/$target, crashes in fuzz/artifacts/$target) ..."
        mkdir -p "corpus/$target"
        # Checked-in seeds and the inputs of past findings are run first.
        seeds=()
        for dir in "seeds/$target" "regressions/$target"; do
            [ -d "$dir" ] && seeds+=("$dir")
        done
        cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- -max_total_time="$seconds"
    done
