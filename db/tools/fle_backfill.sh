#!/usr/bin/env bash
# Encrypt a PostgreSQL column through Transit, then verify every row:
#   ./db/tools/fle_backfill.sh --table users --column email --key pii [pii-fle flags]
# Configuration: DATABASE_URL, VAULT_ADDR (the sidecar, Vault or OpenBao),
# VAULT_TOKEN or PII_FLE_VAULT_TOKEN_FILE; flags override them. Safe to
# interrupt and to run again: it resumes, and a second run encrypts only
# rows whose <column>_enc is NULL. Exit code 3: run again / see the report.
# The plaintext column stays; `pii-fle cutover --drop-plaintext` removes it
# after the dual-write period (docs/fle.md).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if [ -n "${PII_FLE_BIN:-}" ]; then
  fle=$PII_FLE_BIN
elif command -v pii-fle >/dev/null 2>&1; then
  fle=pii-fle
else
  cargo build --release -q --manifest-path "$root/Cargo.toml" -p pii-fle
  fle="$root/target/release/pii-fle"
fi
case "${1:-}" in -h|--help) exec "$fle" backfill --help ;; esac
"$fle" backfill "$@"
"$fle" verify "$@"
