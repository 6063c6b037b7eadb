"""Section 4: reservations, in both encodings."""
import time
import urllib.parse

from harness import (check_position, check_reservation, expect_error, formats, line_by_loc,
                     now_ms, uid)

ASAN = True
R = "/v1/reservations"


def stocked(c, qty=10, loc="L1"):
    sku = uid("sku")
    c.adjust(sku, loc, qty)
    return sku


@formats()
def test_create_and_get(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    t0 = now_ms()
    r = c.reserve([dict(sku=sku, location="L1", qty=3)], rid=rid, ttl_ms=60000,
                  order_ref="cart-1", channel="web", customer_id="cust-9")
    assert r.status == 201, r
    res = r.data
    check_reservation(res, "held")
    assert res["id"] == rid and "replayed" not in res, res
    assert res["lines"] == [dict(sku=sku, location="L1", qty=3, fulfilled=0, released=0)], res
    assert res["ttl_ms"] == 60000, res
    assert abs(res["created_at"] - t0) < 5000, res
    assert abs(res["expires_at"] - (res["created_at"] + 60000)) < 2000, res
    assert (res["order_ref"], res["channel"], res["customer_id"]) == ("cart-1", "web", "cust-9"), res
    assert "order_id" not in res, res
    p = c.pos(sku, "L1")
    assert (p["reserved"], p["available"], p["on_hand"]) == (3, 7, 10), p
    g = c.get(R + "/" + rid)
    assert g.status == 200, g
    check_reservation(g.data, "held")
    assert g.data["lines"] == res["lines"] and g.data["expires_at"] == res["expires_at"], g.data


@formats()
def test_ids_percent_encoded_in_path(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = "gid://shopify/Cart/%s a+b?c#d" % uid("")
    enc = urllib.parse.quote(rid, safe="")
    r = c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid)
    assert r.status == 201 and r.data["id"] == rid, r
    g = c.get(R + "/" + enc)
    assert g.status == 200 and g.data["id"] == rid, g
    r = c.post(R + "/" + enc + "/commit", {})
    assert r.status == 200 and r.data["status"] == "committed", r
    grp = "gid://shopify/Location group %s" % uid("")
    r = c.put("/v1/groups/" + urllib.parse.quote(grp, safe=""), dict(locations=["L1"]))
    assert r.status == 200 and r.data["name"] == grp, r
    r = c.get("/v1/availability", params=dict(sku=sku, group=grp))
    assert r.status == 200 and r.data["group"] == grp and r.data["available"] == 9, r


@formats()
def test_default_ttl(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c)
    r = c.reserve([dict(sku=sku, location="L1", qty=1)])
    assert r.status == 201, r
    assert r.data["ttl_ms"] == 900000, r.data
    assert abs(r.data["expires_at"] - r.data["created_at"] - 900000) < 2000, r.data
    for k in ("order_ref", "channel", "customer_id", "order_id"):
        assert k not in r.data, "absent optional strings are omitted: %r" % r.data


@formats()
def test_get_unknown_404(srv, fmt):
    expect_error(srv.client(fmt).get(R + "/" + uid("nores")), 404, "not_found")


@formats()
def test_replay_and_mismatch(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    lines = [dict(sku=sku, location="L1", qty=4)]
    first = c.reserve(lines, rid=rid, ttl_ms=60000)
    assert first.status == 201, first
    again = c.reserve(lines, rid=rid, ttl_ms=60000)
    assert again.status == 201, "replay answers the original status: %r" % again
    assert again.data.get("replayed") is True, again.data
    d = dict(again.data)
    del d["replayed"]
    assert d == first.data, "replay must return the original outcome:\n%r\n%r" % (d, first.data)
    p = c.pos(sku, "L1")
    assert p["reserved"] == 4, "replay must change nothing: %r" % p
    r = c.reserve([dict(sku=sku, location="L1", qty=5)], rid=rid, ttl_ms=60000)
    expect_error(r, 422, "idempotency_mismatch")
    assert c.pos(sku, "L1")["reserved"] == 4


@formats()
def test_insufficient_stock_holds_nothing(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 5)
    sku2 = stocked(c, 2)
    never = uid("never")
    rid = uid("res")
    r = c.reserve([dict(sku=sku, location="L1", qty=5), dict(sku=sku2, location="L1", qty=3),
                   dict(sku=never, location="L9", qty=1)], rid=rid)
    e = expect_error(r, 409, "insufficient_stock")
    sf = e.get("shortfalls")
    assert isinstance(sf, list) and len(sf) == 2, "one shortfall per failing line: %r" % e
    sf = sorted(sf, key=lambda s: s["line"])
    assert sf[0] == dict(line=1, sku=sku2, location="L1", requested=3, available=2), sf
    assert sf[1] == dict(line=2, sku=never, location="L9", requested=1, available=0), sf
    assert c.pos(sku, "L1")["reserved"] == 0, "all lines or none"
    assert c.pos(sku2, "L1")["reserved"] == 0
    expect_error(c.get(R + "/" + rid), 404, "not_found")
    # a refused id leaves no trace: it may be retried
    c.adjust(sku2, "L1", 1)
    c.adjust(never, "L9", 1)
    r = c.reserve([dict(sku=sku, location="L1", qty=5), dict(sku=sku2, location="L1", qty=3),
                   dict(sku=never, location="L9", qty=1)], rid=rid)
    assert r.status == 201, r
    assert c.pos(sku, "L1")["available"] == 0


@formats()
def test_safety_stock_limits_grant(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    assert c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=4)).status == 200
    e = expect_error(c.reserve([dict(sku=sku, location="L1", qty=7)]), 409, "insufficient_stock")
    assert e["shortfalls"][0]["available"] == 6, e
    assert c.reserve([dict(sku=sku, location="L1", qty=6)]).status == 201


@formats()
def test_validation_400(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c)
    ln = dict(sku=sku, location="L1", qty=1)
    expect_error(c.post(R, dict(lines=[ln])), 400, "bad_request", "id")
    expect_error(c.post(R, dict(id=uid("r"))), 400, "bad_request", "lines")
    expect_error(c.reserve([]), 400, "bad_request", "lines")
    expect_error(c.reserve([ln] * 101), 400, "bad_request", "lines")
    expect_error(c.reserve([dict(ln, qty=0)]), 400, "bad_request", "qty")
    expect_error(c.reserve([dict(ln, qty=-2)]), 400, "bad_request", "qty")
    expect_error(c.reserve([dict(ln, qty="2")]), 400, "bad_request", "qty")
    expect_error(c.reserve([dict(ln, qty=1.5)]), 400, "bad_request", "qty")
    expect_error(c.reserve([dict(sku=sku, qty=1)]), 400, "bad_request", "lines[0]")
    expect_error(c.reserve([dict(location="L1", qty=1)]), 400, "bad_request", "sku")
    expect_error(c.reserve([ln], ttl_ms=999), 400, "bad_request", "ttl_ms")
    expect_error(c.reserve([ln], ttl_ms=604800001), 400, "bad_request", "ttl_ms")
    expect_error(c.reserve([ln], ttl_ms="60000"), 400, "bad_request", "ttl_ms")
    expect_error(c.reserve([ln], rid="x" * 129), 400, "bad_request", "id")
    expect_error(c.reserve([ln], rid=""), 400, "bad_request", "id")
    expect_error(c.reserve([ln], rid="a\x01b"), 400, "bad_request", "id")
    expect_error(c.reserve([ln], order_ref=5), 400, "bad_request", "order_ref")
    expect_error(c.reserve([dict(ln, sku="s" * 129)]), 400, "bad_request", "sku")
    expect_error(c.post(R, dict(id=uid("r"), lines=None)), 400, "bad_request", "lines")
    expect_error(c.post(R, dict(id=uid("r"), lines=dict(sku=sku))), 400, "bad_request", "lines")
    # boundaries are accepted; unknown fields are ignored
    assert c.reserve([ln], ttl_ms=1000).status == 201
    assert c.reserve([ln], ttl_ms=604800000).status == 201
    assert c.reserve([ln], rid="i" * 120 + uid("")[-8:], whatever={"x": [1, 2]}).status == 201
    assert c.pos(sku, "L1")["reserved"] == 3


@formats()
def test_commit(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=4)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/commit", dict(order_id="order-1"))
    assert r.status == 200, r
    check_reservation(r.data, "committed")
    assert r.data["order_id"] == "order-1", r.data
    p = c.pos(sku, "L1")
    assert (p["reserved"], p["committed"], p["available"], p["on_hand"]) == (0, 4, 6, 10), p
    again = c.post(R + "/" + rid + "/commit", dict(order_id="order-1"))
    assert again.status == 200 and again.data["status"] == "committed", again
    assert again.data.get("replayed") is True, "commit of committed is a replay: %r" % again.data
    p = c.pos(sku, "L1")
    assert (p["reserved"], p["committed"]) == (0, 4), p
    # commit without a body and on an unknown id
    rid2 = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid2).status == 201
    r = c.post(R + "/" + rid2 + "/commit", {})
    assert r.status == 200 and "order_id" not in r.data, r
    expect_error(c.post(R + "/" + uid("nores") + "/commit", {}), 404, "not_found")


