"""Retail journeys end to end (issue 12, item 8): one test per journey a retailer's stores,
web shop and back office walk every day, against the real bin/atpd with an ownership file
(contract section 9). Each test asserts every position and reservation it touches: on_hand,
reserved, committed, available, shortfall, status, and each line's fulfilled and released.

The ownership file is the example's (deploy/ownership.example.json) with one change for the
ERP journey: counts are written by the WMS and by the team that owns them,
`inventory-control`, not by the ERP, so an ERP count is a `not_owner` rejection that team
has to settle."""
import json
import os
import tempfile

from harness import check_reservation, expect_error, formats, now_ms, uid

_dir = tempfile.mkdtemp(prefix="atpd-bb-journeys-")
OWNERSHIP = os.path.join(_dir, "ownership.json")
with open(OWNERSHIP, "w") as f:
    json.dump({"fields": {
        "counts": {"writers": ["wms", "inventory-control"], "owner": "inventory-control"},
        "adjustments": {"writers": ["pos", "wms", "erp", "oms", "shopify"], "owner": "store-ops"},
        "safety_stock": {"writers": ["ops"], "owner": "merchandising"},
        "groups": {"writers": ["ops"], "owner": "ecommerce"},
        "reservations": {"writers": ["checkout", "pos", "oms", "shopify"], "owner": "ecommerce"},
    }}, f)
ASAN = True
SERVER_ARGS = ["--ownership", OWNERSHIP]


# --- helpers ------------------------------------------------------------------------

def expect_pos(c, sku, loc, on_hand, reserved=0, committed=0, safety_stock=0, **extra):
    """The position is exactly this; available and shortfall follow from the contract's
    formulas but are spelled out so a wrong figure names itself."""
    p = c.pos(sku, loc)
    want = dict(on_hand=on_hand, reserved=reserved, committed=committed,
                safety_stock=safety_stock,
                available=max(0, on_hand - safety_stock - reserved - committed),
                shortfall=max(0, reserved + committed - on_hand))
    want.update(extra)
    got = {k: p.get(k) for k in want}
    assert got == want, "%s@%s: got %r, want %r (%r)" % (sku, loc, got, want, p)
    return p


def expect_unseen(c, sku, loc):
    r = c.position(sku, loc)
    assert r.status == 404, "%s@%s must never have been touched: %r" % (sku, loc, r)


def lines_of(res):
    """{(sku, location): (qty, fulfilled, released)} of a reservation."""
    check_reservation(res)
    out = {}
    for ln in res["lines"]:
        key = (ln["sku"], ln["location"])
        assert key not in out, "one line per position: %r" % (res,)
        out[key] = (ln["qty"], ln["fulfilled"], ln["released"])
    return out


def expect_res(c, rid, status, lines):
    r = c.get("/v1/reservations/%s" % rid)
    assert r.status == 200, r
    check_reservation(r.data, status)
    assert lines_of(r.data) == lines, r.data
    return r.data


def receive(c, sku, loc, qty, source="erp", occurred_at=None):
    extra = {} if occurred_at is None else dict(occurred_at=occurred_at)
    d = c.adjust(sku, loc, qty, reason="received", source=source, **extra)
    assert d["adjustment"]["applied"] is True, d
    return d


def ok(r, status=200):
    assert r.status == status, r
    return r.data


def batch(c, ops, **params):
    r = c.post("/v1/batch", ops, params=params or None)
    assert r.status == 200, r
    return r.data


def dead_letters(c, **params):
    r = c.get("/v1/dead-letters", params=dict(limit=1000, **params))
    assert r.status == 200, r
    return r.data["dead_letters"]


def flows(c):
    return {f["name"]: f for f in ok(c.get("/v1/flows"))["flows"]}


# --- 1. buy online, pick up in store --------------------------------------------------

