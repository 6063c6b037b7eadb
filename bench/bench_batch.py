#!/usr/bin/env python3
"""Batch ingestion over HTTP: POST /v1/batch with 1,000-op batches of adjustments and of
reservations, in NDJSON and msgpack, each figure against a fresh bin/atpd (--threads 1
by default, the HTTP benchmark's setting; --threads 2 is the product's default on two
cores). Prints one "name value" line per figure (ops/s) and its server CPU per op.

  bench/bench_batch.py [--seconds S] [--conns N] [--durability none|batch] [--bin bin/atpd]
                       [--only adjust_msgpack,...] [--driver c|python] [--perf FILE]
                       [--threads N]

Bodies are encoded before the clock starts; each connection sends one batch and waits
for its answer. The default driver is build/release/bench/bench_batch_post (C, epoll,
one thread), which posts the requests from a file written here (cached under
/tmp/atpd-bench-batch/: every run starts a fresh server, so the same ids are new to it)
and sends each request once, so no op is ever a replay. `--driver python` sends them
from Python threads: at these rates that client takes a share of the two cores.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import msgpack

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OPS = 1000
POSITIONS = 10000
DRIVER = os.path.join(ROOT, "build", "release", "bench", "bench_batch_post")
CACHE = "/tmp/atpd-bench-batch"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def request(port, body, ct):
    return (b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Type: " + ct.encode() +
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def read_response(sock, buf):
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    n = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            n = int(v)
    while len(rest) < n:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed")
        rest += chunk
    return status, rest[:n], rest[n:]


def encode(ops, fmt):
    if fmt == "ndjson":
        return b"\n".join(json.dumps(o, separators=(",", ":")).encode() for o in ops), \
            "application/x-ndjson"
    return msgpack.packb(ops, use_bin_type=True), "application/msgpack"


def make_batches(kind, fmt, count, tag):
    out = []
    for b in range(count):
        ops = []
        for i in range(OPS):
            n = b * OPS + i
            sku = "sku-%05d" % (n % POSITIONS)
            if kind == "adjust":
                ops.append(dict(op="adjust", flow="erp", id="%s-a-%d" % (tag, n), sku=sku,
                                location="L1", delta=1, reason="received"))
            else:
                ops.append(dict(op="reserve", flow="oms", id="%s-r-%d" % (tag, n),
                                lines=[dict(sku=sku, location="L1", qty=1)]))
        body, ct = encode(ops, fmt)
        out.append(request(0, body, ct))
    return out


def run_c(port, path, conns, seconds):
    """The C driver over the request file at path; ops/s."""
    out = subprocess.run([DRIVER, str(port), str(conns), str(seconds), str(OPS), path],
                         capture_output=True, text=True, errors="replace")
    if out.returncode != 0:
        raise RuntimeError("bench_batch_post failed: " + out.stderr.strip()[:500])
    if out.stderr:
        print("# " + out.stderr.strip(), file=sys.stderr)
    got = dict(line.split() for line in out.stdout.split("\n") if line)
    if int(got["non200"]):
        print("# %s batches answered non-200" % got["non200"], file=sys.stderr)
    if int(got["refused503"]):
        print("# %s batches refused with 503 (journal behind) and sent again" %
              got["refused503"], file=sys.stderr)
    return int(got["ops"]) / float(got["seconds"]), int(got["ops"])


def cpu_ticks(pid):
    """utime+stime of pid and of each of its threads (by name/tid), in clock ticks."""
    def ticks(path):
        with open(path) as f:
            f = f.read()
        name = f[f.index("(") + 1:f.rindex(")")]
        rest = f[f.rindex(")") + 2:].split()
        return name, int(rest[11]) + int(rest[12])
    total = ticks("/proc/%d/stat" % pid)[1]
    threads = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            name, t = ticks("/proc/%d/task/%s/stat" % (pid, tid))
        except OSError:
            continue
        threads["%s/%s" % (name, tid)] = t
    return total, threads


def request_file(kind, fmt, count):
    """The file of count pre-built requests for the C driver, cached."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, "%s-%s-%d.req" % (kind, fmt, count))
    if not os.path.exists(path):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            for r in make_batches(kind, fmt, count, "%s-%s" % (kind, fmt)):
                f.write(len(r).to_bytes(8, "little"))
                f.write(r)
        os.rename(tmp, path)
    return path


