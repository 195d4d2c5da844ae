#!/usr/bin/env bash
# Fraud pipeline figures on this machine, beside CrowdSec 1.4.6 on the same
# requests (ci/crowdsec/replay.sh): offline replay throughput on the
# drill's traffic, and peak RSS while 1,000,000 and 3,000,000 distinct
# addresses spray it. The tables have a fixed capacity (200,000 addresses by
# default): RSS grows while they fill and is flat afterwards, so the two
# spraying runs should match.
# Writes target/bench/fraud.json and prints a Markdown table.
# FRAUD_BENCH_SMOKE=1: tiny sizes, for CI (figures not judged).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
smoke=${FRAUD_BENCH_SMOKE:-0}
out=target/bench
mkdir -p "$out"
bench_build -p host-proxy
bin=$BENCH_BIN/host-proxy
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if [ "$smoke" = 1 ]; then humans=100; spray_small=1000; spray_big=5000; else humans=1500; spray_small=1000000; spray_big=3000000; fi
"$bin" fraud drill --seed 7 --humans "$humans" --write-log "$tmp/drill.ndjson" > "$tmp/drill.md"
lines=$(wc -l < "$tmp/drill.ndjson")

# One request each from N distinct addresses (sequential from 10.0.0.0),
# failed logins with a scripted user agent: the worst case for per-key state.
spray() {
  python3 - "$1" > "$2" <<'PY'
import sys, ipaddress
n = int(sys.argv[1]); base = int(ipaddress.IPv4Address("10.0.0.0"))
w = sys.stdout.write
for i in range(n):
    ms = i % 1000; s = (i // 1000) % 60; m = (i // 60000) % 60; h = i // 3600000
    w('{"ts":"2026-12-01T%02d:%02d:%02d.%03dZ","client_ip":"%s","method":"POST","host":"shop.example","path":"/login","status":401,"bytes":12,"duration_ms":3,"user_agent":"python-requests/2.32.3","referer":"","jwt_sub":""}\n'
      % (h, m, s, ms, ipaddress.IPv4Address(base + i)))
PY
}
spray "$spray_small" "$tmp/spray-small.ndjson"
spray "$spray_big" "$tmp/spray-big.ndjson"

# Seconds and peak RSS (KiB) of one replay.
measure() { /usr/bin/time -f "%e %M" "$bin" fraud replay --input "$1" --output "$tmp/out.ndjson" 2>&1 >/dev/null | tail -n1; }
read -r t_drill rss_drill < <(measure "$tmp/drill.ndjson")
read -r t_small rss_small < <(measure "$tmp/spray-small.ndjson")
read -r t_big rss_big < <(measure "$tmp/spray-big.ndjson")
rate() { python3 -c "import sys; print(int(int(sys.argv[1]) / max(float(sys.argv[2]), 0.001)))" "$1" "$2"; }
r_drill=$(rate "$lines" "$t_drill"); r_big=$(rate "$spray_big" "$t_big")

# The anchor on the same requests: CrowdSec 1.4.6 (Debian's) in replay mode
# with its nginx + base-http scenarios, one parser and one bucket routine (as
# our replay uses one core), reading the same traffic as nginx combined log
# lines. Its start (local API, hub loading) is measured on a one-line log
# and taken out of its lines/s; the wall time is reported too.
to_nginx() {
  python3 - "$1" "$2" <<'PY'
import datetime as dt, json, sys
out = open(sys.argv[2], "w")
for l in open(sys.argv[1]):
    r = json.loads(l)
    t = dt.datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).strftime("%d/%b/%Y:%H:%M:%S +0000")
    q = lambda v: (v or "-").replace('"', "%22")
    out.write(f'{r["client_ip"]} - - [{t}] "{r["method"]} {q(r["path"])} HTTP/1.1" {r["status"]} {r["bytes"]} "{q(r["referer"])}" "{q(r["user_agent"])}"\n')
PY
}
to_nginx "$tmp/drill.ndjson" "$tmp/drill.log"
# CrowdSec processes a few hundred lines/s here (see docs/benchmarks.md), so
# it gets the first 50,000 drill lines; the spraying log it gets whole, the
# same 1,000,000 addresses as ours (about 35 minutes; CROWDSEC_SPRAY=N for a
# first slice of N; 2,000 and 1,000 lines in the smoke run). Its memory is
# capped by ci/crowdsec/replay.sh (CROWDSEC_RSS_CAP_MIB).
if [ "$smoke" = 1 ]; then cs_n=2000; cs_spray=1000; else cs_n=50000; cs_spray=${CROWDSEC_SPRAY:-$spray_small}; fi
head -n "$cs_n" "$tmp/drill.log" > "$tmp/drill-cs.log"
cs_lines=$(wc -l < "$tmp/drill-cs.log")
head -n "$cs_spray" "$tmp/spray-small.ndjson" > "$tmp/spray-cs.ndjson"
to_nginx "$tmp/spray-cs.ndjson" "$tmp/spray-cs.log"
head -n1 "$tmp/drill.log" > "$tmp/one.log"
read -r cs_t0 _ _ _ _ < <(ci/crowdsec/replay.sh "$tmp/one.log" "$tmp/cs")
read -r cs_t_drill cs_rss_drill cs_alerts_drill cs_ips_drill _ < <(ci/crowdsec/replay.sh "$tmp/drill-cs.log" "$tmp/cs")
read -r cs_t_spray cs_rss_spray _ _ cs_capped < <(ci/crowdsec/replay.sh "$tmp/spray-cs.log" "$tmp/cs")
# CrowdSec's resident memory when it had read a quarter, half, three
# quarters and all of the spraying log (from the watchdog's samples).
cs_curve=$(python3 - "$tmp/cs/rss.tsv" <<'PY'
import csv, sys
rows = [(float(r["read_fraction"]), int(r["rss_kib"])) for r in csv.DictReader(open(sys.argv[1]), delimiter="\t")]
out = {}
for q in (0.25, 0.5, 0.75, 1.0):
    at = [rss for f, rss in rows if f >= q - 0.005]
    if at:
        out[str(q)] = at[0]
print(str(out).replace("'", '"'))
PY
)
net() { python3 -c "import sys; print(round(max(float(sys.argv[1]) - float(sys.argv[2]), 0.001), 3))" "$1" "$2"; }
cs_r_drill=$(rate "$cs_lines" "$(net "$cs_t_drill" "$cs_t0")")
# Stopped at the cap: its rate over the part of the log it had read.
cs_read=$cs_spray
if [ "$cs_capped" = 1 ]; then
  cs_read=$(awk -F'\t' -v n="$cs_spray" 'NR > 1 {f = $2} END {printf "%d", f * n}' "$tmp/cs/rss.tsv")