@formats()
def test_commit_conflicts(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid).status == 201
    assert c.post(R + "/" + rid + "/release", {}).status == 200
    e = expect_error(c.post(R + "/" + rid + "/commit", {}), 409, "conflict")
    assert e.get("status") == "released", "conflict names the status: %r" % e
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid).status == 201
    assert c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=uid("f"))).status == 200
    e = expect_error(c.post(R + "/" + rid + "/commit", {}), 409, "conflict")
    assert e.get("status") == "fulfilled", e


@formats()
def test_release_whole_and_replay(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=6)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/release", dict(reason="cart abandoned"))
    assert r.status == 200, r
    check_reservation(r.data, "released")
    assert r.data["lines"][0]["released"] == 6, r.data
    p = c.pos(sku, "L1")
    assert (p["reserved"], p["available"]) == (0, 10), p
    again = c.post(R + "/" + rid + "/release", dict(reason="cart abandoned"))
    assert again.status == 200 and again.data["status"] == "released", again
    assert again.data.get("replayed") is True, again.data
    assert c.pos(sku, "L1")["available"] == 10
    expect_error(c.post(R + "/" + uid("nores") + "/release", {}), 404, "not_found")


@formats()
def test_release_partial(srv, fmt):
    c = srv.client(fmt)
    a, b = stocked(c, 10), stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=5), dict(sku=b, location="L1", qty=2)],
                     rid=rid).status == 201
    r = c.post(R + "/" + rid + "/release",
               dict(reason="substitution", lines=[dict(sku=a, location="L1", qty=2)]))
    assert r.status == 200, r
    check_reservation(r.data, "held")
    la = [ln for ln in r.data["lines"] if ln["sku"] == a]
    assert len(la) == 1 and la[0]["qty"] == 5 and la[0]["released"] == 2, r.data
    assert c.pos(a, "L1")["reserved"] == 3
    # more than remains -> conflict, nothing changes
    e = expect_error(c.post(R + "/" + rid + "/release",
                            dict(lines=[dict(sku=a, location="L1", qty=4)])), 409, "conflict")
    assert c.pos(a, "L1")["reserved"] == 3, e
    # a position not in the reservation -> 400
    expect_error(c.post(R + "/" + rid + "/release",
                        dict(lines=[dict(sku=a, location="L2", qty=1)])), 400, "bad_request")
    expect_error(c.post(R + "/" + rid + "/release",
                        dict(lines=[dict(sku=a, location="L1", qty=0)])), 400, "bad_request", "qty")
    # releasing every remaining unit by lines ends it
    r = c.post(R + "/" + rid + "/release", dict(lines=[dict(sku=a, location="L1", qty=3),
                                                       dict(sku=b, location="L1", qty=2)]))
    assert r.status == 200, r
    check_reservation(r.data, "released")
    assert c.pos(a, "L1")["reserved"] == 0 and c.pos(b, "L1")["reserved"] == 0


