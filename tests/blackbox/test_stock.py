"""Section 5: adjustments, counts, safety stock, groups, in both encodings."""
import subprocess

from harness import Server, check_position, expect_error, formats, now_ms, rfc3339, uid

REASONS = ("received", "sale", "return_restock", "damaged", "shrink", "correction",
           "transfer_in", "transfer_out", "other")


def adj_body(sku, loc="L1", delta=5, **kw):
    b = dict(id=uid("adj"), sku=sku, location=loc, delta=delta, reason="received", source="erp")
    b.update(kw)
    return b


@formats()
def test_adjustment_creates_and_applies(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    b = adj_body(sku, delta=12, ref="PO-7", occurred_at=now_ms() - 1000)
    r = c.post("/v1/adjustments", b)
    assert r.status == 200, r
    a, p = r.data["adjustment"], r.data["position"]
    assert a == dict(id=b["id"], applied=True, absorbed=False), a
    check_position(p)
    assert (p["sku"], p["location"], p["on_hand"], p["available"]) == (sku, "L1", 12, 12), p
    assert "replayed" not in r.data, r.data
    total = 12
    for reason in REASONS:
        d = -1 if reason in ("sale", "damaged", "shrink", "transfer_out") else 1
        r = c.post("/v1/adjustments", adj_body(sku, delta=d, reason=reason))
        assert r.status == 200, (reason, r)
        total += d
        assert r.data["position"]["on_hand"] == total, r.data
    # on_hand may go negative after offline sales
    r = c.post("/v1/adjustments", adj_body(sku, delta=-(total + 3), reason="sale", source="pos"))
    assert r.status == 200 and r.data["position"]["on_hand"] == -3, r
    # shortfall = max(0, reserved + committed - on_hand) = 3 with on_hand -3
    assert r.data["position"]["available"] == 0 and r.data["position"]["shortfall"] == 3, r.data


@formats()
def test_adjustment_replay_and_mismatch(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    b = adj_body(sku, delta=4)
    first = c.post("/v1/adjustments", b)
    assert first.status == 200, first
    again = c.post("/v1/adjustments", b)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert again.data["adjustment"] == first.data["adjustment"], again.data
    assert again.data["position"] == first.data["position"], \
        "replay returns the original position: %r vs %r" % (again.data, first.data)
    assert c.pos(sku, "L1")["on_hand"] == 4, "replay changed state"
    expect_error(c.post("/v1/adjustments", dict(b, delta=5)), 422, "idempotency_mismatch")
    expect_error(c.post("/v1/adjustments", dict(b, reason="other")), 422, "idempotency_mismatch")
    assert c.pos(sku, "L1")["on_hand"] == 4


@formats()
def test_adjustment_validation(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    b = adj_body(sku)
    for f in ("id", "sku", "location", "delta", "reason", "source"):
        bb = dict(b, id=uid("adj"))
        del bb[f]
        expect_error(c.post("/v1/adjustments", bb), 400, "bad_request", f)
    expect_error(c.post("/v1/adjustments", dict(b, delta=0)), 400, "bad_request", "delta")
    expect_error(c.post("/v1/adjustments", dict(b, delta="3")), 400, "bad_request", "delta")
    expect_error(c.post("/v1/adjustments", dict(b, delta=2.5)), 400, "bad_request", "delta")
    expect_error(c.post("/v1/adjustments", dict(b, delta=True)), 400, "bad_request", "delta")
    expect_error(c.post("/v1/adjustments", dict(b, delta=10 ** 16)), 400, "bad_request", "delta")
    expect_error(c.post("/v1/adjustments", dict(b, reason="stolen")), 400, "bad_request", "reason")
    expect_error(c.post("/v1/adjustments", dict(b, sku=7)), 400, "bad_request", "sku")
    expect_error(c.post("/v1/adjustments", dict(b, sku="")), 400, "bad_request", "sku")
    expect_error(c.post("/v1/adjustments", dict(b, location="x" * 129)), 400, "bad_request", "location")
    expect_error(c.post("/v1/adjustments", dict(b, location="a\nb")), 400, "bad_request", "location")
    expect_error(c.post("/v1/adjustments", dict(b, occurred_at="yesterday")), 400, "bad_request",
                 "occurred_at")
    expect_error(c.post("/v1/adjustments", dict(b, change_from="5")), 400, "bad_request", "change_from")
    expect_error(c.post("/v1/adjustments", [b]), 400, "bad_request")
    expect_error(c.post("/v1/adjustments", "text"), 400, "bad_request")
    expect_error(c.position(sku, "L1"), 404, "not_found")
    # 128 bytes is fine
    assert c.post("/v1/adjustments", dict(b, location="y" * 128)).status == 200


@formats()
def test_adjustment_change_from(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 10)
    r = c.post("/v1/adjustments", adj_body(sku, delta=-2, reason="sale", change_from=10))
    assert r.status == 200 and r.data["position"]["on_hand"] == 8, r
    e = expect_error(c.post("/v1/adjustments", adj_body(sku, delta=-2, reason="sale", change_from=10)),
                     409, "conflict")
    assert isinstance(e.get("position"), dict), "change_from conflict carries the position: %r" % e
    check_position(e["position"])
    assert e["position"]["on_hand"] == 8 and e["position"]["sku"] == sku, e
    assert c.pos(sku, "L1")["on_hand"] == 8, "a failed compare-and-set changes nothing"


@formats()
def test_count_absorbs_and_adds(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    t = now_ms()
    c.adjust(sku, "L1", 10, occurred_at=t - 100000)
    c.adjust(sku, "L1", -2, reason="sale", occurred_at=t - 10000)  # after the count below
    cid = uid("cnt")
    body = dict(id=cid, sku=sku, location="L1", on_hand=9, counted_at=t - 50000, source="wms")
    r = c.post("/v1/counts", body)
    assert r.status == 200, r
    cnt, p = r.data["count"], r.data["position"]
    assert cnt == dict(id=cid, applied=True, stale=False, approximate=False), cnt
    check_position(p)
    assert p["on_hand"] == 7, "count 9 at t-50s plus the -2 after it: %r" % p
    assert p["counted_at"] == t - 50000, p
    # an offline sale synced late, before counted_at: absorbed
    r = c.post("/v1/adjustments", adj_body(sku, delta=-1, reason="sale", source="pos",
                                             occurred_at=t - 60000))
    assert r.status == 200, r
    assert r.data["adjustment"]["applied"] is False and r.data["adjustment"]["absorbed"] is True, r.data
    assert r.data["position"]["on_hand"] == 7, r.data
    # exactly at counted_at: absorbed too
    r = c.post("/v1/adjustments", adj_body(sku, delta=-1, reason="sale", occurred_at=t - 50000))
    assert r.data["adjustment"]["absorbed"] is True and r.data["position"]["on_hand"] == 7, r.data
    # after counted_at, arriving late: applied
    r = c.post("/v1/adjustments", adj_body(sku, delta=5, occurred_at=t - 20000))
    assert r.data["adjustment"] == dict(id=r.data["adjustment"]["id"], applied=True, absorbed=False), r.data
    assert r.data["position"]["on_hand"] == 12, r.data
    # a count older than counted_at is stale and changes nothing
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=100,
                                  counted_at=t - 70000, source="wms"))
    assert r.status == 200, r
    assert r.data["count"]["stale"] is True and r.data["count"]["applied"] is False, r.data
    assert r.data["position"]["on_hand"] == 12 and r.data["position"]["counted_at"] == t - 50000, r.data
    # replay of the first count changes nothing
    again = c.post("/v1/counts", body)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert again.data["count"] == cnt, again.data
    assert c.pos(sku, "L1")["on_hand"] == 12
    expect_error(c.post("/v1/counts", dict(body, on_hand=8)), 422, "idempotency_mismatch")


@formats()
def test_count_new_position_and_reserved(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    t = now_ms()
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=6,
                                  counted_at=t - 1000, source="wms"))
    assert r.status == 200 and r.data["position"]["on_hand"] == 6, r
    assert c.reserve([dict(sku=sku, location="L1", qty=4)]).status == 201
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=2,
                                  counted_at=now_ms(), source="wms"))
    p = r.data["position"]
    assert (p["on_hand"], p["reserved"], p["available"], p["shortfall"]) == (2, 4, 0, 2), p


