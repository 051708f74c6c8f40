#!/usr/bin/env bash
# Records the release's SQL: every statement the sa's own tests send to PostgreSQL (a private cluster with
# log_statement = all), the data statements only (SELECT, INSERT, UPDATE, DELETE, WITH), one per line with its
# whitespace collapsed, into sa/compat/queries-<version>.sql. Run it when a release is cut; from then on the sa's
# test `a_released_versions_queries_run_on_the_current_schema` prepares every one of them against the schema of every
# later migration, on PostgreSQL and SQLite: the expand/contract rule of docs/migrations.md, checked.
#   scripts/record-sa-queries.sh [VERSION]     (default: the workspace's version)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)}
work=$(mktemp -d)
chmod 755 "$work"  # the cluster runs as the postgres user
trap 'bash "$root/scripts/postgres.sh" stop "$work/pg" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
url=$(bash "$root/scripts/postgres.sh" start "$work/pg" 5441)
psql -q "$url" -c "ALTER SYSTEM SET log_statement = 'all'" -c "SELECT pg_reload_conf()" >/dev/null
(cd "$root" && QUARRY_TEST_POSTGRES_URL=$url cargo test --offline -q -p quarry-sa >"$work/test.log" 2>&1) ||
  { tail -30 "$work/test.log" >&2; exit 1; }
python3 - "$work/pg/log" "$root/sa/compat/queries-$version.sql" "$version" <<'PY'
import re, sys
log, out, version = sys.argv[1:]
statements, current = [], None
for line in open(log, encoding="utf-8", errors="replace"):
    match = re.search(r"LOG:\s+(?:statement|execute [^:]+):\s(.*)$", line)
    if match:
        if current is not None:
            statements.append(current)
        current = match.group(1)
    elif current is not None and line.startswith("\t"):
        current += " " + line.strip()
    else:
        if current is not None:
            statements.append(current)
        current = None
if current is not None:
    statements.append(current)
kept = sorted({
    " ".join(s.split()).rstrip(";")
    for s in statements
    if re.match(r"(?is)^\s*(select|insert|update|delete|with)\b", s)
    and "schema_migrations" not in s and "pg_advisory" not in s and "pg_reload_conf" not in s
})
with open(out, "w") as f:
    f.write(f"-- The SQL the sa of release {version} sends (scripts/record-sa-queries.sh): every later schema must run it.\n")
    for statement in kept:
        f.write(statement + ";\n")
print(f"{len(kept)} statements of release {version} in {out}")
PY
