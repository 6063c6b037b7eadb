"""Issue 11: snapshots as clients and operators see them (items 3, 4, 5; tests 8d, 8e, 8g).

POST/GET /admin/snapshot (contract section 7, role ops), the journal trimmed after
snapshots, the shutdown snapshot, restore from Redis into an empty data dir (a
replacement machine), Redis stopped or killed during a snapshot, and kill -9 of atpd
during a local snapshot. A real redis-server is started by this module on a free port.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from harness import Server, expect_error, formats, free_port, uid

SERVER_ARGS = ["--durability", "batch"]


class Redis:
    """redis-server on a free port without persistence; kill() and start() keep the port."""

    def __init__(self):
        self.port = free_port()
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--bind", "127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise AssertionError("redis-server did not start on port %d" % self.port)

    def cli(self, *args):
        try:
            out = subprocess.run(["redis-cli", "-p", str(self.port)] + list(args),
                                 capture_output=True, timeout=5)
            return out.stdout.decode().strip()
        except subprocess.TimeoutExpired:
            return None

    def url(self):
        return "redis://127.0.0.1:%d" % self.port

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def redis():
    r = Redis()
    yield r
    r.kill()


def restart(srv, env=None):
    if env is not None:
        srv.env = env
    try:
        srv.stderr_f.close()
    except Exception:  # noqa: BLE001
        pass
    srv.start()


def stop_ok(srv):
    problem = srv.stop()
    assert problem is None, problem


def adj(c, sku, loc, delta, aid=None):
    return c.post("/v1/adjustments", dict(id=aid or uid("a"), sku=sku, location=loc,
                                          delta=delta, reason="received", source="erp"))


def metric(c, name):
    text = c.get("/metrics").body.decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def snapshot_files(srv):
    d = os.path.join(srv.data_dir, "snapshots")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def post_in_background(srv, path="/admin/snapshot"):
    out = {}

    def run():
        c = srv.client(validate=True)
        try:
            out["resp"] = c.post(path)
        except Exception as e:  # noqa: BLE001 - a killed server closes it
            out["error"] = e
        finally:
            c.close()
    t = threading.Thread(target=run)
    t.start()
    return t, out


# --- POST and GET /admin/snapshot ---------------------------------------------------

@formats()
def test_post_and_get_snapshot(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sn")
    assert adj(c, sku, "L1", 7).status == 200
    r = c.post("/admin/snapshot")
    assert r.status == 200, r
    s = r.data
    for key in ("snapshot_id", "lsn", "positions", "bytes", "ms"):
        assert key in s, s
    assert s["positions"] >= 1 and s["bytes"] > 128 and s["lsn"] >= 1, s
    assert s["snapshot_id"].startswith("%d-" % s["lsn"]), s
    assert s["taken_here"] is True and s["redis"] == "off", s
    g = c.get("/admin/snapshot")
    assert g.status == 200, g
    assert g.data["snapshot_id"] == s["snapshot_id"] and g.data["bytes"] == s["bytes"], g
    assert "snap-%020d.atps" % s["lsn"] in snapshot_files(srv)
    # A later one has a later LSN; two generations are kept.
    assert adj(c, sku, "L1", 1).status == 200
    r2 = c.post("/admin/snapshot")
    assert r2.status == 200 and r2.data["lsn"] > s["lsn"], r2
    assert len([f for f in snapshot_files(srv) if f.startswith("snap-")]) == 2
    assert metric(c, "atpd_snapshot_lsn") == r2.data["lsn"]
    assert metric(c, "atpd_snapshots_total") >= 2


def test_get_snapshot_404_when_none(binary):
    srv = Server(binary=binary)
    try:
        c = srv.client()
        expect_error(c.get("/admin/snapshot"), 404, "not_found")
        assert metric(c, "atpd_snapshots_total") == 0
    finally:
        stop_ok(srv)


def test_snapshot_needs_ops_role(binary):
    tmp = tempfile.mkdtemp(prefix="atpd-snap-tokens-")
    tokens = {"read": "tok-read-0123456789ab", "checkout": "tok-checkout-0123456789",
              "integration": "tok-integration-0123456789", "ops": "tok-ops-0123456789ab"}
    path = os.path.join(tmp, "tokens")
    with open(path, "w") as f:
        for role, tok in tokens.items():
            f.write("%s %s\n" % (tok, role))
    srv = Server(binary=binary, args=["--tokens", path])
    try:
        for fmt in ("json", "msgpack"):
            anon = srv.client(fmt)
            expect_error(anon.post("/admin/snapshot"), 401, "unauthorized")
            expect_error(anon.get("/admin/snapshot"), 401, "unauthorized")
            for role in ("read", "checkout", "integration"):
                c = srv.client(fmt, token=tokens[role])
                expect_error(c.post("/admin/snapshot"), 403, "forbidden")
                expect_error(c.get("/admin/snapshot"), 403, "forbidden")
            ops = srv.client(fmt, token=tokens["ops"])
            r = ops.post("/admin/snapshot")
            assert r.status == 200, r
            assert ops.get("/admin/snapshot").status == 200
    finally:
        stop_ok(srv)
        shutil.rmtree(tmp, ignore_errors=True)


def test_other_connections_served_during_a_snapshot(binary):
    """The snapshot runs on its own thread: with one loop, a read on another
    connection is answered while POST /admin/snapshot waits."""
    srv = Server(binary=binary, threads=1, env={"ATPD_TEST_SNAPSHOT_DELAY_MS": "1500"})
    try:
        c = srv.client()
        sku = uid("busy")
        assert adj(c, sku, "L1", 5).status == 200
        t, out = post_in_background(srv)
        time.sleep(0.3)
        t0 = time.monotonic()
        assert c.get("/v1/availability", params=dict(sku=sku, location="L1")).status == 200
        r = c.reserve([dict(sku=sku, location="L1", qty=1)])
        assert r.status == 201, r
        assert time.monotonic() - t0 < 1.0, "the loop waited for the snapshot"
        assert t.is_alive(), "the snapshot did not take the test delay"
        t.join(30)
        assert out["resp"].status == 200, out
    finally:
        stop_ok(srv)


# --- the journal trimmed; shutdown and periodic snapshots --------------------------

def test_journal_segments_removed_after_snapshots(binary):
    # The change feed keeps segments for --feed-retention-h past a snapshot
    # (test_changes.py); a retention of 1 ms leaves the snapshots' trim alone.
    srv = Server(binary=binary, env={"ATPD_TEST_JOURNAL_SEGMENT_BYTES": "4096",
                                     "ATPD_TEST_FEED_RETENTION_MS": "1"})
    try:
        c = srv.client()
        jdir = os.path.join(srv.data_dir, "journal")
        sku = uid("trim")
        for i in range(80):
            assert adj(c, sku, "L%d" % (i % 5), 1).status == 200
        before = [f for f in os.listdir(jdir) if f.endswith(".journal")]
        assert len(before) >= 5, before
        assert c.post("/admin/snapshot").status == 200
        for i in range(10):
            assert adj(c, sku, "L1", 1).status == 200
        assert c.post("/admin/snapshot").status == 200
        after = [f for f in os.listdir(jdir) if f.endswith(".journal")]
        assert len(after) < len(before), (before, after)
        # what was trimmed is still restorable: snapshot plus journal after it
        srv.kill()
        restart(srv)
        c = srv.client()
        p = c.pos(sku, "L1")
        assert p["on_hand"] == 16 + 10, p
    finally:
        stop_ok(srv)


def test_shutdown_takes_a_snapshot(binary):
    srv = Server(binary=binary)
    try:
        c = srv.client()
        sku = uid("term")
        assert adj(c, sku, "L1", 9).status == 200
        assert snapshot_files(srv) == []
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        files = [f for f in snapshot_files(srv) if f.startswith("snap-")]
        assert len(files) == 1, files
        restart(srv)
        c = srv.client()
        assert c.pos(sku, "L1")["on_hand"] == 9
        assert metric(c, "atpd_restore_records") == 0  # nothing left to replay
        assert metric(c, 'atpd_restore_source{source="local"}') == 1
        g = c.get("/admin/snapshot")
        assert g.status == 200 and g.data["taken_here"] is False, g
    finally:
        stop_ok(srv)


def test_periodic_snapshots(binary):
    srv = Server(binary=binary, args=["--snapshot-interval-s", "1"])
    try:
        c = srv.client()
        assert adj(c, uid("per"), "L1", 1).status == 200
        deadline = time.time() + 5
        while time.time() < deadline and not metric(c, "atpd_snapshots_total"):
            time.sleep(0.1)
        assert metric(c, "atpd_snapshots_total") >= 1
        assert metric(c, "atpd_snapshot_age_seconds") < 5
    finally:
        stop_ok(srv)


# --- 8d: a replacement machine restores from Redis ----------------------------------

def test_restore_from_redis_into_empty_data_dir(binary, redis):
    redis.cli("FLUSHALL")
    a = Server(binary=binary, args=["--redis", redis.url()])
    b = None
    try:
        c = a.client()
        sku = uid("rr")
        aid = uid("a")
        assert adj(c, sku, "L1", 20, aid=aid).status == 200
        assert adj(c, sku, "L2", 5).status == 200
        rid = uid("r")
        held = c.reserve([dict(sku=sku, location="L1", qty=3)], rid=rid, ttl_ms=600000)
        assert held.status == 201, held
        committed = c.reserve([dict(sku=sku, location="L2", qty=2)])
        assert committed.status == 201
        assert c.post("/v1/reservations/%s/commit" % committed.data["id"],
                      dict(order_id="o-1")).status == 200
        gname = uid("g")
        assert c.put("/v1/groups/" + gname, dict(locations=["L2", "L1"],
                                                 source="erp")).status == 200
        s = c.post("/admin/snapshot")
        assert s.status == 200 and s.data["redis"] == "pushed", s
        assert redis.cli("GET", "atpd:latest") == s.data["snapshot_id"]
        a.kill()  # the machine is gone; only Redis has its state
        b = Server(binary=binary, args=["--redis", redis.url()])
        cb = b.client()
        p1, p2 = cb.pos(sku, "L1"), cb.pos(sku, "L2")
        assert (p1["on_hand"], p1["reserved"]) == (20, 3), p1
        assert (p2["on_hand"], p2["committed"]) == (5, 2), p2
        r = cb.get("/v1/reservations/" + rid)
        assert r.status == 200 and r.data["status"] == "held", r
        assert r.data["expires_at"] == held.data["expires_at"], (r.data, held.data)
        # idempotency ids came back: replays, not new changes
        rep = adj(cb, sku, "L1", 20, aid=aid)
        assert rep.status == 200 and rep.data.get("replayed") is True, rep
        rep = cb.reserve([dict(sku=sku, location="L1", qty=3)], rid=rid, ttl_ms=600000)
        assert rep.data.get("replayed") is True, rep
        assert cb.pos(sku, "L1")["on_hand"] == 20
        g = cb.get("/v1/groups/" + gname)
        assert g.status == 200 and g.data["locations"] == ["L2", "L1"], g
        assert metric(cb, 'atpd_restore_source{source="redis"}') == 1
        assert any(f.startswith("snap-") for f in snapshot_files(b))
        # and B goes on journaling after the snapshot's LSN
        assert adj(cb, sku, "L1", 1).status == 200
        b.kill()
        restart(b)
        assert b.client().pos(sku, "L1")["on_hand"] == 21
    finally:
        a.kill()
        a.stderr_f.close()
        if b:
            stop_ok(b)


# --- 8e: Redis stopped or killed during a snapshot ----------------------------------

def _redis_fault_server(binary, redis):
    return Server(binary=binary, args=["--redis", redis.url()],
                  env={"ATPD_TEST_SNAPSHOT_DELAY_MS": "400",
                       "ATPD_TEST_REDIS_TIMEOUT_MS": "300"})


def test_redis_stopped_during_a_snapshot(binary, redis):
    redis.cli("FLUSHALL")
    srv = _redis_fault_server(binary, redis)
    try:
        c = srv.client()
        sku = uid("stop")
        assert adj(c, sku, "L1", 10).status == 200
        t, out = post_in_background(srv)
        time.sleep(0.15)
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            # serving and journaling go on meanwhile
            r = c.reserve([dict(sku=sku, location="L1", qty=1)])
            assert r.status == 201, r
            t.join(30)
            expect_error(out["resp"], 503, "unavailable")
            assert "redis" in out["resp"].error["message"], out["resp"].error
            assert metric(c, 'atpd_snapshot_failures_total{target="redis"}') >= 1
            assert metric(c, "atpd_snapshot_redis_pending") == 1
            assert metric(c, 'atpd_snapshot_failures_total{target="local"}') == 0
            assert c.get("/readyz").status == 200
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        r = c.post("/admin/snapshot")
        assert r.status == 200 and r.data["redis"] == "pushed", r
        assert redis.cli("GET", "atpd:latest") == r.data["snapshot_id"]
        assert metric(c, "atpd_snapshot_redis_pending") == 0
        assert_no_leftover_chunks(redis)
    finally:
        stop_ok(srv)


def assert_no_leftover_chunks(redis):
    """Every snapshot key in Redis belongs to a listed snapshot: a push that
    failed midway left chunks without a manifest, and the next push (here of a
    newer snapshot) deleted them."""
    listed = set(redis.cli("LRANGE", "atpd:snapshots", "0", "-1").split())
    keys = [k for k in redis.cli("KEYS", "atpd:snap:*").split() if k]
    ids = {k.split(":")[2] for k in keys}
    assert keys and ids <= listed, (ids, listed)
    assert redis.cli("SMEMBERS", "atpd:pushing") == ""


def test_redis_killed_during_a_snapshot(binary, redis):
    redis.cli("FLUSHALL")
    srv = _redis_fault_server(binary, redis)
    try:
        c = srv.client()
        sku = uid("kill")
        assert adj(c, sku, "L1", 10).status == 200
        t, out = post_in_background(srv)
        time.sleep(0.15)
        redis.kill()
        try:
            r = c.reserve([dict(sku=sku, location="L1", qty=1)])
            assert r.status == 201, r
            t.join(30)
            expect_error(out["resp"], 503, "unavailable")
            assert metric(c, 'atpd_snapshot_failures_total{target="redis"}') >= 1
            assert adj(c, sku, "L1", 1).status == 200
        finally:
            redis.start()
        # the retry with backoff (1 s, then 2 s) pushes it by itself
        deadline = time.time() + 8
        while time.time() < deadline and metric(c, "atpd_snapshot_redis_pending") != 0:
            time.sleep(0.2)
        assert metric(c, "atpd_snapshot_redis_pending") == 0
        assert redis.cli("GET", "atpd:latest")
        r = c.post("/admin/snapshot")
        assert r.status == 200 and r.data["redis"] == "pushed", r
    finally:
        stop_ok(srv)


# --- 8g: kill -9 of atpd during a local snapshot -----------------------------------

def test_kill_during_local_snapshot_keeps_previous_and_journal(binary):
    srv = Server(binary=binary, env={"ATPD_TEST_SNAPSHOT_DELAY_MS": "1500"})
    try:
        c = srv.client()
        sku = uid("k9")
        assert adj(c, sku, "L1", 10).status == 200
        first = c.post("/admin/snapshot")
        assert first.status == 200, first
        # acknowledged after the first snapshot: only in the journal
        assert adj(c, sku, "L1", 5).status == 200
        rid = uid("r")
        assert c.reserve([dict(sku=sku, location="L1", qty=4)], rid=rid).status == 201
        t, out = post_in_background(srv)
        deadline = time.time() + 5
        while time.time() < deadline and not any(
                f.startswith(".tmp-") for f in snapshot_files(srv)):
            time.sleep(0.02)
        assert any(f.startswith(".tmp-") for f in snapshot_files(srv)), snapshot_files(srv)
        assert adj(c, sku, "L2", 3).status == 200  # during the snapshot
        srv.kill()
        t.join(10)
        restart(srv, env={})
        c = srv.client()
        p = c.pos(sku, "L1")
        assert (p["on_hand"], p["reserved"]) == (15, 4), p
        assert c.pos(sku, "L2")["on_hand"] == 3
        assert c.get("/v1/reservations/" + rid).data["status"] == "held"
        assert not any(f.startswith(".tmp-") for f in snapshot_files(srv))
        assert metric(c, 'atpd_restore_source{source="local"}') == 1
        g = c.get("/admin/snapshot")
        assert g.data["snapshot_id"] == first.data["snapshot_id"], g
    finally:
        stop_ok(srv)
