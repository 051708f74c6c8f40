#!/usr/bin/env bash
# Builds the Quarry image from a binary built on this host, without a registry or a Rust toolchain in the build:
#   deploy/image/build-host.sh [BINARY] [TAG]      (defaults: target/release/quarry, quarry:dev)
# QUARRY_DEBIAN_BASE names the base image (default debian:bookworm-slim; scripts/compose-test.sh makes a local one
# with debootstrap). The binary must be built for Debian bookworm's glibc, as a build on a bookworm host is.
set -euo pipefail
binary=${1:-target/release/quarry}
tag=${2:-quarry:dev}
here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/quarry"
strip "$context/quarry" 2>/dev/null || true
cp "$here/Dockerfile.host-binary" "$context/Dockerfile"
docker build --network host --build-arg "BASE=${QUARRY_DEBIAN_BASE:-debian:bookworm-slim}" -t "$tag" "$context"