def run(port, batches, conns, seconds):
    """Sends batches round-robin over conns connections for up to seconds; ops/s."""
    lock = threading.Lock()
    state = {"next": 0, "ops": 0, "bad": 0}
    stop_at = time.time() + seconds

    def worker():
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        while time.time() < stop_at:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(batches):
                break
            s.sendall(batches[i])
            status, body, buf = read_response(s, buf)
            with lock:
                if status == 200:
                    state["ops"] += OPS
                else:
                    state["bad"] += 1
        s.close()

    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - t0
    if state["bad"]:
        print("# %d batches answered non-200" % state["bad"], file=sys.stderr)
    return state["ops"] / elapsed, state["ops"]


def start_server(args):
    """A fresh atpd on its own data dir, given the stock every run can take; (srv, port, data)."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="atpd-bench-batch-")
    srv = subprocess.Popen([args.bin, "--listen", "127.0.0.1:%d" % port, "--threads", str(args.threads),
                            "--data-dir", data, "--durability", args.durability,
                            "--access-log", "off",
                            # a figure's ops carry fresh ids, all kept 24 h
                            "--idempotency-max", str(min(1 << 26, args.batches * OPS + 2 * POSITIONS))],
                           stderr=open(os.path.join(data, "stderr.log"), "w"))
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    # Stock for every reservation the runs can make.
    stock = [dict(op="adjust", flow="erp", id="stock-%d" % i, sku="sku-%05d" % i,
                  location="L1", delta=10**9, reason="received") for i in range(POSITIONS)]
    body, ct = encode(stock, "msgpack")
    # The port accepts before the journal is restored: 503 until then.
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request(0, body, ct))
        status, _, _ = read_response(s, b"")
        s.close()
        if status != 503:
            break
        time.sleep(0.05)
    assert status == 200, status
    return srv, port, data


def stop_server(srv, data):
    if srv.poll() is not None:
        print("# atpd exited with %s: %s" % (srv.returncode, open(
            os.path.join(data, "stderr.log")).read()[-2000:]), file=sys.stderr)
    srv.terminate()
    srv.wait()
    if os.environ.get("KEEP_LOG"):
        shutil.copy(os.path.join(data, "stderr.log"), os.environ["KEEP_LOG"])
    shutil.rmtree(data, ignore_errors=True)  # gigabytes of journal a run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--durability", default="none")
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin", "atpd"))
    ap.add_argument("--batches", type=int, default=3000, help="encoded per figure")
    ap.add_argument("--only", default="", help="figures to run: adjust_msgpack,...")
    ap.add_argument("--driver", default="c", choices=("c", "python"))
    ap.add_argument("--perf", default="", help="perf record -g the server into FILE")
    ap.add_argument("--threads", type=int, default=1, help="the server's --threads")
    args = ap.parse_args()
    only = [x for x in args.only.split(",") if x]
    for kind in ("adjust", "reserve"):
        for fmt in ("ndjson", "msgpack"):
            if only and "%s_%s" % (kind, fmt) not in only:
                continue
            # One fresh server a figure: each starts from the same state, and the
            # reservation figures do not add up past the engine's 4M records.
            srv, port, data = start_server(args)
            try:
                figure(args, srv, port, kind, fmt)
            finally:
                stop_server(srv, data)


def figure(args, srv, port, kind, fmt):
    if args.driver == "c":
        path = request_file(kind, fmt, args.batches)
    else:
        batches = make_batches(kind, fmt, args.batches, "%s-%s" % (kind, fmt))
    perf = None
    if args.perf:
        perf = subprocess.Popen(["perf", "record", "-g", "--call-graph",
                                 "dwarf,16384", "-F", "999", "-o", args.perf,
                                 "-p", str(srv.pid)],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    cpu0, threads0 = cpu_ticks(srv.pid)
    if args.driver == "c":
        rate, ops = run_c(port, path, args.conns, args.seconds)
    else:
        rate, ops = run(port, batches, args.conns, args.seconds)
    cpu1, threads1 = cpu_ticks(srv.pid)
    if perf:
        perf.send_signal(2)
        perf.wait()
    name = "atpd_batch_%s_%s" % (kind, fmt)
    print("%s_ops %.0f" % (name, rate))
    # The server's CPU time an op (all its threads, user and system): less
    # noisy than ops/s on a shared machine, where the wall clock counts the
    # time others held the cores.
    hz = os.sysconf("SC_CLK_TCK")
    if ops:
        print("%s_cpu_us_per_op %.3f" % (name, (cpu1 - cpu0) * 1e6 / hz / ops))
        for t in sorted(threads1):
            d = threads1[t] - threads0.get(t, 0)
            if d:
                print("# %s thread %s: %.3f us/op" % (name, t, d * 1e6 / hz / ops),
                      file=sys.stderr)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
