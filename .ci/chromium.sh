#!/usr/bin/env bash
# CI: make Debian's Chromium available to the browser tests (tests/browser/), which drive it with Playwright through
# its executable path. Installs the chromium package only when no chromium is on the PATH; quiet unless it fails.
set -euo pipefail

if command -v chromium >/dev/null; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "chromium.sh: installing Chromium failed" >&2
    exit 1
fi

if ! command -v chromium >/dev/null; then
    echo "chromium.sh: the chromium package is installed but no chromium is on the PATH" >&2
    exit 1
fi
echo "installed $(chromium --version)"
