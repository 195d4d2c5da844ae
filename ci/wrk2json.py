"""Turn `wrk --latency` output (stdin) into one JSON line. Args: label conc items."""
import json
import re
import sys

label, conc, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = sys.stdin.read()


def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M)}
reqs = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, errs.groups())) if errs else 0)
print(json.dumps({
    "label": label, "concurrency": conc, "requests": total, "errors": errors,
    "req_per_s": reqs, "items_per_s": reqs * items,
    "p50_ms": pct["50"], "p90_ms": pct["90"], "p99_ms": pct["99"],
}))
