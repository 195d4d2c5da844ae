#!/usr/bin/env bash
# Sidecar vs OpenBao, same machine, same load tool, same request bodies.
#   single: one-field encrypt, closed loop at concurrency 16
#   batch:  1,000-field batch encrypt, concurrency 4
# Results: target/bench/results.json (machine, commit, date; compared with
# the previous run's: scenarios >10 % slower are printed) and a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
ci/setup.sh >/dev/null
DUR=${BENCH_DURATION:-10s}
WARM=${BENCH_WARMUP:-2s}
out=target/bench; mkdir -p "$out"
bench_build -p host-proxy --bins
# `host-proxy dev` runs the development enclave binary (dev NSM, dev seal).
bench_build_dev_enclave
if ! command -v wrk >/dev/null 2>&1; then
  echo "ci/bench.sh: installing wrk (Debian package)"
  { apt-get update -qq && apt-get install -y -qq wrk; } >/dev/null
fi

tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
bao_port=$(free_port); side_port=$(free_port)

# OpenBao's default JSON limits refuse a 1,000-item batch ("exceeded maximum
# number of strings"), so the benchmark listener raises max_request_json_strings.
dev_port=$(free_port)
cat >"$tmp/bao.hcl" <<HCL
listener "tcp" {
  address = "127.0.0.1:$bao_port"
  tls_disable = true
  max_request_json_strings = 1000000
}
HCL
HOME="$tmp" bao server -dev -dev-root-token-id=dev-root-token -dev-listen-address=127.0.0.1:$dev_port \
  -config="$tmp/bao.hcl" >"$tmp/bao.log" 2>&1 &
# Stored tokens go to this machine's PostgreSQL (a fresh database per run).
PGDB=pii_bench_$$
psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $PGDB" -c "CREATE DATABASE $PGDB" >/dev/null
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"; psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $PGDB" >/dev/null 2>&1 || true' EXIT
"$BENCH_BIN/host-proxy" dev --listen 127.0.0.1:$side_port --data-dir "$tmp/dev" --log-format json \
  --token-store "postgres://postgres@127.0.0.1:5432/$PGDB" \
  --enclave-bin "$BENCH_BIN/pii-enclave-dangerous-dev" >"$tmp/dev.out" 2>"$tmp/dev.log" &

wait_up() { for _ in $(seq 1 100); do curl -sf "$1/v1/sys/health" >/dev/null && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
BAO=http://127.0.0.1:$bao_port; SIDE=http://127.0.0.1:$side_port
wait_up "$BAO"; wait_up "$SIDE"
H='X-Vault-Token: dev-root-token'
curl -sf -H "$H" -X POST "$BAO/v1/sys/mounts/transit" -d '{"type":"transit"}' >/dev/null
for u in "$BAO" "$SIDE"; do curl -sf -H "$H" -X POST "$u/v1/transit/keys/bench" -d '{}' >/dev/null; done

single='{"plaintext":"amFuZS5kb2VAZXhhbXBsZS5jb20="}'   # jane.doe@example.com
python3 - "$out/batch1000.json" <<'PY'
import base64, json, sys
items = [{"plaintext": base64.b64encode(f"user{i:06d}@example.com".encode()).decode()} for i in range(1000)]
json.dump({"batch_input": items}, open(sys.argv[1], "w"))
PY

# wrk (C, closed loop, one keep-alive connection per client) keeps the load
# generator's own CPU use low on this 2-core machine; same script for both.
cat >"$tmp/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY_FILE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["X-Vault-Token"] = "dev-root-token"
wrk.headers["Content-Type"] = "application/json"
LUA
printf '%s' "$single" >"$out/single.json"
run() { # label url conc items bodyfile [path]
  local label=$1 url=$2 conc=$3 items=$4 body=$5 path=${6:-transit/encrypt/bench}
  BODY_FILE="$body" wrk -t2 -c"$conc" -d"$WARM" -s "$tmp/post.lua" "$url/v1/$path" >/dev/null
  BODY_FILE="$body" wrk -t2 -c"$conc" -d"$DUR" --latency -s "$tmp/post.lua" "$url/v1/$path" \
    | python3 ci/wrk2json.py "$label" "$conc" "$items"
}

# Tokenization (sidecar only: OpenBao has no Transform engine).
curl -sf -H "$H" -X POST "$SIDE/v1/transform/transformations/tokenization/emails" -d '{"allowed_roles":["bench"]}'
curl -sf -H "$H" -X POST "$SIDE/v1/transform/transformations/fpe/ssn" \
  -d '{"template":"builtin/socialsecuritynumber","tweak_source":"internal","allowed_roles":["bench"]}'
curl -sf -H "$H" -X POST "$SIDE/v1/transform/transformations/tokenization/stored" -d '{"mapping_mode":"stored","allowed_roles":["bench"]}'
curl -sf -H "$H" -X POST "$SIDE/v1/transform/role/bench" -d '{"transformations":["emails","ssn","stored"]}'
python3 - "$out" <<'PY'
import json, sys
d = sys.argv[1]
json.dump({"value": "jane.doe@example.com", "transformation": "emails"}, open(f"{d}/tok1.json", "w"))
json.dump({"batch_input": [{"value": f"user{i:06d}@example.com", "transformation": "emails"} for i in range(1000)]}, open(f"{d}/tok1000.json", "w"))
json.dump({"batch_input": [{"value": f"{i%900+100:03d}-{i%90+10:02d}-{i:04d}", "transformation": "ssn"} for i in range(1000)]}, open(f"{d}/fpe1000.json", "w"))
json.dump({"batch_input": [{"value": f"user{i:06d}@example.com", "transformation": "stored"} for i in range(1000)]}, open(f"{d}/stored1000.json", "w"))
json.dump({"value": "jane.doe@example.com", "transformation": "stored"}, open(f"{d}/stored1.json", "w"))
PY
{
  run openbao-single  "$BAO"  16 1    "$out/single.json"
  run sidecar-single  "$SIDE" 16 1    "$out/single.json"
  run openbao-batch   "$BAO"  4  1000 "$out/batch1000.json"
  run sidecar-batch   "$SIDE" 4  1000 "$out/batch1000.json"
  run token-single    "$SIDE" 16 1    "$out/tok1.json"     transform/encode/bench
  run token-batch     "$SIDE" 4  1000 "$out/tok1000.json"  transform/encode/bench
  run fpe-batch       "$SIDE" 4  1000 "$out/fpe1000.json"  transform/encode/bench
  run stored-single   "$SIDE" 16 1    "$out/stored1.json"  transform/encode/bench
  run stored-batch    "$SIDE" 4  1000 "$out/stored1000.json" transform/encode/bench
} | tee "$out/results.jsonl"

# results.json: this run's scenarios with machine, commit and date; the
# previous run's file (if any, same profile) is compared scenario by
# scenario, and any more than 10 % slower is printed (information, not a
# gate: this machine is noisy).
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || commit="$commit+"
python3 - "$out/results.jsonl" "$out/results.json" "$commit" "${PII_BENCH_PROFILE:-release}" <<'PY'
import datetime, json, os, platform, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
doc = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "commit": sys.argv[3], "profile": sys.argv[4],
       "machine": {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform()},
       "scenarios": {r["label"]: r for r in rows}}