@formats()
def test_release_committed(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=3)], rid=rid).status == 201
    assert c.post(R + "/" + rid + "/commit", {}).status == 200
    r = c.post(R + "/" + rid + "/release", dict(reason="order cancelled"))
    assert r.status == 200, r
    check_reservation(r.data, "released")
    p = c.pos(sku, "L1")
    assert (p["committed"], p["reserved"], p["available"]) == (0, 0, 10), p


@formats()
def test_extend(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid, ttl_ms=5000).status == 201
    t0 = now_ms()
    r = c.post(R + "/" + rid + "/extend", dict(ttl_ms=120000))
    assert r.status == 200, r
    check_reservation(r.data, "held")
    assert abs(r.data["expires_at"] - (t0 + 120000)) < 3000, "expires_at = now + ttl_ms: %r" % r.data
    expect_error(c.post(R + "/" + rid + "/extend", dict(ttl_ms=10)), 400, "bad_request", "ttl_ms")
    expect_error(c.post(R + "/" + rid + "/extend", {}), 400, "bad_request", "ttl_ms")
    assert c.post(R + "/" + rid + "/commit", {}).status == 200
    e = expect_error(c.post(R + "/" + rid + "/extend", dict(ttl_ms=60000)), 409, "conflict")
    assert e.get("status") == "committed", e
    expect_error(c.post(R + "/" + uid("nores") + "/extend", dict(ttl_ms=60000)), 404, "not_found")


