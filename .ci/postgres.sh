#!/usr/bin/env bash
# CI: make PostgreSQL server binaries available to the storage tests, which start a throwaway cluster with them.
# Installs Debian's postgresql package only when no /usr/lib/postgresql/*/bin/postgres exists; quiet unless it fails.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    exit 0
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    as_root=(sudo)
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { "${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "postgres.sh: installing PostgreSQL failed" >&2
    exit 1
fi

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    echo "postgres.sh: postgresql is installed but no /usr/lib/postgresql/*/bin/postgres exists" >&2
    exit 1
fi
echo "installed $(ls -d /usr/lib/postgresql/*/bin | tr '\n' ' ')"
