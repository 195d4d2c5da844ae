#!/usr/bin/env bash
# Unpacks Debian's crowdsec package (1.4.6, the anchor the fraud benchmark
# runs beside) into a cache later runs reuse, without installing it: its
# postinst registers with CrowdSec's Central API, which this machine cannot
# reach, and starts a service. Prints the unpacked root (usr/bin/crowdsec,
# usr/share/crowdsec/{hub,data}, etc/crowdsec).
set -euo pipefail
cache=${PII_CACHE_DIR:-$HOME/.cache/pii-enclave}/crowdsec
root=$cache/root
if [ ! -x "$root/usr/bin/crowdsec" ]; then
  mkdir -p "$cache"
  ( cd "$cache" && rm -f crowdsec_*.deb && apt-get download -qq crowdsec >/dev/null 2>&1 ) || {
    ( apt-get update -qq && cd "$cache" && apt-get download -qq crowdsec ) >/dev/null 2>&1
  }
  rm -rf "$root.tmp" && dpkg-deb -x "$cache"/crowdsec_*.deb "$root.tmp" && mv "$root.tmp" "$root"
  rm -f "$cache"/crowdsec_*.deb
fi
echo "$root"