@formats()
def test_fulfil_partial_then_whole(srv, fmt):
    c = srv.client(fmt)
    a, b = stocked(c, 10), stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=5), dict(sku=b, location="L1", qty=1)],
                     rid=rid).status == 201
    f1 = uid("ful")
    body = dict(fulfillment_id=f1, lines=[dict(sku=a, location="L1", qty=2)])
    r = c.post(R + "/" + rid + "/fulfil", body)
    assert r.status == 200, r
    check_reservation(r.data, "committed")  # a held reservation is committed first
    la = [ln for ln in r.data["lines"] if ln["sku"] == a][0]
    assert la["fulfilled"] == 2, r.data
    p = c.pos(a, "L1")
    assert (p["on_hand"], p["committed"], p["reserved"], p["available"]) == (8, 3, 0, 5), p
    # same fulfillment_id, same content: replay, nothing changes
    again = c.post(R + "/" + rid + "/fulfil", body)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert c.pos(a, "L1")["on_hand"] == 8
    # same id, other content: 422
    expect_error(c.post(R + "/" + rid + "/fulfil",
                        dict(fulfillment_id=f1, lines=[dict(sku=a, location="L1", qty=1)])),
                 422, "idempotency_mismatch")
    # more than remains: conflict
    expect_error(c.post(R + "/" + rid + "/fulfil",
                        dict(fulfillment_id=uid("ful"), lines=[dict(sku=a, location="L1", qty=4)])),
                 409, "conflict")
    expect_error(c.post(R + "/" + rid + "/fulfil", dict(lines=[])), 400, "bad_request",
                 "fulfillment_id")
    # the rest, without lines
    r = c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=uid("ful")))
    assert r.status == 200, r
    check_reservation(r.data, "fulfilled")
    pa, pb = c.pos(a, "L1"), c.pos(b, "L1")
    assert (pa["on_hand"], pa["committed"], pa["available"]) == (5, 0, 5), pa
    assert (pb["on_hand"], pb["committed"], pb["available"]) == (9, 0, 9), pb
    e = expect_error(c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=uid("ful"))),
                     409, "conflict")
    assert e.get("status") == "fulfilled", e
    e = expect_error(c.post(R + "/" + rid + "/release", {}), 409, "conflict")
    assert e.get("status") == "fulfilled", e
    expect_error(c.post(R + "/" + uid("nores") + "/fulfil", dict(fulfillment_id=uid("f"))),
                 404, "not_found")


@formats()
def test_amend(srv, fmt):
    c = srv.client(fmt)
    a, b = stocked(c, 10), stocked(c, 3)
    rid = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=3)], rid=rid).status == 201
    aid = uid("amd")
    body = dict(amend_id=aid, release=[dict(sku=a, location="L1", qty=1)],
                add=[dict(sku=b, location="L1", qty=2)])
    r = c.post(R + "/" + rid + "/amend", body)
    assert r.status == 200, r
    check_reservation(r.data, "held")
    assert line_by_loc(dict(lines=[ln for ln in r.data["lines"] if ln["sku"] == b]), "L1")["qty"] == 2
    pa, pb = c.pos(a, "L1"), c.pos(b, "L1")
    assert pa["reserved"] == 2 and pb["reserved"] == 2, (pa, pb)
    again = c.post(R + "/" + rid + "/amend", body)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert c.pos(b, "L1")["reserved"] == 2
    expect_error(c.post(R + "/" + rid + "/amend", dict(body, add=[dict(sku=b, location="L1", qty=1)])),
                 422, "idempotency_mismatch")
    # both parts or neither
    e = expect_error(c.post(R + "/" + rid + "/amend",
                            dict(amend_id=uid("amd"), release=[dict(sku=a, location="L1", qty=2)],
                                 add=[dict(sku=b, location="L1", qty=5)])), 409, "insufficient_stock")
    assert e["shortfalls"][0]["line"] == 0 and e["shortfalls"][0]["available"] == 1, e
    pa, pb = c.pos(a, "L1"), c.pos(b, "L1")
    assert pa["reserved"] == 2 and pb["reserved"] == 2, "refused amend changed state: %r %r" % (pa, pb)
    # add to a position already in the reservation keeps one line per position
    r = c.post(R + "/" + rid + "/amend", dict(amend_id=uid("amd"), release=[dict(sku=b, location="L1", qty=1)],
                                              add=[dict(sku=a, location="L1", qty=1)]))
    assert r.status == 200, r
    assert len([ln for ln in r.data["lines"] if ln["sku"] == a]) == 1, r.data
    assert c.pos(a, "L1")["reserved"] == 3 and c.pos(b, "L1")["reserved"] == 1
    expect_error(c.post(R + "/" + uid("nores") + "/amend",
                        dict(amend_id=uid("amd"), release=[dict(sku=a, location="L1", qty=1)],
                             add=[dict(sku=a, location="L1", qty=1)])),
                 404, "not_found")
    expect_error(c.post(R + "/" + rid + "/amend", dict(release=[], add=[])), 400, "bad_request",
                 "amend_id")


