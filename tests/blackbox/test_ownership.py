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
