# syntax=docker/dockerfile:1.7
# jetrun: the `jetrun` binary (every command, the ingest Lambda host, the ECS runner) and
# `jetrun-ecs-bridge` (the task-state Lambda), built with the production features, in one
# image that runs as a non-root user. Multi-arch: `docker buildx build --platform
# linux/arm64,linux/amd64 ...` (see `just image`); Rust cross-compiles for the target
# platform, so the build stage runs natively on the build host (no emulation).

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
ARG TARGETARCH
# The production features: lambda (ingest's Lambda host), ecs (ECS runner and the
# ecs-service autoscale backend), otel (OTLP traces).
ARG FEATURES="lambda,ecs,otel"
RUN set -eux; \
    case "$TARGETARCH" in \
      amd64) triple=x86_64-unknown-linux-gnu; gcc=gcc-x86-64-linux-gnu; dpkg_arch=amd64 ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gcc=gcc-aarch64-linux-gnu; dpkg_arch=arm64 ;; \
      *) echo "unsupported TARGETARCH=$TARGETARCH" >&2; exit 1 ;; \
    esac; \
    apt-get update; \
    apt-get install -y --no-install-recommends "$gcc" "libc6-dev-${dpkg_arch}-cross" cmake clang pkg-config; \
    rm -rf /var/lib/apt/lists/*; \
    rustup target add "$triple"; \
    echo "$triple" > /triple
ENV CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER=x86_64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
    CC_x86_64_unknown_linux_gnu=x86_64-linux-gnu-gcc
WORKDIR /src
COPY . .
# Caches keep the registry and target dir between builds; the binaries are copied out
# of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target,id=jetrun-target-${TARGETARCH} \
    set -eux; triple=$(cat /triple); \
    cargo build --release --locked --target "$triple" -p jetrun --features "$FEATURES"; \
    cargo build --release --locked --target "$triple" -p jetrun-ecs-bridge --features lambda,otel; \
    mkdir -p /out; \
    cp "target/$triple/release/jetrun" "target/$triple/release/jetrun-ecs-bridge" /out/

FROM debian:${DEBIAN}-slim AS runtime
# ca-certificates: TLS to AWS, GitHub and HTTP callbacks; tini: PID 1 that forwards
# SIGTERM so `jetrun` drains.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates tini; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 jetrun; \
    useradd --system --uid 10001 --gid jetrun --home-dir /var/lib/jetrun --shell /usr/sbin/nologin jetrun; \
    install -d -o jetrun -g jetrun -m 0750 /var/lib/jetrun /etc/jetrun
COPY --from=build /out/jetrun /out/jetrun-ecs-bridge /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/jetrun
ENV JETRUN_DATA_DIR=/var/lib/jetrun \
    JETRUN_LOG_FORMAT=json
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/jetrun"]
CMD ["--help"]