@formats()
def test_amend_add_only_and_release_only(srv, fmt):
    """release and add are both required lists; one of them may be empty."""
    c = srv.client(fmt)
    a, b = stocked(c, 10), stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=3)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/amend", dict(amend_id=uid("amd"), release=[],
                                              add=[dict(sku=b, location="L1", qty=2)]))
    assert r.status == 200, "amend with nothing to release: %r" % r
    assert c.pos(b, "L1")["reserved"] == 2
    la = line_by_loc(dict(lines=[ln for ln in r.data["lines"] if ln["sku"] == a]), "L1")
    assert la["released"] == 0 and c.pos(a, "L1")["reserved"] == 3, \
        "an empty release list released the untouched line: %r, %r" % (r.data, c.pos(a, "L1"))
    r = c.post(R + "/" + rid + "/amend", dict(amend_id=uid("amd"),
                                              release=[dict(sku=a, location="L1", qty=1)], add=[]))
    assert r.status == 200, "amend with nothing to add: %r" % r
    assert c.pos(a, "L1")["reserved"] == 2


@formats()
def test_group_routing_first_that_fills(srv, fmt):
    c = srv.client(fmt)
    sku, g = uid("sku"), uid("grp")
    c.adjust(sku, "gA", 2)
    c.adjust(sku, "gB", 5)
    c.adjust(sku, "gC", 10)
    assert c.put("/v1/groups/" + g, dict(locations=["gA", "gB", "gC"])).status == 200
    r = c.reserve([dict(sku=sku, group=g, qty=4)])
    assert r.status == 201, r
    assert [(ln["location"], ln["qty"]) for ln in r.data["lines"]] == [("gB", 4)], r.data
    r = c.reserve([dict(sku=sku, group=g, qty=2)])
    assert [(ln["location"], ln["qty"]) for ln in r.data["lines"]] == [("gA", 2)], r.data
    r = c.reserve([dict(sku=sku, group=g, qty=9)])
    assert [(ln["location"], ln["qty"]) for ln in r.data["lines"]] == [("gC", 9)], r.data
    # 1 at gB, 1 at gC left: no single location fills 2, no split allowed
    e = expect_error(c.reserve([dict(sku=sku, group=g, qty=2)]), 409, "insufficient_stock")
    sf = e["shortfalls"][0]
    assert sf["group"] == g and sf["requested"] == 2 and sf["sku"] == sku and sf["line"] == 0, e
    assert "location" not in sf or not sf["location"], e
    # the line goes whole to one location: the best single one (gB, first of the
    # tie with gC), and a split would have filled it
    assert sf["available"] == 1 and sf["best_location"] == "gB", e
    assert sf["split_available"] == 2 and sf["allow_split_would_fill"] is True, e
    r = c.reserve([dict(sku=sku, group=uid("nogrp"), qty=1)])
    assert r.status in (404, 409), "unknown group: %r" % r


@formats()
def test_group_allow_split(srv, fmt):
    c = srv.client(fmt)
    sku, g = uid("sku"), uid("grp")
    c.adjust(sku, "sA", 2)
    c.adjust(sku, "sB", 3)
    c.adjust(sku, "sC", 6)
    assert c.put("/v1/groups/" + g, dict(locations=["sA", "sX", "sB", "sC"])).status == 200
    # A location that fills the line whole wins even when splitting is allowed.
    r = c.reserve([dict(sku=sku, group=g, qty=3, allow_split=True)])
    assert r.status == 201, r
    assert [(ln["location"], ln["qty"]) for ln in r.data["lines"]] == [("sB", 3)], r.data
    assert c.post("/v1/reservations/%s/release" % r.data["id"], {}).status == 200
    # No single location holds 7: split across locations in group order.
    r = c.reserve([dict(sku=sku, group=g, qty=7, allow_split=True)])
    assert r.status == 201, r
    check_reservation(r.data, "held")
    assert [(ln["location"], ln["qty"]) for ln in r.data["lines"]] == [("sA", 2), ("sB", 3), ("sC", 2)], \
        "split across locations in group order: %r" % r.data["lines"]
    assert c.pos(sku, "sC")["reserved"] == 2
    e = expect_error(c.reserve([dict(sku=sku, group=g, qty=9, allow_split=True)]), 409,
                     "insufficient_stock")
    assert e["shortfalls"][0]["available"] == 4, e
    for k in ("best_location", "split_available", "allow_split_would_fill"):
        assert k not in e["shortfalls"][0], "a split line sums the group: %r" % e
    assert c.pos(sku, "sC")["reserved"] == 2


