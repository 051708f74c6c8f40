#!/usr/bin/env bash
# An interleaved A/B of two builds: this shared machine's speed drifts within minutes, so two builds compare only when
# measured in turn. Each round starts a fresh `quarry dev` from one build, loads it (5 s warm-up, then 15 s at 4
# clients), stops it, and does the same with the other; odd rounds run A first, even rounds B first, because the
# second load of a pair measured cheaper in 15 of 20 pairs whichever build it ran (docs/performance.md). Prints each
# load's certificates, the sa's and the whole stack's CPU per certificate and context switches per certificate, then
# each build's averages, how many rounds each won, and each process's CPU per certificate averaged over its loads
# (processes of one name summed per load: the three vas, and every replica under DEV_ARGS="--replicas 2"), which
# shows a change in one service that the whole stack's drift hides. Use an even number of rounds.
#   scripts/bench-builds.sh DIR_A DIR_B ROUNDS [loadgen arguments...]
#   scripts/bench-builds.sh /tmp/before /tmp/after 6 --honour-retry-after --retry-after-cap-ms 1000
# DIR_A and DIR_B each hold a release build's `quarry` and `quarry-dev` (copy target/release/quarry and
# target/release/quarry-dev aside before and after a change). Build A's load generator loads both. CLIENTS=16 (say)
# loads with that many clients instead of 4; DEV_ARGS="--replicas 2" (say) is passed to both stacks' `quarry dev`.
# On PostgreSQL, DEV_ARGS="--db URL" and ALSO_UNDER=PID (its postmaster's, the first line of postmaster.pid) count
# the database's processes too. Not part of the test command.
set -uo pipefail
[[ $# -ge 3 ]] || { sed -n '2,/^[^#]/{/^#/p}' "$0" >&2; exit 64; }
dir_a=$1 dir_b=$2 rounds=$3 clients=${CLIENTS:-4}
shift 3
for dir in "$dir_a" "$dir_b"; do
  [[ -x $dir/quarry && -x $dir/quarry-dev ]] || { echo "bench-builds: $dir needs quarry and quarry-dev" >&2; exit 64; }
done
# A stack left running would hold the ports, and every load would fail.
if ss -ltn | grep -q '127.0.0.1:14000 '; then
  echo "bench-builds: something already listens on 127.0.0.1:14000 (a quarry dev stack?); stop it first" >&2
  exit 1
fi
loadgen=$dir_a/quarry
results=$(mktemp /tmp/quarry-builds.XXXX)
by_process=$(mktemp /tmp/quarry-builds.XXXX)
# Only this stack's processes count, when build A's load generator knows how (`--under`, since 0a66659).
knows_under=no
"$loadgen" loadgen --help 2>/dev/null | grep -q -- '--under' && knows_under=yes

# Context switches of every thread of every quarry service, summed.
switches() {
  local total=0 pid task
  for pid in $(pgrep -f "quarry (sa|wfe|ra|ca|va|nonce|publisher|crl-updater) --config $1"); do
    for task in /proc/"$pid"/task/*/status; do
      total=$((total + $(awk '/^(non)?voluntary_ctxt_switches/ {s += $2} END {print s + 0}' "$task" 2>/dev/null || echo 0)))
    done
  done
  echo "$total"
}

for round in $(seq 1 "$rounds"); do
  order=(A B)
  ((round % 2 == 0)) && order=(B A)
  for variant in "${order[@]}"; do
    dir=$dir_a
    [[ $variant == B ]] && dir=$dir_b
    work=$(mktemp -d /tmp/quarry-builds.XXXX)
    # shellcheck disable=SC2086 # DEV_ARGS is a list of words
    setsid "$dir/quarry-dev" dev --data-dir "$work/data" --no-http01-responder --metrics-base-port 19400 ${DEV_ARGS:-} \
      >"$work/dev.out" 2>&1 &
    dev=$!
    for _ in $(seq 1 240); do [[ -s $work/data/stack.json ]] && break; sleep 0.5; done
    if [[ ! -s $work/data/stack.json ]]; then
      echo "bench-builds: quarry dev from $dir did not start; see $work/dev.out" >&2
      kill -- -"$dev" 2>/dev/null
      exit 1
    fi
    sleep 4
    "$loadgen" loadgen --stack "$work/data/stack.json" --processes quarry --clients "$clients" --duration-secs 5 "$@" >/dev/null 2>&1
    before=$(switches "$work/data")
    under=() processes=quarry
    [[ $knows_under == yes ]] && under=(--under "$dev${ALSO_UNDER:+,$ALSO_UNDER}")
    [[ -n ${ALSO_UNDER:-} ]] && processes=quarry,postgres
    "$loadgen" loadgen --stack "$work/data/stack.json" --processes "$processes" "${under[@]}" \
      --clients "$clients" --duration-secs 15 "$@" >"$work/load.txt" 2>&1
    after=$(switches "$work/data")
    certs=$(grep -oP '\d+(?= certificates)' "$work/load.txt" | head -1)
    sa=$(awk '/^quarry sa / {print $3; exit}' "$work/load.txt")
    all=$(awk '/^all server processes/ {print $4; exit}' "$work/load.txt")
    ctx=$(awk -v a="$before" -v b="$after" -v n="${certs:-0}" 'BEGIN {if (n > 0) printf "%.0f", (b - a) / n}')
    echo "round $round $variant: ${certs:-0} certificates, sa ${sa:-?} ms/cert, all ${all:-?} ms/cert, ${ctx:-?} switches/cert"
    echo "$variant ${all:-} ${sa:-} ${ctx:-} $round" >>"$results"
    # "quarry va  0.71  18.6": the process's name, then its CPU per certificate.
    awk -v v="$variant" '/^quarry [a-z-]+ +[0-9.]+ / {cpu[$2] += $3} END {for (p in cpu) print v, p, cpu[p]}' \
      "$work/load.txt" >>"$by_process"
    kill -- -"$dev" 2>/dev/null
    wait "$dev" 2>/dev/null
    sleep 2
    rm -rf "$work"
  done
done
awk '$2 != "" {n[$1]++; all[$1] += $2; sa[$1] += $3; ctx[$1] += $4; round[$1, $5] = $2}
  END {
    for (v in n) printf "%s (%d loads): all %.2f ms/cert, sa %.2f ms/cert, %.0f switches/cert\n", v, n[v], all[v] / n[v], sa[v] / n[v], ctx[v] / n[v]
    for (key in round) {
      split(key, part, SUBSEP)
      if (part[1] != "A" || !(("B", part[2]) in round)) continue
      pairs++
      if (round["B", part[2]] < round[key]) b_won++
    }
    if (pairs > 0) printf "rounds where B cost less: %d of %d\n", b_won, pairs
  }' "$results" | sort
printf "%-12s %8s %8s %8s\n" "process" "A" "B" "B/A"
awk '{n[$1, $2]++; cpu[$1, $2] += $3; seen[$2] = 1}
  END {
    for (p in seen) {
      if (!n["A", p] || !n["B", p]) continue
      a = cpu["A", p] / n["A", p]; b = cpu["B", p] / n["B", p]
      if (a > 0) printf "%-12s %8.3f %8.3f %+7.1f%%\n", p, a, b, 100 * (b / a - 1)
    }
  }' "$by_process" | sort
rm -f "$results" "$by_process"
