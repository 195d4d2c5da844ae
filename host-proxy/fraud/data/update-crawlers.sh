#!/usr/bin/env bash
# Regenerates crawler-user-agents.txt and crawler-instances.txt from the
# crawler-user-agents package on PyPI (pass a version; default: latest).
set -euo pipefail
cd "$(dirname "$0")"
spec=crawler-user-agents${1:+==$1}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps -q -d "$tmp" "$spec"
python3 -m zipfile -e "$tmp"/crawler_user_agents-*.whl "$tmp/x"
version=$(basename "$tmp"/crawler_user_agents-*.whl | cut -d- -f2)
python3 - "$tmp/x/crawleruseragents/crawler-user-agents.json" "$version" <<'PY'
import json, sys
entries = json.load(open(sys.argv[1]))
with open("crawler-user-agents.txt", "w") as f:
    f.write("# Crawler user-agent patterns (regular expressions, one per line), from the\n"
            f"# crawler-user-agents package {sys.argv[2]} on PyPI (MIT License,\n"
            "# https://github.com/monperrus/crawler-user-agents). Regenerate with\n"
            "# host-proxy/fraud/data/update-crawlers.sh.\n")
    for e in entries:
        f.write(e["pattern"] + "\n")
with open("crawler-instances.txt", "w") as f:
    f.write("# One example user agent per pattern in crawler-user-agents.txt (same source), for the tests.\n")
    for e in entries:
        if e.get("instances"):
            f.write(e["instances"][0] + "\n")
PY