def test_expiry_returns_units(srv):
    c = srv.client()
    sku = stocked(c, 5)
    rid = uid("res")
    r = c.reserve([dict(sku=sku, location="L1", qty=5)], rid=rid, ttl_ms=1000)
    assert r.status == 201, r
    assert c.pos(sku, "L1")["available"] == 0
    deadline = time.time() + 3.0
    status = None
    while time.time() < deadline:
        status = c.get(R + "/" + rid).data["status"]
        if status == "expired":
            break
        time.sleep(0.1)
    assert status == "expired", "ttl 1000 ms reservation still %r after 3 s" % status
    assert time.time() - (deadline - 3.0) <= 2.5, "expired later than ~2 s"
    res = c.get(R + "/" + rid).data
    check_reservation(res, "expired")
    p = c.pos(sku, "L1")
    assert (p["reserved"], p["available"]) == (0, 5), p
    for action, body in (("commit", {}), ("extend", dict(ttl_ms=60000))):
        e = expect_error(c.post(R + "/" + rid + "/" + action, body), 409, "conflict")
        assert e.get("status") == "expired", e
    e = expect_error(c.post(R + "/" + rid + "/release", {}), 409, "conflict")
    assert e.get("status") == "expired", e


@formats()
def test_oversold_then_shortfall(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 5)
    assert c.reserve([dict(sku=sku, location="L1", qty=4)]).status == 201
    c.adjust(sku, "L1", -3, reason="damaged")
    p = c.pos(sku, "L1")
    assert (p["on_hand"], p["reserved"], p["available"], p["shortfall"]) == (2, 4, 0, 2), \
        "granted reservations are not revoked: %r" % p
    check_position(p)


# --- hardening (issue 9): group shortfalls, idempotency namespaces, follow-up keys ---

@formats()
def test_group_shortfall_names_best_location(srv, fmt):
    """A group line without allow_split reports the best single location, not the
    group's sum, and says whether allow_split would fill it."""
    c = srv.client(fmt)
    sku, g = uid("sku"), uid("grp")
    c.adjust(sku, "bA", 1)
    c.adjust(sku, "bB", 3)
    c.adjust(sku, "bC", 3)
    assert c.put("/v1/groups/" + g, dict(locations=["bX", "bA", "bB", "bC"])).status == 200
    e = expect_error(c.reserve([dict(sku=sku, location="bA", qty=1),
                                dict(sku=sku, group=g, qty=5)]), 409, "insufficient_stock")
    assert len(e["shortfalls"]) == 1, e
    sf = e["shortfalls"][0]
    # line 0 holds bA's unit while line 1 is tried, so a split would have 6
    assert sf == dict(line=1, sku=sku, group=g, requested=5, available=3, best_location="bB",
                      split_available=6, allow_split_would_fill=True), sf
    e = expect_error(c.reserve([dict(sku=sku, group=g, qty=8)]), 409, "insufficient_stock")
    sf = e["shortfalls"][0]
    assert (sf["available"], sf["best_location"], sf["split_available"],
            sf["allow_split_would_fill"]) == (3, "bB", 7, False), sf
    # nothing anywhere in the group: no best location
    e = expect_error(c.reserve([dict(sku=uid("none"), group=g, qty=1)]), 409,
                     "insufficient_stock")
    sf = e["shortfalls"][0]
    assert sf["available"] == 0 and "best_location" not in sf, sf
    assert sf["split_available"] == 0 and sf["allow_split_would_fill"] is False, sf
    # what the shortfall says is true: allow_split fills it
    r = c.reserve([dict(sku=sku, group=g, qty=5, allow_split=True)])
    assert r.status == 201, r
    assert sum(ln["qty"] for ln in r.data["lines"]) == 5, r.data


def count_body(sku, on_hand, cid=None, loc="L1"):
    return dict(id=cid or uid("cnt"), sku=sku, location=loc, on_hand=on_hand,
                counted_at=now_ms(), source="erp")


@formats()
def test_idempotency_namespaces(srv, fmt):
    """Adjustments and counts share one id namespace; reservation ids and each
    follow-up key (fulfillment_id, amend_id, release_id) are namespaces of their own."""
    c = srv.client(fmt)
    sku = uid("sku")
    aid = uid("shared")
    r = c.post("/v1/adjustments", dict(id=aid, sku=sku, location="L1", delta=10,
                                       reason="received", source="erp"))
    assert r.status == 200, r
    v = c.pos(sku, "L1")["version"]
    e = expect_error(c.post("/v1/counts", count_body(sku, 3, aid)), 422,
                     "idempotency_mismatch", "id")
    assert "adjustment" in e["message"], e
    other = uid("sku")
    expect_error(c.post("/v1/counts", count_body(other, 3, aid)), 422, "idempotency_mismatch")
    expect_error(c.position(other, "L1"), 404, "not_found")
    p = c.pos(sku, "L1")
    assert (p["on_hand"], p["version"]) == (10, v), "a refused count changed state: %r" % p
    cid = uid("shared")
    time.sleep(0.005)
    r = c.post("/v1/counts", count_body(sku, 4, cid))
    assert r.status == 200 and r.data["count"]["applied"], r
    e = expect_error(c.post("/v1/adjustments", dict(id=cid, sku=sku, location="L1", delta=1,
                                                    reason="received", source="erp")),
                     422, "idempotency_mismatch", "id")
    assert "count" in e["message"], e
    assert c.pos(sku, "L1")["on_hand"] == 4
    # a reservation may carry an adjustment's id; so may a follow-up key
    r = c.reserve([dict(sku=sku, location="L1", qty=1)], rid=aid)
    assert r.status == 201 and "replayed" not in r.data, r
    r = c.post(R + "/" + aid + "/release", dict(release_id=aid,
                                                 lines=[dict(sku=sku, location="L1", qty=1)]))
    assert r.status == 200 and r.data["status"] == "released" and "replayed" not in r.data, r
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=cid))
    assert r.status == 200 and r.data["status"] == "fulfilled" and "replayed" not in r.data, r
    assert c.pos(sku, "L1")["on_hand"] == 3


