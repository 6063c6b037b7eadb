"""CONTRACT.md section 11, the state half of the Shopify connector: mappings, signed
webhooks in as ops of the flow `shopify` (each topic's effect on the engine's state,
dedupe, watermarks, dead letters with owners, pause), status, and durability."""
import json
import os
import tempfile
import time
import uuid

import shopify_webhooks as wh
from harness import Server, expect_error, now_ms, uid
from shopify_fake import fake_shopify  # noqa: F401 - the fixture

SHOP = "atpd-test.myshopify.com"
SECRET, PREVIOUS = "whsec-current", "whsec-previous"

_dir = tempfile.mkdtemp(prefix="atpd-bb-shopify-")
CONFIG = os.path.join(_dir, "shopify.json")
with open(CONFIG, "w") as f:
    json.dump({"shop": SHOP, "api_version": "2026-10", "webhook_secrets": [SECRET, PREVIOUS],
               "reservation_attribute": "_atp_reservation",
               "push": {"enabled": False}}, f)
OWNERSHIP = os.path.join(_dir, "ownership.json")
with open(OWNERSHIP, "w") as f:
    json.dump({"fields": {
        "counts": {"writers": ["erp", "wms"], "owner": "inventory-control"},
        "adjustments": {"writers": ["erp", "pos", "shopify"], "owner": "store-ops"},
        "reservations": {"writers": ["checkout", "shopify"], "owner": "ecommerce"},
        "shopify_mappings": {"writers": ["shopify", "pim"], "owner": "catalog-team"},
    }}, f)
SERVER_ARGS = ["--shopify", CONFIG, "--ownership", OWNERSHIP]
ASAN = True

BIG = 2 ** 53  # Shopify ids exceed it: a double would round them
# Only delivery() is used: it builds the signed body and Shopify's headers.
SENDER = wh.Sender("http://127.0.0.1:1", SECRET, shop=SHOP)


# --- webhooks: the fake helper's builders and signer (tests/blackbox/shopify_webhooks.py),
# sent through harness.Client so that every answer is checked against proto/openapi.yaml.

shopify_id, gid, sign = wh.shopify_id, wh.gid, wh.sign


def send(c, topic, payload, webhook_id=None, secret=SECRET, shop=SHOP, raw=None,
         signature=None):
    d = SENDER.delivery(topic, payload, webhook_id=webhook_id, secret=secret, raw=raw,
                        shop=shop, hmac_header=signature)
    hdrs = ["%s: %s" % (k, v) for k, v in d.headers.items() if k != "Content-Type"]
    return c.request("POST", "/v1/shopify/webhooks", raw=d.body, fmt="json", headers=hdrs)


def lines_of(lines):
    return [(v, "shopify-sku", q) for v, q in lines]


def order(lines, hold=None, location_id=None, at=None):
    """An online order (its hold in the note attribute) or a POS sale at location_id
    made at `at` (processed_at; updated_at is the same)."""
    at = at or now_ms() - 1000
    if location_id:
        o = wh.pos_order(lines_of(lines), location_id, processed_ms=at, created_ms=at)
    else:
        o = wh.order(lines_of(lines), reservation_id=hold, created_ms=at)
    return o


def cancelled(o, reason="customer", at=None):
    return wh.cancelled(o, reason, cancelled_ms=at)


def fulfillment(o, location_id):
    return wh.fulfillment(o, location_id=location_id)


def refund(o, lines):
    """lines: [(line_item, quantity, restock_type, location_id)]."""
    return wh.refund(o, lines)


def inventory_level(item, loc, available, at=None):
    return wh.inventory_level(item, loc, available, updated_ms=at)


# --- helpers -----------------------------------------------------------------------


def catalog(c, n=1, stock=10):
    """n mapped SKUs at one mapped location with stock on hand:
    ([(sku, variant, item)], location, shopify_location_id)."""
    loc, shop_loc = uid("L"), shopify_id()
    items = [(uid("sku"), shopify_id(), shopify_id()) for _ in range(n)]
    r = c.put("/v1/shopify/mappings", dict(
        items=[dict(sku=s, variant_id=v, inventory_item_id=i) for s, v, i in items],
        locations=[dict(location=loc, shopify_location_id=shop_loc)]))
    assert r.status == 200 and r.data == dict(items=n, locations=1), r
    for s, _, _ in items:
        if stock:
            c.adjust(s, loc, stock, source="erp")
    return items, loc, shop_loc


def hold(c, sku, loc, qty):
    rid = uid("res")
    r = c.post("/v1/reservations", dict(id=rid, channel="checkout",
                                        lines=[dict(sku=sku, location=loc, qty=qty)]))
    assert r.status == 201, r
    return rid


def reservation(c, rid):
    r = c.get("/v1/reservations/" + rid)
    assert r.status == 200, r
    return r.data


def dead_letters(c, **params):
    r = c.get("/v1/dead-letters", params=dict(flow="shopify", limit=1000, **params))
    assert r.status == 200, r
    return r.data["dead_letters"]


def status(c):
    r = c.get("/v1/shopify/status")
    assert r.status == 200, r
    return r.data


# --- authentication -----------------------------------------------------------------