@formats()
def test_buy_online_pick_up_in_store(srv, fmt):
    """A web order held at the store; the store substitutes one item (amend), the customer
    cancels one line (a partial release, retried with its release_id), and the pickup is
    the fulfilment of what is left."""
    c = srv.client(fmt)
    store = uid("STORE")
    shirt, shirt2, socks, cap = (uid("sku") for _ in range(4))
    for sku, qty in ((shirt, 3), (shirt2, 4), (socks, 5), (cap, 2)):
        receive(c, sku, store, qty)
    rid = uid("bopis")
    res = ok(c.reserve([dict(sku=shirt, location=store, qty=2),
                        dict(sku=socks, location=store, qty=1),
                        dict(sku=cap, location=store, qty=1)],
                       rid=rid, channel="shopify", order_ref="#1001", ttl_ms=3600000), 201)
    check_reservation(res, "held")
    assert lines_of(res) == {(shirt, store): (2, 0, 0), (socks, store): (1, 0, 0),
                             (cap, store): (1, 0, 0)}, res
    expect_pos(c, shirt, store, 3, reserved=2)
    expect_pos(c, socks, store, 5, reserved=1)
    expect_pos(c, cap, store, 2, reserved=1)

    # The picker finds the shirts damaged and substitutes the other colour: both or neither.
    amend = dict(amend_id=uid("amend"), release=[dict(sku=shirt, location=store, qty=2)],
                 add=[dict(sku=shirt2, location=store, qty=2)])
    res = ok(c.post("/v1/reservations/%s/amend" % rid, amend))
    check_reservation(res, "held")
    want = {(shirt, store): (2, 0, 2), (shirt2, store): (2, 0, 0), (socks, store): (1, 0, 0),
            (cap, store): (1, 0, 0)}
    assert lines_of(res) == want, res
    # The amend retried is a replay and changes nothing.
    again = ok(c.post("/v1/reservations/%s/amend" % rid, amend))
    assert again.get("replayed") is True and lines_of(again) == want, again
    # A substitution the store cannot fill changes nothing at all.
    expect_error(c.post("/v1/reservations/%s/amend" % rid, dict(
        amend_id=uid("amend"), release=[dict(sku=socks, location=store, qty=1)],
        add=[dict(sku=shirt2, location=store, qty=3)])), 409, "insufficient_stock")
    expect_res(c, rid, "held", want)
    expect_pos(c, shirt, store, 3)
    expect_pos(c, shirt2, store, 4, reserved=2)
    expect_pos(c, socks, store, 5, reserved=1)

    # The order is placed.
    res = ok(c.post("/v1/reservations/%s/commit" % rid, dict(order_id="gid://shopify/Order/1001")))
    check_reservation(res, "committed")
    assert res.get("order_id") == "gid://shopify/Order/1001", res
    expect_pos(c, shirt2, store, 4, committed=2)
    expect_pos(c, socks, store, 5, committed=1)
    expect_pos(c, cap, store, 2, committed=1)

    # The customer cancels the cap: a partial release, retried by a flaky client.
    rel = dict(release_id=uid("rel"), reason="customer cancelled line",
               lines=[dict(sku=cap, location=store, qty=1)])
    res = ok(c.post("/v1/reservations/%s/release" % rid, rel))
    want[(cap, store)] = (1, 0, 1)
    check_reservation(res, "committed")
    assert lines_of(res) == want, res
    again = ok(c.post("/v1/reservations/%s/release" % rid, rel))
    assert again.get("replayed") is True and lines_of(again) == want, again
    expect_pos(c, cap, store, 2)

    # Pickup: the associate fulfils what is left; the customer walks out with it.
    pickup = dict(fulfillment_id=uid("pickup"))
    res = ok(c.post("/v1/reservations/%s/fulfil" % rid, pickup))
    want.update({(shirt2, store): (2, 2, 0), (socks, store): (1, 1, 0)})
    check_reservation(res, "fulfilled")
    assert lines_of(res) == want, res
    again = ok(c.post("/v1/reservations/%s/fulfil" % rid, pickup))
    assert again.get("replayed") is True and lines_of(again) == want, again
    expect_res(c, rid, "fulfilled", want)
    expect_pos(c, shirt, store, 3)
    expect_pos(c, shirt2, store, 2)
    expect_pos(c, socks, store, 4)
    expect_pos(c, cap, store, 2)


# --- 2. buy in store, ship later from another location ---------------------------------

