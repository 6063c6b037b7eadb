"""The fake Shopify itself (tests/fake_shopify/server.js) and the webhook
sender: the connector's tests are only as good as these, so what they refuse
and what they enforce is checked here, without atpd."""
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

import shopify_webhooks as wh
from shopify_fake import FakeShopify, fake_shopify, schema_path  # noqa: F401 (the fixture)

PUSH = """
mutation AtpdPush($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id }
    userErrors { field message code }
  }
}"""

ITEM = (1 << 60) + 12345  # above 2^53: must stay exact through the fake
LOC = (1 << 55) + 77
ITEM2 = ITEM + 1


@pytest.fixture(autouse=True)
def fresh(fake_shopify):
    fake_shopify.reset()
    yield


def q(item, loc, quantity, change_from):
    return {"inventoryItemId": wh.gid("InventoryItem", item), "locationId": wh.gid("Location", loc),
            "quantity": quantity, "changeFromQuantity": change_from}


def push_input(quantities, seq=1):
    return {"name": "available", "reason": "correction",
            "referenceDocumentUri": "gid://atpd/Change/%d" % seq, "quantities": quantities}


def push(fake, quantities, key=None, query=PUSH):
    return fake.graphql(query, {"input": push_input(quantities), "key": key or str(uuid.uuid4())})


def assert_refused(fake, status, body, code=None):
    assert status == 200, body
    assert body.get("data") is None, body
    assert body["errors"], body
    if code:
        assert body["errors"][0]["extensions"]["code"] == code, body


def test_a_valid_push_is_applied_and_charged(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5), (ITEM2, LOC, 0)])
    status, body = push(fake_shopify, [q(ITEM, LOC, 7, 5), q(ITEM2, LOC, 3, 0)], key="k-valid")
    assert status == 200, body
    assert "errors" not in body, body
    r = body["data"]["inventorySetQuantities"]
    assert r["userErrors"] == []
    assert r["inventoryAdjustmentGroup"]["id"].startswith("gid://shopify/InventoryAdjustmentGroup/")
    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 10 and cost["actualQueryCost"] == 10
    ts = cost["throttleStatus"]
    assert ts["maximumAvailable"] == 2000 and ts["restoreRate"] == 1000
    assert 1990 <= ts["currentlyAvailable"] <= 2000
    assert fake_shopify.level(ITEM, LOC) == 7
    assert fake_shopify.level(ITEM2, LOC) == 3
    st = fake_shopify.state()
    assert st["mutations"] == 1 and st["quantities_set"] == 2 and st["invalid"] == 0
    entry = fake_shopify.log()[-1]
    assert entry["operation"] == "AtpdPush" and entry["idempotency_key"] == "k-valid"
    assert entry["outcome"] == "ok"
    assert entry["variables"]["input"]["quantities"][0]["inventoryItemId"] == wh.gid(
        "InventoryItem", ITEM)


def test_a_null_change_from_skips_the_check_and_creates_the_level(fake_shopify):
    status, body = push(fake_shopify, [q(ITEM, LOC, 4, None)])
    assert body["data"]["inventorySetQuantities"]["userErrors"] == [], body
    assert fake_shopify.level(ITEM, LOC) == 4


