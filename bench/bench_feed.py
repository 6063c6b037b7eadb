#!/usr/bin/python3
"""Change feed benchmark (issue 13, item 6): events per second delivered to one SSE
consumer and to the Redis stream while reservations run at full speed (wrk, as
bench/run.sh runs them), and the lag from an adjustment's acknowledgment to its
event's delivery (p50, p99) on both.

    bench/bench_feed.py [seconds] [connections] [durability]

Starts its own redis-server (no persistence) and bin/atpd (--feed-redis-stream) on
free ports, loads the benchmark positions, opens one SSE consumer and one Redis
XREAD BLOCK consumer, runs wrk reserve.lua and, meanwhile, one probe adjustment
every 20 ms on a position of its own. Prints "name value" lines.
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


def sse_consumer(port, after, counter, stop):
    """Reads the stream; when the server cuts it for falling behind, resumes from
    the last id (counted in counter.cuts)."""
    last = after
    counter.cuts = 0
    while not stop.is_set():
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(("GET /v1/changes/stream HTTP/1.1\r\nHost: x\r\nLast-Event-ID: %s\r\n\r\n"
                   % last).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        buf = buf.split(b"\r\n\r\n", 1)[1]
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                data = s.recv(1 << 20)
            except socket.timeout:
                continue
            if not data:
                counter.cuts += 1
                break
            buf += data
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                for line in frame.split(b"\n"):
                    if line.startswith(b"id: "):
                        last = line[4:].decode()
                    elif line.startswith(b"data: "):
                        counter.saw(json.loads(line[6:]))
        s.close()


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
    tmp = tempfile.mkdtemp(prefix="atpd-bench-feed-")
    rport, aport = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    key = "atpd:bench:feed"
    atpd = subprocess.Popen([os.path.join(ROOT, "bin", "atpd"), "--listen",
                             "127.0.0.1:%d" % aport, "--data-dir", os.path.join(tmp, "d"),
                             "--durability", mode, "--access-log", "off", "--redis",
                             "redis://127.0.0.1:%d" % rport, "--feed-redis-stream", key],
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
        sse, red = Counter(), Counter()
        stop = threading.Event()
        ths = [threading.Thread(target=sse_consumer, args=(aport, start, sse, stop)),
               threading.Thread(target=redis_consumer, args=(rport, key, red, stop))]
        for t in ths:
            t.start()
        time.sleep(0.3)
        red.events = 0
        acks = {}

        def probe():
            pc = http.client.HTTPConnection("127.0.0.1", aport, timeout=10)
            i = 0
            end = time.monotonic() + secs
            while time.monotonic() < end:
                pid = "probe-%d" % i
                body = json.dumps(dict(id=pid, sku="PROBE", location="L1", delta=1,
                                       reason="received", source="bench"))
                pc.request("POST", "/v1/adjustments", body,
                           {"Content-Type": "application/json"})
                r = pc.getresponse()
                r.read()
                acks[pid] = time.monotonic()
                i += 1
                time.sleep(0.02)
        pt = threading.Thread(target=probe)
        t0 = time.monotonic()
        pt.start()
        wrk = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs, "--latency", "-s",
                              os.path.join(ROOT, "bench", "wrk", "reserve.lua"),
                              "http://127.0.0.1:%d" % aport, "--", "json",
                              "feed%d" % int(time.time())],
                             capture_output=True, text=True)
        pt.join()
        elapsed = time.monotonic() - t0
        time.sleep(2.0)  # let the consumers drain
        stop.set()
        for t in ths:
            t.join()
        rps = [l.split()[1] for l in wrk.stdout.splitlines() if l.startswith("wrk_rps")]
        print("wrk_reserve_rps", rps[0] if rps else "?")
        for name, cnt in (("sse", sse), ("redis", red)):
            span = (cnt.last - cnt.first) if cnt.first and cnt.last else elapsed
            lags = [(cnt.seen[k] - acks[k]) * 1000 for k in acks if k in cnt.seen]
            print("feed_%s_events" % name, cnt.events)
            print("feed_%s_events_per_s" % name, int(cnt.events / max(span, 1e-9)))
            print("feed_%s_lag_p50_ms" % name, "%.2f" % pct(lags, 50))
            print("feed_%s_lag_p99_ms" % name, "%.2f" % pct(lags, 99))
            print("feed_%s_probes_seen" % name, "%d/%d" % (len(lags), len(acks)))
        print("feed_sse_cuts", sse.cuts)
    finally:
        atpd.terminate()
        atpd.wait(20)
        redis.terminate()
        redis.wait(10)


if __name__ == "__main__":
    main()
