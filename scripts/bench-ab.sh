#!/usr/bin/env bash
# An interleaved A/B of one configuration value on one running `quarry dev` stack: this shared machine's speed
# drifts within minutes, so two variants compare only when measured in turn, minutes apart at most. Sets
# SERVICE's top-level KEY to A, restarts that service (quarry dev's supervisor brings it back with the file as it
# now is), runs `quarry loadgen` for 15 s, then the same with B, ROUNDS times; prints each load's certificates, the
# service's CPU per certificate and the whole stack's.
#   scripts/bench-ab.sh SERVICE KEY A B ROUNDS [loadgen arguments...]
#   scripts/bench-ab.sh sa max_connections 8 1 3 --honour-retry-after --retry-after-cap-ms 1000
# Uses $QUARRY_BIN, else target/release/quarry (build it first). Not part of the test command.
set -uo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 5 ]] || { sed -n '2,9p' "$0" >&2; exit 64; }
service=$1 key=$2 value_a=$3 value_b=$4 rounds=$5
shift 5
bin=${QUARRY_BIN:-$PWD/target/release/quarry}
work=$(mktemp -d /tmp/quarry-ab.XXXX)
"$bin" dev --data-dir "$work/data" --no-http01-responder --metrics-base-port 19400 >"$work/dev.out" 2>&1 &
dev=$!
trap 'kill $dev 2>/dev/null; wait $dev 2>/dev/null' EXIT
for _ in $(seq 1 240); do [[ -s $work/data/stack.json ]] && break; sleep 0.5; done
[[ -s $work/data/stack.json ]] || { echo "bench-ab: quarry dev did not start; see $work/dev.out" >&2; exit 1; }
config=$work/data/config/$service.toml
grep -q "^$key = " "$config" || { echo "bench-ab: $config has no top-level $key" >&2; exit 64; }
sleep 5
for round in $(seq 1 "$rounds"); do
  for value in "$value_a" "$value_b"; do
    sed -i "s|^$key = .*|$key = $value|" "$config"
    pkill -f "quarry $service --config $config"
    # The supervisor restarts it within a second or two.
    sleep 4
    out=$work/round$round-$value.txt
    "$bin" loadgen --stack "$work/data/stack.json" --processes quarry --under "$dev" --clients 4 --duration-secs 15 \
      "$@" >"$out" 2>&1
    printf '%s = %s, round %s: %s | %s | %s\n' "$key" "$value" "$round" \
      "$(grep -m1 -E 'certificates \(' "$out" | tr -s ' ')" \
      "$(grep -m1 -E "^quarry $service " "$out" | tr -s ' ')" \
      "$(grep -m1 -E '^all server processes' "$out" | tr -s ' ')"
  done
done
echo "bench-ab: loads in $work" >&2
