#!/usr/bin/python3
"""Loads the 1000 benchmark positions (see bench/wrk/common.lua) into a running atpd.

    load_positions.py HOST:PORT [on_hand_delta]

One POST /v1/adjustments per position (reason "received", source "bench"), over one
keep-alive connection, then checks that every position answers GET /v1/availability
with at least that much available. Exits non-zero on any non-2xx answer.
"""
import http.client
import json
import sys
import time

POSITIONS = 1000


def sku(i):
    return "BENCH-%03d" % (i // 10)


def location(i):
    return "L%d" % (i % 10)


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    delta = int(sys.argv[2]) if len(sys.argv) > 2 else 1000000000
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    tag = "bench-load-%d" % int(time.time() * 1000)
    for i in range(POSITIONS):
        body = json.dumps({"id": "%s-%d" % (tag, i), "sku": sku(i), "location": location(i),
                           "delta": delta, "reason": "received", "source": "bench"})
        conn.request("POST", "/v1/adjustments", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit("adjustment %d: %d %s" % (i, r.status, data[:300]))
    for i in range(POSITIONS):
        conn.request("GET", "/v1/availability?sku=%s&location=%s" % (sku(i), location(i)))
        r = conn.getresponse()
        data = r.read()
        if r.status != 200 or json.loads(data)["available"] < delta:
            sys.exit("position %d: %d %s" % (i, r.status, data[:300]))
    conn.close()
    print("loaded %d positions with on_hand +%d" % (POSITIONS, delta), file=sys.stderr)


if __name__ == "__main__":
    main()
