#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/fuzz_targets) with libFuzzer through cargo-fuzz, installing cargo-fuzz when missing.
# The machine's stable toolchain builds them with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly flags); Rust code is
# memory-safe, so no sanitizer is linked: the targets look for panics, failed assertions, hangs and runaway memory.
#
#   scripts/fuzz.sh                    every target for 30 s (what .ci/run does)
#   scripts/fuzz.sh --secs 600 jws     one target for ten minutes
#   scripts/fuzz.sh --runs 10000000    every target for ten million executions (the record in docs/SECURITY.md)
#
# Each run starts from the seeds in fuzz/corpus/<target> and keeps what it finds in a scratch corpus, so the
# repository's seeds change only by hand (fuzz/seeds/make_seeds.py). A crash leaves its input in
# fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

limit=(-max_total_time=30)
targets=()
while (($#)); do
  case $1 in
    --secs) limit=("-max_total_time=$2"); shift 2 ;;
    --runs) limit=("-runs=$2"); shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

cargo_fuzz_version=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "==> installing cargo-fuzz $cargo_fuzz_version"
  cargo install --quiet --locked cargo-fuzz --version "$cargo_fuzz_version"
fi
export RUSTC_BOOTSTRAP=1
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi

echo "==> building the fuzz targets"
cargo fuzz build --sanitizer none

scratch=$(mktemp -d /tmp/quarry-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  mkdir -p "$scratch/$target"
  echo "==> fuzzing $target (${limit[*]})"
  started=$(date +%s)
  # -rss_limit_mb bounds memory per input; -timeout flags an input that takes over 10 s (a hang).
  if ! cargo fuzz run --sanitizer none "$target" "$scratch/$target" "corpus/$target" -- \
    "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>"$scratch/$target.log"; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz target $target failed; its input is under fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch/$target.log" | grep -o '[0-9]*$' || echo "?")
  echo "    $target: $runs executions in $(($(date +%s) - started)) s, no crash"
done
