#!/usr/bin/env bash
# Online fraud ingest figures on this machine: lines/s end to end on the
# drill's traffic, (a) over HTTP (POST /v1/fraud/ingest, batches of 20,000
# lines, one shipper) and (b) over Kafka (the drill log produced to
# gateway-logs first, then the ingest's consumer group reads it all), each
# through tokenization by the dev stack's enclave and with signals produced
# to fraud-signals on a real broker (tansu). Peak RSS of the ingest process.
# The drill through the online path: the HTTP run's signals, read back from
# the broker, go through waf-sync into an nginx map, and each of the drill's
# clients is scored by what the signals and the WAF block (crawler claims
# checked against the drill's zone, served by dnsmasq).
# Writes target/bench/fraud-online.json and prints Markdown tables.
# FRAUD_BENCH_SMOKE=1: tiny sizes, for CI (figures not judged).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
smoke=${FRAUD_BENCH_SMOKE:-0}
out=target/bench
mkdir -p "$out"
ci/setup.sh >/dev/null
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
bench_build -p host-proxy
bench_build_dev_enclave
bin=$BENCH_BIN/host-proxy
TANSU=${PII_TANSU_BIN:-$(ci/kafka/setup.sh)}
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$tmp"' EXIT
if [ "$smoke" = 1 ]; then humans=60; else humans=1500; fi

side_port=$(free_port); kafka_port=$(free_port)
"$bin" dev --listen "127.0.0.1:$side_port" --data-dir "$tmp/dev" --log-format json \
  --enclave-bin "$BENCH_BIN/pii-enclave-dangerous-dev" >"$tmp/dev.out" 2>"$tmp/dev.log" &
"$TANSU" broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$tmp/tansu.log" 2>&1 &
SIDE=http://127.0.0.1:$side_port; BROKER=127.0.0.1:$kafka_port
for _ in $(seq 1 200); do curl -sf "$SIDE/v1/sys/health" >/dev/null && break; sleep 0.1; done
curl -sf "$SIDE/v1/sys/health" >/dev/null || { echo "dev stack not up:" >&2; tail -n 20 "$tmp/dev.log" >&2; exit 1; }
H='X-Vault-Token: dev-root-token'
curl -sf -H "$H" -X POST "$SIDE/v1/transform/transformations/tokenization/fraud-subject" \
  -d '{"allowed_roles":["fraud"],"mapping_mode":"deterministic"}' >/dev/null
curl -sf -H "$H" -X POST "$SIDE/v1/transform/role/fraud" -d '{"transformations":["fraud-subject"]}' >/dev/null
kc() { python3 tests/tools/kafka_client.py "$@"; }
for t in gateway-logs:3 fraud-signals:3; do kc create "$BROKER" "${t%%:*}" "${t##*:}"; done

"$bin" fraud drill --seed 7 --humans "$humans" --write-log "$tmp/drill-orig.ndjson" \
  --write-clients "$tmp/clients.json" --write-zone "$tmp/zone.conf" --json > "$tmp/drill-offline.json"
dns_port=$(free_port)
dnsmasq --keep-in-foreground --conf-file="$tmp/zone.conf" --no-resolv --no-hosts --no-poll \
  --listen-address=127.0.0.1 --bind-interfaces --port="$dns_port" --pid-file= \
  --local=/in-addr.arpa/ --local=/ip6.arpa/ --local=/com/ >"$tmp/dnsmasq.log" 2>&1 &
# The ingest refuses records more than 24 h old: the drill's traffic is moved
# to end six minutes ago. HTTP batches of 20,000 lines; Kafka messages of 2,000.
python3 - "$tmp/drill-orig.ndjson" "$tmp" <<'PY'
import datetime as dt, json, sys, time
src, tmp = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(src) if l.strip()]
parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
shift = dt.datetime.fromtimestamp(time.time() - 360, dt.timezone.utc) - max(parse(r["ts"]) for r in recs)
for r in recs:
    r["ts"] = (parse(r["ts"]) + shift).isoformat(timespec="milliseconds").replace("+00:00", "Z")
lines = [json.dumps(r, separators=(",", ":")) for r in recs]
open(f"{tmp}/drill.ndjson", "w").write("\n".join(lines) + "\n")
for i in range(0, len(lines), 20000):
    open(f"{tmp}/batch.{i // 20000:05d}", "w").write("\n".join(lines[i:i + 20000]) + "\n")
json.dump(["\n".join(lines[i:i + 2000]) for i in range(0, len(lines), 2000)], open(f"{tmp}/payloads.json", "w"))
PY
lines=$(wc -l < "$tmp/drill.ndjson")
echo shipper-token > "$tmp/tokens"

# Starts an ingest (optionally consuming gateway-logs); sets ingest_pid, ingest_url.
start_ingest() {
  local port; port=$(free_port)
  VAULT_ADDR=$SIDE VAULT_TOKEN=dev-root-token PII_PROXY_LOG=warn,librdkafka=off,rdkafka=off \
    "$bin" fraud ingest --listen "127.0.0.1:$port" \
    --ingest-tokens-file "$tmp/tokens" --kafka-brokers "$BROKER" --spool-dir "$tmp/spool.$1" \
    --group "bench-$1" --crawler-dns "127.0.0.1:$dns_port" "${@:2}" >"$tmp/ingest.$1.log" 2>&1 &
  ingest_pid=$!; ingest_url=http://127.0.0.1:$port
  for _ in $(seq 1 200); do curl -sf "$ingest_url/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "ingest not up:" >&2; tail -n 20 "$tmp/ingest.$1.log" >&2; exit 1
}
records() { curl -sf "$ingest_url/metrics" | awk '/^pii_fraud_records(_total)? /{print $2}'; }
now() { date +%s.%N; }
# Peak RSS (KiB) of the running ingest, then stop it.
stop_ingest() { peak=$(awk '/^VmHWM:/{print $2}' "/proc/$ingest_pid/status"); kill "$ingest_pid"; wait "$ingest_pid" 2>/dev/null || true; }

