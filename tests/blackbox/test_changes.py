"""Issue 13, CONTRACT.md section 10: the change feed.

Pull (GET /v1/changes in JSON, msgpack and NDJSON, long poll), the snapshot, and
the guarantees: every mutation kind once, in order, with its identifiers; only
durable changes; resume from a cursor after kill -9 of the server and of the
consumer; snapshot-then-tail misses and repeats nothing.
"""
import json
import os
import subprocess
import socket
import threading
import time

import pytest

from harness import Server, expect_error, formats, free_port, uid

SERVER_ARGS = ["--durability", "batch"]
ASAN = True

TYPES = {
    "atpd.position.changed", "atpd.reservation.held", "atpd.reservation.committed",
    "atpd.reservation.released", "atpd.reservation.expired", "atpd.reservation.fulfilled",
    "atpd.reservation.amended", "atpd.reservation.extended", "atpd.group.changed",
    "atpd.group.deleted", "atpd.count.applied",
}


def pull(c, after=None, **params):
    if after is not None:
        params["after"] = after
    r = c.get("/v1/changes", params=params or None)
    assert r.status == 200, r
    return r.data["events"], r.data["cursor"]


def tail(c, after=None, **params):
    """Every event after `after`, paging until an empty page."""
    events = []
    while True:
        page, cursor = pull(c, after, limit=1000, **params)
        events += page
        if not page:
            return events, cursor
        after = cursor


def check_event(ev, source_port=None):
    assert ev["specversion"] == "1.0"
    assert ev["type"] in TYPES, ev
    assert len(ev["sequence"]) == 20 and ev["sequence"].isdigit()
    lsn, index = int(ev["sequence"]) // 10000, int(ev["sequence"]) % 10000
    assert ev["id"] == "%d-%d" % (lsn, index)
    assert ev["source"].startswith("atpd://")
    assert ev["datacontenttype"] == "application/json"
    assert ev["time"].endswith("Z")
    assert "cause" in ev["data"]


def mine(events, sku):
    """The events that name sku (a position, a reservation line, a count)."""
    out = []
    for e in events:
        d = e["data"]
        if d.get("position", {}).get("sku") == sku:
            out.append(e)
        elif any(l["sku"] == sku for l in d.get("reservation", {}).get("lines", [])):
            out.append(e)
    return out


def summary(e):
    d = e["data"]
    return (e["type"], d["cause"])


