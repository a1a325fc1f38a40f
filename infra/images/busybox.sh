#!/bin/sh
# Builds jetrun's built-in images (`busybox` and `host`) in the local image store.
#
# The busybox image is Debian's static busybox (package busybox-static, /bin/busybox)
# plus one symlink per applet. Idempotent: images already present are left alone.
#
#   infra/images/busybox.sh [DATA_DIR]      # default: $JETRUN_DATA_DIR or .jetrun/dev
#   JETRUN=target/debug/jetrun infra/images/busybox.sh
set -eu

data_dir="${1:-${JETRUN_DATA_DIR:-.jetrun/dev}}"
jetrun="${JETRUN:-jetrun}"

static_busybox() {
    [ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 &&
        ! ldd /bin/busybox >/dev/null 2>&1
}

if ! static_busybox; then
    if [ "$(id -u)" != 0 ]; then
        echo "busybox-static is missing: run 'apt-get install busybox-static' as root" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends busybox-static
fi

exec "$jetrun" image setup --data-dir "$data_dir"
