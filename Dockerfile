# syntax=docker/dockerfile:1.7
# tailscale-gateway: one static-ish binary on a distroless, non-root base.
#
#   docker build -t ghcr.io/tailscale-gateway/tailscale-gateway:v0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/tailscale-gateway/tailscale-gateway:v0.1.0 --push .
#
# That name and tag is what deploy/ references (a test keeps them equal, with Cargo.toml's
# version); to run your own build, push it elsewhere and point kustomize at it (README, Install).
# No protoc is needed: the protobuf code is generated and committed (tests/generated_protos.rs).

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Manifests first, so dependency downloads are cached across source edits.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
COPY crates ./crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin tailscale-gateway \
    && install -D -m 0755 target/dist/tailscale-gateway /out/tailscale-gateway

# glibc and libgcc only (rustls with ring: no OpenSSL). The nonroot tag runs as 65532:65532,
# the user deploy/deployment.yaml asks for.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tailscale-gateway" \
      org.opencontainers.image.description="Tailscale + Envoy Gateway on Kubernetes: webhooks, aggregated API, reconciler, Envoy Gateway extension" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0"
COPY --from=builder /out/tailscale-gateway /usr/local/bin/tailscale-gateway
USER 65532:65532
# HTTPS (webhooks, aggregated API, health, metrics) and the Envoy Gateway extension (gRPC).
EXPOSE 8443 5005
ENTRYPOINT ["/usr/local/bin/tailscale-gateway"]
CMD ["serve"]