prev = None
if os.path.exists(sys.argv[2]):
    try:
        prev = json.load(open(sys.argv[2]))
    except ValueError:
        print(f"ci/bench.sh: the previous {sys.argv[2]} is not JSON; not compared")
if prev and prev.get("profile", "release") == doc["profile"]:
    slower = []
    for label, now in doc["scenarios"].items():
        was = prev.get("scenarios", {}).get(label)
        if was and was.get("req_per_s") and now["req_per_s"] < 0.9 * was["req_per_s"]:
            slower.append(f"  {label}: {now['req_per_s']:.0f} req/s, was {was['req_per_s']:.0f} "
                          f"({now['req_per_s'] / was['req_per_s'] - 1:+.0%}; {prev.get('commit', '?')}, {prev.get('date', '?')})")
    if slower:
        print("more than 10 % slower than the previous run:")
        print("\n".join(slower))
    else:
        print(f"no scenario more than 10 % slower than the previous run ({prev.get('commit', '?')}, {prev.get('date', '?')})")
json.dump(doc, open(sys.argv[2], "w"), indent=1)
PY

python3 - "$out/results.jsonl" <<'PY'
import json, sys, platform, os
r = {j["label"]: j for j in map(json.loads, open(sys.argv[1]))}
def row(l): j = r[l]; return f"| {l} | {j['concurrency']} | {j['req_per_s']:.0f} | {j['items_per_s']:.0f} | {j['p50_ms']:.2f} | {j['p99_ms']:.2f} | {j['errors']} |"
print()
print(f"machine: {os.cpu_count()} cores, {platform.platform()}")
print("| run | conc | req/s | fields/s | p50 ms | p99 ms | errors |")
print("|---|---|---|---|---|---|---|")
for l in ["openbao-single", "sidecar-single", "openbao-batch", "sidecar-batch", "token-single", "token-batch", "fpe-batch", "stored-single", "stored-batch"]: print(row(l))
s, b = r["sidecar-single"], r["openbao-single"]
print(f"\nsingle: sidecar/OpenBao req/s = {s['req_per_s']/b['req_per_s']:.2f}x; p99 sidecar/OpenBao = {s['p99_ms']/b['p99_ms']:.2f}")
s, b = r["sidecar-batch"], r["openbao-batch"]
print(f"batch:  sidecar {s['items_per_s']:.0f} fields/s vs OpenBao {b['items_per_s']:.0f} = {s['items_per_s']/b['items_per_s']:.2f}x")
PY
bench_profile_note
