#!/usr/bin/env bash
# Team mode without Docker: PostgreSQL and a Prefect server on 127.0.0.1, from Debian and PyPI packages.
#
#   infra/server.sh start    # (make server) initialise on first use, start both, wait until healthy
#   infra/server.sh status   # what runs, and the PREFECT_API_URL to use
#   infra/server.sh stop     # (make server-stop) stop both; the data stays for the next start
#
# Needs PostgreSQL's server binaries (Debian: apt-get install postgresql; found on PATH or in
# /usr/lib/postgresql/<version>/bin) and prefect in .venv (make venv). Both listen on loopback only.
#
# Security: PostgreSQL has a random password (in $DAPT_SERVER_DIR/pg_password, mode 0600). The Prefect
# API has no authentication of its own: on 127.0.0.1 only users of this machine reach it, and anyone
# who reaches it can start flow runs (code runs on the workers) and read their logs. To expose it
# (DAPT_PREFECT_HOST=0.0.0.0), set PREFECT_SERVER_API_AUTH_STRING=user:password: Prefect's basic auth
# then guards the API and UI (the health check stays open), and every client (workers, `dapt run`
# against it, `prefect deploy`) needs PREFECT_API_AUTH_STRING set to the same. Basic auth sends the
# password with every request: put TLS in front (a reverse proxy) beyond a trusted network. This
# script refuses a non-loopback address without it.
# Settings (environment):
#   DAPT_SERVER_DIR     state: Prefect server log, pids, the database password (default .server/)
#   DAPT_PG_DATA        PostgreSQL data folder (default $DAPT_SERVER_DIR/pgdata); as root, the server
#                       runs as user postgres, which must be able to reach this folder
#   DAPT_PG_PORT        PostgreSQL port (default 5433, off the system PostgreSQL's 5432)
#   DAPT_PREFECT_PORT   Prefect API and UI port (default 4200)
#   DAPT_PREFECT_HOST   address the Prefect server listens on (default 127.0.0.1); another one needs
#                       PREFECT_SERVER_API_AUTH_STRING
#   PREFECT_SERVER_API_AUTH_STRING   user:password: basic auth on the Prefect API and UI (Prefect's own setting)
#   DAPT_PYTHON         the Python with prefect installed (default .venv/bin/python)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${DAPT_SERVER_DIR:-$ROOT/.server}"
PGDATA="${DAPT_PG_DATA:-$STATE/pgdata}"
PG_PORT="${DAPT_PG_PORT:-5433}"
PREFECT_PORT="${DAPT_PREFECT_PORT:-4200}"
PREFECT_HOST="${DAPT_PREFECT_HOST:-127.0.0.1}"
PY="${DAPT_PYTHON:-$ROOT/.venv/bin/python}"
API_URL="http://127.0.0.1:$PREFECT_PORT/api"
# Set but empty would make Prefect demand an empty password that no client sends: treat it as unset.
[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ] || unset PREFECT_SERVER_API_AUTH_STRING

die() { echo "infra/server.sh: $*" >&2; exit 1; }

pg_bin() {
    # initdb and pg_ctl: on PATH, else Debian's versioned folder (the newest one).
    if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
        return
    fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
    [ -n "$found" ] && [ -x "$found/initdb" ] || die "PostgreSQL server binaries not found (initdb, pg_ctl). Install them: sudo apt-get install postgresql"
    echo "$found"
}

# PostgreSQL refuses to run as root: then every PostgreSQL command runs as user postgres.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

db_url() {
    echo "postgresql+asyncpg://prefect:$(cat "$STATE/pg_password")@127.0.0.1:$PG_PORT/prefect"
}

