#!/usr/bin/env bash
# The side-by-side benchmark: Quarry (`quarry dev` on SQLite, then on PostgreSQL) and Pebble (Debian's package, its
# random validation sleeps and nonce rejection off) each take `quarry loadgen` at 1, 4, 16 and 64 clients, one after
# another in one run on loopback, and the results become BENCHMARKS.md. `--only quarry-replicas` adds (or runs alone)
# `quarry dev --replicas 2` on SQLite, `quarry-replicas-postgres` the same on PostgreSQL. Pebble, when asked for with
# Quarry, runs beside the first Quarry target: its load at each client count follows Quarry's at once.
#   scripts/bench.sh [--clients "1 4 16 64"] [--duration SECONDS] [--out BENCHMARKS.md] [--only quarry-sqlite,...]
#                    [--loadgen-args "--honour-retry-after ..."]   (added to every loadgen run, every target)
# Builds the release binary first (or uses $QUARRY_BIN); installs pebble and PostgreSQL from Debian when missing.
# Not part of the test command: it takes about (targets × client counts × duration) plus a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

clients="1 4 16 64"
duration=20
out=BENCHMARKS.md
only="quarry-sqlite,quarry-postgres,pebble"
loadgen_args=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --loadgen-args) loadgen_args=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 64 ;;
  esac
done

if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
if ! command -v pebble >/dev/null; then
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq pebble openssl >/dev/null
fi
if [[ -z ${QUARRY_BIN:-} ]]; then
  cargo build --release -p quarry -p quarry-devtools
  QUARRY_BIN=$root/target/release/quarry
fi

work=$(mktemp -d /tmp/quarry-bench.XXXX)
chmod 755 "$work" # PostgreSQL, run as its own user, keeps its cluster in here
server_pid=
pg_dir=
cleanup() {
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  pkill -f "pebble-challtestsrv -management 127.0.0.1:8155" 2>/dev/null || true
  [[ -n $pg_dir ]] && bash scripts/postgres.sh stop "$pg_dir" >/dev/null 2>&1
  true
}
trap 'cleanup; stop_pebble 2>/dev/null' EXIT
echo "bench: results in $work" >&2

# Waits (bounded) until the directory answers, while the server process `pid` runs.
wait_directory() {
  local url=$1 ca=$2 pid=$3
  for _ in $(seq 1 120); do
    curl -fsS --cacert "$ca" "$url" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { echo "bench: the server exited; see $work" >&2; return 1; }
    sleep 0.5
  done
  echo "bench: $url did not answer in 60 s" >&2
  return 1
}

# Resident memory (KiB) of every process of the target, idle, as JSON lines: {"name":…, "rss_kib":…}.
idle_rss() {
  local pattern=$1 target=$2
  for pid in $(pgrep -f "$pattern"); do
    [[ -r /proc/$pid/status ]] || continue
    name=$(tr '\0' ' ' <"/proc/$pid/cmdline" | awk '{n=split($1,p,"/"); s=p[n]; if ($2 !~ /^-/ && $2 != "") s=s" "$2; print s}')
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    printf '{"target":"%s","name":"%s","rss_kib":%s}\n' "$target" "$name" "${rss:-0}"
  done >>"$work/idle.jsonl"
}

# One load of `target` at `c` clients; the remaining arguments say where and what to measure.
run_load() {
  local target=$1 c=$2; shift 2
  echo "bench: $target, $c clients, ${duration} s" >&2
  # shellcheck disable=SC2086 # the extra arguments are words
  "$QUARRY_BIN" loadgen "$@" $loadgen_args --clients "$c" --duration-secs "$duration" --idle-secs 10 \
    --json "$work/$target-$c.json" \
    >"$work/$target-$c.txt" 2>&1 || echo "bench: $target at $c clients issued nothing; see $work/$target-$c.txt" >&2
  tail -n 20 "$work/$target-$c.txt" >&2
}

# Every client count in turn; when Pebble runs beside (`pebble_beside`), its load at the same count follows each
# one, so that the two are measured minutes apart at most: this shared machine's speed drifts by a third within
# minutes, and the goals are ratios between the two.
run_loads() {
  local target=$1; shift
  for c in $clients; do
    run_load "$target" "$c" "$@"
    if [[ $pebble_beside == yes ]]; then
      run_load pebble "$c" "$pebble_url" --tls-ca "$work/pebble/ca.pem" --processes pebble --under "$pebble_pid"
    fi
  done
}

stack_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1/stack.json" "$2"; }

