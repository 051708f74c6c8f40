#!/usr/bin/env bash
# Interoperability: every scenario of every client — certbot (http-01 standalone: issue, renew, revoke) and lego
# (http-01: issue, renew, revoke; tls-alpn-01; dns-01 wildcard through the challenge test server) — against a freshly
# started `quarry dev` on SQLite, then under Pebble's provocations (PEBBLE_WFE_NONCEREJECT=15, validation sleep,
# PEBBLE_AUTHZREUSE=50), then again on PostgreSQL and Redis (QUARRY_TEST_POSTGRES_URL, QUARRY_TEST_REDIS_URL:
# test.sh starts both). Every chain is verified against the issuing root, renewals must bring a new serial, and a
# revoked certificate's ACME Renewal Information (RFC 9773) must say "renew now". Then the replicated stack (`quarry
# dev --replicas 2`): certbot and lego again, lego once more right after one process each of the wfe, nonce, ra, sa,
# ca and va was killed. With QUARRY_INTEROP_DIRECTORY (and _TLS_CA, _ROOT, _CHALLTESTSRV, _HTTP_PORT, _TLS_PORT,
# _DNS) it runs the scenarios against that running stack instead (scripts/compose-test.sh, for the containers).
# Everything listens on loopback only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quarry=${QUARRY_BIN:-$root/target/debug/quarry}
work=$(mktemp -d)
http_port=5402
tls_port=5401
passed=0
acme_addr=127.0.0.1:14000
dev_pid=

