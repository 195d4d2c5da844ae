#!/usr/bin/env bash
# Runs CrowdSec 1.4.6 (Debian's build, unpacked by ci/crowdsec/setup.sh) in
# replay mode over an nginx access log, with the scenarios of its nginx and
# base-http collections, a local API on loopback and no Central API.
# Usage: ci/crowdsec/replay.sh ACCESS_LOG WORKDIR
# Prints: seconds peak_rss_kib alerts distinct_alerted_ips capped(0|1)
# (WORKDIR/rss.tsv keeps its memory over time: see below).
set -euo pipefail
log=$(realpath "$1"); w=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
root=$("$here/setup.sh")
hub=$root/usr/share/crowdsec/hub
rm -rf "$w" && mkdir -p "$w"/etc/parsers/{s00-raw,s01-parse,s02-enrich} "$w"/etc/scenarios "$w"/data
cp -r "$root"/usr/share/crowdsec/data/. "$w"/data/
# The hub names one data file differently from Debian's vendored copy.
cp "$w"/data/path_traversal.txt "$w"/data/http_path_traversal.txt
cp -r "$root"/etc/crowdsec/patterns "$root"/etc/crowdsec/profiles.yaml "$w"/etc/
cp "$here"/non-syslog.yaml "$w"/etc/parsers/s00-raw/
cp "$hub"/parsers/s01-parse/crowdsecurity/nginx-logs.yaml "$w"/etc/parsers/s01-parse/
cp "$hub"/parsers/s02-enrich/crowdsecurity/{dateparse-enrich,http-logs}.yaml "$w"/etc/parsers/s02-enrich/
# collections crowdsecurity/nginx + crowdsecurity/base-http-scenarios, as the hub has them.
for s in http-crawl-non_statics http-probing http-bad-user-agent http-path-traversal-probing \
         http-sensitive-files http-sqli-probing http-xss-probing http-backdoors-attempts \
         http-generic-bf http-open-proxy nginx-req-limit-exceeded; do
  cp "$hub/scenarios/crowdsecurity/$s.yaml" "$w"/etc/scenarios/
done
port=$(free_port)
cat > "$w"/etc/config.yaml <<YAML
common: {daemonize: false, log_media: stdout, log_level: warning, working_dir: .}
config_paths:
  config_dir: $w/etc/
  data_dir: $w/data/
  simulation_path: $w/etc/simulation.yaml
  hub_dir: $hub/
  index_path: $hub/.index.json
crowdsec_service: {acquisition_path: $w/etc/acquis.yaml, parser_routines: 1, buckets_routines: 1, output_routines: 1}
db_config: {type: sqlite, db_path: $w/data/crowdsec.db, use_wal: true}
api:
  client: {credentials_path: $w/etc/local_api_credentials.yaml}
  server: {listen_uri: "127.0.0.1:$port", profiles_path: $w/etc/profiles.yaml, trusted_ips: [127.0.0.1]}
prometheus: {enabled: false}
YAML
echo 'simulation: false' > "$w"/etc/simulation.yaml
: > "$w"/etc/acquis.yaml
"$root"/usr/bin/cscli -c "$w"/etc/config.yaml machines add bench --password "bench-$port-bench" --force \
  -f "$w"/etc/local_api_credentials.yaml --url "http://127.0.0.1:$port/" >/dev/null 2>&1
/usr/bin/time -f "%e %M" -o "$w/time" "$root"/usr/bin/crowdsec -c "$w"/etc/config.yaml \
  -dsn "file://$log" -type nginx > "$w/crowdsec.log" 2>&1 &
timer=$!
# A watchdog beside it: every 2 s its resident memory and how much of the log
# it has read (/proc/PID/io rchar; the hub files it reads at start count too,
# a few MiB), into $WORKDIR/rss.tsv; a progress line on stderr every minute;
# and a cap, CROWDSEC_RSS_CAP_MIB (default 12288, half this machine), past
# which it is killed so a run that grows without bound cannot take the
# machine down (reported as capped, its figures up to that point).
cap_kib=$(( ${CROWDSEC_RSS_CAP_MIB:-12288} * 1024 ))
size=$(stat -c %s "$log")
capped=0; pid=""; t_start=$SECONDS; last=0
printf 'seconds\tread_fraction\trss_kib\n' > "$w/rss.tsv"
while kill -0 "$timer" 2>/dev/null; do
  [ -n "$pid" ] || pid=$(pgrep -P "$timer" -x crowdsec || true)
  if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    rchar=$(awk '/^rchar:/ {print $2}' "/proc/$pid/io" 2>/dev/null || true)
    if [ -n "$rss" ] && [ -n "$rchar" ]; then
      frac=$(awk -v r="$rchar" -v s="$size" 'BEGIN {f = r / s; if (f > 1) f = 1; printf "%.3f", f}')
      printf '%s\t%s\t%s\n' "$((SECONDS - t_start))" "$frac" "$rss" >> "$w/rss.tsv"
      if [ $((SECONDS - last)) -ge 60 ]; then
        last=$SECONDS
        echo "ci/crowdsec/replay.sh: $((SECONDS - t_start)) s, ${frac} of the log read, RSS $((rss / 1024)) MiB" >&2
      fi
      if [ "$rss" -gt "$cap_kib" ]; then
        echo "ci/crowdsec/replay.sh: RSS $((rss / 1024)) MiB is over the cap; stopping CrowdSec" >&2
        capped=1; kill -9 "$pid" 2>/dev/null || true
      fi
    fi
  fi
  sleep 2
done
rc=0; wait "$timer" || rc=$?
if [ "$rc" != 0 ] && [ "$capped" = 0 ]; then tail -n 20 "$w/crowdsec.log" >&2; exit 1; fi
read -r secs rss < <(tail -n1 "$w/time")
python3 - "$w/data/crowdsec.db" "$secs" "$rss" "$capped" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
n, ips = c.execute("select count(*), count(distinct source_ip) from alerts").fetchone()
print(sys.argv[2], sys.argv[3], n, ips, sys.argv[4])
PY