# (a) HTTP: every batch posted in turn; done when the last answer came back.
start_ingest http
t0=$(now)
for f in "$tmp"/batch.*; do
  curl -sf -H 'Authorization: Bearer shipper-token' --data-binary @"$f" "$ingest_url/v1/fraud/ingest" >/dev/null
done
t_http=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$t0" "$(now)")
n_http=$(records)
stop_ingest; rss_http=$peak

# The HTTP run's signals, back from the broker → waf-sync (nginx map) → scored.
kc consume "$BROKER" fraud-signals - 120 \
  | python3 -c 'import json,sys; [print(json.loads(l)["value"]) for l in sys.stdin]' > "$tmp/signals.ndjson"
# waf-sync as its CronJob runs it, every 5 minutes of the drill's timeline:
# each run sees the signals sent by then; what any run's map enforced counts.
python3 - "$tmp" <<'PY'
import datetime as dt, json, sys
tmp = sys.argv[1]
sig = [json.loads(l) for l in open(f"{tmp}/signals.ndjson") if l.strip()]
t = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
end = max((t(s["last_seen"]) for s in sig), default=0)
runs = [end - 1200 + 300 * k for k in range(1, 5)] + [end + 1]
for i, now in enumerate(runs):
    with open(f"{tmp}/signals.{i}", "w") as f:
        f.writelines(json.dumps(s) + "\n" for s in sig if t(s["last_seen"]) <= now)
    open(f"{tmp}/now.{i}", "w").write(str(int(now)))
PY
: > "$tmp/nginx-union.map"
for i in 0 1 2 3 4; do
  "$bin" fraud waf-sync --from-file "$tmp/signals.$i" --target nginx --nginx-map "$tmp/nginx.map" \
    --nginx-reload true --state "$tmp/waf-state.json" --now "$(cat "$tmp/now.$i")" --apply >> "$tmp/waf-sync.out"
  cat "$tmp/nginx.map" >> "$tmp/nginx-union.map"
done
python3 ci/fraud-drill-score.py "$tmp/clients.json" "$tmp/signals.ndjson" "$tmp/nginx-union.map" \
  "$SIDE" dev-root-token > "$out/fraud-drill-online.json"

# (b) Kafka: the log is on gateway-logs before the ingest starts; done when
# every line was counted.
kc produce "$BROKER" gateway-logs < "$tmp/payloads.json"
t0=$(now)
start_ingest kafka --input-topic gateway-logs
deadline=$((SECONDS + 600))
while [ "$(records || echo 0)" != "$lines" ]; do
  [ $SECONDS -lt $deadline ] || { echo "kafka ingest counted $(records) of $lines lines" >&2; exit 1; }
  sleep 0.05
done
t_kafka=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$t0" "$(now)")
stop_ingest; rss_kafka=$peak

[ "$n_http" = "$lines" ] || { echo "http ingest counted $n_http of $lines lines" >&2; exit 1; }
rate() { python3 -c "import sys; print(int(int(sys.argv[1]) / max(float(sys.argv[2]), 0.001)))" "$1" "$2"; }
r_http=$(rate "$lines" "$t_http"); r_kafka=$(rate "$lines" "$t_kafka")
cat > "$out/fraud-online.json" <<JSON
{"commit":"$(git rev-parse --short HEAD)","date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","smoke":$smoke,"lines":$lines,
 "http":{"seconds":$t_http,"lines_per_s":$r_http,"peak_rss_kib":$rss_http},
 "kafka":{"seconds":$t_kafka,"lines_per_s":$r_kafka,"peak_rss_kib":$rss_kafka}}
JSON
echo "| online ingest (drill seed 7, $humans humans + bots) | lines | seconds | lines/s | peak RSS |"
echo "|---|---:|---:|---:|---:|"
echo "| HTTP, batches of 20,000 | $lines | $t_http | $r_http | $((rss_http / 1024)) MiB |"
echo "| Kafka gateway-logs (messages of 2,000 lines) | $lines | $t_kafka | $r_kafka | $((rss_kafka / 1024)) MiB |"
echo "(tokenized by the dev enclave, signals to tansu; Kafka time includes the consumer's start and group join; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); target/bench/fraud-online.json)"
echo
python3 - "$tmp/drill-offline.json" "$out/fraud-drill-online.json" <<'PY'
import json, sys
off, on = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print("| drill seed 7, decided by | recall | precision | false-positive rate |")
print("|---|---:|---:|---:|")
pct = lambda x: f"{100 * x:.1f} %"
print(f"| offline pipeline (`fraud drill`) | {pct(off['recall'])} | {pct(off['precision'])} | {100 * off['false_positive_rate']:.2f} % |")
for view, label in (("signals", "online: enforced blocks on fraud-signals"), ("waf", "online: what the nginx map enforced (waf-sync every 5 min; address and subnet keys only)")):
    v = on[view]
    print(f"| {label} | {pct(v['recall'])} | {pct(v['precision'])} | {100 * v['false_positive_rate']:.2f} % |")
print(f"({on['signal_count']} signals, {on['waf_entries']} enforced map entries; target/bench/fraud-drill-online.json)")
PY
bench_profile_note