def test_bad_or_missing_signature_is_401_and_changes_nothing(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    o = order([(variant, 3)], location_id=shop_loc)
    before = status(c)["webhooks"]["by_outcome"]["unauthorized"]
    wid = str(uuid.uuid4())
    expect_error(send(c, "orders/create", o, webhook_id=wid, secret="wrong"), 401,
                 "unauthorized")
    expect_error(send(c, "orders/create", o, webhook_id=wid, signature=""), 401, "unauthorized")
    # a signature of another body
    expect_error(send(c, "orders/create", o, webhook_id=wid,
                      signature=sign(b"{}", SECRET)), 401, "unauthorized")
    assert c.pos(sku, loc)["on_hand"] == 10
    assert status(c)["webhooks"]["by_outcome"]["unauthorized"] == before + 3
    # the same delivery correctly signed then applies: the refusals left no dedupe trace
    r = send(c, "orders/create", o, webhook_id=wid)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert c.pos(sku, loc)["on_hand"] == 7


def test_previous_secret_is_accepted_after_rotation(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    r = send(c, "orders/create", order([(variant, 1)], location_id=shop_loc), secret=PREVIOUS)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert c.pos(sku, loc)["on_hand"] == 9


def test_another_shop_is_401(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    expect_error(send(c, "orders/create", order([(variant, 1)], location_id=shop_loc),
                      shop="evil.myshopify.com"), 401, "unauthorized")
    assert c.pos(sku, loc)["on_hand"] == 10


def test_webhooks_need_no_bearer_token_and_name_topic_and_id(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    body = json.dumps(order([(items[0][1], 1)], location_id=shop_loc)).encode()
    hdrs = ["X-Shopify-Topic: orders/create", "X-Shopify-Shop-Domain: " + SHOP,
            "X-Shopify-Hmac-Sha256: " + sign(body, SECRET)]
    r = c.request("POST", "/v1/shopify/webhooks", raw=body, headers=hdrs)
    expect_error(r, 400, "bad_request", field="X-Shopify-Webhook-Id")
    assert c.pos(items[0][0], loc)["on_hand"] == 10


# --- effects per topic ------------------------------------------------------------------


def test_orders_create_commits_the_hold_named_by_the_note_attribute(srv):
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 2)
    o = order([(variant, 2)], hold=rid)
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert r.data["effects"] == [dict(op="commit", id=rid, outcome="applied", status=200)], r
    res = reservation(c, rid)
    assert res["status"] == "committed" and res["order_id"] == gid("Order", o["id"]), res
    p = c.pos(sku, loc)
    assert p["committed"] == 2 and p["reserved"] == 0 and p["on_hand"] == 10, p


def test_online_order_without_a_hold_is_ignored(srv):
    c = srv.client()
    items, loc, _ = catalog(c)
    r = send(c, "orders/create", order([(items[0][1], 2)]))
    assert r.status == 200 and r.data == dict(outcome="ignored", effects=[]), r
    assert c.pos(items[0][0], loc)["on_hand"] == 10


def test_pos_order_is_a_sale_per_line_at_its_location_absorbed_by_a_later_count(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c, n=2)
    (s1, v1, _), (s2, v2, _) = items
    sold_at = now_ms() - 60000
    o = order([(v1, 2), (v2, 1)], location_id=shop_loc, at=sold_at)
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    e = r.data["effects"]
    assert [(x["op"], x["sku"], x["location"], x["delta"]) for x in e] == [
        ("adjust", s1, loc, -2), ("adjust", s2, loc, -1)], e
    assert e[0]["id"] == "shopify:order:%d:line:%d" % (o["id"], o["line_items"][0]["id"])
    assert c.pos(s1, loc)["on_hand"] == 8 and c.pos(s2, loc)["on_hand"] == 9
    # offline POS: a sale synced after a cycle count that already saw it is absorbed
    r = c.post("/v1/counts", dict(id=uid("c"), sku=s1, location=loc, on_hand=5,
                                  counted_at=now_ms(), source="erp"))
    assert r.status == 200, r
    late = order([(v1, 1)], location_id=shop_loc, at=now_ms() - 30000)
    r = send(c, "orders/create", late)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert c.pos(s1, loc)["on_hand"] == 5  # absorbed: the count saw it


def test_custom_sale_lines_are_skipped_and_a_pos_cancel_restock_comes_back(srv):
    """A custom sale (no variant) is no SKU of atpd's: skipped, not a dead letter.
    A POS order's sales were booked at once, so a refund line restocked as
    `cancel` comes back on hand at its location (nothing is held to release)."""
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    o = order([(variant, 3), (None, 1)], location_id=shop_loc)
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert [x["op"] for x in r.data["effects"]] == ["adjust"], r
    assert c.pos(sku, loc)["on_hand"] == 7
    rf = refund(o, [(o["line_items"][0], 2, "cancel", shop_loc),
                    (o["line_items"][1], 1, "cancel", shop_loc)])
    r = send(c, "refunds/create", rf)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert [(x["op"], x.get("delta")) for x in r.data["effects"]] == [("adjust", 2)], r
    assert c.pos(sku, loc)["on_hand"] == 9
    assert not [d for d in dead_letters(c) if str(o["id"]) in json.dumps(d)]


def test_a_signed_body_resent_under_another_topic_changes_nothing(srv):
    """Only the body is signed, not X-Shopify-Topic: an orders/create body and
    signature replayed as orders/cancelled does not release the order's hold."""
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 2)
    o = order([(variant, 2)], hold=rid)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    r = send(c, "orders/cancelled", o)  # the same body, a new webhook id
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    assert "not a orders/cancelled payload" in r.data["effects"][0]["error"]["message"], r
    assert reservation(c, rid)["status"] == "committed"
    assert c.pos(sku, loc)["available"] == 8


def test_orders_cancelled_releases_the_hold_with_the_reason(srv):
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 3)
    o = order([(variant, 3)], hold=rid)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    r = send(c, "orders/cancelled", cancelled(o, "inventory"))
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert r.data["effects"][0]["op"] == "release"
    res = reservation(c, rid)
    assert res["status"] == "released", res
    assert c.pos(sku, loc)["available"] == 10
    ev = c.get("/v1/changes", params=dict(type="atpd.reservation.released", limit=10000))
    mine = [x for x in ev.data["events"] if x["data"].get("reservation", {}).get("id") == rid]
    assert mine and mine[-1]["data"].get("reason") == "inventory", mine


def test_a_note_attribute_cannot_take_another_orders_hold(srv):
    """Cart attributes are the customer's to set: an order naming a hold that is
    committed to another order neither commits it nor, when cancelled, releases
    it; the attempt is a dead letter owned by reservations' owner."""
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 3)
    o1 = order([(variant, 3)], hold=rid)
    assert send(c, "orders/create", o1).data["outcome"] == "applied"
    o2 = order([(variant, 3)], hold=rid)
    r = send(c, "orders/create", o2)
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    assert r.data["effects"][0]["owner"] == "ecommerce", r
    assert "committed to gid://shopify/Order/%d" % o1["id"] in r.data["effects"][0]["error"]["message"], r
    r = send(c, "orders/cancelled", cancelled(o2, "customer"))
    assert r.status == 200 and r.data["outcome"] in ("ignored", "dead_letter"), r
    res = reservation(c, rid)
    assert res["status"] == "committed" and res["order_id"] == o1["admin_graphql_api_id"], res
    assert c.pos(sku, loc)["available"] == 7
    # the order's own cancellation still releases it
    r = send(c, "orders/cancelled", cancelled(o1, "customer"))
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert reservation(c, rid)["status"] == "released"


