"""POST /v1/batch runs in slices: a 100,000-op batch must not hold its loop
(issue 9 item 3: no request holds a loop for more than a few milliseconds).
One loop thread, so that every probe shares the batch's loop."""
import json
import socket
import struct
import threading
import time

from harness import build_request, uid

SERVER_ARGS = ["--threads", "1"]
ASAN = True

OPS = 100000


def batch_body(sku, n=OPS):
    return "\n".join(json.dumps(dict(op="adjust", flow="erp", id="%s-%d" % (sku, i), sku=sku,
                                     location="L1", delta=1, reason="received"))
                     for i in range(n)).encode()


def batch_request(body):
    return build_request("POST", "/v1/batch", ["Content-Type: application/x-ndjson"],
                         body)


def on_hand(c, sku):
    return c.pos(sku, "L1")["on_hand"]


def test_loop_serves_others_between_slices(srv):
    c = srv.client("json")
    stock = uid("sku")
    c.adjust(stock, "L1", 100)
    sku = uid("sku")
    body = batch_request(batch_body(sku))
    conn = srv.conn(timeout=60)
    done = {}

    def run_batch():
        conn.send(body)
        done["sent"] = time.monotonic()
        done["resp"] = conn.read_response("POST")
        done["end"] = time.monotonic()

    t = threading.Thread(target=run_batch)
    t.start()
    while "sent" not in done:
        time.sleep(0.001)
    time.sleep(0.02)  # the server has the whole body by now and is running it
    probe = srv.client("json")
    probe.get("/healthz")  # connect outside the measurement
    lat = []
    answered = []
    n = 0
    while "end" not in done and n < 200:
        t0 = time.monotonic()
        r = probe.get("/healthz")
        assert r.status == 200, r
        r = probe.reserve([dict(sku=stock, location="L1", qty=1)], ttl_ms=60000)
        assert r.status == 201, r
        t1 = time.monotonic()
        lat.append(t1 - t0)
        answered.append(t1)
        n += 1
    t.join(60)
    r = done["resp"]
    assert r.status == 200 and r.data["applied"] == OPS, r
    took = done["end"] - done["sent"]
    before = [a for a in answered if a < done["end"]]
    print("batch %.3f s; %d probe pairs during it, slowest %.1f ms"
          % (took, len(before), 1000 * max(lat) if lat else -1))
    assert before, "no probe was answered before the batch ended (%.3f s)" % took
    # How long a probe waits is a benchmark's figure, not a test's: on a loaded
    # machine any bound flakes. The behaviour is that probes are answered
    # while the batch still runs, which a loop held by the batch cannot do.
    assert on_hand(c, sku) == OPS


def dense_broken_body(sku, n=99000):
    """A JSON array of n ops thick with small values (the pre-scan's slowest
    bytes: about 1 ms per MiB, about 57 MiB here) that never closes: the
    whole body is scanned before it is refused, and no op may run."""
    extra = {"k%d" % k: [1, 2, 3, 4, 5, 6, 7, 8] for k in range(15)}
    ops = (json.dumps(dict(op="adjust", flow="erp", id="%s-%d" % (sku, i), sku=sku,
                           location="L1", delta=1, reason="received", x=extra))
           for i in range(n))
    return ("[" + ",".join(ops)).encode()


def test_loop_serves_others_during_the_pre_scan(srv):
    """The pre-scan of a 64 MiB body runs in slices too: requests on the same
    loop are answered while it runs, and a body refused at its last byte
    still changes nothing."""
    c = srv.client("json")
    sku = uid("sku")
    body = build_request("POST", "/v1/batch", ["Content-Type: application/json"],
                         dense_broken_body(sku))
    conn = srv.conn(timeout=60)
    done = {}

    def run_batch():
        conn.send(body)
        done["sent"] = time.monotonic()
        done["resp"] = conn.read_response("POST")
        done["end"] = time.monotonic()

    probe = srv.client("json")
    probe.get("/healthz")  # connect outside the measurement
    t = threading.Thread(target=run_batch)
    t.start()
    while "sent" not in done:
        time.sleep(0.001)
    time.sleep(0.01)  # the last of the body is read by now; the scan runs
    answered = []
    while "end" not in done and len(answered) < 2000:
        r = probe.get("/healthz")
        assert r.status == 200, r
        answered.append(time.monotonic())
    t.join(60)
    r = done["resp"]
    assert r.status == 400 and r.data["error"]["code"] == "bad_request", r
    assert "Malformed batch at byte" in r.data["error"]["message"], r
    before = [a for a in answered if a < done["end"]]
    print("refused %.3f s after the send; %d probes answered during the scan"
          % (done["end"] - done["sent"], len(before)))
    assert before, "no probe was answered while the pre-scan ran"
    assert c.position(sku, "L1").status == 404  # no op ran


def test_pipelined_behind_a_batch_in_order(srv):
    sku = uid("sku")
    conn = srv.conn(timeout=60)
    conn.send(batch_request(batch_body(sku, 5000)) + build_request("GET", "/healthz"))
    r = conn.read_response("POST")
    assert r.status == 200 and r.data["applied"] == 5000, r
    r = conn.read_response("GET")
    assert r.status == 200, r
    conn.close()


def test_close_mid_batch_leaves_the_server_healthy(srv):
    c = srv.client("json")
    for how in ("reset", "close"):
        sku = uid("sku")
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        s.sendall(batch_request(batch_body(sku)))
        time.sleep(0.05)
        if how == "reset":  # RST: the server notices while the batch runs
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        r = c.get("/healthz")
        assert r.status == 200, r
        # Whatever ran is a prefix of the ops; the server is still whole.
        deadline = time.time() + 10
        while time.time() < deadline:
            a = c.position(sku, "L1")
            r = c.get("/healthz")
            assert r.status == 200, r
            time.sleep(0.05)
            if a.status == 200 and a.data["on_hand"] == c.position(sku, "L1").data["on_hand"]:
                break
    # A batch after them runs whole.
    sku = uid("sku")
    conn = srv.conn(timeout=60)
    conn.send(batch_request(batch_body(sku, 3000)))
    r = conn.read_response("POST")
    assert r.status == 200 and r.data["applied"] == 3000, r
    conn.close()
