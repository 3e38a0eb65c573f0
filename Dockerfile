# syntax=docker/dockerfile:1
# The scale-agent container image, for hosts with a container engine:
#
#   docker build -t ghcr.io/scale-agent/scale-agent:v0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
#
# VERSION (the workspace's version; a test keeps the default equal to it) and REVISION
# (the commit) become the image's org.opencontainers.image.version and .revision labels,
# as in the archive scripts/build-oci-image.sh writes. The executable is built with
# `cargo auditable`, so its crate list is embedded for scanners (`cargo audit bin`, syft,
# trivy, grype); `docker buildx build --sbom=true` writes an SBOM from it, as the
# script's scripts/sbom.py does beside the archive.
#
# Without one, `just image` builds the same image (same files, same user, same
# entrypoint) as an OCI archive: both use scripts/image-rootfs.sh.
#
# One image holds the three programs as one executable, /usr/local/bin/scale-agent (the
# scale-agent-cmd package: the agent, operator and hub share almost all their code), with
# scale-agent-operator and scale-agent-hub as links to it: it runs the program it is
# started as. So the image holds the shared code once: from release builds, its layer is
# 16.8 MB compressed (the executable 44.2 MB, 1.6 times the largest of the three
# programs' own binaries) where three binaries made 28.2 MB (76.5 MB, the largest alone
# 28.4 MB); from debug builds 31.8 MB where three made 55.2 MB. The operator's default agent image is its own (agents always
# match the operator that configures them), and there is one tag to mirror, scan and pin. The entrypoint is the
# agent, because the operator starts agent pods with arguments only; the operator and hub
# Deployments set `command`.

ARG RUST_VERSION=1.95
ARG CARGO_AUDITABLE_VERSION=0.7.7

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG CARGO_AUDITABLE_VERSION
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo install --locked "cargo-auditable@${CARGO_AUDITABLE_VERSION}"
WORKDIR /src
COPY . .
# The executable is copied out of the cached target folder within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo auditable build --release --locked -p scale-agent-cmd \
    && mkdir /out \
    && cp target/release/scale-agent /out/ \
    && scripts/image-rootfs.sh /out /rootfs

# No shell, no package manager: the executable and its links, its shared libraries,
# passwd/group, CAs.
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
COPY --from=build /rootfs/ /
COPY --from=build --chown=65532:65532 /rootfs/home/nonroot /home/nonroot
USER 65532:65532
WORKDIR /home/nonroot
ENV PATH=/usr/local/bin
ENTRYPOINT ["/usr/local/bin/scale-agent"]
LABEL org.opencontainers.image.title="scale-agent" \
      org.opencontainers.image.description="scale-agent, scale-agent-operator and scale-agent-hub" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/scale-agent/scale-agent" \
      org.opencontainers.image.licenses="Apache-2.0"