run_quarry() {
  local target=$1; shift
  local data=$work/$target
  # Metrics on, as in every hosted environment (they cost CPU too), and read by loadgen to count gRPC calls.
  "$QUARRY_BIN" dev --data-dir "$data" --no-http01-responder --metrics-base-port 19400 "$@" \
    >"$work/$target.out" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 240); do [[ -s $data/stack.json ]] && break; sleep 0.5; done
  [[ -s $data/stack.json ]] || { echo "bench: quarry dev did not start; see $work/$target.out" >&2; return 1; }
  wait_directory "$(stack_field "$data" directory_url)" "$(stack_field "$data" tls_ca_pem)" "$server_pid"
  sleep 5
  idle_rss "$QUARRY_BIN(-dev)? (dev|nonce|sa|va|publisher|ca|crl-updater|ra|wfe)" "$target"
  # Only this stack's processes and its own PostgreSQL cluster's (the postmaster and its children): the load
  # generator recognises processes by name, and another cluster on the machine (the tests') would count too.
  local processes=quarry,quarry-dev under=$server_pid
  if [[ $target == quarry-postgres || $target == quarry-replicas-postgres ]]; then
    processes=quarry,quarry-dev,postgres
    under=$server_pid,$(head -n 1 "$pg_dir/data/postmaster.pid")
  fi
  run_loads "$target" --stack "$data/stack.json" --processes "$processes" --under "$under" --count-grpc-calls
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=
  if [[ $pebble_beside == yes ]]; then
    pebble_beside=no
    stop_pebble
  fi
}

# Pebble's listeners, apart from `quarry dev`'s (its wfe is on 14000), so that both can run at once.
pebble_url=https://127.0.0.1:14100/dir
pebble_beside=no
pebble_pid=

# Starts Pebble and its challenge test server (as its DNS), and waits until its directory answers.
start_pebble() {
  local dir=$work/pebble
  mkdir -p "$dir"
  # Pebble's HTTPS: a throwaway CA (what loadgen trusts) and a server certificate from it.
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj /CN=bench-ca -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
  openssl req "${ec[@]}" -subj /CN=localhost -keyout "$dir/key.pem" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$dir/server.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial -days 2 \
    -extfile "$dir/server.ext" -out "$dir/cert.pem" 2>/dev/null
  cat >"$dir/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:14100", "managementListenAddress": "127.0.0.1:15100",
  "certificate": "$dir/cert.pem", "privateKey": "$dir/key.pem", "httpPort": 5002, "tlsPort": 5001,
  "ocspResponderURL": "", "externalAccountBindingRequired": false}}
EOF
  # Pebble's own challenge test server as its DNS: every name is 127.0.0.1 (no AAAA), where loadgen answers http-01.
  pebble-challtestsrv -management 127.0.0.1:8155 -dns01 127.0.0.1:8153 -defaultIPv6 "" -http01 "" -https01 "" \
    -tlsalpn01 "" >"$dir/challtestsrv.log" 2>&1 &
  PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 pebble -config "$dir/pebble.json" -dnsserver 127.0.0.1:8153 \
    >"$dir/pebble.log" 2>&1 &
  pebble_pid=$!
  wait_directory "$pebble_url" "$dir/ca.pem" "$pebble_pid"
  sleep 5
  idle_rss "^pebble -config" pebble
}

stop_pebble() {
  [[ -n $pebble_pid ]] && { kill "$pebble_pid"; wait "$pebble_pid" 2>/dev/null || true; }
  pebble_pid=
  pkill -f "pebble-challtestsrv -management 127.0.0.1:8155" || true
}

: >"$work/idle.jsonl"
# With Pebble and Quarry both asked for, Pebble runs beside the first Quarry target, load for load.
pebble_paired=no
if [[ ,$only, == *,pebble,* && ,$only, == *,quarry-* ]]; then
  start_pebble
  pebble_beside=yes
  pebble_paired=yes
fi
for target in ${only//,/ }; do
  case $target in
    quarry-sqlite) run_quarry quarry-sqlite ;;
    # The replicated topology on the same host: two processes of each service (on 2 cores they cannot add
    # throughput; what they cost is the point), the load balancer in quarry dev's own process.
    quarry-replicas) run_quarry quarry-replicas --replicas 2 ;;
    # The replicated topology on the database replicated deployments use: two sas on one SQLite file would also
    # measure the sas emptying each other's page caches, which no hosted environment does.
    quarry-postgres | quarry-replicas-postgres)
      pg_dir=$work/postgres
      url=$(bash scripts/postgres.sh start "$pg_dir" 5490)
      replicas=()
      [[ $target == quarry-replicas-postgres ]] && replicas=(--replicas 2)
      run_quarry "$target" --db "$url" "${replicas[@]}"
      bash scripts/postgres.sh stop "$pg_dir" >/dev/null 2>&1; rm -rf "$pg_dir"; pg_dir=
      ;;
    pebble)
      if [[ $pebble_paired == no ]]; then
        start_pebble
        run_loads pebble "$pebble_url" --tls-ca "$work/pebble/ca.pem" --processes pebble --under "$pebble_pid"
        stop_pebble
      fi
      ;;
    *) echo "bench: unknown target $target" >&2; exit 64 ;;
  esac
done

python3 scripts/bench-report.py "$work" "$clients" "$duration" >"$out"
echo "bench: wrote $out" >&2
