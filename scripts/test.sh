#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lints and runs every test
# (unit, integration against real nats-server/runc/moto, end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "[test] cargo fmt --check" >&2
cargo fmt --all --check
echo "[test] cargo clippy (warnings are errors)" >&2
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# Where runc works (root, runc installed), OCI tests fail instead of skipping.
if [ "$(id -u)" = 0 ] && runc list >/dev/null 2>&1; then export JETRUN_REQUIRE_OCI=1; fi
echo "[test] cargo nextest run" >&2
cargo nextest run --workspace --all-features --locked --no-fail-fast "$@"
