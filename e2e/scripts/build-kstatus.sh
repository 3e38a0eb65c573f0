#!/usr/bin/env bash
# Builds e2e/kstatus (the real sigs.k8s.io/cli-utils kstatus library run on AgentShards)
# with the Go module proxy, once, into a cache outside the repository keyed by the
# module's go.sum and sources. Prints the binary's path.
#
#   e2e/scripts/build-kstatus.sh          # build if missing, print the path
#   SCALE_AGENT_CACHE=/x e2e/scripts/build-kstatus.sh
exec "$(dirname "$0")/build-go-tool.sh" kstatus