fi
cs_r_spray=$(rate "$cs_read" "$(net "$cs_t_spray" "$cs_t0")")
r_small=$(rate "$spray_small" "$t_small")
ratio() { python3 -c "import sys; print(round(int(sys.argv[1]) / max(int(sys.argv[2]), 1), 1))" "$1" "$2"; }
cat > "$out/fraud.json" <<JSON
{"commit":"$(git rev-parse --short HEAD)","date":"$(date -u +%Y-%m-%dT%H:%M:%SZ)","smoke":$smoke,
 "drill":{"lines":$lines,"seconds":$t_drill,"lines_per_s":$r_drill,"peak_rss_kib":$rss_drill},
 "spray_small":{"addresses":$spray_small,"seconds":$t_small,"peak_rss_kib":$rss_small},
 "spray_big":{"addresses":$spray_big,"seconds":$t_big,"lines_per_s":$r_big,"peak_rss_kib":$rss_big},
 "crowdsec":{"version":"1.4.6","startup_s":$cs_t0,
   "drill":{"lines":$cs_lines,"seconds":$cs_t_drill,"lines_per_s":$cs_r_drill,"peak_rss_kib":$cs_rss_drill,"alerts":$cs_alerts_drill,"alerted_ips":$cs_ips_drill},
   "spray":{"addresses":$cs_spray,"seconds":$cs_t_spray,"lines_per_s":$cs_r_spray,"peak_rss_kib":$cs_rss_spray,
            "capped":$cs_capped,"rss_kib_at_read_fraction":$cs_curve}},
 "ratio_lines_per_s":{"drill":$(ratio "$r_drill" "$cs_r_drill"),"spray_small":$(ratio "$r_small" "$cs_r_spray")}}
JSON
echo "| run | lines | seconds | lines/s | peak RSS |"
echo "|---|---:|---:|---:|---:|"
echo "| drill (seed 7, $humans humans + bots) | $lines | $t_drill | $r_drill | $((rss_drill / 1024)) MiB |"
echo "| spraying, $spray_small distinct addresses | $spray_small | $t_small | $(rate "$spray_small" "$t_small") | $((rss_small / 1024)) MiB |"
echo "| spraying, $spray_big distinct addresses | $spray_big | $t_big | $r_big | $((rss_big / 1024)) MiB |"
echo "| CrowdSec 1.4.6, drill (same requests, nginx log) | $cs_lines | $cs_t_drill | $cs_r_drill | $((cs_rss_drill / 1024)) MiB |"
capnote=""; [ "$cs_capped" = 1 ] && capnote=" (stopped at the memory cap)"
echo "| CrowdSec 1.4.6, spraying, $cs_spray distinct addresses$capnote | $cs_spray | $cs_t_spray | $cs_r_spray | $((cs_rss_spray / 1024)) MiB |"
echo
echo "pii-fraud / CrowdSec lines/s: drill $(ratio "$r_drill" "$cs_r_drill")x, spraying $(ratio "$r_small" "$cs_r_spray")x (CrowdSec start ${cs_t0} s excluded; its drill alerts: $cs_alerts_drill on $cs_ips_drill addresses)"
echo "CrowdSec RSS (KiB) by share of the spraying log read: $cs_curve"
echo "(offline replay, one core; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); target/bench/fraud.json)"
bench_profile_note
