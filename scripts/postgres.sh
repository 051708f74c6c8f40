#!/usr/bin/env bash
# Starts (or stops) a private PostgreSQL cluster for the tests: data, socket and log under DIR, listening on
# 127.0.0.1:PORT only, trust authentication for the `postgres` user. Installs PostgreSQL from Debian when missing.
#   scripts/postgres.sh start DIR PORT   prints the administrative URL (the next free port if PORT is taken)
#   scripts/postgres.sh stop DIR
set -euo pipefail
action=$1 dir=$2 port=${3:-5433}
if [[ $(id -u) -eq 0 ]]; then as_postgres=(su postgres -s /bin/sh -c); else as_postgres=(sudo -u postgres /bin/sh -c); fi

bin_dir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1; }

case $action in
  start)
    if [[ -z $(bin_dir) ]]; then
      if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
      "${sudo[@]}" apt-get update -qq >&2
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
    fi
    bin=$(bin_dir)
    for _ in $(seq 1 20); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
      port=$((port + 1))
    done
    mkdir -p "$dir"
    chown postgres "$dir" 2>/dev/null || true
    if [[ ! -d $dir/data ]]; then
      "${as_postgres[@]}" "$bin/initdb -D '$dir/data' -A trust -U postgres -E UTF8" >"$dir/initdb.log" 2>&1
    fi
    "${as_postgres[@]}" "$bin/pg_ctl -D '$dir/data' -l '$dir/log' -o \"-p $port -k '$dir' -c listen_addresses=127.0.0.1 -c fsync=off\" -w start" >&2
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    bin=$(bin_dir)
    [[ -d $dir/data ]] && "${as_postgres[@]}" "$bin/pg_ctl -D '$dir/data' -m fast stop" >&2 || true
    ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 64 ;;
esac
