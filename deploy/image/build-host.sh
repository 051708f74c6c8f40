#!/usr/bin/env bash
# Builds the Quarry images from binaries built on this host, without a registry or a Rust toolchain in the build:
#   deploy/image/build-host.sh [BINARY] [TAG] [DEVTOOLS_TAG]
# (defaults: target/release/quarry, quarry:dev, quarry-devtools:dev). TAG is the production image: `quarry` only.
# DEVTOOLS_TAG adds `quarry-dev`, taken from beside BINARY, for the compose stack; it is skipped when that binary is
# missing. QUARRY_DEBIAN_BASE names the base image (default debian:bookworm-slim; scripts/compose-test.sh makes a
# local one with debootstrap). The binaries must be built for Debian bookworm's glibc, as a build on a bookworm host
# is.
set -euo pipefail
binary=${1:-target/release/quarry}
tag=${2:-quarry:dev}
devtools_tag=${3:-quarry-devtools:dev}
here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/quarry"
strip "$context/quarry" 2>/dev/null || true
cp "$here/Dockerfile.host-binary" "$context/Dockerfile"
base=${QUARRY_DEBIAN_BASE:-debian:bookworm-slim}
dev_tools=$(dirname "$binary")/quarry-dev
if [[ -f $dev_tools ]]; then
  cp "$dev_tools" "$context/quarry-dev"
  strip "$context/quarry-dev" 2>/dev/null || true
  docker build --network host --build-arg "BASE=$base" --target devtools -t "$devtools_tag" "$context"
else
  # The production target never copies it; an empty file keeps the context's shape the same.
  : >"$context/quarry-dev"
  echo "build-host: no $dev_tools; $devtools_tag not built" >&2
fi
docker build --network host --build-arg "BASE=$base" -t "$tag" "$context"
