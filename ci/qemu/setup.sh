#!/usr/bin/env bash
# Everything the QEMU nitro-enclave end-to-end run needs, built once into a
# cache folder that later runs reuse ($PII_CACHE_DIR, default
# ~/.cache/pii-enclave; `qemu-nitro/` below it):
#   bin/qemu-system-x86_64   QEMU 10 with the nitro-enclave machine (Debian's
#                            binary lacks it: no libcbor), a minimal build
#   bin/vhost-device-vsock   the vhost-user vsock backend (crates.io)
#   kernel/<KVER>/vmlinuz    Debian's 6.12 cloud kernel
#   kernel/<KVER>/modules/   virtio_mmio, vsock, virtio transports, nsm, and
#                            vmmio_cmdline.ko (eif/guest/vmmio: registers the
#                            virtio-mmio devices the machine announces on the
#                            command line, which this kernel otherwise ignores)
# Prints each stage's seconds. Idempotent: a stage whose output exists is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
C=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}/qemu-nitro
mkdir -p "$C/bin" "$C/kernel" "$C/src"
t0=$SECONDS
stage() { echo "ci/qemu/setup.sh: $1 (at $((SECONDS - t0)) s)"; }
export DEBIAN_FRONTEND=noninteractive
QEMU_VERSION=${QEMU_VERSION:-10.0.2}
# Debian's qemu_10.0.2+ds.orig.tar.xz (bookworm-backports), checked before use.
QEMU_SHA256=${QEMU_SHA256:-0901da33844a331bf8b3602b9c1fbd178e60b737c8e3ade678255bd090c9b9f1}
VHD_VERSION=${VHD_VERSION:-0.3.0}

need_root_bookworm() { # only the stages that install or build need these
  [ "$(id -u)" = 0 ] || { echo "ci/qemu/setup.sh: building the QEMU toolchain needs root (apt-get); run as root or set SKIP_QEMU=1" >&2; exit 1; }
  grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release \
    || { echo "ci/qemu/setup.sh: the recipe is for Debian 12 (bookworm): its backports, kernel and source packages" >&2; exit 1; }
}

backports() {
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/pii-bookworm-backports.list
  fi
}

apt_updated=0
apt_update() { [ "$apt_updated" = 1 ] || { apt-get update -qq; apt_updated=1; }; }

# ---- QEMU with the nitro-enclave machine
if ! { [ -x "$C/bin/qemu-system-x86_64" ] && "$C/bin/qemu-system-x86_64" -M help | grep -q nitro-enclave; }; then
  need_root_bookworm
  stage "QEMU build dependencies"
  backports; apt_update
  apt-get install -y -qq -t bookworm-backports meson python3-pycotap >/dev/null
  apt-get install -y -qq --no-install-recommends ninja-build build-essential pkg-config \
    libglib2.0-dev libpixman-1-dev libcbor-dev libgnutls28-dev libfdt-dev zlib1g-dev \
    python3-venv bzip2 xz-utils qemu-system-data >/dev/null
  stage "QEMU $QEMU_VERSION source (Debian's orig tarball)"
  orig=$(ls "$C"/src/qemu_"$QEMU_VERSION"+ds.orig.tar.xz 2>/dev/null | head -1 || true)
  if [ -z "$orig" ]; then
    mkdir -p "$C/apt/lists/partial"
    echo "deb-src http://deb.debian.org/debian bookworm-backports main" > "$C/apt/sources.list"
    o="-o Dir::Etc::SourceList=$C/apt/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$C/apt/lists"
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # The .dsc may 404 on the mirror; the orig tarball is all that is needed.
    # shellcheck disable=SC2086
    (cd "$C/src" && apt-get $o source --download-only -qq qemu >"$C/src/download.log" 2>&1 || true)
    orig=$(ls "$C"/src/qemu_"$QEMU_VERSION"+ds.orig.tar.xz 2>/dev/null) || {
      echo "ci/qemu/setup.sh: bookworm-backports no longer has qemu $QEMU_VERSION (got: $(ls "$C/src"));" \
           "set QEMU_VERSION and QEMU_SHA256 to the new version" >&2; tail -5 "$C/src/download.log" >&2; exit 1; }
  fi
  if ! echo "$QEMU_SHA256  $orig" | sha256sum -c --quiet - 2>/dev/null; then
    rm -f "$orig"
    echo "ci/qemu/setup.sh: $orig does not have the pinned SHA-256 (removed; run again)" >&2; exit 1
  fi
  rm -rf "$C/src/qemu-$QEMU_VERSION"
  tar -C "$C/src" -xf "$orig"
  q="$C/src/qemu-$QEMU_VERSION"
  # The +ds tarball has no firmware blobs; qboot.rom comes from qemu-system-data.
  sed -i 's/    unpack_edk2_blobs = bzip2.found()/    unpack_edk2_blobs = false/' "$q/meson.build"
  printf 'CONFIG_NITRO_ENCLAVE=y\n' > "$q/configs/devices/x86_64-softmmu/nitro.mak"
  stage "QEMU configure"
  mkdir -p "$q/build"
  (cd "$q/build" && ../configure --python=/usr/bin/python3 --target-list=x86_64-softmmu \
    --without-default-devices --with-devices-x86_64=nitro --without-default-features \
    --enable-libcbor --enable-gnutls --enable-fdt=system --enable-vhost-user --enable-tcg \
    --disable-install-blobs --disable-docs --disable-werror --disable-download \
    --disable-debug-info > configure.log 2>&1 || { tail -30 configure.log; exit 1; })
  grep -q CONFIG_NITRO_ENCLAVE=y "$q/build/x86_64-softmmu-config-devices.mak"
  stage "QEMU build"
  (cd "$q/build" && ninja -j"$(nproc)" qemu-system-x86_64 > ninja.log 2>&1 || { tail -30 ninja.log; exit 1; })
  cp "$q/build/qemu-system-x86_64" "$C/bin/"
  rm -rf "$q"
  "$C/bin/qemu-system-x86_64" -M help | grep -q nitro-enclave
