# Everyday commands. Each script installs what it needs first (idempotently).

# Install nats-server, runc, busybox, moto (idempotent)
setup:
    bash scripts/setup.sh

# Bring the whole pipeline up on this machine
dev *ARGS:
    bash scripts/dev.sh {{ARGS}}

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
