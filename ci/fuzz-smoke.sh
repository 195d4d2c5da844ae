#!/usr/bin/env bash
# Short smoke run of every cargo-fuzz target (default 20 s each).
# cargo-fuzz needs nightly flags; the one stable toolchain here accepts them
# with RUSTC_BOOTSTRAP=1 (only for this fuzz build, never for releases).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${FUZZ_SECONDS:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "ci/fuzz-smoke.sh: installing cargo-fuzz"
  cargo install --locked -q cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for dir in enclave/proto/fuzz enclave/fuzz verifier/fuzz; do
  for target in $(cd "$dir" && cargo fuzz list); do
    echo "ci/fuzz-smoke.sh: $dir $target for ${secs}s"
    # New inputs go to a throwaway corpus; the committed seeds stay as they are.
    corpus="$dir/corpus/$target"; mkdir -p "$corpus"
    (cd "$dir" && cargo fuzz run "$target" --sanitizer none "corpus/$target" "seeds/$target" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 5)
  done
done
