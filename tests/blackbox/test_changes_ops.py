"""Issue 13, the change feed's operations: its figures in /metrics (the feed's
and the Redis sink's), the snapshot of many positions in bounded memory, and
the events' source.
"""
import json
import re
import threading
import time

from harness import Server, expect_error, uid
from test_changes import Redis, Sse, pull, rss_kib, tail, wait_for

SERVER_ARGS = ["--durability", "batch"]


def metrics(c):
    """name{labels} -> value for every sample of /metrics."""
    out = {}
    for line in c.get("/metrics", check_ct=False).body.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def batch_adjust(c, sku_fmt, n, ref=""):
    """n adjustments in /v1/batch requests of 5000."""
    done = 0
    while done < n:
        k = min(5000, n - done)
        ops = [dict(op="adjust", flow="erp", id=uid("b"), sku=sku_fmt % (done + i),
                    location="L1", delta=1, reason="received", ref=ref or None)
               for i in range(k)]
        for o in ops:
            if o["ref"] is None:
                del o["ref"]
        r = c.post("/v1/batch", raw=json.dumps(ops).encode(),
                   content_type="application/json")
        assert r.status == 200 and r.data["applied"] == k, r
        done += k


def test_feed_and_sink_figures_in_metrics(binary):
    redis = Redis()
    key = "atpd:feed:" + uid("m")
    env = {"ATPD_TEST_JOURNAL_SEGMENT_BYTES": "4096", "ATPD_TEST_FEED_RETENTION_MS": "300"}
    srv = Server(binary=binary, args=["--durability", "batch", "--redis",
                                      "redis://127.0.0.1:%d" % redis.port,
                                      "--feed-redis-stream", key], env=env)
    try:
        c = srv.client()
        sku = uid("met")
        for i in range(20):
            c.adjust(sku, "L1", 1)
        m = metrics(c)
        assert m["atpd_feed_durable_lsn"] >= 20, m
        assert 1 <= m["atpd_feed_oldest_lsn"] <= m["atpd_feed_durable_lsn"]
        assert m["atpd_feed_events_served_total{route=\"pull\"}"] == 0
        # Pull: the events answered.
        ev, cur = tail(c)
        assert len(ev) >= 20
        m = metrics(c)
        assert m["atpd_feed_events_served_total{route=\"pull\"}"] == len(ev)
        # A parked long poll is a gauge while it waits.
        got = []
        th = threading.Thread(target=lambda: got.append(
            srv.client().get("/v1/changes", params=dict(after=cur, wait_ms=5000))))
        th.start()
        wait_for(lambda: metrics(c)["atpd_feed_polls_parked"] == 1, what="a parked poll")
        c.adjust(sku, "L1", 1)
        th.join()
        assert len(got[0].data["events"]) == 1
        m = metrics(c)
        assert m["atpd_feed_polls_parked"] == 0
        assert m["atpd_feed_events_served_total{route=\"pull\"}"] == len(ev) + 1
        # Snapshot: one event per position.
        r = c.get("/v1/changes/snapshot")
        m = metrics(c)
        assert m["atpd_feed_events_served_total{route=\"snapshot\"}"] == len(r.data["events"])
        # A stream: connected while open, its events counted.
        s = Sse(srv.port, "/v1/changes/stream?after=" + cur)
        assert s.head()[0] == 200
        assert len(s.events(1)) == 1
        m = metrics(c)
        assert m["atpd_feed_streams"] == 1 and m["atpd_feed_streams_opened_total"] == 1
        assert m["atpd_feed_events_served_total{route=\"stream\"}"] == 1
        s.close()
        c.adjust(sku, "L1", 1)  # the feed's thread notices the close when it sends
        wait_for(lambda: metrics(c)["atpd_feed_streams"] == 0, what="the stream gone")
        # A consumer that does not read is cut off, and counted.
        batch_adjust(c, sku + "-%d", 10000, ref="x" * 120)
        slow = Sse(srv.port, "/v1/changes/stream?after=" + cur, rcvbuf=4096)
        assert slow.head()[0] == 200
        wait_for(lambda: metrics(c)["atpd_feed_streams_cut_total"] == 1,
                 what="the slow consumer cut")
        slow.close()
        assert metrics(c)["atpd_feed_streams"] == 0
        # The sink: everything appended, connected, no lag.
        def caught_up():
            m = metrics(c)
            return m if m["atpd_feed_redis_lag_lsn"] == 0 else None
        m = wait_for(caught_up, what="the sink to catch up")
        feed, last = tail(c)
        assert m["atpd_feed_redis_connected"] == 1
        assert m["atpd_feed_redis_appended_total"] == len(feed) >= 10020
        assert m["atpd_feed_redis_cursor"] == int(feed[-1]["sequence"])
        assert m["atpd_feed_redis_failures_total"] == 0
        # Redis gone: failures count, not connected, lag grows.
        redis.stop()
        c.adjust(sku, "L1", 1)
        m = wait_for(lambda: (lambda m: m if m["atpd_feed_redis_failures_total"] > 0
                              and m["atpd_feed_redis_connected"] == 0 else None)(metrics(c)),
                     what="the sink to notice Redis gone")
        assert m["atpd_feed_redis_lag_lsn"] >= 1
        # Back (empty): the sink mirrors the feed again and catches up.
        redis.start()
        m = wait_for(caught_up, what="the sink to catch up after Redis came back")
        assert m["atpd_feed_redis_connected"] == 1
        assert m["atpd_feed_redis_appended_total"] >= 2 * len(feed)
        # An expired cursor (the tiny segments went with the retention) is counted.
        time.sleep(0.5)
        for i in range(60):
            c.adjust(sku, "L1", 1)
        assert c.post("/admin/snapshot").status == 200
        r = c.get("/v1/changes", params=dict(after=ev[0]["sequence"]))
        expect_error(r, 410, "cursor_expired", field="after")
        m = metrics(c)
        assert m["atpd_feed_cursor_expired_total"] == 1
        assert m["atpd_feed_oldest_lsn"] > int(ev[0]["sequence"]) // 10000
    finally:
        try:
            assert srv.stop() is None
        finally:
            redis.stop()


def test_no_sink_no_sink_figures(srv):
    text = srv.client().get("/metrics", check_ct=False).body.decode()
    assert re.search(r"^atpd_feed_durable_lsn \d+$", text, re.M)
    assert "atpd_feed_redis_" not in text
