#!/usr/bin/env bash
# Field-level encryption throughput on this machine's PostgreSQL: pii-fle
# backfill (encrypt), rotate (rewrap) and verify (decrypt) rows/s on a
# FLE_BENCH_ROWS-row `users` table, through the sidecar (dev enclave) and
# through OpenBao's Transit side by side in one run, with the ratio.
# Results: target/bench/fle.json and a Markdown table on stdout.
#   FLE_BENCH_ROWS   rows in the table [1000000]
#   FLE_BENCH_SMOKE=1  20,000 rows (CI: the benchmark cannot silently break)
# Then the overhead workload (pii-fle workload: plaintext vs encrypted vs
# encrypted with the decrypt cache, p95 and ops/s) through each server;
# results in target/bench/fle-overhead-<server>.json.
#   FLE_LOAD_SECONDS per mode and round [5], FLE_LOAD_ROUNDS [3], FLE_LOAD_CLIENTS [8]
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
ci/setup.sh >/dev/null
ROWS=${FLE_BENCH_ROWS:-1000000}
LOAD=(--seconds "${FLE_LOAD_SECONDS:-5}" --rounds "${FLE_LOAD_ROUNDS:-3}" --clients "${FLE_LOAD_CLIENTS:-8}")
if [ "${FLE_BENCH_SMOKE:-0}" = 1 ]; then ROWS=20000; LOAD=(--seconds 1 --rounds 1 --warmup 0.2 --clients 4); fi
out=target/bench; mkdir -p "$out"
t0=$SECONDS
bench_build -p host-proxy
bench_build -p pii-fle
bench_build_dev_enclave
echo "ci/bench-fle.sh: built in $((SECONDS - t0)) s; $ROWS rows"

tmp=$(mktemp -d)
PGDB=pii_fle_bench_$$
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bao_port=$(free_port); dev_port=$(free_port); side_port=$(free_port)
# The same JSON limits as a production OpenBao listener (1,000 strings per
# request: pii-fle sends 150 items per call for that reason).
cat >"$tmp/bao.hcl" <<HCL
listener "tcp" {
  address = "127.0.0.1:$bao_port"
  tls_disable = true
}
HCL
HOME="$tmp" bao server -dev -dev-root-token-id=dev-root-token -dev-listen-address=127.0.0.1:$dev_port \
  -config="$tmp/bao.hcl" >"$tmp/bao.log" 2>&1 &
"$BENCH_BIN/host-proxy" dev --listen 127.0.0.1:$side_port --data-dir "$tmp/dev" --log-format json \
  --enclave-bin "$BENCH_BIN/pii-enclave-dangerous-dev" >"$tmp/dev.out" 2>"$tmp/dev.log" &
wait_up() { for _ in $(seq 1 200); do curl -sf "$1/v1/sys/health" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
BAO=http://127.0.0.1:$bao_port; SIDE=http://127.0.0.1:$side_port
wait_up "$BAO"; wait_up "$SIDE"
curl -sf -H 'X-Vault-Token: dev-root-token' -X POST "$BAO/v1/sys/mounts/transit" -d '{"type":"transit"}' >/dev/null

psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $PGDB" -c "CREATE DATABASE $PGDB" >/dev/null
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$PGDB" VAULT_TOKEN=dev-root-token PII_FLE_LOG=warn
results="$tmp/results.ndjson"; : >"$results"
for target in sidecar openbao; do
  case $target in sidecar) addr=$SIDE ;; openbao) addr=$BAO ;; esac
  psql -q -h 127.0.0.1 -U postgres -d $PGDB -c "DROP TABLE IF EXISTS users, pii_fle_jobs" \
    -c "CREATE TABLE users (id bigint PRIMARY KEY, email text NOT NULL, name text)" \
    -c "INSERT INTO users SELECT i, 'user' || i || '@example.com', 'User ' || i FROM generate_series(1, $ROWS) i" \
    -c "VACUUM ANALYZE users" >/dev/null
  for step in backfill verify rotate; do
    extra=(); [ $step = backfill ] && extra=(--create-key)
    s=$(date +%s.%N)
    VAULT_ADDR=$addr "$BENCH_BIN/pii-fle" $step --table users --column email --key pii --quiet "${extra[@]}" >"$tmp/$target-$step.out"
    e=$(date +%s.%N)
    cat "$tmp/$target-$step.out" | head -n1
    python3 - "$target" "$step" "$s" "$e" "$ROWS" >>"$results" <<'PY'
import json, sys
t, step, s, e, rows = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
print(json.dumps({"target": t, "step": step, "rows": rows, "seconds": round(e - s, 3), "rows_per_sec": round(rows / (e - s))}))
PY
  done
  VAULT_ADDR=$addr "$BENCH_BIN/pii-fle" workload --table users --column email --key pii --quiet \
    "${LOAD[@]}" --json "$out/fle-overhead-$target.json" >"$tmp/$target-workload.out"
  echo "overhead workload through $target:"; tail -n +2 "$tmp/$target-workload.out"
done
python3 - "$results" "$out/fle.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=1)
by = {(r["target"], r["step"]): r for r in rows}
print()
print("| step (pii-fle, whole command) | sidecar rows/s | OpenBao rows/s | sidecar / OpenBao |")
print("|---|---:|---:|---:|")
for step, label in [("backfill", "backfill (encrypt + write)"), ("rotate", "rotate (rewrap + write)"), ("verify", "verify (decrypt + compare)")]:
    s, b = by[("sidecar", step)], by[("openbao", step)]
    print(f"| {label} | {s['rows_per_sec']:,} | {b['rows_per_sec']:,} | {s['rows_per_sec'] / b['rows_per_sec']:.2f} |")
print(f"\n({rows[0]['rows']:,} rows; PostgreSQL, the Transit server and pii-fle share this machine; {sys.argv[2]})")
PY
bench_profile_note
