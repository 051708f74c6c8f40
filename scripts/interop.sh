#!/usr/bin/env bash
# Interoperability: certbot (http-01, standalone) and lego (http-01, and dns-01 through the challenge test server)
# each obtain a certificate from a freshly started `quarry dev`; every chain is verified against the issuing root.
# Everything listens on 127.0.0.1 only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
quarry=${QUARRY_BIN:-$root/target/debug/quarry}
work=$(mktemp -d)
http_port=5402
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

"$quarry" dev --data-dir "$work/dev" --acme-addr "$acme_addr" --va-http-port "$http_port" --no-http01-responder \
  >"$work/dev.out" 2>&1 &
dev_pid=$!
for _ in $(seq 1 120); do
  [[ -s $work/dev/stack.json ]] && break
  kill -0 "$dev_pid" 2>/dev/null || { echo "quarry dev exited" >&2; exit 1; }
  sleep 0.5
done
[[ -s $work/dev/stack.json ]] || { echo "quarry dev did not start within 60 s" >&2; exit 1; }
directory=$(jq -r .directory_url "$work/dev/stack.json")
tls_ca=$(jq -r .tls_ca_pem "$work/dev/stack.json")
root_pem=$(jq -r .root_pem "$work/dev/stack.json")
challtestsrv=$(jq -r .challtestsrv_url "$work/dev/stack.json")
echo "quarry dev is up: $directory"

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

echo "==> certbot, http-01 (standalone on port $http_port)"
REQUESTS_CA_BUNDLE=$tls_ca certbot certonly --non-interactive --agree-tos --register-unsafely-without-email \
  --server "$directory" --standalone --http-01-address 127.0.0.1 --http-01-port "$http_port" \
  --config-dir "$work/certbot/config" --work-dir "$work/certbot/work" --logs-dir "$work/certbot/logs" \
  --cert-name interop -d certbot.quarry-interop.org -d www.certbot.quarry-interop.org
check_chain "$work/certbot/config/live/interop/fullchain.pem" certbot.quarry-interop.org www.certbot.quarry-interop.org

echo "==> lego, http-01"
LEGO_CA_CERTIFICATES=$tls_ca lego --server "$directory" --accept-tos --email ops@quarry-interop.org \
  --path "$work/lego" --http --http.port "127.0.0.1:$http_port" \
  -d lego-http.quarry-interop.org run
check_chain "$work/lego/certificates/lego-http.quarry-interop.org.crt" lego-http.quarry-interop.org

echo "==> lego, dns-01 with a wildcard (TXT records set through the challenge test server)"
cat >"$work/set-txt.sh" <<SCRIPT
#!/usr/bin/env bash
# lego's exec provider: present|cleanup FQDN VALUE
case "\$1" in
  present) curl -fsS -X POST -d "{\"host\":\"\$2\",\"value\":\"\$3\"}" "$challtestsrv/set-txt" ;;
  cleanup) curl -fsS -X POST -d "{\"host\":\"\$2\"}" "$challtestsrv/clear-txt" ;;
esac
SCRIPT
chmod +x "$work/set-txt.sh"
EXEC_PATH=$work/set-txt.sh EXEC_SEQUENCE_INTERVAL=1 EXEC_POLLING_INTERVAL=1 LEGO_CA_CERTIFICATES=$tls_ca lego --server "$directory" --accept-tos \
  --email ops@quarry-interop.org --path "$work/lego" --dns exec --dns.resolvers "127.0.0.1:8053" --dns.disable-cp \
  -d '*.lego-dns.quarry-interop.org' -d lego-dns.quarry-interop.org run
check_chain "$work/lego/certificates/_.lego-dns.quarry-interop.org.crt" '\*.lego-dns.quarry-interop.org' lego-dns.quarry-interop.org

echo "interop: 3 passed, 0 failed"
