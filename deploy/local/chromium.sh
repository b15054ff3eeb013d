#!/usr/bin/env bash
# Make sure Debian's chromium is installed for the browser tests (Playwright drives it via
# executable_path=/usr/bin/chromium; we never download a browser).
#
#   bash deploy/local/chromium.sh          # install when missing (needs root + apt-get)
#   LOKET_CHROMIUM=/path/to/chromium ...   # use another binary, nothing is installed
#
# Exit codes: 0 = chromium is available; 1 = missing and we cannot install it (not root or
# no apt-get): the browser tests then skip themselves with a clear message.
set -euo pipefail

BIN="${LOKET_CHROMIUM:-/usr/bin/chromium}"

if [ -x "$BIN" ]; then
    echo "chromium: $("$BIN" --version 2>/dev/null || echo "$BIN")" >&2
    exit 0
fi

if [ "$(id -u)" != "0" ]; then
    echo "chromium.sh: $BIN missing and not running as root; install it with: sudo apt-get install -y chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: $BIN missing and apt-get not available; install chromium yourself" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "chromium.sh: installing Debian chromium (apt-get)" >&2
if ! apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
echo "chromium: $("$BIN" --version 2>/dev/null || echo "$BIN")" >&2