pg_start() {
    local bin
    bin="$(pg_bin)"
    mkdir -p "$STATE"
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        mkdir -p "$PGDATA"
        [ "$(id -u)" = 0 ] && chown postgres: "$PGDATA"
        as_pg test -w "$PGDATA" || die "$PGDATA: not writable by $(as_pg id -un); set DAPT_PG_DATA to a folder it can reach (e.g. under /var/lib or /tmp)"
        umask 077
        "$PY" -c 'import secrets; print(secrets.token_hex(16))' >"$STATE/pg_password"
        local pwfile
        pwfile="$(mktemp)"  # outside PGDATA, which initdb wants empty
        cp "$STATE/pg_password" "$pwfile"
        [ "$(id -u)" = 0 ] && chown postgres: "$pwfile"
        # Password authentication even on loopback: other users of this machine must not get in.
        if ! as_pg "$bin/initdb" -D "$PGDATA" -U prefect --pwfile="$pwfile" -A scram-sha-256 -E UTF8 >"$STATE/initdb.log" 2>&1; then
            rm -f "$pwfile"
            die "initdb failed, see $STATE/initdb.log"
        fi
        rm -f "$pwfile"
    fi
    if as_pg "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        echo "PostgreSQL already running ($PGDATA)"
    else
        as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PGDATA" start >/dev/null \
            || die "PostgreSQL did not start, see $PGDATA/server.log"
        echo "PostgreSQL on 127.0.0.1:$PG_PORT ($PGDATA)"
    fi
    # The database Prefect uses (initdb made only `postgres`); asyncpg comes with prefect.
    DAPT_PG_PASSWORD="$(cat "$STATE/pg_password")" "$PY" - "$PG_PORT" <<'PYEOF'
import asyncio, os, sys
import asyncpg

async def main(port):
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="prefect", password=os.environ["DAPT_PG_PASSWORD"], database="postgres")
    if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = 'prefect'"):
        await conn.execute("CREATE DATABASE prefect")
    await conn.close()

asyncio.run(main(int(sys.argv[1])))
PYEOF
}

prefect_healthy() {
    "$PY" -c "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('$API_URL/health', timeout=2).status == 200 else 1)" 2>/dev/null
}

loopback() {
    case "$1" in 127.*|localhost|::1) return 0 ;; *) return 1 ;; esac
}

prefect_start() {
    if [ -f "$STATE/prefect.pid" ] && kill -0 "$(cat "$STATE/prefect.pid")" 2>/dev/null; then
        echo "Prefect server already running (pid $(cat "$STATE/prefect.pid"))"
        return
    fi
    prefect_healthy && die "something already answers on $API_URL; stop it, or set DAPT_PREFECT_PORT"
    PREFECT_API_DATABASE_CONNECTION_URL="$(db_url)" PREFECT_SERVER_ANALYTICS_ENABLED=false \
        nohup "$PY" -m prefect server start --host "$PREFECT_HOST" --port "$PREFECT_PORT" >"$STATE/prefect.log" 2>&1 &
    echo $! >"$STATE/prefect.pid"
    for _ in $(seq 1 180); do
        prefect_healthy && { echo "Prefect server on $API_URL (log $STATE/prefect.log)"; return; }
        kill -0 "$(cat "$STATE/prefect.pid")" 2>/dev/null || die "Prefect server exited, see $STATE/prefect.log"
        sleep 1
    done
    die "Prefect server not healthy after 180 s, see $STATE/prefect.log"
}

stop() {
    if [ -f "$STATE/prefect.pid" ]; then
        local pid
        pid="$(cat "$STATE/prefect.pid")"
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
            echo "Prefect server stopped"
        fi
        rm -f "$STATE/prefect.pid"
    fi
    if [ -f "$PGDATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
        as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
        echo "PostgreSQL stopped"
    fi
}

case "${1:-}" in
    start)
        if ! loopback "$PREFECT_HOST" && [ -z "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then
            die "DAPT_PREFECT_HOST=$PREFECT_HOST would expose the Prefect API, which has no authentication of its own: set PREFECT_SERVER_API_AUTH_STRING=user:password (and PREFECT_API_AUTH_STRING to the same on every client), or listen on 127.0.0.1"
        fi
        [ -x "$PY" ] || die "$PY not found: run make venv first (or set DAPT_PYTHON)"
        pg_start
        prefect_start
        echo
        echo "Point Prefect at it (this shell, or for good: prefect config set PREFECT_API_URL=$API_URL):"
        echo "  export PREFECT_API_URL=$API_URL"
        if [ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]; then
            echo "  export PREFECT_API_AUTH_STRING=...   # the same user:password as PREFECT_SERVER_API_AUTH_STRING (basic auth is on)"
        else
            echo "(no authentication: listening on $PREFECT_HOST only)"
        fi
        ;;
    stop) stop ;;
    status)
        if [ -f "$PGDATA/PG_VERSION" ] && as_pg "$(pg_bin)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then echo "PostgreSQL: running on 127.0.0.1:$PG_PORT"; else echo "PostgreSQL: stopped"; fi
        if prefect_healthy; then echo "Prefect server: healthy on $API_URL"; else echo "Prefect server: not answering on $API_URL"; fi
        ;;
    *) die "usage: infra/server.sh start|stop|status" ;;
esac
