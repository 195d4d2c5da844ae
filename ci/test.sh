#!/usr/bin/env bash
# The whole test suite: lints, unit, property, end-to-end, differential
# (real OpenBao), real clients (hvac, bao CLI), and fuzz smoke runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.cargo/bin:$PATH"

ci/setup.sh
echo "== fmt";    cargo fmt --all -- --check
echo "== clippy"; cargo clippy --workspace --all-targets -q -- -D warnings
echo "== build";  cargo build --workspace --bins -q
echo "== test";   cargo test --workspace -q 2>&1 | tee target/test-output.txt
grep -q "test result: FAILED" target/test-output.txt && exit 1
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
  echo "== fuzz smoke"; ci/fuzz-smoke.sh
fi
passed=$(grep -o '[0-9]* passed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
failed=$(grep -o '[0-9]* failed' target/test-output.txt | awk '{s+=$1} END {print s+0}')
echo "$passed passed, $failed failed"
