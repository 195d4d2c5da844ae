# pii-enclave tasks. CI runs `ci/test.sh` (the same as `just test`).

# The whole stack on embedded defaults: http://127.0.0.1:8210, token dev-root-token.
dev:
    cargo run --release -p host-proxy -- dev

# Lints, all tests (OpenBao differential, real clients), fuzz smoke.
test:
    ./ci/test.sh

# Tests without the fuzz smoke run and the QEMU boot.
test-quick:
    SKIP_FUZZ=1 SKIP_QEMU=1 ./ci/test.sh

# The EIF booted in QEMU's nitro-enclave machine (TCG), end to end through
# the sidecar over virtio-vsock (root, Debian 12); QEMU_BENCH_SECONDS=8 adds
# the req/s run.
e2e-qemu:
    ./ci/e2e-qemu.sh

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# Sidecar vs OpenBao on this machine; writes target/bench/*.json and prints a table.
bench:
    ./ci/bench.sh
    cargo bench -p eif --bench pcr
    cargo bench -p host-proxy --bench relay
    cargo bench -p pii-tests --bench seal
    ./ci/bench-fraud.sh
    ./ci/bench-fraud-online.sh
    ./ci/bench-fle.sh

# Field-level encryption: pii-fle backfill/rotate/verify rows/s on a 1M-row
# table and the overhead workload, sidecar vs OpenBao.
bench-fle:
    ./ci/bench-fle.sh

# Fraud pipeline: replay lines/s and peak RSS under 100k / 1M-address spraying.
bench-fraud:
    ./ci/bench-fraud.sh
    ./ci/bench-fraud-online.sh

# This tree's sidecar against REV's, side by side (alternating wrk runs).
bench-compare rev="HEAD~1":
    ./ci/bench-compare.sh {{rev}}

# Seal/unseal latency: dev seal, Vault Transit (OpenBao), AWS KMS (emulator).
bench-seal:
    cargo bench -p pii-tests --bench seal

# PCR computation on a 256 MiB image vs raw SHA-384 and AWS's EifReader.
bench-eif:
    cargo bench -p eif --bench pcr

# Longer fuzzing of every parser of untrusted bytes (seconds per target; report in target/fuzz-report.txt).
fuzz seconds="300":
    FUZZ_SECONDS={{seconds}} ./ci/fuzz-smoke.sh

# --- enclave images and measurements (eif/, measurements/, ci/attest/) ---

# nitro-cli's kernel, cmdline, init and nsm.ko into eif/blobs/<arch>.
eif-blobs arch="x86_64":
    ./ci/attest/fetch-blobs.sh {{arch}}

# Reproducible EIF from the blobs and a static musl pii-enclave.
eif-build out="target/eif/pii-enclave.eif":
    ./ci/attest/build_eif.sh {{out}}

# PCR0/1/2/8 and SHA-384 of an image, with nitro-cli describe-eif's field names.
eif-describe file:
    cargo run -q --release -p eif -- describe {{file}}

# Append a signed measurement record for an image (key: EIF_RECORD_KEY).
measurements-record release file="target/eif/pii-enclave.eif":
    cargo run -q --release -p eif -- record append --eif {{file}} --release {{release}}

# Every record of pii-enclave: signatures, order, chain.
measurements-verify:
    cargo run -q --release -p eif -- record verify --key measurements/record-signing-key.pub.pem

# Image vs expected measurements (names the differing PCR), then the Rego gate.
verify-measurement expected file="target/eif/pii-enclave.eif":
    ./ci/attest/verify_nitro.sh --expected {{expected}} --image {{file}} --record-key measurements/record-signing-key.pub.pem --rego-input policy/opa/examples/deploy.json
