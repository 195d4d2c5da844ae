#!/usr/bin/env bash
# Short run of every cargo-fuzz target (default 10 s each); `just fuzz 600`
# for a long one. Prints, per target, the executions per second, the
# coverage reached and whether it found anything (a crash fails the run).
# cargo-fuzz needs nightly flags; the one stable toolchain here accepts them
# with RUSTC_BOOTSTRAP=1 (only for this fuzz build, never for releases).
# Fuzz builds are kept in $PII_CACHE_DIR (default ~/.cache/pii-enclave), so
# later runs on this machine reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-10}
cache=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "ci/fuzz-smoke.sh: installing cargo-fuzz"
  cargo install --locked -q cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
report=target/fuzz-report.txt
mkdir -p target; : > "$report"
for dir in enclave/proto/fuzz enclave/fuzz verifier/fuzz host-proxy/fraud/fuzz; do
  tdir="$cache/fuzz-target/${dir//\//-}"
  for target in $(cd "$dir" && cargo fuzz list); do
    echo "ci/fuzz-smoke.sh: $dir $target for ${secs}s"
    # New inputs go to a throwaway corpus; the committed seeds stay as they are.
    corpus="$dir/corpus/$target"; mkdir -p "$corpus"
    log=$(mktemp)
    if ! (cd "$dir" && cargo fuzz run "$target" --sanitizer none --target-dir "$tdir" \
        "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1); then
      tail -n 40 "$log"; echo "ci/fuzz-smoke.sh: $dir $target FAILED" >&2; exit 1
    fi
    execs=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 | grep -o '[0-9]*' || echo "?")
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    printf '%-22s %-14s %8s execs/s %10s runs  cov %6s  crashes 0\n' "${dir%/fuzz}" "$target" "$execs" "$runs" "$cov" | tee -a "$report"
    rm -f "$log"
  done
done
echo "ci/fuzz-smoke.sh: all targets ran ${secs}s without a crash (summary: $report)"