BAD_DOCUMENTS = {
    # A field InventorySetQuantitiesPayload does not have.
    "unknown_field": PUSH.replace("inventoryAdjustmentGroup { id }",
                                  "inventoryAdjustmentGroup { id } adjustedCount"),
    # An argument of the wrong type: inventoryLevel's locationId is ID!, not a list.
    "wrong_argument_type": """
        query { inventoryItem(id: "gid://shopify/InventoryItem/1") {
          inventoryLevel(locationId: ["gid://shopify/Location/1"]) { id } } }""",
    # A variable declared with a type its position does not accept.
    "variable_type_mismatch": PUSH.replace("$key: String!", "$key: Int!"),
    "syntax": "mutation { inventorySetQuantities(",
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_schema_validation_refuses_bad_documents(fake_shopify, case):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    variables = {"input": push_input([q(ITEM, LOC, 7, 5)]), "key": "k-" + case}
    if case == "variable_type_mismatch":
        variables["key"] = 1
    status, body = fake_shopify.graphql(BAD_DOCUMENTS[case], variables)
    assert_refused(fake_shopify, status, body,
                   "PARSE_ERROR" if case == "syntax" else "GRAPHQL_VALIDATION_FAILED")
    assert fake_shopify.level(ITEM, LOC) == 5
    st = fake_shopify.state()
    assert st["invalid"] == 1 and st["mutations"] == 0


def test_a_missing_idempotent_directive_is_refused(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    no_key = PUSH.replace(" @idempotent(key: $key)", "").replace(", $key: String!", "")
    status, body = fake_shopify.graphql(no_key, {"input": push_input([q(ITEM, LOC, 7, 5)])})
    assert_refused(fake_shopify, status, body, "IDEMPOTENCY_KEY_REQUIRED")
    status, body = push(fake_shopify, [q(ITEM, LOC, 7, 5)], key="   ")
    assert_refused(fake_shopify, status, body, "IDEMPOTENCY_KEY_REQUIRED")
    assert fake_shopify.level(ITEM, LOC) == 5
    assert fake_shopify.state()["invalid"] == 2


@pytest.mark.parametrize("case", ["string_for_int", "missing_required", "unknown_input_field",
                                  "null_for_non_null"])
def test_variables_of_the_wrong_type_are_refused(fake_shopify, case):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    inp = push_input([q(ITEM, LOC, 7, 5)])
    if case == "string_for_int":
        inp["quantities"][0]["quantity"] = "7"
    elif case == "missing_required":
        del inp["reason"]
    elif case == "unknown_input_field":
        inp["quantities"][0]["compareQuantity"] = 5  # gone from 2026-04 on
    else:
        inp["quantities"][0]["locationId"] = None
    status, body = fake_shopify.graphql(PUSH, {"input": inp, "key": "k-" + case})
    assert_refused(fake_shopify, status, body, "INVALID_VARIABLE")
    assert fake_shopify.level(ITEM, LOC) == 5
    assert fake_shopify.state()["invalid"] == 1


def test_an_omitted_change_from_quantity_is_an_error(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    qq = q(ITEM, LOC, 7, 5)
    del qq["changeFromQuantity"]
    status, body = push(fake_shopify, [qq])
    r = body["data"]["inventorySetQuantities"]
    assert r["inventoryAdjustmentGroup"] is None
    assert [e["code"] for e in r["userErrors"]] == ["COMPARE_QUANTITY_REQUIRED"]
    assert fake_shopify.level(ITEM, LOC) == 5


def test_a_stale_change_from_applies_nothing(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5), (ITEM2, LOC, 1)])
    # The first quantity is right, the second stale: neither is applied.
    status, body = push(fake_shopify, [q(ITEM, LOC, 7, 5), q(ITEM2, LOC, 9, 2)])
    r = body["data"]["inventorySetQuantities"]
    assert r["inventoryAdjustmentGroup"] is None
    assert r["userErrors"] == [{"field": ["input", "quantities", "1", "changeFromQuantity"],
                                "message": r["userErrors"][0]["message"],
                                "code": "CHANGE_FROM_QUANTITY_STALE"}]
    assert fake_shopify.level(ITEM, LOC) == 5 and fake_shopify.level(ITEM2, LOC) == 1
    st = fake_shopify.state()
    assert st["stale"] == 1 and st["mutations"] == 0
    assert fake_shopify.log()[-1]["outcome"] == "stale"
    # An unknown position compares as 0.
    status, body = push(fake_shopify, [q(ITEM + 9, LOC, 2, 3)])
    assert body["data"]["inventorySetQuantities"]["userErrors"][0]["code"] == \
        "CHANGE_FROM_QUANTITY_STALE"


def test_the_stale_reread_query(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 11)])
    query = """query AtpdRead($item: ID!, $loc: ID!) {
      inventoryItem(id: $item) { id inventoryLevel(locationId: $loc) {
        quantities(names: ["available"]) { name quantity } } } }"""
    status, body = fake_shopify.graphql(query, {"item": wh.gid("InventoryItem", ITEM),
                                                "loc": wh.gid("Location", LOC)})
    assert status == 200 and "errors" not in body, body
    lvl = body["data"]["inventoryItem"]["inventoryLevel"]
    assert lvl["quantities"] == [{"name": "available", "quantity": 11}]
    assert body["extensions"]["cost"]["requestedQueryCost"] == 3
    # No level at that location: null, as Shopify answers an item not stocked there.
    status, body = fake_shopify.graphql(query, {"item": wh.gid("InventoryItem", ITEM),
                                                "loc": wh.gid("Location", LOC + 1)})
    assert body["data"]["inventoryItem"]["inventoryLevel"] is None, body