def test_a_hold_made_for_a_cart_is_only_that_carts(srv):
    """A hold whose order_ref is the storefront's cart token is committed only by
    the order of that cart (cart_token or checkout_token)."""
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = uid("res")
    r = c.post("/v1/reservations", dict(id=rid, channel="checkout", order_ref="cart-A",
                                        lines=[dict(sku=sku, location=loc, qty=2)]))
    assert r.status == 201, r
    other = wh.order(lines_of([(variant, 2)]), reservation_id=rid, cart_token="cart-B",
                     created_ms=now_ms() - 1000)
    r = send(c, "orders/create", other)
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    assert "order_ref cart-A" in r.data["effects"][0]["error"]["message"], r
    assert reservation(c, rid)["status"] == "held"
    mine = wh.order(lines_of([(variant, 2)]), reservation_id=rid, cart_token="cart-A",
                    created_ms=now_ms() - 1000)
    r = send(c, "orders/create", mine)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert reservation(c, rid)["order_id"] == mine["admin_graphql_api_id"]


def test_fulfillments_create_fulfils_the_orders_hold(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 2)
    o = order([(variant, 2)], hold=rid)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    f = fulfillment(o, shop_loc)
    r = send(c, "fulfillments/create", f)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    res = reservation(c, rid)
    assert res["status"] == "fulfilled", res
    p = c.pos(sku, loc)
    assert p["on_hand"] == 8 and p["committed"] == 0, p
    # a fulfilment of an order atpd never saw is a dead letter owned by reservations' owner
    stranger = order([(variant, 1)], hold=uid("res"))
    r = send(c, "fulfillments/create", fulfillment(stranger, shop_loc))
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    assert r.data["effects"][0]["owner"] == "ecommerce", r


def test_a_refund_after_a_cancellation_that_overtook_its_order(srv):
    """The cancellation came first (atpd never saw orders/create): the order is
    remembered from it, so the refund Shopify sends with the cancellation finds
    the hold and is not a dead letter for an unknown order."""
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 2)
    o = order([(variant, 2)], hold=rid)
    r = send(c, "orders/cancelled", cancelled(o, "customer"))
    assert r.status == 200 and r.data["outcome"] == "applied", r
    rf = refund(o, [(o["line_items"][0], 2, "cancel", shop_loc)])
    r = send(c, "refunds/create", rf)
    assert r.status == 200 and r.data["outcome"] in ("applied", "replayed", "ignored"), r
    assert reservation(c, rid)["status"] == "released"
    assert c.pos(sku, loc)["available"] == 10


