#!/usr/bin/env bash
# CI: install one Debian package when what the tests need from it is missing; quiet unless it fails.
# Usage: debian-package.sh PACKAGE CHECK WHAT
#   CHECK: a shell command that succeeds once the package's files are there; WHAT: a command that prints them.
set -euo pipefail
package="$1" check="$2" what="$3"

if eval "$check"; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "debian-package.sh: installing $package failed" >&2
    exit 1
fi

if ! eval "$check"; then
    echo "debian-package.sh: $package is installed but the check still fails: $check" >&2
    exit 1
fi
echo "installed $package: $(eval "$what")"