fi
[ -f /usr/share/qemu/qboot.rom ] || { apt_update; apt-get install -y -qq --no-install-recommends qemu-system-data >/dev/null; }

# ---- vhost-device-vsock
if [ ! -x "$C/bin/vhost-device-vsock" ]; then
  stage "vhost-device-vsock $VHD_VERSION"
  command -v cargo >/dev/null || { echo "ci/qemu/setup.sh: cargo is needed for vhost-device-vsock" >&2; exit 1; }
  CARGO_TARGET_DIR="$C/target-vhd" cargo install -q vhost-device-vsock --version "$VHD_VERSION" --locked --root "$C"
  rm -rf "$C/target-vhd"
fi

# ---- kernel and modules
KVER=${KVER:-$(cat "$C/kernel/current" 2>/dev/null || true)}
if [ -z "$KVER" ] || [ ! -f "$C/kernel/$KVER/modules/vmmio_cmdline.ko" ]; then
  need_root_bookworm
  stage "kernel"
  backports; apt_update
  KVER=$(apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb12-cloud-amd64$' \
    | awk '{print $1}' | sed 's/^linux-headers-//' | sort -V | tail -1)
  [ -n "$KVER" ] || { echo "ci/qemu/setup.sh: no 6.12 cloud kernel in the apt lists" >&2; exit 1; }
  apt-get install -y -qq --no-install-recommends "linux-headers-$KVER" busybox-static cpio >/dev/null
  k="$C/kernel/$KVER"; rm -rf "$k"; mkdir -p "$k/modules" "$k/deb"
  (cd "$k/deb" && apt-get download -qq "linux-image-$KVER-unsigned")
  dpkg -x "$k"/deb/linux-image-"$KVER"-unsigned_*.deb "$k/x"
  cp "$k/x/boot/vmlinuz-$KVER" "$k/vmlinuz"
  md="$k/x/lib/modules/$KVER/kernel"
  for m in drivers/virtio/virtio_mmio net/vmw_vsock/vsock net/vmw_vsock/vmw_vsock_virtio_transport_common \
           net/vmw_vsock/vmw_vsock_virtio_transport drivers/misc/nsm; do
    xz -dc "$md/$m.ko.xz" > "$k/modules/$(basename "$m").ko"
  done
  rm -rf "$k/x" "$k/deb"
  stage "vmmio_cmdline.ko"
  b="$k/vmmio-build"; rm -rf "$b"; cp -r "$repo/eif/guest/vmmio" "$b"
  make -s -C "/usr/src/linux-headers-$KVER" M="$b" modules
  strip --strip-debug "$b/vmmio_cmdline.ko"
  # The module is the stage's completion mark: it appears whole or not at all.
  cp "$b/vmmio_cmdline.ko" "$k/modules/vmmio_cmdline.ko.tmp"
  mv "$k/modules/vmmio_cmdline.ko.tmp" "$k/modules/vmmio_cmdline.ko"
  rm -rf "$b"
fi
# The guest has no libc: its busybox must be the static one.
if ! dpkg -s busybox-static >/dev/null 2>&1 || ! command -v cpio >/dev/null; then
  need_root_bookworm; apt_update; apt-get install -y -qq busybox-static cpio >/dev/null
fi
echo "$KVER" > "$C/kernel/current"
stage "ready: $C (kernel $KVER)"