@formats()
def test_count_rfc3339_times(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    t = now_ms() - 30000
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=3,
                                  counted_at=rfc3339(t), source="wms"))
    assert r.status == 200, r
    assert r.data["position"]["counted_at"] == t, "RFC 3339 %s -> %r, expected %d" % (
        rfc3339(t), r.data["position"].get("counted_at"), t)
    # the same instant with an offset; an adjustment one second before it is absorbed
    r = c.post("/v1/adjustments", adj_body(sku, delta=-1, reason="sale",
                                             occurred_at=rfc3339(t - 1000, offset_min=120)))
    assert r.status == 200, r
    assert r.data["adjustment"]["absorbed"] is True, "occurred_at %s: %r" % (
        rfc3339(t - 1000, offset_min=120), r.data)
    r = c.post("/v1/adjustments", adj_body(sku, delta=2, occurred_at=rfc3339(t + 1000, offset_min=-330)))
    assert r.data["adjustment"]["applied"] is True and r.data["position"]["on_hand"] == 5, r.data
    assert isinstance(r.data["position"]["counted_at"], int), "output times are integers"
    expect_error(c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=3,
                                           counted_at="2024-13-45T99:00:00Z", source="wms")),
                 400, "bad_request", "counted_at")


@formats()
def test_count_older_than_history_window_is_approximate(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 10)
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=4,
                                  counted_at=now_ms() - 80 * 3600 * 1000, source="wms"))
    assert r.status == 200, r
    assert r.data["count"]["approximate"] is True and r.data["count"]["applied"] is True, r.data
    assert r.data["count"]["stale"] is False, r.data
    check_position(r.data["position"])