@formats()
def test_buy_in_store_ship_from_another_location(srv, fmt):
    """The store has none; the sale reserves over the fulfilment group, split across two
    warehouses in group order, and ships in two parcels (partial fulfils)."""
    c = srv.client(fmt)
    store, dc1, dc2, dc3 = uid("STORE"), uid("DC1"), uid("DC2"), uid("DC3")
    sofa = uid("sku")
    grp = uid("ship")
    g = ok(c.put("/v1/groups/%s" % grp, dict(locations=[dc1, dc2, dc3], source="ops")))
    assert g["locations"] == [dc1, dc2, dc3], g
    receive(c, sofa, dc1, 3, source="wms")
    receive(c, sofa, dc2, 4, source="wms")
    receive(c, sofa, dc3, 4, source="wms")
    # No single location can fill five: without allow_split the sale is refused, nothing held
    # (a line goes whole to one location).
    r = c.reserve([dict(sku=sofa, group=grp, qty=5)], channel="pos")
    expect_error(r, 409, "insufficient_stock")
    sf = r.error["shortfalls"]
    assert len(sf) == 1 and (sf[0]["requested"], sf[0]["available"]) == (5, 4), sf
    assert sf[0].get("allow_split_would_fill") is True, sf
    # With allow_split: the first locations in group order give what they have.
    rid = uid("pos")
    res = ok(c.reserve([dict(sku=sofa, group=grp, qty=5, allow_split=True)], rid=rid,
                       channel="pos", order_ref="POS-77"), 201)
    want = {(sofa, dc1): (3, 0, 0), (sofa, dc2): (2, 0, 0)}
    check_reservation(res, "held")
    assert lines_of(res) == want, res
    expect_pos(c, sofa, dc1, 3, reserved=3)
    expect_pos(c, sofa, dc2, 4, reserved=2)
    expect_pos(c, sofa, dc3, 4)
    expect_unseen(c, sofa, store)
    ga = ok(c.get("/v1/availability", params=dict(sku=sofa, group=grp)))
    assert ga["available"] == 0 + 2 + 4 and [p["location"] for p in ga["locations"]] == \
        [dc1, dc2, dc3], ga
    res = ok(c.post("/v1/reservations/%s/commit" % rid, dict(order_id="POS-77")))
    check_reservation(res, "committed")
    expect_pos(c, sofa, dc1, 3, committed=3)
    expect_pos(c, sofa, dc2, 4, committed=2)

    # First parcel leaves DC1 with two of its three, then the third.
    f1 = dict(fulfillment_id=uid("ship"), lines=[dict(sku=sofa, location=dc1, qty=2)])
    res = ok(c.post("/v1/reservations/%s/fulfil" % rid, f1))
    want[(sofa, dc1)] = (3, 2, 0)
    check_reservation(res, "committed")
    assert lines_of(res) == want, res
    again = ok(c.post("/v1/reservations/%s/fulfil" % rid, f1))
    assert again.get("replayed") is True and lines_of(again) == want, again
    expect_pos(c, sofa, dc1, 1, committed=1)
    # Fulfilling more than a line has left is refused and changes nothing.
    expect_error(c.post("/v1/reservations/%s/fulfil" % rid, dict(
        fulfillment_id=uid("ship"), lines=[dict(sku=sofa, location=dc2, qty=3)])), 409, "conflict")
    f2 = dict(fulfillment_id=uid("ship"), lines=[dict(sku=sofa, location=dc1, qty=1),
                                                 dict(sku=sofa, location=dc2, qty=1)])
    res = ok(c.post("/v1/reservations/%s/fulfil" % rid, f2))
    want = {(sofa, dc1): (3, 3, 0), (sofa, dc2): (2, 1, 0)}
    check_reservation(res, "committed")
    assert lines_of(res) == want, res
    expect_pos(c, sofa, dc1, 0)
    expect_pos(c, sofa, dc2, 3, committed=1)
    # The last parcel: everything that remains.
    res = ok(c.post("/v1/reservations/%s/fulfil" % rid, dict(fulfillment_id=uid("ship"))))
    want[(sofa, dc2)] = (2, 2, 0)
    check_reservation(res, "fulfilled")
    assert lines_of(res) == want, res
    expect_res(c, rid, "fulfilled", want)
    expect_pos(c, sofa, dc1, 0)
    expect_pos(c, sofa, dc2, 2)
    expect_pos(c, sofa, dc3, 4)
    expect_unseen(c, sofa, store)
    ga = ok(c.get("/v1/availability", params=dict(sku=sofa, group=grp)))
    assert ga["available"] == 6, ga


# --- 3. return an online order in a store -------------------------------------------