cleanup() {
  local status=$?
  if [[ -n $dev_pid ]]; then kill "$dev_pid" 2>/dev/null || true; wait "$dev_pid" 2>/dev/null || true; fi
  if ((status != 0)); then
    echo "--- quarry dev output" >&2; cat "$work/dev.out" >&2 || true
    for log in "$work"/dev/logs/*.log; do echo "--- $log" >&2; tail -n 40 "$log" >&2 || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Starts `quarry dev` in $work/$1 with the other arguments, and waits until it says it is ready.
start_dev() {
  local dir=$work/$1; shift
  "$quarry" dev --data-dir "$dir" --acme-addr "$acme_addr" --va-http-port "$http_port" --va-tls-port "$tls_port" \
    --no-http01-responder --no-tlsalpn01-responder "$@" \
    >"$work/dev.out" 2>&1 &
  dev_pid=$!
  for _ in $(seq 1 180); do
    [[ -s $dir/stack.json ]] && break
    kill -0 "$dev_pid" 2>/dev/null || { echo "quarry dev exited" >&2; exit 1; }
    sleep 0.5
  done
  [[ -s $dir/stack.json ]] || { echo "quarry dev did not start within 90 s" >&2; exit 1; }
  stack=$dir/stack.json
  directory=$(jq -r .directory_url "$stack")
  tls_ca=$(jq -r .tls_ca_pem "$stack")
  root_pem=$(jq -r .root_pem "$stack")
  challtestsrv=$(jq -r .challtestsrv_url "$stack")
  echo "quarry dev is up: $directory ($*)"
}

stop_dev() {
  kill "$dev_pid" 2>/dev/null || true
  wait "$dev_pid" 2>/dev/null || true
  dev_pid=
}

# Checks that a PEM chain file holds a leaf for the expected names that chains to the issuing root.
check_chain() {
  local chain=$1; shift
  awk -v dir="$work/split" 'BEGIN{n=0} /BEGIN CERT/{n++} {print > (dir "-" n ".pem")}' "$chain"
  openssl verify -CAfile "$root_pem" -untrusted "$work/split-2.pem" "$work/split-1.pem" >/dev/null
  local sans
  sans=$(openssl x509 -in "$work/split-1.pem" -noout -ext subjectAltName)
  for name in "$@"; do
    grep -q "DNS:$name" <<<"$sans" || { echo "certificate lacks $name: $sans" >&2; exit 1; }
  done
  rm -f "$work"/split-*.pem
  echo "ok: chain for $* verifies against the issuing root"
}

serial_of() { openssl x509 -in "$1" -noout -serial | cut -d= -f2; }

# lego against the stack, with its account and certificates under $work/lego.
run_lego() {
  LEGO_CA_CERTIFICATES=$tls_ca lego --server "$directory" --accept-tos --email ops@quarry-interop.org \
    --path "${out:-$work}/lego" "$@"
}

# Fails unless the renewal information of the leaf in $1 suggests renewing at once (its window is in the past).
check_renew_now() {
  local cert_id end
  cert_id=$(python3 - "$1" <<'PY'
import base64, re, subprocess, sys
text = subprocess.run(["openssl", "x509", "-in", sys.argv[1], "-noout", "-serial", "-ext", "authorityKeyIdentifier"],
                      check=True, capture_output=True, text=True).stdout
serial = bytes.fromhex(re.search(r"serial=([0-9A-Fa-f]+)", text).group(1))
aki = bytes.fromhex(re.search(r"([0-9A-F]{2}(?::[0-9A-F]{2})+)", text.split("Authority Key Identifier", 1)[1]).group(1).replace(":", ""))
b64 = lambda b: base64.urlsafe_b64encode(b).decode().rstrip("=")
print(f"{b64(aki)}.{b64(serial)}")
PY
)
  end=$(curl -fsS --cacert "$tls_ca" "$(jq -r .renewalInfo <(curl -fsS --cacert "$tls_ca" "$directory"))/$cert_id" |
    jq -r .suggestedWindow.end)
  [[ $(date -d "$end" +%s) -lt $(date +%s) ]] || { echo "renewal window of a revoked certificate ends $end" >&2; exit 1; }
  echo "ok: renewal information says renew now ($cert_id)"
}

# Every scenario of every client, against the stack the variables describe (directory, tls_ca, root_pem,
# challtestsrv, http_port, tls_port, dns_addr), with its own accounts and certificates under $work/$1.
scenarios() {
  local label=$1 out=$work/$1 first renewed
  mkdir -p "$out"
  echo "==> $label: certbot, http-01 (standalone on port $http_port)"
  REQUESTS_CA_BUNDLE=$tls_ca certbot certonly --non-interactive --agree-tos --register-unsafely-without-email \
    --server "$directory" --standalone --http-01-address 127.0.0.1 --http-01-port "$http_port" \
    --config-dir "$out/certbot/config" --work-dir "$out/certbot/work" --logs-dir "$out/certbot/logs" \
    --cert-name interop -d certbot.quarry-interop.org -d www.certbot.quarry-interop.org
  check_chain "$out/certbot/config/live/interop/fullchain.pem" certbot.quarry-interop.org www.certbot.quarry-interop.org
  passed=$((passed + 1))

  echo "==> $label: certbot, forced renewal and revocation"
  first=$(serial_of "$out/certbot/config/live/interop/cert.pem")
  REQUESTS_CA_BUNDLE=$tls_ca certbot renew --non-interactive --force-renewal --no-random-sleep-on-renew --cert-name interop \
    --server "$directory" --standalone --http-01-address 127.0.0.1 --http-01-port "$http_port" \
    --config-dir "$out/certbot/config" --work-dir "$out/certbot/work" --logs-dir "$out/certbot/logs"
  renewed=$(serial_of "$out/certbot/config/live/interop/cert.pem")
  [[ $renewed != "$first" ]] || { echo "certbot renew kept serial $first" >&2; exit 1; }
  check_chain "$out/certbot/config/live/interop/fullchain.pem" certbot.quarry-interop.org www.certbot.quarry-interop.org
  cp "$out/certbot/config/live/interop/cert.pem" "$out/certbot-revoked.pem"
  REQUESTS_CA_BUNDLE=$tls_ca certbot revoke --non-interactive --server "$directory" --reason superseded \
    --no-delete-after-revoke --cert-path "$out/certbot-revoked.pem" \
    --config-dir "$out/certbot/config" --work-dir "$out/certbot/work" --logs-dir "$out/certbot/logs"
  check_renew_now "$out/certbot-revoked.pem"
  passed=$((passed + 1))

  echo "==> $label: lego, http-01"
  run_lego --http --http.port "127.0.0.1:$http_port" \
    -d lego-http.quarry-interop.org run
  check_chain "$out/lego/certificates/lego-http.quarry-interop.org.crt" lego-http.quarry-interop.org
  passed=$((passed + 1))

  echo "==> $label: lego, renewal and revocation"
  first=$(serial_of "$out/lego/certificates/lego-http.quarry-interop.org.crt")
  run_lego --http --http.port "127.0.0.1:$http_port" \
    -d lego-http.quarry-interop.org renew --days 90 --no-random-sleep
  renewed=$(serial_of "$out/lego/certificates/lego-http.quarry-interop.org.crt")
  [[ $renewed != "$first" ]] || { echo "lego renew kept serial $first" >&2; exit 1; }
  check_chain "$out/lego/certificates/lego-http.quarry-interop.org.crt" lego-http.quarry-interop.org
  cp "$out/lego/certificates/lego-http.quarry-interop.org.crt" "$out/lego-revoked.pem"
  run_lego -d lego-http.quarry-interop.org revoke --reason 4 --keep
  check_renew_now "$out/lego-revoked.pem"
  passed=$((passed + 1))

  echo "==> $label: lego, tls-alpn-01 (its own server on port $tls_port)"
  run_lego --tls --tls.port "127.0.0.1:$tls_port" \
    -d lego-tls.quarry-interop.org run
  check_chain "$out/lego/certificates/lego-tls.quarry-interop.org.crt" lego-tls.quarry-interop.org
  passed=$((passed + 1))

  echo "==> $label: lego, dns-01 with a wildcard (TXT records set through the challenge test server)"
  cat >"$out/set-txt.sh" <<SCRIPT
#!/usr/bin/env bash
# lego's exec provider: present|cleanup FQDN VALUE
case "\$1" in
  present) curl -fsS -X POST -d "{\"host\":\"\$2\",\"value\":\"\$3\"}" "$challtestsrv/set-txt" ;;
  cleanup) curl -fsS -X POST -d "{\"host\":\"\$2\"}" "$challtestsrv/clear-txt" ;;
esac
SCRIPT
  chmod +x "$out/set-txt.sh"
  EXEC_PATH=$out/set-txt.sh EXEC_SEQUENCE_INTERVAL=1 EXEC_POLLING_INTERVAL=1 \
    run_lego --dns exec --dns.resolvers "$dns_addr" --dns.disable-cp \
    -d '*.lego-dns.quarry-interop.org' -d lego-dns.quarry-interop.org run
  check_chain "$out/lego/certificates/_.lego-dns.quarry-interop.org.crt" '\*.lego-dns.quarry-interop.org' lego-dns.quarry-interop.org
  passed=$((passed + 1))
}

# Against a stack started elsewhere (scripts/compose-test.sh's containers): its scenarios only.
if [[ -n ${QUARRY_INTEROP_DIRECTORY:-} ]]; then
  directory=$QUARRY_INTEROP_DIRECTORY tls_ca=$QUARRY_INTEROP_TLS_CA root_pem=$QUARRY_INTEROP_ROOT
  challtestsrv=$QUARRY_INTEROP_CHALLTESTSRV http_port=$QUARRY_INTEROP_HTTP_PORT tls_port=$QUARRY_INTEROP_TLS_PORT
  dns_addr=$QUARRY_INTEROP_DNS
  scenarios "${QUARRY_INTEROP_LABEL:-stack}"
  echo "interop: $passed passed, 0 failed"
  exit 0
fi

dns_addr=127.0.0.1:8053
start_dev dev
scenarios dev
stop_dev

# The same clients under Pebble's provocations, as their own suites run Pebble: 15 % of good nonces refused as
# badNonce (each client must retry), every validation delayed by up to 4 s, half of the valid authorizations reused.
export PEBBLE_WFE_NONCEREJECT=15 PEBBLE_VA_SLEEPTIME=5 PEBBLE_AUTHZREUSE=50
start_dev dev-pebble --metrics-base-port 19410
unset PEBBLE_WFE_NONCEREJECT PEBBLE_VA_SLEEPTIME PEBBLE_AUTHZREUSE
grep -q "nonce_reject_percent = 15" "$work/dev-pebble/config/wfe.toml" || { echo "the wfe has no nonce rejection" >&2; exit 1; }
grep -q "sleep_max_secs = 5" "$work/dev-pebble/config/va.toml" || { echo "the va does not sleep" >&2; exit 1; }
grep -q "authz_reuse_percent = 50" "$work/dev-pebble/config/ra.toml" || { echo "the ra reuses every authorization" >&2; exit 1; }
scenarios dev-pebble
# The wfe's metrics (the tenth port from the base) count the nonces it refused on purpose: the clients met them.
refused=$(curl -fsS http://127.0.0.1:19419/metrics | awk '/^quarry_acme_requests_total\{.*problem="badNonce"/ {n += $NF} END {print n + 0}')
((refused > 0)) || { echo "no badNonce was answered under PEBBLE_WFE_NONCEREJECT=15" >&2; exit 1; }
echo "ok: $refused good nonces refused as badNonce under Pebble's settings, every client retried"
stop_dev

# The same on PostgreSQL and Redis, as the hosted environments store (test.sh starts both on loopback).
if [[ -n ${QUARRY_TEST_POSTGRES_URL:-} && -n ${QUARRY_TEST_REDIS_URL:-} ]]; then
  database=interop_$$
  psql -q "$QUARRY_TEST_POSTGRES_URL" -c "CREATE DATABASE $database" >/dev/null
  # Its own logical Redis database, emptied: the rate-limit tests before it filled buckets for 127.0.0.1 under
  # production's limits, which dev's permissive ones must not inherit.
  [[ $QUARRY_TEST_REDIS_URL =~ ^(rediss?://[^/]+) ]] || { echo "interop: $QUARRY_TEST_REDIS_URL is no Redis URL" >&2; exit 1; }
  redis_url=${BASH_REMATCH[1]}/8
  redis-cli -u "$redis_url" FLUSHDB >/dev/null
  start_dev dev-postgres --db "${QUARRY_TEST_POSTGRES_URL%/*}/$database" --redis "$redis_url"
  scenarios dev-postgres
  stop_dev
else
  echo "interop: QUARRY_TEST_POSTGRES_URL and QUARRY_TEST_REDIS_URL must be set (scripts/test.sh sets both)" >&2
  exit 1
fi

start_dev dev-replicated --replicas 2
[[ $(jq '.replicas | length' "$stack") == 19 ]] || { echo "not 19 processes: $(jq -c '.replicas' "$stack")" >&2; exit 1; }

echo "==> replicated: certbot, http-01"
REQUESTS_CA_BUNDLE=$tls_ca certbot certonly --non-interactive --agree-tos --register-unsafely-without-email \
  --server "$directory" --standalone --http-01-address 127.0.0.1 --http-01-port "$http_port" \
  --config-dir "$work/certbot2/config" --work-dir "$work/certbot2/work" --logs-dir "$work/certbot2/logs" \
  --cert-name replicated -d replicated.quarry-interop.org
check_chain "$work/certbot2/config/live/replicated/fullchain.pem" replicated.quarry-interop.org
passed=$((passed + 1))

echo "==> replicated: lego, right after one process each of the wfe, nonce, ra, sa, ca and va was killed"
rm -rf "$work/lego"
run_lego --http --http.port "127.0.0.1:$http_port" -d lego-before.quarry-interop.org run >/dev/null
for name in wfe nonce-2 ra sa-2 ca va-2; do
  kill -9 "$(jq -r --arg name "$name" '.replicas[] | select(.name == $name) | .pid' "$stack")"
done
run_lego --http --http.port "127.0.0.1:$http_port" -d lego-replicated.quarry-interop.org run
check_chain "$work/lego/certificates/lego-replicated.quarry-interop.org.crt" lego-replicated.quarry-interop.org
grep -q "ra exited" "$work/dev.out" || { echo "quarry dev did not notice the ra exit" >&2; exit 1; }
passed=$((passed + 1))

echo "interop: $passed passed, 0 failed"