@formats()
def test_count_validation_and_change_from(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    b = dict(id=uid("cnt"), sku=sku, location="L1", on_hand=5, counted_at=now_ms(), source="wms")
    for f in ("id", "sku", "location", "on_hand", "counted_at", "source"):
        bb = dict(b, id=uid("cnt"))
        del bb[f]
        expect_error(c.post("/v1/counts", bb), 400, "bad_request", f)
    expect_error(c.post("/v1/counts", dict(b, on_hand=-1)), 400, "bad_request", "on_hand")
    expect_error(c.post("/v1/counts", dict(b, on_hand="5")), 400, "bad_request", "on_hand")
    assert c.post("/v1/counts", b).status == 200
    e = expect_error(c.post("/v1/counts", dict(b, id=uid("cnt"), on_hand=9, counted_at=now_ms(),
                                               change_from=4)), 409, "conflict")
    assert e["position"]["on_hand"] == 5, e
    r = c.post("/v1/counts", dict(b, id=uid("cnt"), on_hand=9, counted_at=now_ms(), change_from=5))
    assert r.status == 200 and r.data["position"]["on_hand"] == 9, r


@formats()
def test_safety_stock(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 10)
    r = c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=3, source="ops"))
    assert r.status == 200, r
    check_position(r.data)
    assert (r.data["safety_stock"], r.data["available"]) == (3, 7), r.data
    r = c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=15))
    assert (r.data["safety_stock"], r.data["available"], r.data["shortfall"]) == (15, 0, 0), r.data
    r = c.post("/v1/safety-stock", dict(sku=uid("new"), location="L1", safety_stock=2))
    assert r.status == 200 and r.data["on_hand"] == 0 and r.data["safety_stock"] == 2, \
        "safety stock creates an unknown position: %r" % r
    expect_error(c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=-1)), 400,
                 "bad_request", "safety_stock")
    expect_error(c.post("/v1/safety-stock", dict(sku=sku, location="L1")), 400, "bad_request",
                 "safety_stock")
    expect_error(c.post("/v1/safety-stock", dict(location="L1", safety_stock=1)), 400, "bad_request",
                 "sku")


