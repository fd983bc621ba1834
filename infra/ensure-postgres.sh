#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries are installed, for the server test (tests/test_server.py) and
# `make server`. Installs Debian's `postgresql` with apt-get when they are missing and this can be done
# without a password (as root, or with passwordless sudo); otherwise says what to do and exits 0, and
# the server test is skipped (or fails, under DAPT_REQUIRE_SERVER_TEST=1 as in CI).
set -euo pipefail

have() {
    { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

have && exit 0
if ! command -v apt-get >/dev/null; then
    echo "ensure-postgres: PostgreSQL server binaries not found and no apt-get here; install PostgreSQL (initdb, pg_ctl) yourself" >&2
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "ensure-postgres: PostgreSQL server binaries not found; install them: sudo apt-get install postgresql" >&2
    exit 0
fi
echo "ensure-postgres: installing Debian's postgresql (apt-get)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have || { echo "ensure-postgres: apt-get install postgresql did not provide initdb" >&2; exit 1; }