def test_a_fulfilment_with_a_line_the_checkout_never_held_fulfils_the_hold(srv):
    """A free gift or a protection item ships with the order but was never held:
    the fulfilment fulfils the hold's lines and leaves that line alone, instead
    of refusing the whole fulfilment and keeping the units committed forever."""
    c = srv.client()
    items, loc, shop_loc = catalog(c, n=2)
    (s1, v1, _), (s2, v2, _) = items
    rid = hold(c, s1, loc, 2)
    o = order([(v1, 2), (v2, 1)], hold=rid)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    r = send(c, "fulfillments/create", fulfillment(o, shop_loc))
    assert r.status == 200 and r.data["outcome"] == "applied", r
    res = reservation(c, rid)
    assert res["status"] == "fulfilled", res
    assert c.pos(s1, loc)["on_hand"] == 8 and c.pos(s2, loc)["on_hand"] == 10


def test_refunds_return_restock_and_cancel_release_per_line(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c, n=2)
    (s1, v1, _), (s2, v2, _) = items
    other, other_shop = uid("L"), shopify_id()
    assert c.put("/v1/shopify/mappings", dict(locations=[dict(
        location=other, shopify_location_id=gid("Location", other_shop))])).status == 200
    rid = hold(c, s2, loc, 3)
    o = order([(v1, 2), (v2, 3)], hold=rid)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    rf = refund(o, [(o["line_items"][0], 1, "return", other_shop),
                    (o["line_items"][1], 2, "cancel", None),  # unshipped: no location
                    (o["line_items"][0], 1, "no_restock", shop_loc)])
    r = send(c, "refunds/create", rf)
    assert r.status == 200 and r.data["outcome"] == "applied", r
    assert [x["op"] for x in r.data["effects"]] == ["adjust", "release"], r
    # return: restocked in another store
    p = c.pos(s1, other)
    assert p["on_hand"] == 1, p
    assert r.data["effects"][0]["id"] == "shopify:refund_line:%d" % rf["refund_line_items"][0]["id"]
    # cancel: 2 of the 3 held units released
    res = reservation(c, rid)
    line = res["lines"][0]
    assert line["released"] == 2 and res["status"] == "committed", res


