# Everyday commands. Each script installs what it needs first (idempotently).

# Install nats-server, runc, busybox, moto (idempotent)
setup:
    bash scripts/setup.sh

# Bring the whole pipeline up on this machine
dev *ARGS:
    bash scripts/dev.sh {{ARGS}}

# The GitHub bisect bot end to end: a local repository with a planted regression, a
# signed "/bisect v1 main" webhook, `git bisect run` in a container, the answer posted to
# a local GitHub stand-in (examples/bisect, docs/rules.md)
demo:
    bash scripts/demo.sh

# Lint and run every test
test *ARGS:
    bash scripts/test.sh {{ARGS}}

# Lints only
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Benchmarks (release builds; see docs/benchmarks.md)
bench:
    cargo run --release -p jetrun-nats --example bench_store

# The deployable image (Dockerfile: multi-stage, non-root, production features) for
# linux/arm64 and linux/amd64, pushed to IMAGE (a multi-arch image cannot be loaded into
# the local daemon: for a local one, `just image jetrun:dev linux/amd64 --load`)
image IMAGE="jetrun:dev" PLATFORMS="linux/arm64,linux/amd64" OUTPUT="--push":
    docker buildx build --platform {{PLATFORMS}} -t {{IMAGE}} {{OUTPUT}} .

# The Lambda functions as Lambda zips (cargo-lambda, from PyPI: pip install cargo-lambda):
# target/lambda/jetrun-ecs-bridge/bootstrap.zip (the task-state bridge) and
# target/lambda/jetrun/bootstrap.zip (ingest: `jetrun serve` with the lambda feature)
lambda ARCH="--arm64":
    python3 -m pip install --quiet --disable-pip-version-check cargo-lambda
    cargo lambda build --release {{ARCH}} --output-format zip -p jetrun-ecs-bridge --features lambda,otel
    cargo lambda build --release {{ARCH}} --output-format zip -p jetrun --features lambda,ecs,otel --bin jetrun

# The ECS launch benchmark against moto (docs/benchmarks.md)
bench-ecs:
    cargo run --release -p jetrun-runner --features ecs --example bench_ecs_launch

# Fault injection, long form: bigger loads and storms, plus the soak (docs/reliability.md).
# JETRUN_CHAOS_SOAK_SECS sets the soak's length (default 300).
chaos *ARGS:
    cargo build -p jetrun
    JETRUN_CHAOS=long cargo test -p jetrun-e2e --test faults -- --nocapture --test-threads 1 {{ARGS}}