@formats()
def test_return_online_order_in_store(srv, fmt):
    """Shipped from the warehouse, returned at a store: the unit is restocked at the store
    (return_restock), the warehouse's figures do not move."""
    c = srv.client(fmt)
    dc, store = uid("DC"), uid("STORE")
    jeans, belt = uid("sku"), uid("sku")
    receive(c, jeans, dc, 10, source="wms")
    receive(c, belt, store, 1, source="erp")
    rid = uid("web")
    ok(c.reserve([dict(sku=jeans, location=dc, qty=2)], rid=rid, channel="shopify"), 201)
    res = ok(c.post("/v1/reservations/%s/fulfil" % rid, dict(fulfillment_id=uid("ship"))))
    check_reservation(res, "fulfilled")
    assert lines_of(res) == {(jeans, dc): (2, 2, 0)}, res
    expect_pos(c, jeans, dc, 8)
    # A hold at the store on another SKU is not disturbed by the return.
    hold = uid("hold")
    ok(c.reserve([dict(sku=belt, location=store, qty=1)], rid=hold, channel="pos"), 201)
    # One pair comes back to the store.
    body = dict(id=uid("ret"), sku=jeans, location=store, delta=1, reason="return_restock",
                source="pos", ref="gid://shopify/Order/2002")
    d = ok(c.post("/v1/adjustments", body))
    assert d["adjustment"]["applied"] is True and d["adjustment"]["absorbed"] is False, d
    assert d["position"]["on_hand"] == 1 and d["position"]["location"] == store, d
    # The POS retries the return: nothing doubles.
    again = ok(c.post("/v1/adjustments", body))
    assert again.get("replayed") is True, again
    expect_pos(c, jeans, store, 1)
    expect_pos(c, jeans, dc, 8)
    expect_pos(c, belt, store, 1, reserved=1)
    expect_res(c, rid, "fulfilled", {(jeans, dc): (2, 2, 0)})
    expect_res(c, hold, "held", {(belt, store): (1, 0, 0)})
    # The endless aisle now sees the returned pair at the store.
    sv = ok(c.get("/v1/availability", params=dict(sku=jeans)))
    assert sv["on_hand"] == 9 and sv["available"] == 9, sv
    assert [(p["location"], p["available"]) for p in sv["locations"]] == [(dc, 8), (store, 1)], sv


# --- 4. an exchange across channels ------------------------------------------------------

@formats()
def test_exchange_across_channels_in_one_batch(srv, fmt):
    """An online purchase exchanged at a store: the returned size is restocked and the
    wanted size held for the customer in ONE batch; the batch retried replays both."""
    c = srv.client(fmt)
    dc, store = uid("DC"), uid("STORE")
    size_m, size_l = uid("sku-M"), uid("sku-L")
    receive(c, size_m, dc, 4, source="wms")
    receive(c, size_l, store, 2, source="erp")
    web = uid("web")
    ok(c.reserve([dict(sku=size_m, location=dc, qty=1)], rid=web, channel="shopify"), 201)
    ok(c.post("/v1/reservations/%s/fulfil" % web, dict(fulfillment_id=uid("ship"))))
    expect_pos(c, size_m, dc, 3)
    hold = uid("exch")
    ops = [dict(op="adjust", flow="pos", id=uid("ret"), sku=size_m, location=store, delta=1,
                reason="return_restock", ref="exchange-" + web),
           dict(op="reserve", flow="pos", id=hold, lines=[dict(sku=size_l, location=store, qty=1)],
                order_ref="exchange-" + web)]
    b = batch(c, ops, results="all")
    assert (b["received"], b["applied"], b["replayed"], b["rejected"], b["queued"]) == \
        (2, 2, 0, 0, 0), b
    assert [(x["index"], x["status"]) for x in b["results"]] == [(0, 200), (1, 201)], b
    expect_pos(c, size_m, store, 1)
    expect_pos(c, size_m, dc, 3)
    expect_pos(c, size_l, store, 2, reserved=1)
    res = expect_res(c, hold, "held", {(size_l, store): (1, 0, 0)})
    assert res.get("channel") == "pos", res
    # The till retries the whole exchange: both ops are replays.
    b = batch(c, ops, results="all")
    assert (b["received"], b["applied"], b["replayed"], b["rejected"]) == (2, 0, 2, 0), b
    assert all(x.get("replayed") is True for x in b["results"]), b
    expect_pos(c, size_m, store, 1)
    expect_pos(c, size_l, store, 2, reserved=1)
    expect_res(c, web, "fulfilled", {(size_m, dc): (1, 1, 0)})
    # The customer takes the new size home.
    res = ok(c.post("/v1/reservations/%s/fulfil" % hold, dict(fulfillment_id=uid("hand"))))
    assert lines_of(res) == {(size_l, store): (1, 1, 0)} and res["status"] == "fulfilled", res
    expect_pos(c, size_l, store, 1)


# --- 5. offline POS sales synced after a cycle count ---------------------------------