def test_idempotency_keys(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    first = push(fake_shopify, [q(ITEM, LOC, 7, 5)], key="k-1")[1]
    group = first["data"]["inventorySetQuantities"]["inventoryAdjustmentGroup"]["id"]
    # Shopify's figure moves on; a retry with the same key and input is the first
    # answer again, and changes nothing.
    fake_shopify.set_levels([(ITEM, LOC, 40)])
    again = push(fake_shopify, [q(ITEM, LOC, 7, 5)], key="k-1")[1]
    assert again["data"] == first["data"]
    assert again["data"]["inventorySetQuantities"]["inventoryAdjustmentGroup"]["id"] == group
    assert fake_shopify.level(ITEM, LOC) == 40
    st = fake_shopify.state()
    assert st["idempotent_replays"] == 1 and st["mutations"] == 1
    # The same key with another input is refused.
    other = push(fake_shopify, [q(ITEM, LOC, 8, 40)], key="k-1")[1]
    r = other["data"]["inventorySetQuantities"]
    assert r["inventoryAdjustmentGroup"] is None
    assert r["userErrors"][0]["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    assert fake_shopify.level(ITEM, LOC) == 40
    # A key whose first answer failed (stale) cannot be reused: a retry after a
    # re-read needs a new key.
    push(fake_shopify, [q(ITEM, LOC, 9, 5)], key="k-2")
    r = push(fake_shopify, [q(ITEM, LOC, 9, 5)], key="k-2")[1]["data"]["inventorySetQuantities"]
    assert r["userErrors"][0]["code"] == "IDEMPOTENCY_PREVIOUS_ATTEMPT_FAILED"
    r = push(fake_shopify, [q(ITEM, LOC, 9, 40)], key="k-3")[1]["data"]["inventorySetQuantities"]
    assert r["userErrors"] == [] and fake_shopify.level(ITEM, LOC) == 9


def test_at_most_250_quantities_a_call(fake_shopify):
    many = [q(ITEM + i, LOC, 1, None) for i in range(251)]
    status, body = push(fake_shopify, many)
    assert_refused(fake_shopify, status, body, "MAX_INPUT_SIZE_EXCEEDED")
    assert fake_shopify.state()["levels"] == {}
    status, body = push(fake_shopify, many[:250])
    assert body["data"]["inventorySetQuantities"]["userErrors"] == [], body
    assert len(fake_shopify.state()["levels"]) == 250


def test_the_bucket_throttles_when_drained_and_restores_at_its_rate(fake_shopify):
    fake_shopify.config(restore_rate=0, bucket_max=100, bucket_available=100)
    fake_shopify.set_levels([(ITEM, LOC, 0)])
    for i in range(10):
        status, body = push(fake_shopify, [q(ITEM, LOC, i + 1, i)])
        assert "errors" not in body, (i, body)
    status, body = push(fake_shopify, [q(ITEM, LOC, 99, 10)])
    assert status == 200
    assert body["errors"] == [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]
    assert "data" not in body
    cost = body["extensions"]["cost"]
    assert cost["requestedQueryCost"] == 10 and cost["actualQueryCost"] is None
    assert cost["throttleStatus"]["currentlyAvailable"] < 10
    assert cost["throttleStatus"]["restoreRate"] == 0
    assert fake_shopify.level(ITEM, LOC) == 10
    assert fake_shopify.state()["throttled"] == 1
    # Restored at the configured rate: 0 -> about 100 points/s.
    fake_shopify.config(restore_rate=100, bucket_available=0)
    t0 = time.monotonic()
    time.sleep(0.5)
    avail = fake_shopify.state()["bucket"]["available"]
    elapsed = time.monotonic() - t0
    assert 25 <= avail <= min(100, 100 * elapsed + 5), (avail, elapsed)
    time.sleep(0.2)
    status, body = push(fake_shopify, [q(ITEM, LOC, 11, 10)])
    assert "errors" not in body, body
    assert fake_shopify.level(ITEM, LOC) == 11


def test_connections_are_paged_and_charged_by_first(fake_shopify):
    variants = [{"variant_id": (1 << 54) + i, "sku": "SKU-%d" % i,
                 "inventory_item_id": ITEM + i} for i in range(5)]
    fake_shopify.catalog(variants, [{"id": LOC, "name": "Store 1"}, {"id": LOC + 1, "name": "DC"}])
    query = """query AtpdVariants($after: String, $q: String) {
      productVariants(first: 2, after: $after, query: $q) {
        nodes { id sku inventoryItem { id } } pageInfo { hasNextPage endCursor } } }"""
    seen, after, costs = [], None, []
    while True:
        status, body = fake_shopify.graphql(query, {"after": after})
        assert "errors" not in body, body
        c = body["data"]["productVariants"]
        seen += c["nodes"]
        cost = body["extensions"]["cost"]
        costs.append((cost["requestedQueryCost"], cost["actualQueryCost"]))
        if not c["pageInfo"]["hasNextPage"]:
            break
        after = c["pageInfo"]["endCursor"]
    assert [n["sku"] for n in seen] == ["SKU-%d" % i for i in range(5)]
    assert seen[3] == {"id": wh.gid("ProductVariant", (1 << 54) + 3), "sku": "SKU-3",
                       "inventoryItem": {"id": wh.gid("InventoryItem", ITEM + 3)}}
    # 2 + first x (the node and its inventoryItem); the last page returned one node.
    assert costs == [(6, 6), (6, 6), (6, 4)]
    status, body = fake_shopify.graphql(query, {"q": "sku:SKU-2"})
    assert [n["sku"] for n in body["data"]["productVariants"]["nodes"]] == ["SKU-2"]
    status, body = fake_shopify.graphql(
        "query { locations(first: 10) { nodes { id name } pageInfo { hasNextPage } } }")
    assert body["data"]["locations"]["nodes"] == [
        {"id": wh.gid("Location", LOC), "name": "Store 1"},
        {"id": wh.gid("Location", LOC + 1), "name": "DC"}]
    # Shopify requires first or last on a connection.
    status, body = fake_shopify.graphql("query { locations { nodes { id } } }")
    assert body["errors"], body


def test_what_the_fake_does_not_implement_is_an_error(fake_shopify):
    status, body = fake_shopify.graphql("query { shop { name } }")
    assert_refused(fake_shopify, status, body, "NOT_IMPLEMENTED")
    assert "shop" in body["errors"][0]["message"]
    fake_shopify.set_levels([(ITEM, LOC, 1)])
    status, body = fake_shopify.graphql(
        'query { inventoryItem(id: "%s") { id countryCodeOfOrigin } }' % wh.gid("InventoryItem", ITEM))
    assert body["errors"][0]["extensions"]["code"] == "NOT_IMPLEMENTED", body


def test_the_access_token_and_the_version(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    for token in ("", "shpat_wrong"):
        status, body = fake_shopify.graphql(PUSH, {"input": push_input([q(ITEM, LOC, 7, 5)]),
                                                   "key": "k"}, token=token)
        assert status == 401, body
    status, body = fake_shopify.graphql("query { locations(first: 1) { nodes { id } } }",
                                        version="2025-10")
    assert status == 404
    assert fake_shopify.level(ITEM, LOC) == 5
    assert fake_shopify.state()["unauthorized"] == 2


def test_faults(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 0)])
    n = [0]

    def go():
        n[0] += 1
        return push(fake_shopify, [q(ITEM, LOC, n[0], None)])

    fake_shopify.faults(throttle=1, status429=1, error5xx=2)
    # 5xx come first, then 429, then the THROTTLED over 200.
    assert go()[0] == 503 and go()[0] == 503
    status, body = go()
    assert status == 429 and body["errors"][0]["extensions"]["code"] == "THROTTLED"
    status, body = go()
    assert status == 200 and body["errors"][0]["extensions"]["code"] == "THROTTLED"
    status, body = go()
    assert status == 200 and "errors" not in body
    assert fake_shopify.level(ITEM, LOC) == 5
    st = fake_shopify.state()
    assert st["errors5xx"] == 2 and st["throttled"] == 2 and st["mutations"] == 1

    fake_shopify.faults(slow_ms=400, slow_count=1)
    t0 = time.monotonic()
    assert "errors" not in go()[1]
    assert time.monotonic() - t0 >= 0.38
    t0 = time.monotonic()
    go()
    assert time.monotonic() - t0 < 0.38

    fake_shopify.faults(down=True)
    with pytest.raises((ConnectionError, urllib.error.URLError, OSError)):
        go()
    assert fake_shopify.state()["refused"] == 1
    fake_shopify.faults(down=False)
    status, body = go()
    assert "errors" not in body
    assert fake_shopify.level(ITEM, LOC) == n[0]
    outcomes = [e["outcome"] for e in fake_shopify.log()]
    assert outcomes == ["error5xx", "error5xx", "status429", "throttled", "ok", "ok", "ok",
                        "down", "ok"]


def test_control_api_reads_large_ids_exactly(fake_shopify):
    big = (1 << 63) - 25
    fake_shopify.set_levels([{"inventory_item_id": big, "location_id": str(big - 1),
                              "available": 3}])
    assert fake_shopify.levels() == {(big, big - 1): 3}
    status, body = push(fake_shopify, [q(big, big - 1, 4, 3)])
    assert body["data"]["inventorySetQuantities"]["userErrors"] == [], body
    assert fake_shopify.level(big, big - 1) == 4


# --- the webhook sender ------------------------------------------------------------

def openssl_hmac(body, secret):
    out = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", secret, "-binary"],
                         input=body, capture_output=True, check=True).stdout
    return subprocess.run(["base64"], input=out, capture_output=True,
                          check=True).stdout.decode().strip()


