#!/usr/bin/env bash
# CI: make PostgreSQL server binaries available to the storage tests, which start a throwaway cluster with them.
# Installs Debian's postgresql package only when no /usr/lib/postgresql/*/bin/postgres exists.
exec bash "$(dirname "$0")/debian-package.sh" postgresql \
    'compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null' \
    "ls -d /usr/lib/postgresql/*/bin | tr '\n' ' '"
