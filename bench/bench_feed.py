#!/usr/bin/python3
"""Change feed benchmark (issue 13, item 6): events per second delivered to one SSE
consumer and to the Redis stream while reservations run at full speed (wrk, as
bench/run.sh runs them), and the lag from an adjustment's acknowledgment to its
event's delivery (p50, p99) on both.

    bench/bench_feed.py [seconds] [connections] [durability] [threads]

Starts its own redis-server (no persistence) and bin/atpd (--feed-redis-stream) on
free ports, loads the benchmark positions, runs wrk reserve.lua and, meanwhile,
bench/feed_lag.c (built here with cc): one probe adjustment every 20 ms on a
position of its own and one SSE consumer, both in C on one CLOCK_MONOTONIC, the
consumer stamping each recv() before it looks at the bytes (no JSON parsed), so
the lag is the server's, not a Python reader's. A Redis XREAD BLOCK consumer in
C too (XREADGROUP NOACK, no JSON parsed) gives the stream's figures against the
same probes. FEED_PY_REDIS=1 adds the Python XREAD consumer this file had, as
feed_redis_py_* (it parses every event: what a slow consumer sees, and a load of
its own on the server's cores). ATPD_BIN picks the server binary (default
bin/atpd). Prints "name value" lines.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def resp_read(f):
    """One RESP value from a buffered socket file."""
    line = f.readline()
    if not line:
        raise EOFError
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b"-"):
        return rest.decode()
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [resp_read(f) for _ in range(n)]
    raise ValueError(line)


def resp_cmd(sock, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)


class Counter:
    def __init__(self):
        self.events = 0
        self.first = None
        self.last = None
        self.seen = {}  # probe id -> monotonic arrival
        self.lock = threading.Lock()

    def saw(self, ev):
        now = time.monotonic()
        with self.lock:
            self.events += 1
            self.first = self.first or now
            self.last = now
            cid = ev.get("data", {}).get("cause_id", "")
            if cid.startswith("probe-"):
                self.seen[cid] = now


def redis_consumer(port, key, counter, stop):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    last = "0"
    while not stop.is_set():
        resp_cmd(s, "XREAD", "COUNT", "2000", "BLOCK", "200", "STREAMS", key, last)
        r = resp_read(f)
        if not r:
            continue
        for _stream, entries in r:
            for eid, fields in entries:
                last = eid.decode()
                counter.saw(json.loads(fields[1]))
    s.close()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))] if xs else float("nan")


def main():
    secs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    conns = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    mode = sys.argv[3] if len(sys.argv) > 3 else "batch"
    threads = sys.argv[4] if len(sys.argv) > 4 else None
    tmp = tempfile.mkdtemp(prefix="atpd-bench-feed-")
    lag_bin = os.path.join(tmp, "feed_lag")
    subprocess.check_call(["cc", "-O2", "-pthread", "-o", lag_bin,
                           os.path.join(ROOT, "bench", "feed_lag.c")])
    rport, aport = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    key = "atpd:bench:feed"
    atpd = subprocess.Popen([os.environ.get("ATPD_BIN") or os.path.join(ROOT, "bin", "atpd"),
                             "--listen",
                             "127.0.0.1:%d" % aport, "--data-dir", os.path.join(tmp, "d"),
                             "--durability", mode, "--access-log", "off", "--redis",
                             "redis://127.0.0.1:%d" % rport, "--feed-redis-stream", key]
                            + (["--threads", threads] if threads else []),
                            stderr=open(os.path.join(tmp, "atpd.log"), "wb"))
    try:
        import http.client
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", aport, timeout=5)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        subprocess.check_call([sys.executable, os.path.join(ROOT, "bench", "load_positions.py"),
                               "127.0.0.1:%d" % aport, "1000000000"], stdout=subprocess.DEVNULL)
        c = http.client.HTTPConnection("127.0.0.1", aport, timeout=5)
        c.request("GET", "/v1/changes/snapshot")
        start = json.loads(c.getresponse().read())["cursor"]
        time.sleep(1.0)  # the sink mirrors the loading first
        red = Counter()
        stop = threading.Event()
        py_redis = os.environ.get("FEED_PY_REDIS") == "1"
        th = threading.Thread(target=redis_consumer, args=(rport, key, red, stop))
        if py_redis:
            th.start()
        time.sleep(0.3)
        red.events = 0
        acks_path = os.path.join(tmp, "acks")
        lag = subprocess.Popen([lag_bin, "127.0.0.1", str(aport), start, str(secs), "20",
                                acks_path, str(rport), key], stdout=subprocess.PIPE, text=True)
        time.sleep(0.2)
        wrk = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs, "--latency", "-s",
                              os.path.join(ROOT, "bench", "wrk", "reserve.lua"),
                              "http://127.0.0.1:%d" % aport, "--", "json",
                              "feed%d" % int(time.time())],
                             capture_output=True, text=True)
        out, _ = lag.communicate()
        time.sleep(1.0)  # let the Redis consumer drain
        stop.set()
        if py_redis:
            th.join()
        acks = {}
        with open(acks_path) as f:
            for line in f:
                i, ns = line.split()
                acks["probe-" + i] = int(ns) / 1e9
        rps = [l.split()[1] for l in wrk.stdout.splitlines() if l.startswith("wrk_rps")]
        print("wrk_reserve_rps", rps[0] if rps else "?")
        print("wrk_connections", conns)
        sys.stdout.write(out)
        if py_redis:
            span = (red.last - red.first) if red.first and red.last else secs
            lags = [(red.seen[k] - acks[k]) * 1000 for k in acks if k in red.seen]
            print("feed_redis_py_events", red.events)
            print("feed_redis_py_events_per_s", int(red.events / max(span, 1e-9)))
            print("feed_redis_py_lag_p50_ms", "%.2f" % pct(lags, 50))
            print("feed_redis_py_lag_p99_ms", "%.2f" % pct(lags, 99))
            print("feed_redis_py_probes_seen", "%d/%d" % (len(lags), len(acks)))
    finally:
        atpd.terminate()
        atpd.wait(20)
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
