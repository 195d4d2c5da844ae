# Shared by the ci/ scripts (source it: `. ci/lib.sh`); defines no state of
# its own beyond the variables below.
#
# PII_BENCH_PROFILE picks the binaries a benchmark builds and runs:
#   release (default)  cargo build --release, target/release/  (the figures)
#   dev                cargo build, target/debug/  (CI's smoke runs: the
#                      test stage has built these already, so a smoke run
#                      checks the benchmark's script and plumbing without a
#                      second, optimised build of the workspace; its
#                      figures mean nothing)
case ${PII_BENCH_PROFILE:-release} in
  release) BENCH_BIN=target/release; bench_profile_flags=(--release) ;;
  dev) BENCH_BIN=target/debug; bench_profile_flags=() ;;
  *) echo "ci/lib.sh: PII_BENCH_PROFILE must be release or dev, not '${PII_BENCH_PROFILE}'" >&2; exit 2 ;;
esac

# cargo build in the benchmark profile: bench_build -p host-proxy …
bench_build() { cargo build -q "${bench_profile_flags[@]}" "$@"; }

# The development enclave the benchmarks' `host-proxy dev` runs.
bench_build_dev_enclave() { bench_build -p pii-enclave --features dangerous-dev --bin pii-enclave-dangerous-dev; }

# A free TCP port on 127.0.0.1 (the kernel picks it).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Said under a benchmark's tables when they come from the dev profile.
bench_profile_note() {
  if [ "${PII_BENCH_PROFILE:-release}" = dev ]; then
    echo "(PII_BENCH_PROFILE=dev: debug binaries, a smoke run; these figures mean nothing)"
  fi
}
