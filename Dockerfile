# syntax=docker/dockerfile:1
#
# AURA image: one binary, every role (`aura serve gateway|scheduler|worker|events`).
#
#   docker build -t aura:dev .
#   docker run --rm aura:dev --help
#
# Stage 1 builds `aura` in release mode; stage 2 is distroless (glibc, CA
# certificates, no shell, no package manager) running as uid/gid 65532.
# Protobufs are compiled by a pure-Rust compiler in build.rs: no protoc needed.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# .dockerignore lets through only what the build needs (Cargo.toml, Cargo.lock,
# build.rs, src/, proto/, crates/, services/, tests/, benches/, examples/, .cargo/ and
# the toolchain file). A new top-level folder the build reads must be added there.
COPY . .
# Cache mounts keep the registry and target dir between builds (BuildKit);
# the binary is copied out of the cached target dir before the layer ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin aura \
 && install -D -m 0755 target/release/aura /out/aura \
 && /out/aura --help >/dev/null

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=dev
LABEL org.opencontainers.image.title="aura" \
      org.opencontainers.image.description="AURA workflow-execution platform: gateway, scheduler, worker and events roles" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=builder /out/aura /usr/local/bin/aura
# distroless "nonroot": uid/gid 65532. Numeric so runAsNonRoot can verify it.
USER 65532:65532
# gRPC: gateway, scheduler, worker, events; then their Prometheus metrics ports.
EXPOSE 50051 50052 50053 50054 9101 9102 9103 9104
ENV AURA_LOG=info
ENTRYPOINT ["/usr/local/bin/aura"]
CMD ["--help"]
