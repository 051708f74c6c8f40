#!/bin/sh
# First start: a cluster whose superuser is `quarry`, trusted on the stack's network only (a developer stack, never
# a deployment), and the `quarry` database the sa migrates.
set -eu
bin=/usr/lib/postgresql/15/bin
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    "$bin/initdb" -D "$PGDATA" -U quarry --auth=trust --encoding=UTF8 >/dev/null
    echo "CREATE DATABASE quarry;" | "$bin/postgres" --single -D "$PGDATA" postgres >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -p "$PGPORT" -c "listen_addresses=$PGLISTEN" -c unix_socket_directories=/tmp
