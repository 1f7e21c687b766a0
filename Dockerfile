# syntax=docker/dockerfile:1.7
# tailscale-gateway: one static-ish binary on a distroless, non-root base.
#
#   docker build -t tailscale-gateway:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/you/tailscale-gateway:0.1.0 --push .
#
# No system protoc is needed: build.rs compiles the extension protos with protox.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# Manifests first, so dependency downloads are cached across source edits.
COPY Cargo.toml Cargo.lock build.rs ./
COPY benches ./benches
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin tailscale-gateway \
    && install -D -m 0755 target/dist/tailscale-gateway /out/tailscale-gateway

# glibc and libgcc only (rustls with ring: no OpenSSL). The nonroot tag runs as 65532:65532,
# the user deploy/deployment.yaml asks for.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="tailscale-gateway" \
      org.opencontainers.image.description="Tailscale + Envoy Gateway on Kubernetes: webhooks, aggregated API, reconciler, Envoy Gateway extension" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/tailscale-gateway /usr/local/bin/tailscale-gateway
USER 65532:65532
# HTTPS (webhooks, aggregated API, health, metrics) and the Envoy Gateway extension (gRPC).
EXPOSE 8443 5005
ENTRYPOINT ["/usr/local/bin/tailscale-gateway"]
CMD ["serve"]
