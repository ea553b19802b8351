#!/usr/bin/env bash
# A throw-away PostgreSQL 15 cluster for the PostgreSQL store's tests (relay/src/store/postgres).
#
#   .ci/pg.sh start [ENV_FILE]   initdb into a fresh temporary directory, start the server on a
#                                free loopback port, print `export FORMICA_TEST_PG_URL=...` (and
#                                `export FORMICA_PG_DIR=...`, and `FORMICA_PG_BIN`, where PostgreSQL's
#                                programs are: tests that start a cluster of their own use them), and write the same lines to ENV_FILE
#                                when one is given.
#   .ci/pg.sh stop [DIR]         stop the cluster in DIR (default $FORMICA_PG_DIR) and remove DIR.
#
# The server runs as the `postgres` user (initdb refuses root), trusts local connections (a
# throw-away cluster on 127.0.0.1 and a socket in its own directory), and keeps fsync and
# synchronous_commit on: the store refuses to open on weaker settings, and the tests check that.
set -euo pipefail

# PostgreSQL 15 (what the store is tested on); another installed major version only when 15 is
# missing and cannot be installed (a distribution that packages another one).
PGBIN=/usr/lib/postgresql/15/bin

as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

install_if_missing() {
    if [ ! -x "$PGBIN/initdb" ]; then
        echo "pg.sh: installing postgresql-15" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15 >&2 \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >&2
    fi
    if [ ! -x "$PGBIN/initdb" ]; then
        PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
        [ -x "$PGBIN/initdb" ] || { echo "pg.sh: no PostgreSQL server could be installed" >&2; exit 1; }
        echo "pg.sh: PostgreSQL 15 is not available here; using $PGBIN" >&2
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    install_if_missing
    local dir port
    dir=$(mktemp -d /tmp/formica-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    as_postgres "$PGBIN/initdb" -D "$dir/data" --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        --username=postgres >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(free_port)
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
max_connections = 200
EOF
    as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >&2 \
        || { cat "$dir/server.log" >&2; exit 1; }
    local lines="export FORMICA_TEST_PG_URL='postgres://postgres@127.0.0.1:$port/postgres'
export FORMICA_PG_DIR='$dir'
export FORMICA_PG_BIN='$PGBIN'"
    echo "$lines"
    if [ -n "${1:-}" ]; then echo "$lines" >"$1"; fi
}

stop() {
    local dir=${1:-${FORMICA_PG_DIR:-}}
    [ -x "$PGBIN/pg_ctl" ] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "pg.sh stop: no cluster directory (give it or set FORMICA_PG_DIR)" >&2
        exit 1
    fi
    as_postgres "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    *) echo "usage: $0 start [ENV_FILE] | stop [DIR]" >&2; exit 2 ;;
esac
