#!/usr/bin/env bash
# Verify that an enclave image measures to what a release's measurement record
# (or `nitro-cli describe-eif` output, or {"PCR0": …}) says, naming every PCR
# that differs; optionally verify the record's signature and run the Rego
# deployment gate on the result.
#
#   ci/attest/verify_nitro.sh --expected MEAS --image EIF \
#       [--record-key measurements/record-signing-key.pub.pem] \
#       [--rego-input policy/opa/examples/deploy.json] [--policy FILE.rego]
#
# Exit: 0 match (and policy allows), 1 mismatch / bad record / policy denies,
# 2 usage error.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
expected= image= record_key= rego_input= policy=
while [ $# -gt 0 ]; do
  case "$1" in
    --expected) expected=${2:?}; shift 2 ;;
    --image) image=${2:?}; shift 2 ;;
    --record-key) record_key=${2:?}; shift 2 ;;
    --rego-input) rego_input=${2:?}; shift 2 ;;
    --policy) policy=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    *) echo "verify_nitro.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$expected" ] && [ -n "$image" ] || usage

# EIF_PROFILE=debug reuses a debug build (the test suite does).
if [ "${EIF_PROFILE:-release}" = debug ]; then
  cargo build -q -p eif -p verifier; bin=target/debug
else
  cargo build -q --release -p eif -p verifier; bin=target/release
fi

args=(compare --expected "$expected" --image "$image")
[ -n "$record_key" ] && args+=(--record-key "$record_key")
set +e
"$bin/eif" "${args[@]}"
compare=$?
set -e
if [ "$compare" -eq 2 ]; then exit 2; fi
[ "$compare" -eq 0 ] && echo "verify_nitro.sh: measurements match" || echo "verify_nitro.sh: MEASUREMENT MISMATCH" >&2

if [ -n "$rego_input" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  "$bin/eif" describe --no-digest "$image" > "$tmp/describe.json"
  # The gate sees the expected PCRs from the record and the image's own
  # measurements; "verified" is the comparison above (build-time gate; the
  # pod-boot gate uses a live attestation document: verifier boot / policy --doc).
  python3 - "$rego_input" "$expected" "$tmp/describe.json" "$compare" > "$tmp/input.json" <<'PY'
import json, sys
inp = json.load(open(sys.argv[1]))
exp = json.load(open(sys.argv[2]))
exp = exp.get("Measurements", exp)
desc = json.load(open(sys.argv[3]))["Measurements"]
inp["expected"] = {k: v for k, v in exp.items() if k.startswith("PCR")}
inp["attestation"] = {
    "verified": sys.argv[4] == "0",
    "source": "eif describe (build-time measurement)",
    "pcrs": {k: v for k, v in desc.items() if k.startswith("PCR")},
}
json.dump(inp, sys.stdout)
PY
  pargs=(policy --input "$tmp/input.json")
  [ -n "$policy" ] && pargs+=(--policy "$policy")
  set +e
  "$bin/verifier" "${pargs[@]}"
  gate=$?
  set -e
  [ "$gate" -eq 0 ] || { echo "verify_nitro.sh: Rego gate denied" >&2; exit 1; }
fi
exit "$compare"