def test_inventory_level_that_disagrees_is_a_dead_letter_owned_by_on_hands_owner(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, _, item = items[0]
    r = send(c, "inventory_levels/update", inventory_level(item, shop_loc, 4))
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    e = r.data["effects"][0]
    assert e["owner"] == "inventory-control" and e["error"]["code"] == "conflict", e
    assert sku in e["error"]["message"], e
    dl = [d for d in dead_letters(c) if d["owner"] == "inventory-control"
          and sku in d["error"]["message"]]
    assert len(dl) == 1 and dl[0]["payload"]["payload"]["available"] == 4, dl
    assert c.pos(sku, loc)["on_hand"] == 10  # recorded, never applied


# --- dedupe, watermarks, dead letters, pause ------------------------------------------


def test_the_same_webhook_three_times_applies_once(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    o, wid = order([(variant, 2)], location_id=shop_loc), str(uuid.uuid4())
    answers = [send(c, "orders/create", o, webhook_id=wid).data for _ in range(3)]
    assert answers[0]["outcome"] == "applied", answers
    # the dedupe answers before any op runs: no effects at all
    assert answers[1:] == [dict(outcome="replayed", effects=[])] * 2, answers
    assert c.pos(sku, loc)["on_hand"] == 8


def test_the_same_content_under_a_new_webhook_id_replays(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    o = order([(variant, 2)], location_id=shop_loc)
    assert send(c, "orders/create", o).data["outcome"] == "applied"
    r = send(c, "orders/create", o)  # a new webhook id, the same body
    assert r.status == 200 and r.data == dict(outcome="replayed", effects=[]), r
    assert c.pos(sku, loc)["on_hand"] == 8


def test_an_older_delivery_for_a_resource_after_a_newer_one_is_ignored(srv):
    c = srv.client()
    items, loc, _ = catalog(c)
    sku, variant, _ = items[0]
    rid = hold(c, sku, loc, 2)
    t0 = now_ms() - 10000
    o = order([(variant, 2)], hold=rid, at=t0)
    # the cancellation arrives first (out of order), then the day-late creation
    r = send(c, "orders/cancelled", cancelled(o, "customer", at=t0 + 5000))
    assert r.data["outcome"] == "applied", r
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data == dict(outcome="ignored", effects=[]), r
    assert reservation(c, rid)["status"] == "released"
    # the same for an inventory level: older than the newest seen is ignored
    item, shop_loc2 = items[0][2], catalog(c)[2]
    r = send(c, "inventory_levels/update", inventory_level(item, shop_loc2, 3, at=now_ms()))
    assert r.data["outcome"] == "dead_letter", r
    r = send(c, "inventory_levels/update", inventory_level(item, shop_loc2, 2,
                                                         at=now_ms() - 60000))
    assert r.data == dict(outcome="ignored", effects=[]), r


def test_a_refused_webhook_op_is_one_dead_letter_not_two(srv):
    """A webhook's dead letter replays the whole webhook, and the batch op
    shopify_webhook runs one: an op of it refused again is the replay's (the
    batch op's) outcome, not one more dead letter of its own."""
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    unknown = shopify_id()
    # processed far ahead of the clock: its sale will be refused once mapped
    o = order([(unknown, 1)], location_id=shop_loc, at=now_ms() + 3600 * 1000)
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    before = dead_letters(c)
    [dl] = [d for d in before if str(unknown) in d["error"]["message"]]
    sku2 = uid("sku")
    assert c.put("/v1/shopify/mappings", dict(items=[dict(
        sku=sku2, variant_id=unknown, inventory_item_id=shopify_id())])).status == 200
    r = c.post("/v1/dead-letters/%s/replay" % dl["dl_id"], dict(by="catalog-team"))
    assert r.status == 400 and "future" in r.data["error"]["message"], r
    assert len(dead_letters(c)) == len(before), dead_letters(c)
    # the same webhook as a batch op: one dead letter (the op's), not two
    r = c.post("/v1/batch", [dict(op="shopify_webhook", flow="shopify",
                                  topic="orders/create", payload=o)])
    assert r.status == 200 and r.data["rejected"] == 1, r
    assert len(dead_letters(c)) == len(before) + 1, dead_letters(c)


def test_unknown_variant_or_location_is_a_dead_letter_owned_by_the_mappings_owner(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    unknown = shopify_id()
    o = order([(variant, 1), (unknown, 1)], location_id=shop_loc)
    r = send(c, "orders/create", o)
    assert r.status == 200 and r.data["outcome"] == "dead_letter", r
    kinds = sorted(x["outcome"] for x in r.data["effects"])
    assert kinds == ["applied", "dead_letter"], r
    assert c.pos(sku, loc)["on_hand"] == 9  # the mapped line still applied
    dl = [d for d in dead_letters(c) if str(unknown) in d["error"]["message"]]
    assert len(dl) == 1 and dl[0]["owner"] == "catalog-team", dl
    assert dl[0]["error"]["code"] == "not_found" and dl[0]["flow"] == "shopify", dl
    assert dl[0]["payload"]["payload"]["id"] == o["id"], dl  # exact beyond 2^53
    # an unknown location
    r = send(c, "orders/create", order([(variant, 1)], location_id=shopify_id()))
    assert r.data["outcome"] == "dead_letter" and r.data["effects"][0]["owner"] == "catalog-team"
    # a replay of the delivery does not make a second dead letter
    send(c, "orders/create", o)
    assert len([d for d in dead_letters(c) if str(unknown) in d["error"]["message"]]) == 1
    # replaying the dead letter before the mapping exists fails again, changes nothing
    dl_id = dl[0]["dl_id"]
    r = c.post("/v1/dead-letters/%s/replay" % dl_id, dict(by="catalog-team"))
    assert r.status == 404, r
    assert c.pos(sku, loc)["on_hand"] == 9
    # once the variant is mapped, the replay applies the missing line only
    sku2 = uid("sku")
    assert c.put("/v1/shopify/mappings", dict(items=[dict(
        sku=sku2, variant_id=unknown, inventory_item_id=shopify_id())])).status == 200
    c.adjust(sku2, loc, 5, source="erp")
    r = c.post("/v1/dead-letters/%s/replay" % dl_id, dict(by="catalog-team"))
    assert r.status == 200, r
    assert c.pos(sku2, loc)["on_hand"] == 4 and c.pos(sku, loc)["on_hand"] == 9
    d = [x for x in dead_letters(c) if x["dl_id"] == dl_id][0]
    assert d["status"] == "replayed" and d["attempts"] >= 2, d
    # the op is the flow shopify's alone
    r = c.post("/v1/batch", [dict(op="shopify_webhook", flow="erp", topic="orders/create",
                                  payload=o)])
    assert r.data["rejected"] == 1 and r.data["results"][0]["error"]["field"] == "flow", r


def test_a_paused_shopify_flow_queues_and_resume_applies(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, _ = items[0]
    assert c.post("/v1/flows/shopify/pause", dict(reason="cutover", by="t")).status == 200
    try:
        r = send(c, "orders/create", order([(variant, 4)], location_id=shop_loc))
        assert r.status == 200 and r.data["outcome"] == "queued", r
        assert r.data["effects"][0]["outcome"] == "queued", r
        assert c.pos(sku, loc)["on_hand"] == 10
    finally:
        r = c.post("/v1/flows/shopify/resume", dict(by="t"))
    assert r.status == 200 and r.data["drained"]["applied"] >= 1, r
    assert c.pos(sku, loc)["on_hand"] == 6


# --- mappings ---------------------------------------------------------------------------


def test_mappings_put_get_and_the_batch_op(srv):
    c = srv.client()
    sku, loc = uid("sku"), uid("L")
    v, i, sl = BIG + 1, BIG + 3, BIG + 5
    r = c.put("/v1/shopify/mappings", dict(
        items=[dict(sku=sku, variant_id=gid("ProductVariant", v), inventory_item_id=i)],
        locations=[dict(location=loc, shopify_location_id=str(sl))]))
    assert r.status == 200 and r.data == dict(items=1, locations=1), r
    r = c.get("/v1/shopify/mappings", params=dict(sku=sku))
    assert r.status == 200, r
    assert r.data["items"] == [dict(sku=sku, variant_id=v, inventory_item_id=i)], r
    r = c.get("/v1/shopify/mappings", params=dict(location=loc))
    assert r.data["locations"] == [dict(location=loc, shopify_location_id=sl)], r
    # msgpack too, the ids exact
    r = srv.client("msgpack").get("/v1/shopify/mappings", params=dict(sku=sku))
    assert r.data["items"][0]["variant_id"] == v, r
    expect_error(c.get("/v1/shopify/mappings", params=dict(sku=uid("none"))), 404, "not_found")
    # a bad item refuses the whole body: nothing changes
    sku2 = uid("sku")
    r = c.put("/v1/shopify/mappings", dict(items=[
        dict(sku=sku2, variant_id=7, inventory_item_id=8),
        dict(sku=uid("sku"), variant_id=2.5, inventory_item_id=9)]))
    expect_error(r, 400, "bad_request", field="items[1].variant_id")
    expect_error(c.get("/v1/shopify/mappings", params=dict(sku=sku2)), 404, "not_found")
    expect_error(c.put("/v1/shopify/mappings", dict(items=[dict(
        sku=sku2, variant_id="gid://shopify/Order/7", inventory_item_id=8)])), 400,
        "bad_request", field="items[0].variant_id")
    # remapping the variant to another SKU moves it: one-to-one
    sku3 = uid("sku")
    r = c.post("/v1/batch", [dict(op="shopify_map", flow="pim", items=[dict(
        sku=sku3, variant_id=v, inventory_item_id=i)])])
    assert r.status == 200 and r.data["applied"] == 1, r
    expect_error(c.get("/v1/shopify/mappings", params=dict(sku=sku)), 404, "not_found")
    assert c.get("/v1/shopify/mappings", params=dict(sku=sku3)).data["items"][0]["variant_id"] == v
    # a flow that may not write the mappings: not_owner, kept as a dead letter
    r = c.post("/v1/batch", [dict(op="shopify_map", flow="erp", items=[dict(
        sku=uid("sku"), variant_id=11, inventory_item_id=12)])])
    assert r.data["rejected"] == 1 and r.data["results"][0]["error"]["code"] == "not_owner", r


def test_ids_above_2_53_round_trip_through_webhooks(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku = items[0][0]
    # odd ids above 2^53: a double would round each to a neighbour
    variant, item = shopify_id() | 1, shopify_id() | 1
    assert float(variant) != variant and float(item) != item
    assert c.put("/v1/shopify/mappings", dict(items=[dict(
        sku=sku, variant_id=variant, inventory_item_id=item)])).status == 200
    # the neighbours are not mapped: only the exact id finds the SKU
    r = send(c, "orders/create", order([(variant + 1, 1)], location_id=shop_loc))
    assert r.data["outcome"] == "dead_letter", r
    o = order([(variant, 1)], location_id=shop_loc)
    o["id"] |= 1
    o["admin_graphql_api_id"] = gid("Order", o["id"])
    wid = str(uuid.uuid4())
    r = send(c, "orders/create", o, webhook_id=wid)
    assert r.data["outcome"] == "applied", r
    assert r.data["effects"][0]["id"].startswith("shopify:order:%d:" % o["id"]), r
    # the adjustment's ref is the exact order GID
    ev = c.get("/v1/changes", params=dict(type="atpd.position.changed", limit=10000))
    mine = [x["data"] for x in ev.data["events"]
            if x["data"].get("position", {}).get("sku") == sku]
    sale = [d for d in mine if d.get("ref") == gid("Order", o["id"])]
    assert sale, mine
    # the feed names the delivery behind the change, and the flow
    assert sale[0].get("request_id") == wid and sale[0].get("flow") == "shopify", sale


def test_status_and_metrics_count_webhooks_by_topic_and_outcome(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    before = status(c)
    send(c, "orders/create", order([(items[0][1], 1)], location_id=shop_loc))
    send(c, "products/update", {"id": 1})
    st = status(c)
    assert st["push"] == dict(enabled=False), st
    w, b = st["webhooks"], before["webhooks"]
    assert w["by_topic"]["orders/create"] == b["by_topic"]["orders/create"] + 1
    assert w["by_topic"]["other"] == b["by_topic"]["other"] + 1
    assert w["by_outcome"]["ignored"] == b["by_outcome"]["ignored"] + 1
    m = c.get("/metrics").body.decode()
    assert 'atpd_shopify_webhooks_total{topic="orders/create",outcome="applied"}' in m


# --- durability and the connector off --------------------------------------------------


def test_mappings_and_dedupe_survive_kill_9(binary):
    srv = Server(binary=binary, args=SERVER_ARGS)
    try:
        c = srv.client()
        items, loc, shop_loc = catalog(c)
        sku, variant, item = items[0]
        o, wid = order([(variant, 2)], location_id=shop_loc), str(uuid.uuid4())
        assert send(c, "orders/create", o, webhook_id=wid).data["outcome"] == "applied"
        # an older delivery after a newer one is still ignored after the restart
        rid = hold(c, sku, loc, 1)
        t0 = now_ms() - 10000
        late = order([(variant, 1)], hold=rid, at=t0)
        assert send(c, "orders/cancelled", cancelled(late, at=t0 + 5000)).data["outcome"] == \
            "applied"
        c.close()
        srv.kill()
        srv.stderr_f.close()
        srv.start()
        c = srv.client()
        r = c.get("/v1/shopify/mappings", params=dict(sku=sku))
        assert r.status == 200 and r.data["items"][0]["inventory_item_id"] == item, r
        replayed = dict(outcome="replayed", effects=[])
        assert send(c, "orders/create", o, webhook_id=wid).data == replayed
        assert send(c, "orders/create", o).data == replayed  # the content key
        assert send(c, "orders/create", late).data["outcome"] == "ignored"
        assert c.pos(sku, loc)["on_hand"] == 8
        # and after a snapshot (the state exported, then restored from it)
        assert c.post("/admin/snapshot").status == 200
        c.close()
        srv.kill()
        srv.stderr_f.close()
        srv.start()
        c = srv.client()
        assert c.get("/v1/shopify/mappings", params=dict(location=loc)).status == 200
        assert send(c, "orders/create", o, webhook_id=wid).data == replayed
        assert c.pos(sku, loc)["on_hand"] == 8
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_without_shopify_the_routes_answer_503(binary):
    srv = Server(binary=binary)
    try:
        c = srv.client()
        r = c.get("/v1/shopify/status")
        expect_error(r, 503, "unavailable")
        assert "--shopify" in r.data["error"]["message"]
        expect_error(send(c, "orders/create", {"id": 1}), 503, "unavailable")
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_a_bad_config_file_stops_the_start_naming_the_field(tmp_path):
    bad = tmp_path / "shopify.json"
    bad.write_text(json.dumps({"shop": SHOP, "webhook_secrets": []}))
    import subprocess
    import harness
    out = subprocess.run([os.path.join(harness.ROOT, "bin", "atpd"), "--shopify", str(bad),
                          "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0 and "webhook_secrets" in out.stderr, out
    # the token is read from the environment and never printed
    good = tmp_path / "push.json"
    good.write_text(json.dumps({"shop": SHOP, "webhook_secrets": ["x"],
                                "push": {"enabled": True, "points_per_second": 0}}))
    env = dict(os.environ, ATPD_SHOPIFY_TOKEN="shpat_secret_token_value")
    out = subprocess.run([os.path.join(harness.ROOT, "bin", "atpd"), "--shopify", str(good),
                          "--data-dir", str(tmp_path / "d"), "--listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=10, env=env)
    assert out.returncode != 0 and "points_per_second" in out.stderr, out
    assert "shpat_secret_token_value" not in out.stderr + out.stdout


def test_inventory_level_echoing_atpds_own_push_is_ignored(fake_shopify, tmp_path):
    """With the push on (against the fake Shopify), the level atpd pushed comes back
    as inventory_levels/update: equal is an echo (ignored), anything else a
    disagreement for on_hand's owner."""
    fake_shopify.reset()
    cfg = tmp_path / "shopify.json"
    cfg.write_text(json.dumps({
        "shop": SHOP, "admin_url": fake_shopify.admin_url, "webhook_secrets": [SECRET],
        "push": {"enabled": True, "points_per_second": 1000}}))
    srv = Server(args=["--shopify", str(cfg), "--ownership", OWNERSHIP],
                 env={"ATPD_SHOPIFY_TOKEN": fake_shopify.token})
    try:
        c = srv.client()
        sku, loc, item, shop_loc = uid("sku"), uid("L"), shopify_id(), shopify_id()
        fake_shopify.set_levels([(item, shop_loc, 0)])  # the item exists in Shopify
        assert c.put("/v1/shopify/mappings", dict(
            items=[dict(sku=sku, variant_id=shopify_id(), inventory_item_id=item)],
            locations=[dict(location=loc, shopify_location_id=shop_loc)])).status == 200
        c.adjust(sku, loc, 7, source="erp")
        deadline = time.time() + 20
        while fake_shopify.level(item, shop_loc) != 7 and time.time() < deadline:
            time.sleep(0.05)
        assert fake_shopify.level(item, shop_loc) == 7, fake_shopify.state()
        # the push records what Shopify now holds before the echo can arrive
        while time.time() < deadline:
            m = c.get("/v1/shopify/mappings", params=dict(sku=sku, location=loc)).data
            if m["items"][0].get("shopify_available") == 7:
                break
            time.sleep(0.05)
        r = send(c, "inventory_levels/update", inventory_level(item, shop_loc, 7))
        assert r.status == 200 and r.data == dict(outcome="ignored", effects=[]), r
        r = send(c, "inventory_levels/update", inventory_level(item, shop_loc, 6))
        assert r.data["outcome"] == "dead_letter", r
        assert r.data["effects"][0]["owner"] == "inventory-control", r
        assert "last pushed 7" in r.data["effects"][0]["error"]["message"], r
        assert c.pos(sku, loc)["on_hand"] == 7
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_echoes_of_two_pushes_arriving_out_of_order_are_both_ignored(fake_shopify, tmp_path):
    """atpd pushed 7, then 9; Shopify's echoes arrive 9 first, then 7 (no
    order is guaranteed). The echo of 9 moves the level's watermark, so the
    late echo of 7 is older than it and ignored, not a disagreement."""
    fake_shopify.reset()
    cfg = tmp_path / "shopify.json"
    cfg.write_text(json.dumps({
        "shop": SHOP, "admin_url": fake_shopify.admin_url, "webhook_secrets": [SECRET],
        "push": {"enabled": True, "points_per_second": 1000}}))
    srv = Server(args=["--shopify", str(cfg)], env={"ATPD_SHOPIFY_TOKEN": fake_shopify.token})
    try:
        c = srv.client()
        sku, loc, item, shop_loc = uid("sku"), uid("L"), shopify_id(), shopify_id()
        fake_shopify.set_levels([(item, shop_loc, 0)])
        assert c.put("/v1/shopify/mappings", dict(
            items=[dict(sku=sku, variant_id=shopify_id(), inventory_item_id=item)],
            locations=[dict(location=loc, shopify_location_id=shop_loc)])).status == 200

        def pushed(q):
            deadline = time.time() + 20
            while time.time() < deadline:
                m = c.get("/v1/shopify/mappings", params=dict(sku=sku, location=loc)).data
                if m["items"][0].get("shopify_available") == q:
                    return
                time.sleep(0.05)
            raise AssertionError("atpd never recorded %d in Shopify" % q)
        c.adjust(sku, loc, 7, source="erp")
        pushed(7)
        t7 = now_ms()
        time.sleep(1.1)  # payload times have second precision
        c.adjust(sku, loc, 2, source="erp")
        pushed(9)
        t9 = now_ms()
        r = send(c, "inventory_levels/update", inventory_level(item, shop_loc, 9, at=t9))
        assert r.status == 200 and r.data["outcome"] == "ignored", r
        r = send(c, "inventory_levels/update", inventory_level(item, shop_loc, 7, at=t7))
        assert r.status == 200 and r.data["outcome"] == "ignored", r
        assert not dead_letters(c)
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_with_auth_on_webhooks_need_no_token_and_the_other_routes_their_roles(binary, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("tok-read-0123456789 read\ntok-int-0123456789 integration\ntok-checkout-0123456789 checkout\n")
    srv = Server(binary=binary, args=SERVER_ARGS + ["--tokens", str(tokens)])
    try:
        anon, reader = srv.client(), srv.client(token="tok-read-0123456789")
        integ, checkout = srv.client(token="tok-int-0123456789"), srv.client(token="tok-checkout-0123456789")
        loc, shop_loc, sku, variant = uid("L"), shopify_id(), uid("sku"), shopify_id()
        body = dict(items=[dict(sku=sku, variant_id=variant, inventory_item_id=shopify_id())],
                    locations=[dict(location=loc, shopify_location_id=shop_loc)])
        expect_error(anon.put("/v1/shopify/mappings", body), 401, "unauthorized")
        expect_error(reader.put("/v1/shopify/mappings", body), 403, "forbidden")
        expect_error(checkout.put("/v1/shopify/mappings", body), 403, "forbidden")
        assert integ.put("/v1/shopify/mappings", body).status == 200
        expect_error(anon.get("/v1/shopify/status"), 401, "unauthorized")
        assert reader.get("/v1/shopify/status").status == 200
        assert reader.get("/v1/shopify/mappings", params=dict(sku=sku)).status == 200
        integ.adjust(sku, loc, 3, source="erp")
        # the webhook: its signature is its credential, no bearer token
        r = send(anon, "orders/create", order([(variant, 1)], location_id=shop_loc))
        assert r.status == 200 and r.data["outcome"] == "applied", r
        expect_error(send(anon, "orders/create", order([(variant, 1)], location_id=shop_loc),
                          secret="nope"), 401, "unauthorized")
        assert reader.pos(sku, loc)["on_hand"] == 2
    finally:
        problem = srv.stop()
    assert problem is None, problem


def test_signed_payloads_of_any_shape_are_answered_and_never_crash(srv):
    c = srv.client()
    items, loc, shop_loc = catalog(c)
    sku, variant, item = items[0]
    odd = [
        {}, {"id": "x"}, {"id": -5}, {"id": 1.5}, {"id": None}, {"id": 2 ** 63 - 1},
        {"id": shopify_id(), "line_items": "no", "note_attributes": 7},
        {"id": shopify_id(), "location_id": shop_loc,
         "line_items": [1, "x", None, {"variant_id": "gid://shopify/ProductVariant/abc"},
                        {"variant_id": variant, "quantity": -3},
                        {"variant_id": variant, "quantity": 2 ** 62},
                        {"variant_id": variant, "quantity": "2"}]},
        {"id": shopify_id(), "note_attributes": [1, {"name": "_atp_reservation"},
                                                 {"name": "_atp_reservation", "value": ""},
                                                 {"name": "_atp_reservation", "value": 5}]},
        {"id": shopify_id(), "order_id": "gid://shopify/Order/1",
         "refund_line_items": [None, {"restock_type": "return"},
                               {"restock_type": "cancel", "quantity": 1}]},
        {"inventory_item_id": item, "location_id": shop_loc, "available": "7"},
        {"inventory_item_id": "gid://shopify/InventoryItem/%d" % item, "location_id": 0},
        {"id": shopify_id(), "updated_at": "yesterday", "processed_at": 12},
    ]
    topics = ["orders/create", "orders/cancelled", "fulfillments/create", "refunds/create",
              "inventory_levels/update", "products/update"]
    for topic in topics:
        for p in odd:
            r = send(c, topic, p)
            assert r.status == 200 and r.data["outcome"] in (
                "applied", "ignored", "dead_letter", "replayed"), (topic, p, r)
        for raw in (b"", b"[]", b"not json", b"{\"id\":", b"\x00\xff"):
            r = send(c, topic, None, raw=raw)
            assert r.status in (200, 400), (topic, raw, r)
    assert c.pos(sku, loc)["on_hand"] == 10
    assert srv.alive()