@formats()
def test_offline_pos_sales_synced_after_a_cycle_count(srv, fmt):
    """A store's tills lose the network; the WMS counts the shelf at T; when the tills come
    back their sales before T are absorbed (the count saw them), those after T apply."""
    c = srv.client(fmt)
    store = uid("STORE")
    mug = uid("sku")
    t0 = now_ms() - 600000
    receive(c, mug, store, 20, source="erp", occurred_at=t0)
    hold = uid("hold")
    ok(c.reserve([dict(sku=mug, location=store, qty=2)], rid=hold, channel="shopify"), 201)
    T = t0 + 300000
    # One sale after T reached us before the count was posted (the till was online then).
    def sale(at):
        return dict(id=uid("sale"), sku=mug, location=store, delta=-1, reason="sale",
                    source="pos", occurred_at=at)

    d = ok(c.post("/v1/adjustments", sale(T + 1000)))
    assert d["adjustment"]["applied"] is True, d
    expect_pos(c, mug, store, 19, reserved=2)
    # The cycle count at T: 15 on the shelf (five offline sales before T are behind it).
    d = ok(c.post("/v1/counts", dict(id=uid("count"), sku=mug, location=store, on_hand=15,
                                     counted_at=T, source="wms")))
    assert d["count"]["applied"] is True and d["count"]["stale"] is False, d
    assert d["count"]["approximate"] is False, d
    # 15 at T plus the sale after T.
    expect_pos(c, mug, store, 14, reserved=2, counted_at=T)
    # The tills sync: five sales before T (absorbed), two after T (applied).
    before = [sale(T - 250000 + i * 1000) for i in range(5)]
    after = [sale(T + 5000), sale(T + 6000)]
    for body in before:
        d = ok(c.post("/v1/adjustments", body))
        assert d["adjustment"] == dict(id=body["id"], applied=False, absorbed=True), d
    expect_pos(c, mug, store, 14, reserved=2, counted_at=T)
    for body in after:
        d = ok(c.post("/v1/adjustments", body))
        assert d["adjustment"] == dict(id=body["id"], applied=True, absorbed=False), d
    expect_pos(c, mug, store, 12, reserved=2, counted_at=T)
    # A sale at exactly T is one the count saw.
    d = ok(c.post("/v1/adjustments", sale(T)))
    assert d["adjustment"]["absorbed"] is True, d
    # An older count is stale and changes nothing.
    d = ok(c.post("/v1/counts", dict(id=uid("count"), sku=mug, location=store, on_hand=3,
                                     counted_at=T - 1000, source="wms")))
    assert d["count"]["stale"] is True and d["count"]["applied"] is False, d
    expect_pos(c, mug, store, 12, reserved=2, counted_at=T)
    # The same sync in a batch after a second count: absorbed or applied alike.
    T2 = T + 10000
    ok(c.post("/v1/counts", dict(id=uid("count"), sku=mug, location=store, on_hand=10,
                                 counted_at=T2, source="wms")))
    expect_pos(c, mug, store, 10, reserved=2, counted_at=T2)
    # `source` may stay in a batch op when it names the op's flow.
    ops = [dict(op="adjust", flow="pos", **sale(T2 - 1)),
           dict(op="adjust", flow="pos", **sale(T2 + 1))]
    b = batch(c, ops, results="all")
    assert (b["applied"], b["rejected"]) == (2, 0), b
    expect_pos(c, mug, store, 9, reserved=2, counted_at=T2)
    expect_res(c, hold, "held", {(mug, store): (2, 0, 0)})


# --- 6. the same webhook-driven op delivered three times ----------------------------

@formats()
def test_webhook_delivered_three_times(srv, fmt):
    """Shopify delivers a webhook at least once: the op it drives is keyed by the webhook's
    id, applied once and replayed twice, on the single route and in a batch alike."""
    c = srv.client(fmt)
    store = uid("STORE")
    lamp = uid("sku")
    receive(c, lamp, store, 10)
    body = dict(id="shopify-webhook-" + uid("w"), sku=lamp, location=store, delta=-2,
                reason="sale", source="shopify", ref="gid://shopify/Order/3003")
    first = ok(c.post("/v1/adjustments", body))
    assert first["adjustment"]["applied"] is True and "replayed" not in first, first
    assert first["position"]["on_hand"] == 8, first
    for _ in range(2):
        again = ok(c.post("/v1/adjustments", body))
        assert again.get("replayed") is True, again
        assert again["adjustment"] == first["adjustment"], again
        assert again["position"] == first["position"], again
    expect_pos(c, lamp, store, 8, version=first["position"]["version"])
    # The same delivery with a different content is a mistake, refused, and changes nothing.
    expect_error(c.post("/v1/adjustments", dict(body, delta=-3)), 422, "idempotency_mismatch")
    expect_pos(c, lamp, store, 8, version=first["position"]["version"])

    # Through the batch adapter: a webhook relay that sends the same op three times in one
    # batch, then the whole batch again.
    op = dict(op="adjust", flow="shopify", id="shopify-webhook-" + uid("w"), sku=lamp,
              location=store, delta=-1, reason="sale")
    b = batch(c, [op, op, op], results="all")
    assert (b["received"], b["applied"], b["replayed"], b["rejected"]) == (3, 1, 2, 0), b
    assert [x.get("replayed", False) for x in b["results"]] == [False, True, True], b
    expect_pos(c, lamp, store, 7)
    b = batch(c, [op])
    assert (b["applied"], b["replayed"], b["results"]) == (0, 1, []), b
    # The single route's op replayed in a batch is the same op.
    b = batch(c, [dict(op="adjust", flow="shopify", **{k: v for k, v in body.items()
                                                        if k != "source"})])
    assert (b["applied"], b["replayed"]) == (0, 1), b
    # A reservation made by a webhook (orders/create), delivered three times.
    rid = "shopify-order-" + uid("o")
    res = ok(c.reserve([dict(sku=lamp, location=store, qty=2)], rid=rid, channel="shopify"), 201)
    for _ in range(2):
        again = c.reserve([dict(sku=lamp, location=store, qty=2)], rid=rid, channel="shopify")
        assert again.status == 201 and again.data.get("replayed") is True, again
        assert lines_of(again.data) == lines_of(res), again
    expect_pos(c, lamp, store, 7, reserved=2)
    expect_res(c, rid, "held", {(lamp, store): (2, 0, 0)})


