#!/usr/bin/env bash
# Build the pii-enclave EIF reproducibly from the blobs in eif/blobs/<arch>
# (see fetch-blobs.sh) and a static musl enclave binary.
#
#   ci/attest/build_eif.sh [OUTPUT.eif]     (SOURCE_DATE_EPOCH defaults to the commit time)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-target/eif/pii-enclave.eif}
arch=${EIF_ARCH:-x86_64}
blobs=eif/blobs/$arch
kernel=bzImage; [ "$arch" = aarch64 ] && kernel=Image
[ -f "$blobs/$kernel" ] || { echo "build_eif.sh: no $blobs/$kernel; run ci/attest/fetch-blobs.sh first" >&2; exit 2; }
target=$arch-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "build_eif.sh: installing the $target target" >&2
  rustup target add "$target"
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
# Path and build-id independence for a reproducible binary.
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$PWD=/build --remap-path-prefix=$HOME/.cargo=/cargo -C link-arg=-Wl,--build-id=none"
cargo build -q --release --locked -p pii-enclave --target "$target"
cargo build -q --release --locked -p eif
mkdir -p "$(dirname "$out")"
target/release/eif build \
  --kernel "$blobs/$kernel" --cmdline-file "$blobs/cmdline" \
  --init "$blobs/init" --nsm-ko "$blobs/nsm.ko" \
  --binary "target/$target/release/pii-enclave" \
  --arch "$arch" --output "$out"
