#!/usr/bin/env bash
# Counts the statements the sa sends PostgreSQL per certificate, and what each costs there: a private cluster with
# pg_stat_statements, a `quarry dev --db` stack from DIR on a fresh database, a warm-up at 4 clients (WARM seconds,
# default 4; 65 lets autovacuum analyze the tables first), the statistics reset, then 10 s at 4 clients. Prints the
# load's CPU per certificate (PostgreSQL's processes summed), the statements per certificate, and each statement run
# at least once per two certificates with its calls per certificate and mean execution time (ms). Not part of the
# test command.
#   scripts/pg-statements.sh DIR      (DIR holds a release build's `quarry` and `quarry-dev`)
set -euo pipefail
[[ $# -eq 1 && -x $1/quarry && -x $1/quarry-dev ]] || { sed -n '2,8p' "$0" >&2; exit 64; }
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$1" && pwd)
work=$(mktemp -d /tmp/pg-statements.XXXX)
chmod 755 "$work"  # the cluster runs as the postgres user
dev=
cleanup() {
  [[ -n $dev ]] && kill -- -"$dev" 2>/dev/null && sleep 2
  bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
url=$(bash "$root/scripts/postgres.sh" start "$work/pg" 5442 2>/dev/null)
psql -q "$url" -c "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'" >/dev/null
bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1
url=$(bash "$root/scripts/postgres.sh" start "$work/pg" 5442 2>/dev/null)
psql -q "$url" -c "CREATE DATABASE quarry" >/dev/null
db=${url%/*}/quarry
psql -q "$db" -c "CREATE EXTENSION pg_stat_statements" >/dev/null
setsid "$build/quarry-dev" dev --data-dir "$work/data" --no-http01-responder --db "$db" >"$work/dev.out" 2>&1 &
dev=$!
for _ in $(seq 1 120); do [[ -s $work/data/stack.json ]] && break; sleep 0.5; done
[[ -s $work/data/stack.json ]] || { echo "pg-statements: quarry dev did not start; see $work/dev.out" >&2; exit 1; }
sleep 3
"$build/quarry" loadgen --stack "$work/data/stack.json" --clients 4 --duration-secs "${WARM:-4}" >/dev/null 2>&1
psql -q "$db" -c "SELECT pg_stat_statements_reset()" >/dev/null
postmaster=$(head -1 "$work/pg/data/postmaster.pid")
"$build/quarry" loadgen --stack "$work/data/stack.json" --clients 4 --duration-secs 10 \
  --processes quarry,postgres --under "$dev,$postmaster" >"$work/load.txt" 2>&1
certs=$(grep -oP '\d+(?= certificates)' "$work/load.txt" | head -1)
awk '/certificates/ {print} /^quarry sa / {print "the sa, ms per certificate: " $3}
     /^postgres/ {pg += $(NF-1)} /^all server processes/ {print "all, ms per certificate: " $4}
     END {printf "PostgreSQL, ms per certificate: %.2f\n", pg}' "$work/load.txt"
psql -At "$db" -c "SELECT 'statements per certificate: ' || round(sum(calls)::numeric / $certs, 2) FROM pg_stat_statements
  WHERE query NOT LIKE '%pg_stat_statements%'"
psql -At -F ' | ' "$db" -c "SELECT round(calls::numeric / $certs, 2), round(mean_exec_time::numeric, 3),
  left(regexp_replace(query, '\s+', ' ', 'g'), 100) FROM pg_stat_statements WHERE calls * 2 > $certs
  ORDER BY calls DESC, query"
