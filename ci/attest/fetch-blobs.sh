#!/usr/bin/env bash
# Fetch the kernel, cmdline, init and nsm.ko blobs that nitro-cli ships
# (github.com/aws/aws-nitro-enclaves-cli, blobs/<arch>/) into eif/blobs/<arch>,
# at a pinned ref, and print their SHA-384s (they are build inputs: record them).
#
#   ci/attest/fetch-blobs.sh [x86_64|aarch64]     (NITRO_CLI_REF=<tag or commit>)
#
# On an Amazon Linux parent instance with nitro-cli installed, the same files
# are in /usr/share/nitro_enclaves/blobs/; set NITRO_BLOBS_DIR to copy from there.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=${1:-x86_64}
ref=${NITRO_CLI_REF:-main}
dest=eif/blobs/$arch
mkdir -p "$dest"
kernel=bzImage; [ "$arch" = aarch64 ] && kernel=Image
if [ -n "${NITRO_BLOBS_DIR:-}" ]; then
  cp "$NITRO_BLOBS_DIR"/{"$kernel",cmdline,init,nsm.ko} "$dest/"
else
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  git clone -q --filter=blob:none --no-checkout https://github.com/aws/aws-nitro-enclaves-cli "$tmp/cli"
  git -C "$tmp/cli" checkout -q "$ref" -- "blobs/$arch"
  cp "$tmp/cli/blobs/$arch"/{"$kernel",cmdline,init,nsm.ko} "$dest/"
  echo "nitro-cli blobs at $(git -C "$tmp/cli" rev-parse "$ref")"
fi
for f in "$dest"/*; do printf '%s  %s\n' "$(sha384sum "$f" | cut -d' ' -f1)" "$f"; done
