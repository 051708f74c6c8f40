#!/usr/bin/env bash
# The container stack, really run: starts a Docker engine when none answers (no bridge, no iptables: nothing but
# the host's network), builds the images locally (a Debian base from debootstrap, the Quarry images from the host's
# binaries — the production one with `quarry` only, which it checks, and the dev tools' one with `quarry-dev` —,
# PostgreSQL and Redis from Debian's packages), brings deploy/compose up on the host's loopback
# (host-network.yml) — two containers of every replicated service, the load balancer in front of the wfes — waits
# for every health check, obtains a certificate with certbot and verifies it, fetches a CRL, runs every interop
# scenario of certbot and lego against it (scripts/interop.sh), stops one container of each of the ra, the sa and the
# wfe and obtains another, and takes the stack down. When the engine cannot start,
# this fails and says why.
#
#   scripts/compose-test.sh          (QUARRY_BIN: the binary to put in the image, default target/debug/quarry;
#                                     quarry-dev is taken from beside it)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quarry=${QUARRY_BIN:-$root/target/debug/quarry}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/quarry
project=quarrytest
base_image=quarry/debian-base:bookworm
export QUARRY_IMAGE=quarry:test QUARRY_DEVTOOLS_IMAGE=quarry-devtools:test QUARRY_DEBIAN_BASE=$base_image
compose=(docker-compose -p "$project" -f "$root/deploy/compose/compose.yaml"
  -f "$root/deploy/compose/host-network.yml")
work=$(mktemp -d)
mkdir -p "$cache"

for tool in docker dockerd docker-compose debootstrap certbot; do
  command -v "$tool" >/dev/null || { echo "compose-test: $tool is missing (scripts/test.sh installs it)" >&2; exit 1; }
done

echo "==> the compose files validate (on the compose network, and on the host's)"
(cd "$root/deploy/compose" && docker-compose config -q)
"${compose[@]}" config -q

if ! docker info >/dev/null 2>&1; then
  echo "==> starting dockerd (log: $cache/dockerd.log)"
  [[ $(id -u) == 0 ]] || { echo "compose-test: no Docker engine answers and starting one needs root" >&2; exit 1; }
  # An engine that died without cleaning up (a machine restored from a snapshot) leaves its pid file, and dockerd
  # refuses to start over one; the file is removed only when no process of that id is a dockerd.
  for stale in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    [[ -f $stale ]] || continue
    pid=$(cat "$stale" 2>/dev/null || true)
    if [[ -z $pid ]] || ! grep -qs -e dockerd -e containerd "/proc/$pid/comm"; then
      echo "compose-test: removing the stale $stale (process ${pid:-?} is gone)"
      rm -f "$stale"
    fi
  done
  # setsid: the engine outlives this script (later runs reuse it), not its process group.
  setsid dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false >"$cache/dockerd.log" 2>&1 &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  if ! docker info >/dev/null 2>&1; then
    echo "compose-test: the Docker engine did not start within 60 s:" >&2
    tail -20 "$cache/dockerd.log" >&2
    exit 1
  fi
fi

cleanup() {
  local status=$?
  if [[ $status != 0 ]]; then
    echo "compose-test: failed; the containers said:" >&2
    "${compose[@]}" ps >&2 || true
    "${compose[@]}" logs --no-color --tail 30 >&2 || true
  fi
  "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
  echo "==> Debian base image (debootstrap)"
  # The machine's own Debian mirror (deb822 or one-line sources), whichever files exist.
  mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    sed -n 's/^URIs: *//p; s/^deb \(http[^ ]*\) bookworm .*/\1/p' | grep -v security | head -1 || true)
  debootstrap --variant=minbase bookworm "$work/base" "${mirror:-http://deb.debian.org/debian}" \
    >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  tar -C "$work/base" -c . | docker import - "$base_image" >/dev/null
  rm -rf "$work/base"
fi

echo "==> images"
[[ -f $(dirname "$quarry")/quarry-dev ]] || { echo "compose-test: no quarry-dev beside $quarry (cargo build -p quarry-devtools)" >&2; exit 1; }
"$root/deploy/image/build-host.sh" "$quarry" "$QUARRY_IMAGE" "$QUARRY_DEVTOOLS_IMAGE" >"$work/build.log" 2>&1 ||
  { cat "$work/build.log" >&2; exit 1; }
# The production image carries the production binary only: the dev tools are in the other image.
in_production=$(docker run --rm --entrypoint /bin/ls "$QUARRY_IMAGE" /usr/local/bin)
if grep -q quarry-dev <<<"$in_production" || ! grep -qx quarry <<<"$in_production"; then
  echo "compose-test: the production image's binaries are not just quarry: $in_production" >&2
  exit 1
fi
"${compose[@]}" build postgres redis >"$work/build.log" 2>&1 || { cat "$work/build.log" >&2; exit 1; }

