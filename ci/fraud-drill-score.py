#!/usr/bin/env python3
"""Scores the drill's traffic as the online path decided it.

  fraud-drill-score.py CLIENTS SIGNALS NGINX_MAP SIDECAR TOKEN

CLIENTS is `fraud drill --write-clients`; SIGNALS the `fraud-signals`
messages (one JSON value per line) the online ingest produced for the drill's
log; NGINX_MAP the map `waf-sync --target nginx --apply` wrote from them.
Subjects are tokenized by the enclave (the sidecar's Transform API, the
same role as the ingest) so subject keys can be traced back to clients.

Two views, with the drill's definitions (recall: share of abusive clients
blocked; precision: share of blocked clients that are abusive; false-positive
rate: share of legitimate clients blocked):
  signals: every enforced block on fraud-signals (address, subnet, subject,
           address with subject);
  waf:     what the WAF enforces (address and subnet entries of the map);
           subject blocks are the application's to apply and do not count.
Prints one JSON object.
"""
import ipaddress
import json
import sys
import urllib.request


def tokens(side, token, subjects):
    out = {}
    subs = sorted(subjects)
    for i in range(0, len(subs), 500):
        chunk = subs[i:i + 500]
        body = json.dumps({"batch_input": [{"value": s, "transformation": "fraud-subject"} for s in chunk]})
        req = urllib.request.Request(f"{side}/v1/transform/encode/fraud", data=body.encode(),
                                     headers={"X-Vault-Token": token, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            res = json.load(r)
        for s, item in zip(chunk, res["data"]["batch_results"]):
            out[s] = item["encoded_value"]
    return out


def score(clients, hit):
    bots = [c for c in clients if c["bot"]]
    good = [c for c in clients if not c["bot"]]
    bots_blocked = sum(1 for c in bots if hit(c))
    good_blocked = sum(1 for c in good if hit(c))
    by_kind = {}
    for c in clients:
        k = by_kind.setdefault(c["kind"], {"clients": 0, "blocked": 0})
        k["clients"] += 1
        k["blocked"] += int(hit(c))
    blocked = bots_blocked + good_blocked
    return {
        "recall": bots_blocked / len(bots) if bots else 0.0,
        "precision": bots_blocked / blocked if blocked else 1.0,
        "false_positive_rate": good_blocked / len(good) if good else 0.0,
        "bots": len(bots), "bots_blocked": bots_blocked,
        "legitimate": len(good), "legitimate_blocked": good_blocked,
        "by_kind": by_kind,
    }


def main(argv):
    clients = json.load(open(argv[1]))
    signals = [json.loads(l) for l in open(argv[2]) if l.strip()]
    side, token = argv[4], argv[5]
    tok = tokens(side, token, {s for c in clients for s in c["subjects"]})
    enforced = [s for s in signals if s.get("action") == "block" and s.get("mode") == "enforce"]
    ips = {ipaddress.ip_address(s["key"]) for s in enforced if s["key_type"] == "ip"}
    nets = [ipaddress.ip_network(s["key"]) for s in enforced if s["key_type"] == "subnet"]
    subs = {s["key"] for s in enforced if s["key_type"] == "subject"}
    pairs = {s["key"] for s in enforced if s["key_type"] == "ip_subject"}

    def on_signals(c):
        addrs = [ipaddress.ip_address(a) for a in c["ips"]]
        if any(a in ips or any(a in n for n in nets) for a in addrs):
            return True
        return any(tok[s] in subs or any(f"{a} {tok[s]}" in pairs for a in c["ips"]) for s in c["subjects"])

    waf = []
    for line in open(argv[3]):
        line = line.strip().rstrip(";")
        if line and not line.startswith("#"):
            entry, mode = line.split()
            if mode == "enforce":
                waf.append(ipaddress.ip_network(entry))

    def at_waf(c):
        return any(ipaddress.ip_address(a) in n for a in c["ips"] for n in waf)

    print(json.dumps({"signals": score(clients, on_signals), "waf": score(clients, at_waf),
                      "signal_count": len(signals), "waf_entries": len(waf)}))


if __name__ == "__main__":
    main(sys.argv)