@formats()
def test_groups_crud(srv, fmt):
    c = srv.client(fmt)
    g = uid("grp")
    r = c.put("/v1/groups/" + g, dict(locations=["b", "a", "c"]))
    assert r.status == 200, r
    assert r.data == dict(name=g, locations=["b", "a", "c"]), r.data
    r = c.get("/v1/groups/" + g)
    assert r.status == 200 and r.data == dict(name=g, locations=["b", "a", "c"]), r
    r = c.put("/v1/groups/" + g, dict(locations=["c"]))
    assert r.status == 200 and r.data["locations"] == ["c"], r
    assert c.get("/v1/groups/" + g).data["locations"] == ["c"]
    r = c.delete("/v1/groups/" + g)
    assert r.status == 204 and r.body == b"", r
    expect_error(c.get("/v1/groups/" + g), 404, "not_found")
    r = c.delete("/v1/groups/" + g)
    assert r.status in (204, 404), r
    expect_error(c.get("/v1/groups/" + uid("nogrp")), 404, "not_found")


@formats()
def test_groups_validation(srv, fmt):
    c = srv.client(fmt)
    g = uid("grp")
    expect_error(c.put("/v1/groups/" + g, dict(locations=[])), 400, "bad_request", "locations")
    expect_error(c.put("/v1/groups/" + g, dict()), 400, "bad_request", "locations")
    expect_error(c.put("/v1/groups/" + g, dict(locations="a")), 400, "bad_request", "locations")
    expect_error(c.put("/v1/groups/" + g, dict(locations=["a", 5])), 400, "bad_request", "locations")
    expect_error(c.put("/v1/groups/" + g, dict(locations=["l%d" % i for i in range(1001)])), 400,
                 "bad_request", "locations")
    expect_error(c.get("/v1/groups/" + g), 404, "not_found")
    r = c.put("/v1/groups/" + g, dict(locations=["l%d" % i for i in range(1000)]))
    assert r.status == 200 and len(r.data["locations"]) == 1000, r
    g2 = "grp-" + "x" * 130
    expect_error(c.put("/v1/groups/" + g2, dict(locations=["a"])), 400, "bad_request")


# --- times from the future (CONTRACT.md section 1, --clock-skew-ms) ------------------

DAY_MS = 86400 * 1000
SKEW_MS = 300000  # the default --clock-skew-ms


def _future_times(t):
    """Future times in both input encodings: integer ms and RFC 3339."""
    far = t + 75 * 365 * DAY_MS  # "2099"
    return [far, rfc3339(far), t + SKEW_MS + 60000, rfc3339(t + SKEW_MS + 60000, offset_min=120)]


@formats()
def test_future_counted_at_refused(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 10)
    before = c.pos(sku, "L1")
    for when in _future_times(now_ms()):
        b = dict(id=uid("cnt"), sku=sku, location="L1", on_hand=99, counted_at=when, source="wms")
        e = expect_error(c.post("/v1/counts", b), 400, "bad_request", "counted_at")
        assert "future" in e["message"], e
        assert c.pos(sku, "L1") == before, "a refused count changed the position (%r)" % (when,)
        # the id was not consumed: the same id with a sound time applies
        r = c.post("/v1/counts", dict(b, counted_at=now_ms() - 5000, on_hand=10))
        assert r.status == 200 and "replayed" not in r.data, r
        before = c.pos(sku, "L1")
    # a future count on a position never seen creates nothing
    ghost = uid("sku")
    expect_error(c.post("/v1/counts", dict(id=uid("cnt"), sku=ghost, location="L1", on_hand=3,
                                           counted_at=now_ms() + DAY_MS, source="wms")),
                 400, "bad_request", "counted_at")
    assert c.position(ghost, "L1").status == 404
    # a later correct count is applied, not stale
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=4,
                                  counted_at=now_ms(), source="wms"))
    assert r.status == 200 and r.data["count"]["stale"] is False, r
    assert r.data["position"]["on_hand"] == 4, r.data


@formats()
def test_future_occurred_at_refused(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 10)
    before = c.pos(sku, "L1")
    for when in _future_times(now_ms()):
        e = expect_error(c.post("/v1/adjustments", adj_body(sku, delta=-3, reason="sale",
                                                             occurred_at=when)),
                         400, "bad_request", "occurred_at")
        assert "future" in e["message"], e
        assert c.pos(sku, "L1") == before, "a refused adjustment changed the position (%r)" % (when,)
    ghost = uid("sku")
    expect_error(c.post("/v1/adjustments", adj_body(ghost, delta=3, occurred_at=now_ms() + DAY_MS)),
                 400, "bad_request", "occurred_at")
    assert c.position(ghost, "L1").status == 404
    r = c.get("/v1/availability", params=dict(sku=ghost))
    assert r.status == 200 and r.data["locations"] == [], r


