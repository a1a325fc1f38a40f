#!/usr/bin/env bash
# Brings the whole pipeline up on this machine: installs what is missing, builds, and runs
# `jetrun dev` (a managed nats-server, every function, the local OCI runner, HTTP on
# 127.0.0.1:8080). Extra arguments go to `jetrun dev`. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked -p jetrun
exec target/debug/jetrun dev "$@"
