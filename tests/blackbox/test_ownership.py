"""Section 6.2 on the single routes: 403 not_owner per field (own server with --ownership)."""
import json
import os
import tempfile

from harness import expect_error, formats, now_ms, uid

_dir = tempfile.mkdtemp(prefix="atpd-bb-own-")
with open(os.path.join(_dir, "ownership.json"), "w") as f:
    json.dump({"fields": {
        "counts": {"writers": ["erp", "wms"], "owner": "inventory-control"},
        "adjustments": {"writers": ["pos", "wms", "erp", "oms", "shopify"], "owner": "store-ops"},
        "safety_stock": {"writers": ["ops"], "owner": "merchandising"},
        "groups": {"writers": ["ops"], "owner": "ecommerce"},
        "reservations": {"writers": ["checkout", "pos", "oms", "shopify"], "owner": "ecommerce"},
    }}, f)
SERVER_ARGS = ["--ownership", os.path.join(_dir, "ownership.json")]


@formats()
def test_adjustments_writers(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    for src in ("pos", "erp", "shopify"):
        r = c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=2,
                                           reason="received", source=src))
        assert r.status == 200, (src, r)
    for src in ("ops", "crm"):
        r = c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=2,
                                           reason="received", source=src))
        expect_error(r, 403, "not_owner")
    assert c.pos(sku, "L1")["on_hand"] == 6


@formats()
def test_counts_writers(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 5, source="erp")
    expect_error(c.post("/v1/counts", dict(id=uid("c"), sku=sku, location="L1", on_hand=1,
                                           counted_at=now_ms(), source="pos")), 403, "not_owner")
    assert c.pos(sku, "L1")["on_hand"] == 5
    r = c.post("/v1/counts", dict(id=uid("c"), sku=sku, location="L1", on_hand=1,
                                  counted_at=now_ms(), source="wms"))
    assert r.status == 200 and r.data["position"]["on_hand"] == 1, r


@formats()
def test_safety_stock_writers(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 5, source="erp")
    expect_error(c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=2, source="erp")),
                 403, "not_owner")
    r = c.post("/v1/safety-stock", dict(sku=sku, location="L1", safety_stock=2, source="ops"))
    assert r.status == 200 and r.data["safety_stock"] == 2, r


@formats()
def test_reservations_channel(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    c.adjust(sku, "L1", 5, source="erp")
    expect_error(c.reserve([dict(sku=sku, location="L1", qty=1)], channel="erp"), 403, "not_owner")
    assert c.pos(sku, "L1")["reserved"] == 0
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], channel="checkout").status == 201
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], channel="shopify").status == 201


@formats()
def test_group_delete_writers(srv, fmt):
    """DELETE applies the groups rule exactly as PUT does (issue 9, item 4)."""
    c = srv.client(fmt)
    name = uid("grp")
    path = "/v1/groups/" + name
    # PUT: the reference behaviour
    expect_error(c.put(path, dict(locations=["A", "B"], source="pos")), 403, "not_owner", "source")
    expect_error(c.put(path, dict(locations=["A", "B"])), 403, "not_owner", "source")
    assert c.put(path, dict(locations=["A", "B"], source="ops")).status == 200
    # DELETE, flow as ?source=, as a body, or not at all
    expect_error(c.delete(path, params=dict(source="pos")), 403, "not_owner", "source")
    expect_error(c.delete(path, params=dict(source="erp")), 403, "not_owner", "source")
    expect_error(c.delete(path), 403, "not_owner", "source")
    expect_error(c.delete(path, body=dict(source="pos")), 403, "not_owner", "source")
    expect_error(c.delete(path, body=dict(source="ops"), params=dict(source="pos")), 400,
                 "bad_request", "source")
    r = c.get(path)
    assert r.status == 200 and r.data["locations"] == ["A", "B"], "a refused delete removed the group: %r" % r
    # an unknown group is not_owner too for a flow that may not write groups
    expect_error(c.delete("/v1/groups/" + uid("grp"), params=dict(source="pos")), 403, "not_owner")
    r = c.delete(path, params=dict(source="ops"))
    assert r.status == 204, r
    expect_error(c.get(path), 404, "not_found")
    assert c.put(path, dict(locations=["A"], source="ops")).status == 200
    assert c.delete(path, body=dict(source="ops")).status == 204
    expect_error(c.delete(path, params=dict(source="ops")), 404, "not_found")