def test_every_mutation_once_in_order_with_identifiers(srv):
    c = srv.client()
    _, start = pull(c, limit=1)
    _, start = tail(c)
    sku, grp = uid("sku"), uid("grp")
    h = ["X-Request-Id: req-adj-1"]
    assert c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=20,
                                          reason="received", source="erp", ref="PO-77"),
                  headers=h).status == 200
    cid = uid("cnt")
    assert c.post("/v1/counts", dict(id=cid, sku=sku, location="L2", on_hand=5,
                                     counted_at=int(time.time() * 1000), source="wms")).status == 200
    assert c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=1,
                                           source="erp")).status == 200
    assert c.put("/v1/groups/" + grp, dict(locations=["L1", "L2"], source="erp")).status == 200
    r1, r2, r3 = uid("r"), uid("r"), uid("r")
    assert c.post("/v1/reservations", dict(id=r1, lines=[dict(sku=sku, location="L1", qty=3)],
                                           order_ref="#1001", channel="web",
                                           customer_id="cust-9")).status == 201
    assert c.post("/v1/reservations/%s/extend" % r1, dict(ttl_ms=600000)).status == 200
    assert c.post("/v1/reservations/%s/commit" % r1, dict(order_id="gid://Order/1")).status == 200
    assert c.post("/v1/reservations/%s/fulfil" % r1, dict(fulfillment_id="ful-1",
                                                          lines=[dict(sku=sku, location="L1",
                                                                      qty=1)])).status == 200
    assert c.post("/v1/reservations/%s/amend" % r1, dict(
        amend_id="am-1", release=[dict(sku=sku, location="L1", qty=1)],
        add=[dict(sku=sku, location="L2", qty=1)])).status == 200
    assert c.post("/v1/reservations", dict(id=r2, lines=[dict(sku=sku, location="L2",
                                                              qty=1)])).status == 201
    assert c.post("/v1/reservations/%s/release" % r2, dict(release_id="rel-1",
                                                           reason="cancelled")).status == 200
    assert c.post("/v1/reservations", dict(id=r3, ttl_ms=1000,
                                           lines=[dict(sku=sku, location="L1", qty=1)])).status == 201
    batch = json.dumps([dict(op="adjust", flow="pos", id=uid("b"), sku=sku, location="L2",
                             delta=-1, reason="sale", ref="till-4")]).encode()
    r = c.post("/v1/batch", raw=batch, content_type="application/json")
    assert r.status == 200 and r.data["applied"] == 1, r
    assert c.delete("/v1/groups/" + grp + "?source=erp").status == 204
    deadline = time.time() + 15
    while c.get("/v1/reservations/" + r3).data["status"] != "expired":
        assert time.time() < deadline, "r3 did not expire"
        time.sleep(0.1)

    events, _ = tail(c, start)
    for e in events:
        check_event(e)
    seqs = [e["sequence"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert len({e["id"] for e in events}) == len(events)
    got = [summary(e) for e in events if e["type"].startswith("atpd.group")
           or mine([e], sku)]
    want = [
        ("atpd.position.changed", "adjust"),
        ("atpd.position.changed", "count"), ("atpd.count.applied", "count"),
        ("atpd.position.changed", "safety_stock"),
        ("atpd.group.changed", "group"),
        ("atpd.position.changed", "reserve"), ("atpd.reservation.held", "reserve"),
        ("atpd.reservation.extended", "extend"),
        ("atpd.position.changed", "commit"), ("atpd.reservation.committed", "commit"),
        ("atpd.position.changed", "fulfil"), ("atpd.reservation.fulfilled", "fulfil"),
    ]
    assert got[:len(want)] == want, got
    rest = got[len(want):]
    # amend: its position changes then the reservation; then r2 held and released;
    # r3 held; the batch adjustment; the group deletion; r3's expiry (which a slow
    # run may see before the last two: it comes from the ticker, 1 s after r3).
    assert rest[-1] == ("atpd.reservation.expired", "expire") or \
        ("atpd.reservation.expired", "expire") in rest[-4:], rest
    assert ("atpd.reservation.amended", "amend") in rest
    assert ("atpd.reservation.released", "release") in rest
    assert ("atpd.group.deleted", "group") in rest

    by = {}
    for e in events:
        by.setdefault(summary(e), []).append(e["data"])
    adj = [d for d in by[("atpd.position.changed", "adjust")] if d["position"]["sku"] == sku]
    assert adj[0]["request_id"] == "req-adj-1" and adj[0]["ref"] == "PO-77"
    assert adj[0]["source"] == "erp" and adj[0]["reason"] == "received"
    assert adj[0]["deltas"]["on_hand"] == 20
    bat = adj[-1]
    assert bat["flow"] == "pos" and bat["source"] == "pos" and bat["ref"] == "till-4"
    assert bat["reason"] == "sale" and bat["deltas"]["on_hand"] == -1
    cnt = by[("atpd.count.applied", "count")][-1]
    assert cnt["id"] == cid and cnt["source"] == "wms" and cnt["position"]["on_hand"] == 5
    held = by[("atpd.reservation.held", "reserve")]
    h1 = [d for d in held if d["reservation"]["id"] == r1][0]
    assert (h1["order_ref"], h1["channel"], h1["customer_id"]) == ("#1001", "web", "cust-9")
    assert h1["reservation"]["status"] == "held"
    com = by[("atpd.reservation.committed", "commit")][-1]
    assert com["order_id"] == "gid://Order/1" and com["order_ref"] == "#1001"
    ful = by[("atpd.reservation.fulfilled", "fulfil")][-1]
    assert ful["fulfillment_id"] == "ful-1"
    assert ful["reservation"]["lines"][0]["fulfilled"] == 1
    am = by[("atpd.reservation.amended", "amend")][-1]
    assert am["amend_id"] == "am-1"
    rel = by[("atpd.reservation.released", "release")][-1]
    assert rel["release_id"] == "rel-1" and rel["reason"] == "cancelled"
    assert rel["reservation"]["status"] == "released"
    exp = by[("atpd.reservation.expired", "expire")][-1]
    assert exp["reservation"]["id"] == r3 and exp["reservation"]["status"] == "expired"
    grp_ev = by[("atpd.group.changed", "group")][-1]
    assert grp_ev["group"] == {"name": grp, "locations": ["L1", "L2"]}

    # Every event of the sku, once: the deltas sum to the position's figures.
    for loc in ("L1", "L2"):
        p = c.get("/v1/availability", params=dict(sku=sku, location=loc)).data
        d = [e["data"] for e in events if e["type"] == "atpd.position.changed"
             and e["data"]["position"]["sku"] == sku and e["data"]["position"]["location"] == loc]
        for k in ("on_hand", "reserved", "committed", "safety_stock"):
            assert sum(x["deltas"][k] for x in d) == p[k], (loc, k, d, p)
        assert max(x["position"]["version"] for x in d) == p["version"]


@formats("json", "msgpack")
def test_formats_carry_the_same_events(srv, fmt):
    c = srv.client(fmt)
    sku = uid("fmt")
    c.adjust(sku, "L1", 5)
    c.adjust(sku, "L1", 6)
    j = srv.client()
    _, cur = pull(j)
    events, _ = tail(j)
    after = events[-2]["sequence"] if len(events) >= 2 else None
    a = pull(c, events[-3]["sequence"])
    b = pull(j, events[-3]["sequence"])
    assert a == b
    r = j.get("/v1/changes", params=dict(after=events[-3]["sequence"]),
              accept="application/x-ndjson", check_ct=False)
    assert r.status == 200 and r.content_type.startswith("application/x-ndjson"), r
    lines = [json.loads(x) for x in r.body.decode().splitlines()]
    assert lines == b[0]
    assert r.headers["x-cursor"] == b[1]
    assert after is not None


def test_cursor_limit_and_filters(srv):
    c = srv.client()
    _, start = tail(c)
    a, b = uid("fa"), uid("fb")
    c.adjust(a, "L1", 1)
    c.adjust(b, "L2", 2)
    c.adjust(a, "L2", 3)
    rid = uid("r")
    assert c.post("/v1/reservations", dict(id=rid, lines=[dict(sku=a, location="L1",
                                                               qty=1)])).status == 201
    one, cur = pull(c, start, limit=1)
    assert len(one) == 1 and cur == one[0]["sequence"]
    two, cur2 = pull(c, cur, limit=1)
    assert two[0]["sequence"] > cur and cur2 == two[0]["sequence"]
    ev, _ = pull(c, start, sku_prefix=a)
    assert [e["data"].get("position", {}).get("location") for e in ev] == ["L1", "L2", "L1", None]
    ev, _ = pull(c, start, location="L2")
    assert [e["data"]["position"]["sku"] for e in ev] == [b, a]
    ev, _ = pull(c, start, type="atpd.reservation.held")
    assert [e["data"]["reservation"]["id"] for e in ev] == [rid]
    ev, _ = pull(c, start, type="atpd.reservation.")
    assert [e["type"] for e in ev] == ["atpd.reservation.held"]
    # A filter that skips everything still moves the cursor past what it read.
    ev, cur = pull(c, start, sku_prefix="no-such-sku")
    assert ev == [] and cur > start
    for bad in (dict(after="x"), dict(after="1" * 21), dict(limit=0), dict(limit=10001),
                dict(wait_ms=30001), dict(wait_ms=-1)):
        expect_error(c.get("/v1/changes", params=bad), 400, "bad_request",
                     field=list(bad)[0])


def test_long_poll_wakes_on_a_new_event_and_times_out(srv):
    c = srv.client()
    _, cur = tail(c)
    t = time.monotonic()
    ev, cur2 = pull(c, cur, wait_ms=300)
    dt = time.monotonic() - t
    assert ev == [] and cur2 == cur and 0.28 <= dt < 2.0, dt
    sku = uid("lp")

    def later():
        time.sleep(0.4)
        srv.client().adjust(sku, "L1", 7)
    th = threading.Thread(target=later)
    th.start()
    t = time.monotonic()
    ev, cur3 = pull(c, cur, wait_ms=10000)
    dt = time.monotonic() - t
    th.join()
    assert 0.3 <= dt < 3.0, dt
    assert [e["data"]["position"]["sku"] for e in ev] == [sku]
    assert cur3 == ev[-1]["sequence"]
    # A filtered wait ignores events that do not pass and answers on one that does.
    other = uid("lp-other")

    def two():
        time.sleep(0.2)
        srv.client().adjust(other, "L1", 1)
        time.sleep(0.3)
        srv.client().adjust(sku, "L1", 1)
    th = threading.Thread(target=two)
    th.start()
    t = time.monotonic()
    ev, _ = pull(c, cur3, wait_ms=10000, sku_prefix=sku)
    dt = time.monotonic() - t
    th.join()
    assert [e["data"]["position"]["sku"] for e in ev] == [sku] and dt >= 0.45, (ev, dt)
    # Several parked pulls on one loop and the other keep the loops serving.
    res = []

    def waiter():
        res.append(pull(srv.client(), ev[-1]["sequence"], wait_ms=5000))
    ths = [threading.Thread(target=waiter) for _ in range(6)]
    for x in ths:
        x.start()
    time.sleep(0.2)
    assert c.get("/v1/availability", params=dict(sku=sku, location="L1")).status == 200
    c.adjust(sku, "L1", 1)
    for x in ths:
        x.join()
    assert len(res) == 6 and all(len(r[0]) == 1 for r in res)


def test_only_durable_changes_are_served(binary):
    """An adjustment whose fsync is still running is not in the feed yet; once it is
    acknowledged it is."""
    srv = Server(binary=binary, args=["--durability", "batch"],
                 env={"ATPD_TEST_FSYNC_DELAY_MS": "400"})
    try:
        c = srv.client()
        _, cur = tail(c)
        sku = uid("dur")
        done = []
        th = threading.Thread(target=lambda: done.append(srv.client().adjust(sku, "L1", 3)))
        th.start()
        time.sleep(0.15)
        ev, _ = pull(c, cur)
        assert [e for e in ev if e["data"].get("position", {}).get("sku") == sku] == []
        assert not done
        th.join()
        assert done[0]["position"]["sku"] == sku
        ev, _ = pull(c, cur)
        assert [e["data"]["position"]["sku"] for e in ev] == [sku]
    finally:
        assert srv.stop() is None


def test_resume_after_kill_9_of_server_and_consumer(binary):
    srv = Server(binary=binary, args=["--durability", "batch"])
    try:
        c = srv.client()
        sku = uid("k9")
        for i in range(20):
            c.adjust(sku, "L1", i + 1)
        # The consumer read ten events, saved its cursor and died.
        first, saved = pull(c, limit=10)
        acked = []
        for i in range(20, 50):
            c.adjust(sku, "L1", i + 1)
            acked.append(i + 1)
        srv.kill()
        srv.stderr_f.close()
        srv.start()
        c = srv.client()
        rest, _ = tail(c, saved)
        deltas = [e["data"]["deltas"]["on_hand"] for e in first + rest]
        assert deltas == list(range(1, 51)), deltas
        assert len({e["id"] for e in first + rest}) == 50
        # New events continue the sequence after the restart.
        c.adjust(sku, "L1", 1000)
        more, _ = pull(c, rest[-1]["sequence"])
        assert [e["data"]["deltas"]["on_hand"] for e in more] == [1000]
        assert more[0]["sequence"] > rest[-1]["sequence"]
    finally:
        assert srv.stop() is None


def test_snapshot_then_tail_misses_and_repeats_nothing(srv):
    c = srv.client()
    skus = [uid("sn") for _ in range(3)]
    for s in skus:
        c.adjust(s, "L1", 100)
    stop = threading.Event()

    def churn():
        w = srv.client()
        i = 0
        while not stop.is_set():
            s = skus[i % 3]
            w.adjust(s, "L1", 1)
            w.post("/v1/reservations", dict(id=uid("r"), lines=[dict(sku=s, location="L1",
                                                                     qty=1)]))
            i += 1
    th = threading.Thread(target=churn)
    th.start()
    time.sleep(0.2)
    r = c.get("/v1/changes/snapshot")
    assert r.status == 200, r
    snap = {}
    for e in r.data["events"]:
        check_event_snapshot(e, r.data["cursor"])
        p = e["data"]["position"]
        snap[(p["sku"], p["location"])] = dict(p)
    time.sleep(0.2)
    stop.set()
    th.join()
    events, _ = tail(c, r.data["cursor"])
    state = {k: dict(v) for k, v in snap.items()}
    for e in events:
        if e["type"] != "atpd.position.changed":
            continue
        p = e["data"]["position"]
        k = (p["sku"], p["location"])
        base = snap.get(k)
        if base is not None and p["version"] <= base["version"]:
            continue  # already in the snapshot
        st = state.setdefault(k, dict(on_hand=0, reserved=0, committed=0, safety_stock=0,
                                      version=0))
        for f in ("on_hand", "reserved", "committed", "safety_stock"):
            st[f] += e["data"]["deltas"][f]
        st["version"] = max(st["version"], p["version"])
    for s in skus:
        now = c.get("/v1/availability", params=dict(sku=s, location="L1")).data
        got = state[(s, "L1")]
        for f in ("on_hand", "reserved", "committed", "safety_stock", "version"):
            assert got[f] == now[f], (s, f, got, now)
    # NDJSON: the events a line, then the cursor.
    r = c.get("/v1/changes/snapshot", accept="application/x-ndjson", check_ct=False)
    lines = [json.loads(x) for x in r.body.decode().splitlines()]
    assert lines[-1] == {"cursor": r.headers["x-cursor"]}
    assert all(x["type"] == "atpd.position.changed" for x in lines[:-1])


def check_event_snapshot(e, cursor):
    assert e["specversion"] == "1.0" and e["type"] == "atpd.position.changed"
    assert e["sequence"] == cursor and e["id"].startswith("snapshot-")
    assert e["data"]["cause"] == "snapshot"


def test_changes_need_the_read_role(binary, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-read-0123456789 read\n")
    srv = Server(binary=binary, args=["--tokens", str(tokens)])
    try:
        c = srv.client()
        expect_error(c.get("/v1/changes"), 401, "unauthorized")
        c = srv.client(token="tok-read-0123456789")
        assert c.get("/v1/changes").status == 200
        assert c.get("/v1/changes/snapshot").status == 200
    finally:
        assert srv.stop() is None


# --- Server-Sent Events ---------------------------------------------------------------

class Sse:
    """A raw SSE consumer: the head, then events parsed as they come."""

    def __init__(self, port, path="/v1/changes/stream", headers=(), rcvbuf=None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        req = "GET %s HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" % path
        for h in headers:
            req += h + "\r\n"
        self.sock.sendall((req + "\r\n").encode())
        self.buf = b""
        self.closed = False

    def head(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = dict((k.lower(), v.strip()) for k, v in (l.split(":", 1) for l in lines[1:]))
        return status, hdrs

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            self.closed = True
            raise EOFError
        self.buf += data

    def frame(self):
        """The next frame as (id, data dict) or ("comment", text)."""
        while b"\n\n" not in self.buf:
            self._fill()
        raw, self.buf = self.buf.split(b"\n\n", 1)
        text = raw.decode()
        if text.startswith(":"):
            return ("comment", text)
        fields = dict(l.split(": ", 1) for l in text.split("\n"))
        return (fields["id"], json.loads(fields["data"]))

    def events(self, n):
        out = []
        while len(out) < n:
            f = self.frame()
            if f[0] != "comment":
                out.append(f)
        return out

    def close(self):
        self.sock.close()


def test_sse_live_and_resume_with_last_event_id(srv):
    c = srv.client()
    _, start = tail(c)
    s = Sse(srv.port, "/v1/changes/stream?after=" + start)
    status, hdrs = s.head()
    assert status == 200 and hdrs["content-type"] == "text/event-stream", hdrs
    assert "content-length" not in hdrs
    sku = uid("sse")
    for i in range(5):
        c.adjust(sku, "L1", i + 1)
    got = s.events(5)
    assert [d["data"]["deltas"]["on_hand"] for _, d in got] == [1, 2, 3, 4, 5]
    assert all(i == d["sequence"] for i, d in got)
    for _, d in got:
        check_event(d)
    # The consumer dies after the third event and comes back with its last id.
    s.close()
    for i in range(5, 8):
        c.adjust(sku, "L1", i + 1)
    s = Sse(srv.port, headers=["Last-Event-ID: " + got[2][0]])
    assert s.head()[0] == 200
    again = s.events(5)
    assert [d["data"]["deltas"]["on_hand"] for _, d in again] == [4, 5, 6, 7, 8]
    # The same as the pull feed.
    pulled, _ = pull(c, got[2][0], limit=5)
    assert [d for _, d in again] == pulled
    s.close()
    # Filters apply to the stream too.
    s = Sse(srv.port, "/v1/changes/stream?after=%s&type=atpd.reservation.held" % start)
    assert s.head()[0] == 200
    rid = uid("r")
    assert c.post("/v1/reservations", dict(id=rid, lines=[dict(sku=sku, location="L1",
                                                               qty=1)])).status == 201
    (_, ev), = s.events(1)
    assert ev["type"] == "atpd.reservation.held" and ev["data"]["reservation"]["id"] == rid
    s.close()
    r = srv.client(validate=False).get("/v1/changes/stream",
                                       headers=["Last-Event-ID: nope"])
    expect_error(r, 400, "bad_request", field="Last-Event-ID")


def test_sse_heartbeat(binary):
    srv = Server(binary=binary, env={"ATPD_TEST_SSE_HEARTBEAT_MS": "300"})
    try:
        _, cur = tail(srv.client())
        s = Sse(srv.port, "/v1/changes/stream?after=" + cur)
        assert s.head()[0] == 200
        t = time.monotonic()
        assert s.frame() == ("comment", ": heartbeat")
        assert 0.2 < time.monotonic() - t < 3
        s.close()
    finally:
        assert srv.stop() is None


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_sse_slow_consumer_is_cut_off_and_rss_stays_flat(srv, variant):
    """30000 events (about 15 MB as SSE) wait in the journal; a consumer that never
    reads asks for all of them. The server sends until the consumer is 1 MiB behind,
    cuts it, and its memory does not grow by what was not read."""
    c = srv.client()
    _, start = tail(c)
    sku = uid("slow")
    sent = 0
    for b in range(6):
        ops = [dict(op="adjust", flow="erp", id=uid("s"), sku=sku, location="L1", delta=1,
                    reason="received", ref="x" * 100) for _ in range(5000)]
        r = c.post("/v1/batch", raw=json.dumps(ops).encode(), content_type="application/json")
        assert r.status == 200 and r.data["applied"] == 5000, r
        sent += 5000
    time.sleep(0.5)
    before = rss_kib(srv.proc.pid)
    slow = Sse(srv.port, "/v1/changes/stream?after=" + start, rcvbuf=4096)
    assert slow.head()[0] == 200
    time.sleep(1.5)
    after = rss_kib(srv.proc.pid)
    # ASan's quarantine keeps freed buffers resident: a looser bound there.
    bound_kib = (24 if variant == "asan" else 6) * 1024
    assert after - before < bound_kib, (before, after)
    # Now read: what was buffered, then the close (the server cut it).
    received = 0
    try:
        while True:
            f = slow.frame()
            if f[0] != "comment":
                received += 1
    except EOFError:
        pass
    assert slow.closed and 0 < received < sent, (received, sent)
    # The consumer resumes from its last id (again whenever it is cut off for
    # falling behind) and gets the rest exactly once.
    got, last = [], start
    while len(got) < sent:
        fast = Sse(srv.port, "/v1/changes/stream?sku_prefix=%s" % sku,
                   headers=["Last-Event-ID: " + last])
        assert fast.head()[0] == 200
        try:
            while len(got) < sent:
                f = fast.frame()
                if f[0] != "comment":
                    got.append(f)
                    last = f[0]
        except EOFError:
            pass
        fast.close()
    assert [d["data"]["position"]["version"] for _, d in got] == list(range(1, sent + 1))


def test_flows_and_dead_letters_are_events(srv):
    c = srv.client()
    _, start = tail(c)
    flow, sku = uid("erp"), uid("fl")
    assert c.post("/v1/flows/%s/pause" % flow, dict(reason="cutover", by="alice")).status == 200
    r = c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=4,
                                       reason="received", source=flow))
    assert r.status == 202, r
    assert c.post("/v1/flows/%s/resume" % flow, dict(by="alice")).status == 200
    # A rejected batch op becomes a dead letter.
    bad = json.dumps([dict(op="adjust", flow=flow, id=uid("b"), sku=sku, location="L1",
                           delta=0, reason="received")]).encode()
    r = c.post("/v1/batch", raw=bad, content_type="application/json")
    assert r.status == 200 and r.data["rejected"] == 1, r
    deadline = time.time() + 5
    while True:
        events, _ = tail(c, start)
        types = [e["type"] for e in events]
        if "atpd.dead_letter.created" in types or time.time() > deadline:
            break
        time.sleep(0.05)
    mine_ = [e for e in events if e["type"].startswith(("atpd.flow.", "atpd.dead_letter."))
             or e["data"].get("position", {}).get("sku") == sku]
    # Journal order: the resume runs the queue, then records the flow running.
    assert [e["type"] for e in mine_] == [
        "atpd.flow.paused", "atpd.flow.queued", "atpd.position.changed",
        "atpd.flow.resumed", "atpd.dead_letter.created"], [e["type"] for e in mine_]
    paused, queued, applied, resumed, dl = (e["data"] for e in mine_)
    assert paused["flow"] == flow and paused["paused"] is True and paused["reason"] == "cutover"
    assert paused["by"] == "alice"
    assert queued["flow"] == flow and queued["path"] == "/v1/adjustments"
    assert resumed["paused"] is False
    assert applied["deltas"]["on_hand"] == 4 and applied["source"] == flow
    assert dl["dead_letter"]["flow"] == flow and dl["dead_letter"]["status"] == "open"
    assert dl["dead_letter"]["error"]["code"] == "bad_request"
    ev, _ = pull(c, start, type="atpd.flow.")
    assert [e["type"] for e in ev] == ["atpd.flow.paused", "atpd.flow.queued",
                                        "atpd.flow.resumed"]


@pytest.mark.parametrize("retention_ms", [None, 300])
def test_retention_keeps_segments_past_snapshots_and_expires_old_cursors(binary,
                                                                        retention_ms):
    """Tiny segments and a snapshot that covers them all: with the default retention
    (72 h) the feed keeps the trimmed-by-snapshot segments; with 300 ms they go and
    an old cursor is 410 cursor_expired."""
    env = {"ATPD_TEST_JOURNAL_SEGMENT_BYTES": "4096"}
    if retention_ms:
        env["ATPD_TEST_FEED_RETENTION_MS"] = str(retention_ms)
    srv = Server(binary=binary, args=["--durability", "batch"], env=env)
    try:
        c = srv.client()
        sku = uid("ret")
        for i in range(60):
            c.adjust(sku, "L1", 1)
        first, _ = pull(c, limit=1)
        old = first[0]["sequence"]
        time.sleep(0.6)
        for i in range(60):
            c.adjust(sku, "L1", 1)
        r = c.post("/admin/snapshot")
        assert r.status == 200, r
        if retention_ms is None:
            ev, _ = tail(c, old)
            assert len([e for e in ev if e["data"]["position"]["sku"] == sku]) == 119
            return
        r = c.get("/v1/changes", params=dict(after=old))
        expect_error(r, 410, "cursor_expired", field="after")
        assert "/v1/changes/snapshot" in r.error["message"]
        s = Sse(srv.port, headers=["Last-Event-ID: " + old])
        status, _ = s.head()
        assert status == 410
        s.close()
        # Without a cursor the feed starts at the oldest retained event.
        ev, _ = tail(c)
        assert 0 < len(ev) < 120 and ev[0]["sequence"] > old
        assert ev[-1]["data"]["position"]["version"] == 120
    finally:
        assert srv.stop() is None


# --- the Redis Streams sink ------------------------------------------------------------

class Redis:
    """A redis-server of the test's own on a free port, no persistence."""

    def __init__(self):
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def cli(self, *args):
        return subprocess.check_output(["redis-cli", "-p", str(self.port)] + list(args),
                                       stderr=subprocess.DEVNULL).decode().strip()

    def stream(self, key):
        """The events of the stream, as dicts, in order."""
        out = subprocess.check_output(["redis-cli", "-p", str(self.port), "--no-raw",
                                       "XRANGE", key, "-", "+"]).decode()
        raw = subprocess.check_output(["redis-cli", "-p", str(self.port), "XRANGE", key,
                                       "-", "+"]).decode().split("\n")
        events = [json.loads(x) for x in raw if x.startswith("{")]
        assert out is not None
        return events

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def wait_for(fn, timeout=15.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def test_redis_stream_mirrors_the_feed_through_restarts(binary):
    redis = Redis()
    key = "atpd:feed:" + uid("k")
    srv = Server(binary=binary, args=["--durability", "batch", "--redis",
                                      "redis://127.0.0.1:%d" % redis.port,
                                      "--feed-redis-stream", key])
    try:
        c = srv.client()
        sku = uid("rs")
        for i in range(30):
            c.adjust(sku, "L1", i + 1)

        def same():
            # source names the listening address, which a restart here changes
            feed, _ = tail(c)
            got = redis.stream(key)
            strip = [dict(e, source=None) for e in got]
            return got if feed and strip == [dict(e, source=None) for e in feed] else None
        wait_for(same, what="the stream to equal the feed")
        cursor = redis.cli("GET", key + ":cursor")
        feed, last = tail(c)
        assert cursor == feed[-1]["sequence"]
        # Redis goes away mid-stream: requests do not wait for it.
        redis.stop()
        t = time.monotonic()
        for i in range(30, 60):
            c.adjust(sku, "L1", i + 1)
        assert time.monotonic() - t < 5
        # It comes back empty (no persistence): the sink mirrors the whole feed again.
        redis.start()
        wait_for(same, what="the stream to catch up after Redis came back")
        # atpd killed -9 and restarted: the sink goes on after its cursor, repeating
        # nothing.
        srv.kill()
        srv.stderr_f.close()
        srv.start()
        c = srv.client()
        for i in range(60, 70):
            c.adjust(sku, "L1", i + 1)
        wait_for(same, what="the stream to follow after a restart")
        got = redis.stream(key)
        assert len({e["id"] for e in got}) == len(got)
        deltas = [e["data"]["deltas"]["on_hand"] for e in got
                  if e["data"].get("position", {}).get("sku") == sku]
        assert deltas == list(range(1, 71))
    finally:
        try:
            assert srv.stop() is None
        finally:
            redis.stop()


def test_redis_stream_needs_redis():
    import subprocess as sp
    from harness import ROOT
    r = sp.run([os.path.join(ROOT, "bin", "atpd"), "--feed-redis-stream", "k"],
               capture_output=True, timeout=10)
    assert r.returncode != 0 and b"--feed-redis-stream needs --redis" in r.stderr


def test_sigterm_ends_open_streams_at_once(binary):
    srv = Server(binary=binary)
    s = Sse(srv.port)
    assert s.head()[0] == 200
    t = time.monotonic()
    problem = srv.stop()
    assert problem is None, problem
    assert time.monotonic() - t < 1.5
    with pytest.raises(EOFError):
        while True:
            s.frame()