# --- 7. an ERP feed from a flow that does not own counts ---------------------------

@formats()
def test_erp_counts_rejected_and_resolved_by_their_owner(srv, fmt):
    """The ERP sends counts, which only the WMS and inventory-control may write: each is
    refused not_owner and kept as a dead letter owned by inventory-control. That team
    replays one under its own flow (a corrected payload) and resolves the other."""
    c = srv.client(fmt)
    store = uid("STORE")
    kettle, toaster = uid("sku"), uid("sku")
    t0 = now_ms() - 60000
    receive(c, kettle, store, 7, source="erp", occurred_at=t0)
    receive(c, toaster, store, 4, source="erp", occurred_at=t0)
    # The ERP's count is at t, after every receipt, so it is the figure that results.
    t = t0 + 55000
    count_op = dict(op="count", flow="erp", id=uid("erp-count"), sku=kettle, location=store,
                    on_hand=5, counted_at=t)
    b = batch(c, [dict(op="adjust", flow="erp", id=uid("rcv"), sku=toaster, location=store,
                       delta=1, reason="received", occurred_at=t0), count_op])
    assert (b["received"], b["applied"], b["rejected"]) == (2, 1, 1), b
    assert [(x["index"], x["status"], x["error"]["code"]) for x in b["results"]] == \
        [(1, 403, "not_owner")], b
    # The same feed on the single route.
    single = dict(id=uid("erp-count"), sku=toaster, location=store, on_hand=1, counted_at=t,
                  source="erp")
    expect_error(c.post("/v1/counts", single), 403, "not_owner")
    expect_pos(c, kettle, store, 7)
    expect_pos(c, toaster, store, 5)

    mine = [d for d in dead_letters(c, owner="inventory-control", flow="erp", status="open")
            if isinstance(d["payload"], dict) and d["payload"].get("sku") in (kettle, toaster)]
    assert len(mine) == 2, mine
    by_sku = {d["payload"]["sku"]: d for d in mine}
    dl_batch, dl_single = by_sku[kettle], by_sku[toaster]
    for d in mine:
        assert (d["owner"], d["flow"], d["status"], d["attempts"]) == \
            ("inventory-control", "erp", "open", 1), d
        assert d["error"]["code"] == "not_owner", d
    assert dl_batch["index"] == 1 and dl_batch["origin"].get("batch") is True, dl_batch
    assert dl_batch["payload"]["id"] == count_op["id"], dl_batch
    assert dl_single["index"] == 0 and dl_single["origin"]["method"] == "POST", dl_single
    # The ERP's own team finds nothing to do: the rejections are not theirs.
    assert not [d for d in dead_letters(c, owner="erp") if d["dl_id"] in
                (dl_batch["dl_id"], dl_single["dl_id"])]

    # Replayed as it is, it is refused again: still open, one more attempt.
    r = c.post("/v1/dead-letters/%s/replay" % dl_batch["dl_id"], dict(by="ivan"))
    expect_error(r, 403, "not_owner")
    d = [x for x in dead_letters(c, owner="inventory-control") if x["dl_id"] == dl_batch["dl_id"]]
    assert len(d) == 1 and (d[0]["status"], d[0]["attempts"]) == ("open", 2), d
    expect_pos(c, kettle, store, 7)
    # inventory-control confirms the figure and replays it under its own flow.
    fixed = dict(count_op, flow="inventory-control")
    r = c.post("/v1/dead-letters/%s/replay" % dl_batch["dl_id"], dict(payload=fixed, by="ivan"))
    assert r.status == 200, r
    # A batch op's dead letter answers the op's batch result.
    assert r.data.get("status") == 200 and "error" not in r.data, r
    d = [x for x in dead_letters(c, owner="inventory-control") if x["dl_id"] == dl_batch["dl_id"]]
    assert len(d) == 1 and (d[0]["status"], d[0]["attempts"]) == ("replayed", 3), d
    assert d[0]["payload"]["flow"] == "inventory-control", d
    expect_pos(c, kettle, store, 5, counted_at=t)
    # The other count is wrong (the ERP's figure is a day old): resolved without applying.
    r = c.post("/v1/dead-letters/%s/resolve" % dl_single["dl_id"],
               dict(note="ERP figure is stale; the WMS count stands", by="ivan"))
    assert r.status == 200, r
    d = [x for x in dead_letters(c, owner="inventory-control", status="resolved")
         if x["dl_id"] == dl_single["dl_id"]]
    assert len(d) == 1 and d[0]["note"].startswith("ERP figure") and d[0]["by"] == "ivan", d
    expect_error(c.post("/v1/dead-letters/%s/replay" % dl_single["dl_id"], dict(by="ivan")),
                 409, "conflict")
    expect_pos(c, toaster, store, 5)
    assert not [x for x in dead_letters(c, owner="inventory-control", status="open")
                if x["dl_id"] in (dl_batch["dl_id"], dl_single["dl_id"])]


