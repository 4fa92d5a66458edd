#!/usr/bin/env bash
# CI: make Debian's Chromium available to the browser tests (tests/browser/), which drive it with Playwright through
# its executable path. Installs the chromium package only when no chromium is on the PATH.
exec bash "$(dirname "$0")/debian-package.sh" chromium 'command -v chromium >/dev/null' 'chromium --version'
