#!/usr/bin/env python3
"""Shopify webhook intake on one thread: signed orders/create POS sales (one line each,
a sale adjustment at a mapped store) posted one at a time over one keep-alive
connection to one bin/atpd (--threads 1), each answered once its adjustment is durable.
Prints webhooks/s and the latency percentiles and the machine line that
bench/RESULTS.md records with them.

  bench/bench_shopify_webhooks.py [--count N] [--durability none|batch|always]
                                  [--skus N] [--bin bin/atpd]
                                  [--connections C --seconds S]

With --connections, wrk (bench/wrk/raw_requests.lua) sends the pre-signed webhooks
over C connections for S seconds instead, so durable answers share group commits
as Shopify's concurrent deliveries do; the rate counted is the webhooks the server
itself reports applied (GET /v1/shopify/status), replays of a wrapped-around
request list excluded.

ACCESS_LOG=on turns atpd's access log on and KEEP_TMP=1 keeps the run's folder (its
atpd.log holds each request's own handling time, to set beside the client's).

Bodies and signatures are made before the clock starts, so the client's cost is the
socket write and read; every answer is checked (200, outcome applied) after the clock.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid

# The raw HTTP client of the batch benchmark (same folder, on sys.path).
from bench_batch import free_port, read_response

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SHOP = "bench.myshopify.com"
SECRET = "bench-webhook-secret"
BASE_ID = (1 << 53) + 12345


def call(sock, buf, method, path, body=b"", headers=()):
    head = "%s %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" % (method, path)
    head += "".join(h + "\r\n" for h in headers)
    head += "Content-Length: %d\r\n\r\n" % len(body)
    sock.sendall(head.encode() + body)
    return read_response(sock, buf)


def webhook(i, skus, store):
    """The i-th POS sale: one line of one unit of a SKU at the store."""
    oid = BASE_ID + 2 * i + 1
    variant = BASE_ID + 1000000 + (i % skus)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
    body = json.dumps({
        "id": oid, "admin_graphql_api_id": "gid://shopify/Order/%d" % oid,
        "name": "#%d" % i, "created_at": at, "processed_at": at, "updated_at": at,
        "location_id": store, "source_name": "pos", "note_attributes": [],
        "cancel_reason": None,
        "line_items": [{"id": oid + 7, "variant_id": variant, "sku": "x", "quantity": 1,
                        "fulfillable_quantity": 0}]}, separators=(",", ":")).encode()
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    headers = ("X-Shopify-Topic: orders/create", "X-Shopify-Shop-Domain: " + SHOP,
               "X-Shopify-Webhook-Id: " + str(uuid.uuid4()),
               "X-Shopify-Hmac-Sha256: " + sig, "X-Shopify-API-Version: 2026-10")
    head = ("POST /v1/shopify/webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + "".join(h + "\r\n" for h in headers)
            + "Content-Length: %d\r\n\r\n" % len(body))
    return head.encode() + body


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, int(round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return "%s, %d cores, load %.1f at the start" % (cpu, os.cpu_count() or 0, load)


def applied_count(sock):
    st, ans, _ = call(sock, b"", "GET", "/v1/shopify/status")
    assert st == 200, ans
    return json.loads(ans)["webhooks"]["by_outcome"].get("applied", 0)


def run_wrk(args, tmp, port, sock, requests):
    path = os.path.join(tmp, "requests.bin")
    with open(path, "wb") as f:
        for r in requests:
            f.write(b"%d\n" % len(r) + r)
    before = applied_count(sock)
    out = subprocess.run(
        ["wrk", "-t1", "-c%d" % args.connections, "-d%ds" % args.seconds, "--latency",
         "-s", os.path.join(ROOT, "bench", "wrk", "raw_requests.lua"),
         "http://127.0.0.1:%d" % port, "--", path, "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True).stdout.decode()
    fig = dict(line.split(None, 1) for line in out.splitlines()
               if line.startswith("wrk_") and len(line.split()) == 2)
    applied = applied_count(sock) - before
    if int(fig.get("wrk_non2xx", "1")) or int(fig.get("wrk_socket_errors", "1")):
        sys.exit("wrk run void:\n" + out)
    print("connections %d" % args.connections)
    print("requests %s" % fig["wrk_requests"])
    print("webhooks_applied %d" % applied)
    print("webhooks_applied_per_s %.0f" % (applied / args.seconds))
    print("requests_per_s %s" % fig["wrk_rps"])
    print("latency_p50_ms %.3f" % (int(fig["wrk_p50_us"]) / 1000))
    print("latency_p99_ms %.3f" % (int(fig["wrk_p99_us"]) / 1000))
    print("machine %s" % machine())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--skus", type=int, default=1000)
    ap.add_argument("--durability", default="batch", choices=["none", "batch", "always"])
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin", "atpd"))
    ap.add_argument("--connections", type=int, default=0)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="atpd-bench-shopify-")
    cfg = os.path.join(tmp, "shopify.json")
    with open(cfg, "w") as f:
        json.dump({"shop": SHOP, "webhook_secrets": [SECRET]}, f)
    port = free_port()
    log = open(os.path.join(tmp, "atpd.log"), "wb")
    proc = subprocess.Popen([args.bin, "--listen", "127.0.0.1:%d" % port, "--threads", "1",
                             "--data-dir", os.path.join(tmp, "data"), "--durability",
                             args.durability, "--access-log",
                             os.environ.get("ACCESS_LOG", "off"), "--shopify", cfg],
                            stdout=log, stderr=log)
    try:
        deadline = time.time() + 15
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port))
                st, _, _ = call(sock, b"", "GET", "/readyz")
                if st == 200:
                    break
                sock.close()
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("atpd did not become ready")
            time.sleep(0.05)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        store = BASE_ID + 999
        items = [{"sku": "bench-%05d" % k, "variant_id": BASE_ID + 1000000 + k,
                  "inventory_item_id": BASE_ID + 2000000 + k} for k in range(args.skus)]
        body = json.dumps({"items": items, "locations": [
            {"location": "store-1", "shopify_location_id": store}]}).encode()
        st, ans, rest = call(sock, b"", "PUT", "/v1/shopify/mappings", body)
        assert st == 200, ans
        requests = [webhook(i, args.skus, store) for i in range(args.count)]
        if args.connections:
            return run_wrk(args, tmp, port, sock, requests)
        lat = []
        answers = []
        buf = b""
        t0 = time.perf_counter()
        for req in requests:
            t = time.perf_counter()
            sock.sendall(req)
            st, ans, buf = read_response(sock, buf)
            lat.append(time.perf_counter() - t)
            answers.append((st, ans))
        elapsed = time.perf_counter() - t0
        bad = [a for a in answers if a[0] != 200 or b'"outcome":"applied"' not in a[1]]
        if bad:
            sys.exit("%d webhooks not applied, e.g. %r" % (len(bad), bad[0]))
        lat.sort()
        rate = args.count / elapsed
        p50, p99, p999 = (percentile(lat, p) * 1000 for p in (50, 99, 99.9))
        print("webhooks %d" % args.count)
        print("webhooks_per_s %.0f" % rate)
        print("latency_p50_ms %.3f" % p50)
        print("latency_p99_ms %.3f" % p99)
        print("latency_p999_ms %.3f" % p999)
        print("machine %s" % machine())
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if os.environ.get("KEEP_TMP"):
            print("tmp %s" % tmp)


if __name__ == "__main__":
    main()