# --- 8. a reconciliation against a WMS export taken while changes were in flight -----

@formats()
def test_reconciliation_against_wms_export_in_flight(srv, fmt):
    """The WMS exports a store at as_of while sales and a hold keep arriving: the sales
    after as_of explain their differences, one real mismatch remains, and only a writer of
    counts may turn it into a count at as_of."""
    c = srv.client(fmt)
    store = uid("STORE")
    quiet, busy, lost = uid("sku"), uid("sku"), uid("sku")
    t0 = now_ms() - 120000
    for sku in (quiet, busy, lost):
        receive(c, sku, store, 10, source="erp", occurred_at=t0)
    hold = uid("hold")
    ok(c.reserve([dict(sku=busy, location=store, qty=3)], rid=hold, channel="checkout"), 201)
    as_of = t0 + 60000
    for sku, at in ((busy, as_of + 1000), (busy, as_of + 2000), (lost, as_of + 3000)):
        ok(c.post("/v1/adjustments", dict(id=uid("sale"), sku=sku, location=store, delta=-1,
                                          reason="sale", source="pos", occurred_at=at)))
    expect_pos(c, quiet, store, 10)
    expect_pos(c, busy, store, 8, reserved=3)
    expect_pos(c, lost, store, 9)
    # The export: quiet 10 and busy 10 agree once the in-flight sales are counted; lost says
    # 6 (four units gone that nobody recorded).
    export = [dict(sku=quiet, location=store, on_hand=10),
              dict(sku=busy, location=store, on_hand=10),
              dict(sku=lost, location=store, on_hand=6)]
    rid = uid("wms")
    rep = ok(c.post("/v1/reconciliations", dict(id=rid, source="wms", as_of=as_of,
                                                positions=export)), 201)
    assert (rep["compared"], rep["matched"], rep["mismatched"], rep["missing_here"],
            rep["missing_there"], rep["status"]) == (3, 2, 1, 0, 0, "open"), rep
    assert [(i["sku"], i["ours"], i["theirs"], i["diff"], i["changes_after_as_of"], i["reason"])
            for i in rep["items"]] == [(lost, 9, 6, 4, -1, "unexplained")], rep
    # The same export posted by the ERP is compared alike, but the ERP may not apply it.
    erp_id = uid("erp")
    erp = ok(c.post("/v1/reconciliations", dict(id=erp_id, source="erp", as_of=as_of,
                                                positions=export)), 201)
    assert (erp["matched"], erp["mismatched"]) == (2, 1), erp
    expect_error(c.post("/v1/reconciliations/%s/apply" % erp_id, {}), 403, "not_owner")
    expect_pos(c, lost, store, 9)
    ok(c.post("/v1/reconciliations/%s/close" % erp_id, dict(note="posted by mistake", by="ivan")))
    # More in flight after the post: one more sale after as_of on the lost SKU.
    ok(c.post("/v1/adjustments", dict(id=uid("sale"), sku=lost, location=store, delta=-1,
                                      reason="sale", source="pos", occurred_at=as_of + 4000)))
    expect_pos(c, lost, store, 8)
    # The WMS applies: 6 at as_of plus the two sales after it.
    rep = ok(c.post("/v1/reconciliations/%s/apply" % rid, {}))
    assert rep["status"] == "applied", rep
    assert rep["apply"] == dict(applied=1, stale=0, replayed=0, skipped=0, failed=0), rep
    assert rep["items"][0]["apply"]["outcome"] == "applied" and \
        rep["items"][0]["apply"]["on_hand"] == 4, rep
    expect_pos(c, quiet, store, 10)
    expect_pos(c, busy, store, 8, reserved=3)
    expect_pos(c, lost, store, 4, counted_at=as_of)
    expect_res(c, hold, "held", {(busy, store): (3, 0, 0)})
    # Retried: a replay; nothing moves.
    again = ok(c.post("/v1/reconciliations/%s/apply" % rid, {}))
    assert again.get("replayed") is True, again
    expect_pos(c, lost, store, 4, counted_at=as_of)
    ok(c.post("/v1/reconciliations/%s/close" % rid, dict(note="four lost units written off",
                                                       by="ivan")))
    assert ok(c.get("/v1/reconciliations/%s" % rid))["status"] == "closed"
    # The same export now matches all of it.
    rep = ok(c.post("/v1/reconciliations", dict(id=uid("wms"), source="wms", as_of=as_of,
                                                positions=export)), 201)
    assert (rep["matched"], rep["mismatched"]) == (3, 0), rep