@formats()
def test_release_id_makes_partial_release_retry_safe(srv, fmt):
    c = srv.client(fmt)
    a, b = stocked(c, 10), stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=5), dict(sku=b, location="L1", qty=2)],
                     rid=rid).status == 201
    key = uid("rel")
    body = dict(release_id=key, reason="substitution", lines=[dict(sku=a, location="L1", qty=2)])
    first = c.post(R + "/" + rid + "/release", body)
    assert first.status == 200 and "replayed" not in first.data, first
    assert line_by_loc(dict(lines=[ln for ln in first.data["lines"] if ln["sku"] == a]),
                       "L1")["released"] == 2, first.data
    v = c.pos(a, "L1")["version"]
    # the retry (a lost answer): a replay, nothing released twice
    again = c.post(R + "/" + rid + "/release", body)
    assert again.status == 200 and again.data.get("replayed") is True, again
    d = dict(again.data)
    del d["replayed"]
    assert d == first.data, (d, first.data)
    p = c.pos(a, "L1")
    assert (p["reserved"], p["version"]) == (3, v), "a replayed release changed state: %r" % p
    # the reason is free text, not content
    again = c.post(R + "/" + rid + "/release", dict(body, reason="retry"))
    assert again.status == 200 and again.data.get("replayed") is True, again
    # same key, other content: 422 naming the key, nothing changes
    expect_error(c.post(R + "/" + rid + "/release",
                        dict(release_id=key, lines=[dict(sku=a, location="L1", qty=1)])),
                 422, "idempotency_mismatch", "release_id")
    expect_error(c.post(R + "/" + rid + "/release", dict(release_id=key)), 422,
                 "idempotency_mismatch", "release_id")
    rid2 = uid("res")
    assert c.reserve([dict(sku=a, location="L1", qty=1)], rid=rid2).status == 201
    expect_error(c.post(R + "/" + rid2 + "/release", body), 422, "idempotency_mismatch",
                 "release_id")
    assert c.pos(a, "L1")["reserved"] == 4
    # a refused release leaves its key free
    key2 = uid("rel")
    expect_error(c.post(R + "/" + rid + "/release",
                        dict(release_id=key2, lines=[dict(sku=a, location="L1", qty=9)])),
                 409, "conflict")
    r = c.post(R + "/" + rid + "/release", dict(release_id=key2))
    assert r.status == 200 and r.data["status"] == "released" and "replayed" not in r.data, r
    p = c.pos(a, "L1")
    assert p["reserved"] == 1, p
    assert c.pos(b, "L1")["reserved"] == 0
    # validated like every id
    expect_error(c.post(R + "/" + rid2 + "/release", dict(release_id="")), 400, "bad_request",
                 "release_id")
    expect_error(c.post(R + "/" + rid2 + "/release", dict(release_id=7)), 400, "bad_request",
                 "release_id")
    assert c.pos(a, "L1")["reserved"] == 1


