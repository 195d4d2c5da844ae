#!/usr/bin/env bash
# Sidecar at REV (default: the previous commit) vs the working tree, side by
# side on this machine: both built in release, both `host-proxy dev`, the
# same wrk bodies as ci/bench.sh, alternating runs (ROUNDS, default 3).
#   ci/bench-compare.sh e753a03
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
rev=${1:-HEAD~1}; rounds=${ROUNDS:-3}; dur=${BENCH_DURATION:-8s}
base=target/bench-base; mkdir -p target/bench
rm -rf "$base/src"; git worktree add -f -q "$base/src" "$rev"
trap 'git worktree remove --force "$base/src" 2>/dev/null || true' EXIT
build() { # tree target-dir
  (cd "$1" && CARGO_TARGET_DIR="$2" cargo build --release -q -p host-proxy --bins \
    && CARGO_TARGET_DIR="$2" cargo build --release -q -p pii-enclave --features dangerous-dev --bin pii-enclave-dangerous-dev)
}
build "$base/src" "$PWD/$base/target"; build . "$PWD/target"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; git worktree remove --force "$base/src" 2>/dev/null || true' EXIT
pa=$(free_port); pb=$(free_port)
"$base/target/release/host-proxy" dev --listen 127.0.0.1:$pa --data-dir "$tmp/a" --log-format json \
  --enclave-bin "$base/target/release/pii-enclave-dangerous-dev" >"$tmp/a.out" 2>"$tmp/a.log" &
target/release/host-proxy dev --listen 127.0.0.1:$pb --data-dir "$tmp/b" --log-format json \
  --enclave-bin target/release/pii-enclave-dangerous-dev >"$tmp/b.out" 2>"$tmp/b.log" &
wait_up() { for _ in $(seq 1 100); do curl -sf "$1/v1/sys/health" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
A=http://127.0.0.1:$pa; B=http://127.0.0.1:$pb
wait_up $A; wait_up $B
H='X-Vault-Token: dev-root-token'
for u in $A $B; do curl -sf -H "$H" -X POST "$u/v1/transit/keys/bench" -d '{}' >/dev/null; done
printf '%s' '{"plaintext":"amFuZS5kb2VAZXhhbXBsZS5jb20="}' >"$tmp/single.json"
python3 - "$tmp/batch.json" <<'PY'
import base64, json, sys
items = [{"plaintext": base64.b64encode(f"user{i:06d}@example.com".encode()).decode()} for i in range(1000)]
json.dump({"batch_input": items}, open(sys.argv[1], "w"))
PY
cat >"$tmp/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["X-Vault-Token"] = "dev-root-token"
wrk.headers["Content-Type"] = "application/json"
LUA
run() { # label url conc body items
  BODY_FILE="$4" wrk -t2 -c"$3" -d2s -s "$tmp/post.lua" "$2/v1/transit/encrypt/bench" >/dev/null
  BODY_FILE="$4" wrk -t2 -c"$3" -d"$dur" --latency -s "$tmp/post.lua" "$2/v1/transit/encrypt/bench" \
    | python3 ci/wrk2json.py "$1" "$3" "$5"
}
for r in $(seq 1 "$rounds"); do
  run "base-single-$r" $A 16 "$tmp/single.json" 1; run "new-single-$r" $B 16 "$tmp/single.json" 1
  run "new-batch-$r" $B 4 "$tmp/batch.json" 1000; run "base-batch-$r" $A 4 "$tmp/batch.json" 1000
done | tee target/bench/compare.jsonl