# --- 9. a flow paused during a cutover and resumed ---------------------------------

@formats()
def test_flow_paused_during_cutover_and_resumed(srv, fmt):
    """The OMS is cut over to a new version: its flow is paused, what it sends meanwhile is
    accepted (202 on single routes, queued in batches) and applied in order on resume;
    other flows are not held up."""
    c = srv.client(fmt)
    store, dc = uid("STORE"), uid("DC")
    chair, desk = uid("sku"), uid("sku")
    receive(c, chair, dc, 5, source="wms")
    r = ok(c.post("/v1/flows/oms/pause", dict(reason="cutover to OMS v2", by="olga")))
    assert r["state"] == "paused", r
    try:
        # change_from makes order matter: each adjustment only applies after the one before.
        r = c.post("/v1/adjustments", dict(id=uid("a"), sku=desk, location=dc, delta=6,
                                           reason="received", source="oms", change_from=0))
        assert r.status == 202 and r.data["queued"] is True and r.data["flow"] == "oms", r
        depth0 = r.data["depth"]
        rid = uid("oms")
        r = c.reserve([dict(sku=desk, location=dc, qty=4)], rid=rid, channel="oms")
        assert r.status == 202 and r.data["depth"] == depth0 + 1, r
        b = batch(c, [dict(op="adjust", flow="oms", id=uid("a"), sku=desk, location=dc,
                           delta=-1, reason="damaged", change_from=6),
                      dict(op="commit", flow="oms", id=rid, order_id="OMS-9"),
                      dict(op="adjust", flow="wms", id=uid("a"), sku=chair, location=dc,
                           delta=2, reason="received")], results="all")
        assert (b["received"], b["applied"], b["queued"], b["rejected"]) == (3, 1, 2, 0), b
        assert [x["status"] for x in b["results"]] == [202, 202, 200], b
        # Nothing of the OMS's applied yet; the WMS's did.
        expect_unseen(c, desk, dc)
        assert c.get("/v1/reservations/%s" % rid).status == 404
        expect_pos(c, chair, dc, 7)
        f = flows(c)["oms"]
        assert (f["state"], f["queued"]) == ("paused", depth0 + 3), f
        assert flows(c)["wms"]["state"] == "running"
    finally:
        r = ok(c.post("/v1/flows/oms/resume", dict(by="olga")))
    assert r["flow"]["state"] == "running" and r["drained"] == dict(applied=4, rejected=0), r
    assert flows(c)["oms"]["queued"] == 0
    # In order: received 6, held 4, damaged 1 (change_from 6), committed.
    expect_pos(c, desk, dc, 5, committed=4)
    expect_res(c, rid, "committed", {(desk, dc): (4, 0, 0)})
    expect_pos(c, chair, dc, 7)
    expect_unseen(c, desk, store)
    # Running again: the OMS's writes apply at once.
    r = ok(c.post("/v1/reservations/%s/fulfil" % rid, dict(fulfillment_id=uid("ship"))))
    assert r["status"] == "fulfilled", r
    expect_pos(c, desk, dc, 1)
    d = c.adjust(desk, dc, 1, reason="received", source="oms")
    assert d["position"]["on_hand"] == 2, d
