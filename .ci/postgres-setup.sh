# Start a throwaway PostgreSQL on loopback for the tests; meant to be *sourced* by .ci/run:
#
#     source .ci/postgres-setup.sh
#
# Installs Debian's `postgresql` when missing, creates a cluster in a temporary folder owned by the
# unprivileged `postgres` user (or the current user when not root), starts it on 127.0.0.1 only,
# creates the database `interlock_test` and exports INTERLOCK_TEST_POSTGRES_DSN. Tests that need
# PostgreSQL skip, saying why, only when that variable is unset. Does not exit the calling shell.

_interlock_pg_setup() {
    local port="${INTERLOCK_PG_PORT:-55432}"
    local dir="${INTERLOCK_PG_DIR:-/tmp/interlock-pg-$port}"
    local run=()
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            echo "postgres-setup: installing Debian's postgresql package"
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
                || { echo "postgres-setup: apt-get install postgresql failed" >&2; return 1; }
        else
            echo "postgres-setup: postgresql is not installed and we are not root" >&2; return 1
        fi
    fi
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
        run=(runuser -u postgres --)
    fi
    if [ ! -f "$dir/PG_VERSION" ]; then
        rm -rf "$dir" && mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres "$dir"
        "${run[@]}" "$bin/initdb" -D "$dir" -A trust -U interlock -E UTF8 >"$dir.initdb.log" 2>&1 \
            || { echo "postgres-setup: initdb failed, see $dir.initdb.log" >&2; return 1; }
    fi
    if ! "${run[@]}" "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        "${run[@]}" "$bin/pg_ctl" -D "$dir" -w -t 60 -l "$dir/server.log" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=on" start \
            >/dev/null || { echo "postgres-setup: server did not start, see $dir/server.log" >&2; return 1; }
    fi
    "$bin/psql" -h 127.0.0.1 -p "$port" -U interlock -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'interlock_test'" | grep -q 1 \
        || "$bin/createdb" -h 127.0.0.1 -p "$port" -U interlock interlock_test \
        || { echo "postgres-setup: createdb failed" >&2; return 1; }
    export INTERLOCK_TEST_POSTGRES_DSN="postgresql://interlock@127.0.0.1:$port/interlock_test"
    echo "postgres-setup: PostgreSQL on 127.0.0.1:$port; INTERLOCK_TEST_POSTGRES_DSN=$INTERLOCK_TEST_POSTGRES_DSN"
}
_interlock_pg_setup || echo "postgres-setup: PostgreSQL tests will be skipped" >&2
unset -f _interlock_pg_setup
