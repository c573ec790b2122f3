#!/bin/sh
# PostgreSQL container entrypoint (platform.Dockerfile, target `postgresql`): initialise an empty
# volume once (password auth, the password from PGPASSWORD via a temporary file that is removed),
# create PGDATABASE owned by PGUSER, then exec postgres as PID 1 (SIGTERM = smart shutdown).
set -eu
: "${PGDATA:?}" "${PGUSER:?}" "${PGPASSWORD:?PGPASSWORD must come from a Secret}" "${PGDATABASE:=$PGUSER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$PGPASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$PGUSER" --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8
    rm -f "$pwfile"
    # Pod network clients, password (scram) only; the NetworkPolicy decides who may connect at all.
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    if [ "$PGDATABASE" != "postgres" ]; then
        echo "CREATE DATABASE \"$PGDATABASE\";" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp -c "port=${PGPORT:-5432}"