echo "==> the stack, on 127.0.0.1 (every container on the host's network)"
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
# `up` waits for each service's health check before starting the services that depend on it; the trace viewer's
# image comes from a registry, so it is not started here.
replicated=(nonce sa va-remote-a va-remote-b va publisher ca ra wfe)
services=(lb crl-updater)
for service in "${replicated[@]}"; do services+=("$service" "$service-2"); done
timeout 300 "${compose[@]}" up -d --no-build "${services[@]}"
healthy() { [[ $(docker inspect -f '{{.State.Health.Status}}' "${project}_$1_1" 2>/dev/null) == healthy ]]; }
for service in "${replicated[@]}"; do
  for replica in "$service" "$service-2"; do
    for _ in $(seq 60); do healthy "$replica" && break; sleep 1; done
    healthy "$replica" || { echo "compose-test: $replica did not become healthy" >&2; exit 1; }
  done
done
bridges=$(docker network ls --filter driver=bridge --format '{{.Name}}')
[[ -z $bridges ]] || { echo "compose-test: bridge networks exist: $bridges" >&2; exit 1; }

docker cp "${project}_init_1:/data/pki/https/ca.pem" "$work/tls-ca.pem"
docker cp "${project}_init_1:/data/pki/webpki/root.pem" "$work/root.pem"

echo "==> certbot, http-01 (standalone on 127.0.0.1:5002, where the stack's vas validate)"
REQUESTS_CA_BUNDLE=$work/tls-ca.pem timeout 180 certbot certonly --non-interactive --agree-tos \
  --register-unsafely-without-email --server https://localhost:14000/directory \
  --standalone --http-01-address 127.0.0.1 --http-01-port 5002 \
  --config-dir "$work/certbot/config" --work-dir "$work/certbot/work" --logs-dir "$work/certbot/logs" \
  --cert-name compose -d compose.quarry-interop.org -d www.compose.quarry-interop.org >"$work/certbot.out" 2>&1 || {
  cat "$work/certbot.out" "$work/certbot/logs/letsencrypt.log" >&2
  exit 1
}
live=$work/certbot/config/live/compose
openssl verify -CAfile "$work/root.pem" -untrusted "$live/chain.pem" "$live/cert.pem"
openssl x509 -in "$live/cert.pem" -noout -ext subjectAltName | grep -q www.compose.quarry-interop.org

echo "==> the certificate's CRL, served by the wfe"
crl_url=$(openssl x509 -in "$live/cert.pem" -noout -ext crlDistributionPoints | sed -n 's/.*URI://p' | head -1)
for _ in $(seq 30); do
  curl -sf -o "$work/shard.crl" "$crl_url" && break
  sleep 1
done
openssl crl -inform DER -in "$work/shard.crl" -noout -CAfile "$live/chain.pem" -verify 2>&1 | grep -q "verify OK" || {
  echo "compose-test: no verifiable CRL at $crl_url" >&2
  exit 1
}
echo "==> every interop scenario of every client (certbot, lego), against the containers"
QUARRY_INTEROP_DIRECTORY=https://localhost:14000/directory QUARRY_INTEROP_TLS_CA=$work/tls-ca.pem \
  QUARRY_INTEROP_ROOT=$work/root.pem QUARRY_INTEROP_CHALLTESTSRV=http://127.0.0.1:8055 \
  QUARRY_INTEROP_HTTP_PORT=5002 QUARRY_INTEROP_TLS_PORT=5001 QUARRY_INTEROP_DNS=127.0.0.1:8053 \
  QUARRY_INTEROP_LABEL=compose timeout 600 bash "$root/scripts/interop.sh"

echo "==> one container of the ra, the sa and the wfe stopped: the other replicas carry on"
"${compose[@]}" stop ra sa wfe >/dev/null 2>&1
REQUESTS_CA_BUNDLE=$work/tls-ca.pem timeout 180 certbot certonly --non-interactive --agree-tos \
  --register-unsafely-without-email --server https://localhost:14000/directory \
  --standalone --http-01-address 127.0.0.1 --http-01-port 5002 \
  --config-dir "$work/certbot/config" --work-dir "$work/certbot/work" --logs-dir "$work/certbot/logs" \
  --cert-name replicas -d replicas.quarry-interop.org >"$work/certbot.out" 2>&1 || {
  cat "$work/certbot.out" "$work/certbot/logs/letsencrypt.log" >&2
  exit 1
}
openssl verify -CAfile "$work/root.pem" -untrusted "$work/certbot/config/live/replicas/chain.pem" \
  "$work/certbot/config/live/replicas/cert.pem"
echo "compose-test: passed (certificate $(openssl x509 -in "$live/cert.pem" -noout -serial), CRL $crl_url)"