@formats()
def test_time_within_skew_accepted(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    # a minute ahead (a client clock running fast) is within the default 5 min
    ahead = now_ms() + 60000
    r = c.post("/v1/adjustments", adj_body(sku, delta=5, occurred_at=ahead))
    assert r.status == 200 and r.data["adjustment"]["applied"] is True, r
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=7,
                                  counted_at=rfc3339(now_ms() + SKEW_MS - 30000), source="wms"))
    assert r.status == 200 and r.data["count"]["applied"] is True, r


def test_clock_skew_flag(binary):
    srv = Server(binary=binary, args=["--clock-skew-ms", "1000"])
    exe = srv.binary
    try:
        c = srv.client("json")
        sku = uid("sku")
        c.adjust(sku, "L1", 10)
        for fmt in ("json", "msgpack"):
            cc = srv.client(fmt)
            expect_error(cc.post("/v1/adjustments", adj_body(sku, delta=-1, occurred_at=now_ms() + 5000)),
                         400, "bad_request", "occurred_at")
            expect_error(cc.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=1,
                                                    counted_at=rfc3339(now_ms() + 5000), source="wms")),
                         400, "bad_request", "counted_at")
            cc.close()
        assert c.pos(sku, "L1")["on_hand"] == 10
        r = c.post("/v1/adjustments", adj_body(sku, delta=1, occurred_at=now_ms()))
        assert r.status == 200, r
        c.close()
    finally:
        problem = srv.stop()
    assert problem is None, problem
    srv = Server(binary=binary, env={"ATPD_CLOCK_SKEW_MS": "1000"})
    try:
        c = srv.client("json")
        expect_error(c.post("/v1/adjustments", adj_body(uid("sku"), occurred_at=now_ms() + 5000)),
                     400, "bad_request", "occurred_at")
        c.close()
    finally:
        problem = srv.stop()
    assert problem is None, problem
    # the environment twin works the same; a value outside 1..86400000 stops the start
    for bad in ("0", "-5", "abc", "86400001"):
        p = subprocess.run([exe, "--clock-skew-ms", bad, "--listen", "127.0.0.1:0"],
                           capture_output=True, timeout=10)
        assert p.returncode == 2 and b"--clock-skew-ms" in p.stderr, (bad, p)


# --- a refused compare-and-set changes nothing (issue 9, item 6) ----------------------

@formats()
def test_change_from_on_unknown_position_creates_nothing(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    e = expect_error(c.post("/v1/adjustments", adj_body(sku, delta=5, change_from=3)), 409, "conflict",
                     "change_from")
    check_position(e["position"], found=False)
    assert (e["position"]["sku"], e["position"]["location"]) == (sku, "L1"), e
    assert "counted_at" not in e["position"], e
    e = expect_error(c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location="L1", on_hand=5,
                                               counted_at=now_ms(), source="wms", change_from=2)),
                     409, "conflict", "change_from")
    check_position(e["position"], found=False)
    expect_error(c.position(sku, "L1"), 404, "not_found")
    r = c.get("/v1/availability", params=dict(sku=sku))
    assert r.status == 200 and r.data["locations"] == [], "ghost position in the endless aisle: %r" % r
    # change_from 0 matches a position never seen: it is created
    r = c.post("/v1/adjustments", adj_body(sku, delta=5, change_from=0))
    assert r.status == 200 and r.data["position"]["on_hand"] == 5, r
    # a conflict on a known position still answers it, without "found"
    e = expect_error(c.post("/v1/adjustments", adj_body(sku, delta=5, change_from=0)), 409, "conflict")
    assert e["position"]["on_hand"] == 5 and e["position"]["version"] > 0, e
    assert "found" not in e["position"], e
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=uid("sku"), location="L1", on_hand=4,
                                  counted_at=now_ms(), source="wms", change_from=0))
    assert r.status == 200 and r.data["position"]["on_hand"] == 4, r
