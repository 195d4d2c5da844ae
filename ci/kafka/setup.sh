#!/usr/bin/env bash
# Installs the Kafka-compatible broker the fraud tests run against (tansu,
# from crates.io) into a cache later runs reuse, and prints its path.
# About 12 minutes on 2 cores the first time; instant afterwards.
set -euo pipefail
TANSU_VERSION=${TANSU_VERSION:-0.6.0}
cache=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}/tansu-$TANSU_VERSION
bin=$cache/bin/tansu
if [ ! -x "$bin" ]; then
  echo "ci/kafka/setup.sh: cargo install tansu $TANSU_VERSION into $cache (first run only)" >&2
  start=$SECONDS
  # Its own target dir, so the install never shares a lock with the workspace build.
  CARGO_TARGET_DIR="$cache/build" cargo install --quiet --locked tansu \
    --version "$TANSU_VERSION" --features dynostore --root "$cache" >&2
  rm -rf "$cache/build"
  echo "ci/kafka/setup.sh: tansu built in $((SECONDS - start)) s" >&2
fi
echo "$bin"