@formats()
def test_commit_order_id_conflict_and_late_order_id(srv, fmt):
    c = srv.client(fmt)
    sku = stocked(c, 10)
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=2)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/commit", dict(order_id="ord-1"))
    assert r.status == 200 and r.data["order_id"] == "ord-1", r
    for body in (dict(order_id="ord-1"), {}):
        again = c.post(R + "/" + rid + "/commit", body)
        assert again.status == 200 and again.data.get("replayed") is True, again
        assert again.data["order_id"] == "ord-1", again
    e = expect_error(c.post(R + "/" + rid + "/commit", dict(order_id="ord-2")), 409, "conflict",
                     "order_id")
    assert e.get("status") == "committed", e
    assert c.get(R + "/" + rid).data["order_id"] == "ord-1"
    # committed by fulfil (held -> committed implicitly): a later commit sets the order id
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=3)], rid=rid).status == 201
    r = c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=uid("ful"),
                                               lines=[dict(sku=sku, location="L1", qty=1)]))
    assert r.status == 200 and r.data["status"] == "committed" and "order_id" not in r.data, r
    r = c.post(R + "/" + rid + "/commit", dict(order_id="ord-9"))
    assert r.status == 200 and r.data["order_id"] == "ord-9" and "replayed" not in r.data, r
    assert c.get(R + "/" + rid).data["order_id"] == "ord-9"
    again = c.post(R + "/" + rid + "/commit", dict(order_id="ord-9"))
    assert again.status == 200 and again.data.get("replayed") is True, again
    expect_error(c.post(R + "/" + rid + "/commit", dict(order_id="ord-8")), 409, "conflict")
    # committed by a commit that named none: the first order id given is taken
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid).status == 201
    assert c.post(R + "/" + rid + "/commit", {}).status == 200
    r = c.post(R + "/" + rid + "/commit", dict(order_id="ord-3"))
    assert r.status == 200 and r.data["order_id"] == "ord-3" and "replayed" not in r.data, r
    p = c.pos(sku, "L1")
    assert (p["on_hand"], p["reserved"], p["committed"]) == (9, 0, 2 + 2 + 1), p


@formats()
def test_replay_rule_by_route(srv, fmt):
    """Adjustments and counts replay the position as it was right after the original;
    every reservation route replays the reservation as it is now."""
    c = srv.client(fmt)
    sku = uid("sku")
    adj = dict(id=uid("adj"), sku=sku, location="L1", delta=10, reason="received", source="erp")
    first = c.post("/v1/adjustments", adj)
    assert first.status == 200, first
    c.adjust(sku, "L1", 5)
    again = c.post("/v1/adjustments", adj)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert again.data["position"] == first.data["position"], (again.data, first.data)
    assert again.data["position"]["on_hand"] == 10, again.data
    time.sleep(0.005)
    cnt = count_body(sku, 20)
    first = c.post("/v1/counts", cnt)
    assert first.status == 200, first
    time.sleep(0.005)  # after counted_at, so not absorbed
    c.adjust(sku, "L1", -3)
    again = c.post("/v1/counts", cnt)
    assert again.status == 200 and again.data.get("replayed") is True, again
    assert again.data["position"] == first.data["position"], (again.data, first.data)
    assert c.pos(sku, "L1")["on_hand"] == 17

    def replayed_now(path, body):
        r = c.post(path, body)
        assert r.status in (200, 201) and r.data.get("replayed") is True, r
        d = dict(r.data)
        del d["replayed"]
        now = c.get(R + "/" + d["id"])
        assert now.status == 200 and d == now.data, \
            "a reservation replay answers the reservation as it is now:\n%r\n%r" % (d, now.data)
        return d

    one = [dict(sku=sku, location="L1", qty=1)]
    rid = uid("res")
    create = dict(id=rid, lines=[dict(sku=sku, location="L1", qty=4)])
    assert c.post(R, create).status == 201
    assert c.post(R + "/" + rid + "/commit", dict(order_id="o-1")).status == 200
    assert replayed_now(R, create)["status"] == "committed"
    ful = dict(fulfillment_id=uid("ful"), lines=one)
    assert c.post(R + "/" + rid + "/fulfil", ful).status == 200
    assert replayed_now(R + "/" + rid + "/commit", dict(order_id="o-1"))["lines"][0]["fulfilled"] == 1
    rel = dict(release_id=uid("rel"), lines=one)
    assert c.post(R + "/" + rid + "/release", rel).status == 200
    assert c.post(R + "/" + rid + "/fulfil", dict(fulfillment_id=uid("ful"), lines=one)).status == 200
    d = replayed_now(R + "/" + rid + "/release", rel)
    assert (d["lines"][0]["fulfilled"], d["lines"][0]["released"]) == (2, 1), d
    d = replayed_now(R + "/" + rid + "/fulfil", ful)
    assert d["lines"][0]["fulfilled"] == 2, d
    rid2 = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=2)], rid=rid2).status == 201
    amd = dict(amend_id=uid("amd"), release=[], add=one)
    assert c.post(R + "/" + rid2 + "/amend", amd).status == 200
    assert c.post(R + "/" + rid2 + "/release", {}).status == 200
    d = replayed_now(R + "/" + rid2 + "/amend", amd)
    assert d["status"] == "released" and d["lines"][0]["released"] == 3, d
    p = c.pos(sku, "L1")
    assert (p["on_hand"], p["reserved"], p["committed"]) == (15, 0, 1), p
