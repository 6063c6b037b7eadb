#!/usr/bin/python3
"""Shopify push benchmark (issue 14, item 6): positions per cost point and the push's
lag during a burst of changes under a 1,000 points/s budget.

    bench/bench_shopify_push.py [changes] [positions] [locations]

Starts the fake Shopify (tests/fake_shopify/server.js: restore rate 1,000 points/s,
bucket 2,000, every document validated against the Admin schema) and bin/atpd with
`--shopify` (push.points_per_second 1000) on free ports, maps `positions` positions
(SKUs times `locations` locations; defaults 100,000 changes over 2,000 positions at 10
locations), lets atpd learn Shopify's levels with one change each, then sends the burst
through POST /v1/batch (NDJSON, 10,000 ops a request) as fast as atpd takes it, while
sampling GET /v1/shopify/status every 20 ms. Prints "name value" lines:

  burst_s            time to send the burst
  drain_s            from the burst's first op until nothing is pending and Shopify
                     holds every newest value
  calls, quantities  inventorySetQuantities calls during the burst, quantities they set
  points             cost points Shopify charged for them (actualQueryCost)
  positions_per_point  quantities / points
  lag_ms_p50, lag_ms_max  the status' lag_ms (age of the oldest change not pushed)
                     over the samples taken while anything was pending
  throttled          THROTTLED answers of the fake during the burst
"""
import json
import os
import random
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "blackbox"))

from harness import Server, uid  # noqa: E402
from shopify_fake import FakeShopify  # noqa: E402


def main():
    changes = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    positions = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    nloc = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    nsku = max(1, positions // nloc)
    fake = FakeShopify(restore_rate=1000, bucket_max=2000).start()
    tmp = tempfile.mkdtemp(prefix="atpd-bench-shopify-")
    cfg = os.path.join(tmp, "shopify.json")
    with open(cfg, "w") as f:
        json.dump({"shop": "bench.myshopify.com", "admin_url": fake.admin_url,
                   "webhook_secrets": ["s"], "push": {"enabled": True,
                                                       "points_per_second": 1000}}, f)
    srv = Server(args=["--durability", "batch", "--access-log", "off", "--shopify", cfg],
                 env={"ATPD_SHOPIFY_TOKEN": fake.token})
    try:
        c = srv.client(validate=False)
        rnd = random.Random(14)
        skus = [(uid("sku"), rnd.randint(2 ** 53, 2 ** 62)) for _ in range(nsku)]
        locs = [("L%d" % k, rnd.randint(2 ** 53, 2 ** 62)) for k in range(nloc)]
        r = c.put("/v1/shopify/mappings", {
            "items": [{"sku": s, "variant_id": i + 1, "inventory_item_id": i} for s, i in skus],
            "locations": [{"location": l, "shopify_location_id": g} for l, g in locs]})
        assert r.status == 200, r
        fake.set_levels([(i, g, 0) for _, i in skus for _, g in locs])
        pos = [(s, l) for s, _ in skus for l, _ in locs]

        def send(ops_list):
            for i in range(0, len(ops_list), 10000):
                ops = [json.dumps(dict(op="adjust", flow="erp", id=uid("a"), sku=s, location=l,
                                       delta=1, reason="received"))
                       for s, l in ops_list[i:i + 10000]]
                r = c.post("/v1/batch", raw="\n".join(ops).encode(),
                           content_type="application/x-ndjson")
                assert r.status == 200 and r.data["applied"] == len(ops), r

        def status():
            return c.get("/v1/shopify/status").data["push"]

        def drained():
            return status()["pending"] == 0

        send(pos)  # warm: atpd reads and pushes every level once
        deadline = time.time() + 120
        while not drained() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        log_from = len(fake.log())
        throttled0 = fake.state()["throttled"]
        burst = [pos[rnd.randrange(len(pos))] for _ in range(changes)]
        t0 = time.time()
        send(burst)
        burst_s = time.time() - t0
        lags = []
        deadline = time.time() + 300
        while time.time() < deadline:
            st = status()
            if st["pending"] == 0:
                break
            lags.append(st["lag_ms"])
            time.sleep(0.02)
        drain_s = time.time() - t0
        log = [e for e in fake.log(log_from) if e.get("operation") == "AtpdPush"]
        ok = [e for e in log if e["outcome"] == "ok"]
        qty = sum(len(e["variables"]["input"]["quantities"]) for e in ok)
        points = sum(e.get("actual_cost") or 0 for e in log)
        lags.sort()
        print("changes %d" % changes)
        print("positions %d" % len(pos))
        print("burst_s %.2f" % burst_s)
        print("drain_s %.2f" % drain_s)
        print("calls %d" % len(log))
        print("quantities %d" % qty)
        print("points %d" % points)
        print("positions_per_point %.1f" % (qty / points if points else 0))
        print("lag_ms_p50 %d" % (lags[len(lags) // 2] if lags else 0))
        print("lag_ms_max %d" % (lags[-1] if lags else 0))
        print("throttled %d" % (fake.state()["throttled"] - throttled0))
    finally:
        problem = srv.stop()
        if problem:
            print(problem, file=sys.stderr)
        fake.stop()


if __name__ == "__main__":
    main()
