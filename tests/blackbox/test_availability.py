"""Section 3: availability read paths, in both encodings."""
import random

from harness import check_position, expect_error, formats, uid

A = "/v1/availability"


@formats()
def test_position_get(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 7)
    p = c.pos(sku, "L1")
    assert (p["sku"], p["location"], p["on_hand"], p["available"], p["reserved"],
            p["committed"], p["safety_stock"], p["shortfall"]) == (sku, "L1", 7, 7, 0, 0, 0, 0), p
    assert p["version"] >= 1, p
    assert "counted_at" not in p, "counted_at must be omitted when never counted: %r" % p


@formats()
def test_position_version_increases(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    v = []
    for d in (3, -1, 4):
        c.adjust(sku, "L1", d)
        v.append(c.pos(sku, "L1")["version"])
    assert v[0] < v[1] < v[2], "version must strictly increase: %r" % v


@formats()
def test_position_never_seen_404(srv, fmt):
    c = srv.client(fmt)
    expect_error(c.position(uid("nosku"), "L1"), 404, "not_found")
    sku = uid("sku")
    c.adjust(sku, "L1", 1)
    expect_error(c.position(sku, "L2"), 404, "not_found")


@formats()
def test_missing_sku_400(srv, fmt):
    c = srv.client(fmt)
    expect_error(c.get(A, params=dict(location="L1")), 400, "bad_request", "sku")
    expect_error(c.get(A), 400, "bad_request", "sku")


@formats()
def test_endless_aisle_sorted(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "store-b", 10)
    c.adjust(sku, "store-a", 5)
    c.adjust(sku, "store-c", 5)
    c.adjust(sku, "store-d", 3)
    r = c.post("/v1/safety-stock", dict(sku=sku, location="store-d", safety_stock=3))
    assert r.status == 200, r
    r = c.get(A, params=dict(sku=sku))
    assert r.status == 200, r
    d = r.data
    assert d["sku"] == sku, d
    locs = [p["location"] for p in d["locations"]]
    assert locs == ["store-b", "store-a", "store-c", "store-d"], \
        "sorted by available desc then location: %r" % locs
    for p in d["locations"]:
        check_position(p)
    assert d["available"] == 20, d
    assert d["on_hand"] == 23, d
    # another SKU's positions never leak in
    assert all(p["sku"] == sku for p in d["locations"]), d


@formats()
def test_endless_aisle_unknown_sku(srv, fmt):
    c = srv.client(fmt)
    sku = uid("nosku")
    r = c.get(A, params=dict(sku=sku))
    assert r.status == 200, r
    d = r.data
    assert d["locations"] == [] and d["available"] == 0 and d["on_hand"] == 0, d


@formats()
def test_group_availability(srv, fmt):
    c = srv.client(fmt)
    sku, g = uid("sku"), uid("grp")
    c.adjust(sku, "g-l3", 4)
    c.adjust(sku, "g-l1", 2)
    r = c.put("/v1/groups/" + g, dict(locations=["g-l3", "g-l2", "g-l1"]))
    assert r.status == 200, r
    r = c.get(A, params=dict(sku=sku, group=g))
    assert r.status == 200, r
    d = r.data
    assert d["sku"] == sku and d["group"] == g and d["available"] == 6, d
    assert [p["location"] for p in d["locations"]] == ["g-l3", "g-l2", "g-l1"], \
        "group order: %r" % d["locations"]
    check_position(d["locations"][1], found=False)
    check_position(d["locations"][0])
    assert d["locations"][0]["on_hand"] == 4, d


@formats()
def test_group_availability_unknown_group_404(srv, fmt):
    c = srv.client(fmt)
    expect_error(c.get(A, params=dict(sku="x", group=uid("nogrp"))), 404, "not_found")


@formats()
def test_query_in_request_order(srv, fmt):
    c = srv.client(fmt)
    sku, g = uid("sku"), uid("grp")
    c.adjust(sku, "q1", 3)
    c.adjust(sku, "q2", 9)
    assert c.put("/v1/groups/" + g, dict(locations=["q2", "q1", "q3"])).status == 200
    items = [dict(sku=sku, location="q2"), dict(sku=sku, location="nowhere"),
             dict(sku=sku, group=g), dict(sku=sku, group=uid("nogrp")), dict(sku=sku, location="q1")]
    r = c.post(A + "/query", dict(items=items))
    assert r.status == 200, r
    out = r.data["items"]
    assert len(out) == 5, out
    check_position(out[0], found=True)
    assert out[0]["location"] == "q2" and out[0]["on_hand"] == 9, out[0]
    check_position(out[1], found=False)
    assert out[1]["sku"] == sku and out[1]["location"] == "nowhere", out[1]
    assert out[2]["found"] is True and out[2]["group"] == g and out[2]["available"] == 12, out[2]
    assert [p["location"] for p in out[2]["locations"]] == ["q2", "q1", "q3"], out[2]
    assert out[3]["found"] is False and out[3]["available"] == 0 and out[3]["locations"] == [], out[3]
    check_position(out[4], found=True)
    assert out[4]["on_hand"] == 3, out[4]


@formats()
def test_query_limits(srv, fmt):
    c = srv.client(fmt)
    expect_error(c.post(A + "/query", dict(items=[])), 400, "bad_request", "items")
    expect_error(c.post(A + "/query", dict()), 400, "bad_request", "items")
    many = [dict(sku="s%d" % i, location="l") for i in range(1001)]
    expect_error(c.post(A + "/query", dict(items=many)), 400, "bad_request", "items")
    r = c.post(A + "/query", dict(items=many[:1000]))
    assert r.status == 200 and len(r.data["items"]) == 1000, r
    expect_error(c.post(A + "/query", dict(items=[dict(location="l")])), 400, "bad_request", "sku")
    expect_error(c.post(A + "/query", dict(items=[dict(sku="s")])), 400, "bad_request")


@formats()
def test_shopify_gid_sku_percent_encoded(srv, fmt):
    c = srv.client(fmt)
    sku = "gid://shopify/ProductVariant/%d" % random.randrange(10**12)
    loc = "gid://shopify/Location/77 main"
    c.adjust(sku, loc, 4)
    r = c.get(A + "?sku=" + sku.replace(":", "%3A").replace("/", "%2F") + "&location=" +
              loc.replace(":", "%3A").replace("/", "%2F").replace(" ", "%20"))
    assert r.status == 200, r
    assert r.data["sku"] == sku and r.data["location"] == loc and r.data["on_hand"] == 4, r.data
    r = c.get(A, params=dict(sku=sku))
    assert r.status == 200 and [p["location"] for p in r.data["locations"]] == [loc], r


@formats()
def test_unicode_identifiers(srv, fmt):
    c = srv.client(fmt)
    sku = uid("café-ü-€")
    c.adjust(sku, "Zürich", 2)
    p = c.pos(sku, "Zürich")
    assert p["sku"] == sku and p["location"] == "Zürich", p


# --- bounded answers (issue 9, item 3) ----------------------------------------------

QUERY_POSITIONS_MAX = 10000
SKU_LOCATIONS_MAX = 1000


def _big_group(c, n=1000):
    name = uid("bigg")
    r = c.put("/v1/groups/" + name, dict(locations=["loc-%04d" % i for i in range(n)]))
    assert r.status == 200, r
    return name


@formats()
def test_query_positions_bounded(srv, fmt):
    c = srv.client(fmt)
    g = _big_group(c)
    sku = uid("sku")
    c.adjust(sku, "loc-0001", 3)
    # the probe's request: 1,000 group items over a 1,000-location group
    items = [dict(sku=sku, group=g)] * 1000
    e = expect_error(c.post(A + "/query", dict(items=items)), 400, "bad_request", "items")
    assert "1000000" in e["message"] and str(QUERY_POSITIONS_MAX) in e["message"], e
    # exactly at the bound (10 groups of 1000) is answered; one more position is not
    r = c.post(A + "/query", dict(items=items[:10]))
    assert r.status == 200 and len(r.data["items"]) == 10, r
    assert r.data["items"][0]["available"] == 3 and len(r.data["items"][0]["locations"]) == 1000
    e = expect_error(c.post(A + "/query", dict(items=items[:10] + [dict(sku=sku, location="x")])),
                     400, "bad_request", "items")
    assert "10001" in e["message"], e
    # an unknown group carries no position
    r = c.post(A + "/query", dict(items=items[:10] + [dict(sku=sku, group=uid("nog"))]))
    assert r.status == 200 and r.data["items"][10]["found"] is False, r


def test_query_worst_allowed_answers(srv):
    """The largest answer allowed (10,000 positions) is served whole. How long it
    takes is a benchmark's question (README: about 3 ms in the server), not a
    timed test's."""
    c = srv.client("json")
    g = _big_group(c)
    sku = uid("sku")
    items = [dict(sku=sku, group=g)] * 10
    r = c.post(A + "/query", dict(items=items))
    assert r.status == 200, r
    got = r.data["items"]
    assert len(got) == 10 and all(len(it["locations"]) == 1000 for it in got), len(got)
    assert len(r.body) < 2 * 1024 * 1024, len(r.body)


@formats()
def test_endless_aisle_bounded(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    n = SKU_LOCATIONS_MAX + 5
    for i in range(n):
        c.adjust(sku, "st-%04d" % i, i + 1)
    r = c.get(A, params=dict(sku=sku))
    assert r.status == 200, r
    d = r.data
    assert d["truncated"] is True and d["location_count"] == n, {k: d[k] for k in d if k != "locations"}
    assert len(d["locations"]) == SKU_LOCATIONS_MAX, len(d["locations"])
    # the most available first; the five least available are the ones cut
    avail = [p["available"] for p in d["locations"]]
    assert avail == sorted(avail, reverse=True) and avail[0] == n and avail[-1] == 6, avail[-3:]
    assert d["available"] == sum(avail) and d["on_hand"] == sum(p["on_hand"] for p in d["locations"]), d
    # at the bound nothing is cut and the answer carries no truncation fields
    sku2 = uid("sku")
    for i in range(3):
        c.adjust(sku2, "st-%d" % i, 1)
    d = c.get(A, params=dict(sku=sku2)).data
    assert "truncated" not in d and "location_count" not in d and len(d["locations"]) == 3, d
