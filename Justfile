# pii-enclave tasks. CI runs `ci/test.sh` (the same as `just test`).

# The whole stack on embedded defaults: http://127.0.0.1:8210, token dev-root-token.
dev:
    cargo run --release -p host-proxy -- dev

# Lints, all tests (OpenBao differential, real clients), fuzz smoke.
test:
    ./ci/test.sh

# Tests without the fuzz smoke run.
test-quick:
    SKIP_FUZZ=1 ./ci/test.sh

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

fmt:
    cargo fmt --all

# Sidecar vs OpenBao on this machine; writes target/bench/*.json and prints a table.
bench:
    ./ci/bench.sh

# Longer fuzzing of the frame/message decoder (seconds per target).
fuzz seconds="300":
    FUZZ_SECONDS={{seconds}} ./ci/fuzz-smoke.sh