def test_sign_matches_openssl():
    secret = "hush-" + uuid.uuid4().hex
    for body in (b"", b'{"id":9007199254740993}', "caf\u00e9 \u2603".encode()):
        assert wh.sign(body, secret) == openssl_hmac(body, secret)
    # A fixed vector, so a change in both would still be caught.
    assert wh.sign(b"hello", "k") == "QG5LQ/hwlaqGymKZ0l6HWSH++hgPAgQ7spvsVoHAwtA="


class _Capture(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    got = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Capture.got.append((self.path, dict(self.headers), body))
        out = b'{"outcome":"applied","effects":[]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *a):
        pass


def test_sender_headers_signature_and_retries():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Capture.got = []
    try:
        s = wh.Sender("http://127.0.0.1:%d" % srv.server_port, "s3cret")
        o = wh.order([(wh.shopify_id(), "SKU-1", 2)], reservation_id="r-1")
        assert s.send("orders/create", o) == (200, {"outcome": "applied", "effects": []})
        d = s.delivery("orders/cancelled", wh.cancelled(o, "customer"))
        s.send_all([d], times=3)
        s.send("orders/create", o, secret="other")
        s.send("orders/create", None, raw=b"not json")
    finally:
        srv.shutdown()
        srv.server_close()
    assert len(_Capture.got) == 6
    path, h, body = _Capture.got[0]
    assert path == "/v1/shopify/webhooks"
    assert h["X-Shopify-Topic"] == "orders/create"
    assert h["X-Shopify-Shop-Domain"] == "atpd-test.myshopify.com"
    assert h["X-Shopify-API-Version"] == "2026-10"
    assert h["X-Shopify-Hmac-Sha256"] == openssl_hmac(body, "s3cret")
    uuid.UUID(h["X-Shopify-Webhook-Id"])
    uuid.UUID(h["X-Shopify-Event-Id"])
    assert h["X-Shopify-Triggered-At"].endswith("Z") and len(h["X-Shopify-Triggered-At"]) == 30
    # Ids above 2^53 are written as exact JSON integers.
    assert (b'"id":%d' % o["id"]) in body and o["id"] > 2 ** 53
    # A retried delivery repeats its webhook id and its body.
    retries = _Capture.got[1:4]
    assert len({r[1]["X-Shopify-Webhook-Id"] for r in retries}) == 1
    assert len({r[2] for r in retries}) == 1
    assert retries[0][1]["X-Shopify-Webhook-Id"] != h["X-Shopify-Webhook-Id"]
    assert _Capture.got[4][1]["X-Shopify-Hmac-Sha256"] == openssl_hmac(_Capture.got[4][2], "other")
    assert _Capture.got[5][2] == b"not json"
    assert _Capture.got[5][1]["X-Shopify-Hmac-Sha256"] == openssl_hmac(b"not json", "s3cret")


def test_payload_builders():
    v1, v2 = wh.shopify_id(), wh.shopify_id()
    o = wh.order([(v1, "A", 2), (v2, "B", 1)], reservation_id="r-9")
    assert o["admin_graphql_api_id"] == "gid://shopify/Order/%d" % o["id"]
    assert o["location_id"] is None and o["source_name"] == "web"
    assert {"name": "_atp_reservation", "value": "r-9"} in o["note_attributes"]
    assert [(l["variant_id"], l["sku"], l["quantity"]) for l in o["line_items"]] == \
        [(v1, "A", 2), (v2, "B", 1)]
    p = wh.pos_order([(v1, "A", 1)], location_id=LOC, processed_ms=1000)
    assert p["location_id"] == LOC and p["source_name"] == "pos"
    assert p["processed_at"] == "1969-12-31T19:00:01-05:00"
    c = wh.cancelled(o, "inventory")
    assert c["cancel_reason"] == "inventory" and c["cancelled_at"] and o["cancelled_at"] is None
    f = wh.fulfillment(o, [1], location_id=LOC)
    assert f["order_id"] == o["id"] and f["location_id"] == LOC
    assert f["line_items"] == [{"id": o["line_items"][1]["id"], "variant_id": v2, "sku": "B",
                                "quantity": 1}]
    r = wh.refund(o, [(0, 1, "return", LOC), {"line": 1, "restock_type": "cancel"}])
    rl = r["refund_line_items"]
    assert rl[0]["line_item_id"] == o["line_items"][0]["id"] and rl[0]["quantity"] == 1
    assert rl[0]["restock_type"] == "return" and rl[0]["location_id"] == LOC
    assert rl[1]["quantity"] == 1 and rl[1]["restock_type"] == "cancel"
    assert rl[0]["id"] != rl[1]["id"]
    lv = wh.inventory_level(ITEM, LOC, 4)
    assert lv["admin_graphql_api_id"] == "gid://shopify/InventoryLevel/%d?inventory_item_id=%d" % (
        LOC, ITEM)
    ids = {wh.shopify_id() for _ in range(1000)}
    assert len(ids) == 1000 and min(ids) > 2 ** 53 and max(ids) < 2 ** 63


def test_the_2026_04_schema_serves_too():
    """The first version with the mandatory @idempotent and changeFromQuantity:
    the same push is valid there and the same rules hold."""
    if not os.path.exists(schema_path("2026-04")):
        pytest.fail("build/deps/shopify/admin_2026-04.json.gz is missing (make deps)")
    fake = FakeShopify(version="2026-04").start()
    try:
        fake.set_levels([(ITEM, LOC, 5)])
        status, body = push(fake, [q(ITEM, LOC, 7, 5)])
        assert body["data"]["inventorySetQuantities"]["userErrors"] == [], body
        no_key = PUSH.replace(" @idempotent(key: $key)", "").replace(", $key: String!", "")
        status, body = fake.graphql(no_key, {"input": push_input([q(ITEM, LOC, 8, 7)])})
        assert_refused(fake, status, body, "IDEMPOTENCY_KEY_REQUIRED")
        assert fake.graphql(PUSH, {"input": push_input([q(ITEM, LOC, 8, 7)]), "key": "k"},
                            version="2026-10")[0] == 404
        assert fake.level(ITEM, LOC) == 7
    finally:
        fake.stop()


def test_the_body_must_be_json(fake_shopify):
    fake_shopify.set_levels([(ITEM, LOC, 5)])
    body = json.dumps({"query": PUSH, "variables": {"input": push_input([q(ITEM, LOC, 7, 5)]),
                                                    "key": "k-ct"}}).encode()
    for ct in (None, "text/plain", "application/graphql"):
        headers = {"X-Shopify-Access-Token": fake_shopify.token}
        if ct:
            headers["Content-Type"] = ct
        req = urllib.request.Request(fake_shopify.admin_url, data=body, method="POST",
                                     headers=headers)
        if ct is None:
            req.remove_header("Content-type")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400
    # A float with a long fraction is not mistaken for a large id.
    status, out = fake_shopify.graphql(
        'query { locations(first: 1) { nodes { id } } }',
        variables={"unused": 1.12345678901234567})
    assert status == 200 and "errors" not in out, out
    assert fake_shopify.level(ITEM, LOC) == 5
    assert fake_shopify.state()["invalid"] == 3
