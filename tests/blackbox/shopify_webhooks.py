"""Shopify webhooks for atpd's POST /v1/shopify/webhooks: signing, delivery
(with Shopify's headers; duplicated, reordered, delayed and retried at will)
and builders of the REST-shaped payloads Shopify sends (SHOPIFY.md).

    s = Sender(srv_base_url, "secret")
    o = order([(variant_id, "SKU-1", 2)], reservation_id="r-1")
    status, body = s.send("orders/create", o)
    d = s.delivery("fulfillments/create", fulfillment(o))  # fixed headers
    s.post(d); s.post(d)                                     # a retry repeats them

Ids are Python ints above 2^53 (shopify_id()); json.dumps writes them exactly,
as Shopify does, so a parser that goes through a double loses them.
"""
import base64
import copy
import hashlib
import hmac
import http.client
import itertools
import json
import random
import time
import urllib.parse
import uuid

WEBHOOK_PATH = "/v1/shopify/webhooks"
API_VERSION = "2026-10"
# Shopify writes timestamps in the shop's zone; the tests' shop is at -05:00 so
# that a parser that ignores the offset is caught.
SHOP_OFFSET_MIN = -5 * 60

_ids = itertools.count(random.getrandbits(20) << 20)


def shopify_id():
    """A fresh id above 2^53 (Shopify's ids are that large), unique in the run."""
    return (1 << 53) + (random.getrandbits(24) << 28) + next(_ids)


def gid(type_, id_):
    return "gid://shopify/%s/%d" % (type_, id_)


def sign(body_bytes, secret):
    """X-Shopify-Hmac-Sha256: base64 of HMAC-SHA256 of the raw body."""
    if isinstance(secret, str):
        secret = secret.encode()
    return base64.b64encode(hmac.new(secret, body_bytes, hashlib.sha256).digest()).decode()


def iso(ms=None, offset_min=SHOP_OFFSET_MIN):
    """Shopify's payload timestamp: second precision, the shop's offset."""
    if ms is None:
        ms = int(time.time() * 1000)
    t = time.gmtime(ms // 1000 + offset_min * 60)
    sign_ = "+" if offset_min >= 0 else "-"
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + "%s%02d:%02d" % (
        sign_, abs(offset_min) // 60, abs(offset_min) % 60)


def rfc3339_ns(ms=None):
    """X-Shopify-Triggered-At: RFC 3339 in UTC with nanoseconds."""
    ns = time.time_ns() if ms is None else ms * 1000000
    sec, frac = divmod(ns, 1000000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".%09dZ" % frac


# --- payloads ----------------------------------------------------------------------

def _line(l):
    """(variant_id, sku, quantity) or {variant_id, sku, quantity[, id]} -> an order line."""
    if isinstance(l, dict):
        v, sku, qty, lid = l["variant_id"], l["sku"], l["quantity"], l.get("id")
    else:
        v, sku, qty = l
        lid = None
    return {"id": lid or shopify_id(), "variant_id": v, "sku": sku, "quantity": qty,
            "fulfillable_quantity": qty}


def order(lines, reservation_id=None, attribute="_atp_reservation", order_id=None,
          location_id=None, source_name="web", created_ms=None, processed_ms=None,
          note_attributes=None, name=None, cart_token=None, checkout_token=None):
    """An orders/create payload. lines: (variant_id, sku, quantity) tuples or dicts.
    reservation_id goes into note_attributes under `attribute`; cart_token and
    checkout_token are the storefront's (null for POS and draft orders)."""
    oid = order_id or shopify_id()
    created = iso(created_ms)
    attrs = list(note_attributes or [])
    if reservation_id is not None:
        attrs.append({"name": attribute, "value": reservation_id})
    return {
        "id": oid,
        "admin_graphql_api_id": gid("Order", oid),
        "name": name or "#%d" % (oid % 100000),
        "created_at": created,
        "processed_at": iso(processed_ms) if processed_ms is not None else created,
        "updated_at": created,
        "location_id": location_id,
        "source_name": source_name,
        "note_attributes": attrs,
        "cart_token": cart_token,
        "checkout_token": checkout_token,
        "cancelled_at": None,
        "cancel_reason": None,
        "financial_status": "paid",
        "fulfillment_status": None,
        "line_items": [_line(l) for l in lines],
    }


def pos_order(lines, location_id, processed_ms=None, created_ms=None, **kw):
    """A POS sale: it has the store's location_id and is fulfilled at once.
    processed_ms is when the sale was made (an offline sale syncs later: its
    created_at is the sync, its processed_at the sale)."""
    o = order(lines, location_id=location_id, source_name="pos", created_ms=created_ms,
              processed_ms=processed_ms, **kw)
    o["fulfillment_status"] = "fulfilled"
    for l in o["line_items"]:
        l["fulfillable_quantity"] = 0
    return o


def cancelled(order_, reason="customer", cancelled_ms=None):
    """orders/cancelled: the same order with cancelled_at and cancel_reason
    (customer, inventory, fraud, declined, other, staff)."""
    o = copy.deepcopy(order_)
    o["cancelled_at"] = iso(cancelled_ms)
    o["updated_at"] = o["cancelled_at"]
    o["cancel_reason"] = reason
    return o


def _pick(order_, l):
    """(line dict, quantity), a line dict, an index or a line id -> (line, quantity)."""
    if isinstance(l, tuple):
        line, qty = l
    else:
        line, qty = l, None
    if isinstance(line, int):
        items = order_["line_items"]
        line = items[line] if line < len(items) else next(x for x in items if x["id"] == line)
    return line, line["quantity"] if qty is None else qty


def fulfillment(order_, lines=None, location_id=None, fulfillment_id=None, status="success"):
    """fulfillments/create for order_; lines default to all of its lines (each a
    line, an index, or a (line, quantity) tuple)."""
    fid = fulfillment_id or shopify_id()
    now = iso()
    picked = [_pick(order_, l) for l in (lines if lines is not None else order_["line_items"])]
    return {
        "id": fid,
        "admin_graphql_api_id": gid("Fulfillment", fid),
        "order_id": order_["id"],
        "location_id": location_id if location_id is not None else order_.get("location_id"),
        "status": status,
        "created_at": now,
        "updated_at": now,
        "line_items": [{"id": l["id"], "variant_id": l["variant_id"], "sku": l["sku"],
                        "quantity": q} for l, q in picked],
    }


def refund(order_, lines, refund_id=None):
    """refunds/create. lines: dicts {line (or index), quantity, restock_type,
    location_id} or (line, quantity, restock_type, location_id) tuples;
    restock_type: return | cancel | no_restock | legacy_restock."""
    rid = refund_id or shopify_id()
    now = iso()
    out = []
    for l in lines:
        if isinstance(l, dict):
            line, qty, rt, loc = l.get("line", 0), l.get("quantity"), l.get("restock_type", "return"), \
                l.get("location_id")
        else:
            line, qty, rt, loc = l
        line, qty = _pick(order_, (line, qty) if qty is not None else line)
        out.append({"id": shopify_id(), "line_item_id": line["id"], "quantity": qty,
                    "restock_type": rt, "location_id": loc,
                    "line_item": {"id": line["id"], "variant_id": line["variant_id"],
                                  "sku": line["sku"], "quantity": line["quantity"]}})
    return {"id": rid, "admin_graphql_api_id": gid("Refund", rid), "order_id": order_["id"],
            "created_at": now, "processed_at": now, "refund_line_items": out}


def inventory_level(item, loc, available, updated_ms=None):
    """inventory_levels/update."""
    return {"inventory_item_id": item, "location_id": loc, "available": available,
            "updated_at": iso(updated_ms),
            "admin_graphql_api_id": "gid://shopify/InventoryLevel/%d?inventory_item_id=%d" % (
                loc, item)}


# --- delivery ----------------------------------------------------------------------

class Delivery:
    """One delivery series: its body and headers are fixed, so posting it again
    is a Shopify retry (same X-Shopify-Webhook-Id)."""

    def __init__(self, topic, body, headers):
        self.topic = topic
        self.body = body
        self.headers = headers

    @property
    def webhook_id(self):
        return self.headers["X-Shopify-Webhook-Id"]

    @property
    def event_id(self):
        return self.headers["X-Shopify-Event-Id"]

    def __repr__(self):
        return "<Delivery %s %s %r>" % (self.topic, self.webhook_id, self.body[:120])


class Sender:
    def __init__(self, base_url, secret, shop="atpd-test.myshopify.com", api_version=API_VERSION,
                 timeout=10.0):
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname, u.port or 80
        self.path = u.path if u.path.endswith(WEBHOOK_PATH) else u.path.rstrip("/") + WEBHOOK_PATH
        self.secret = secret
        self.shop = shop
        self.api_version = api_version
        self.timeout = timeout
        self.sent = []  # every (delivery, status, body) posted

    def delivery(self, topic, payload, webhook_id=None, event_id=None, triggered_at=None,
                 secret=None, raw=None, shop=None, hmac_header=None):
        """Builds a delivery without sending it. raw: bytes sent (and signed)
        instead of the JSON of payload; hmac_header overrides the signature
        ("" leaves the header out)."""
        body = raw if raw is not None else json.dumps(payload, separators=(",", ":")).encode()
        sig = sign(body, self.secret if secret is None else secret) if hmac_header is None \
            else hmac_header
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": shop or self.shop,
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
            "X-Shopify-Triggered-At": triggered_at or rfc3339_ns(),
            "X-Shopify-API-Version": self.api_version,
        }
        if sig:
            headers["X-Shopify-Hmac-Sha256"] = sig
        return Delivery(topic, body, headers)

    def post(self, d):
        """Posts a delivery (again, for a retry) -> (status, decoded JSON or text)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.path, body=d.body, headers=d.headers)
            r = conn.getresponse()
            status, text = r.status, r.read()
        finally:
            conn.close()
        try:
            out = json.loads(text) if text else None
        except ValueError:
            out = text.decode(errors="replace")
        self.sent.append((d, status, out))
        return status, out

    def send(self, topic, payload, webhook_id=None, event_id=None, triggered_at=None,
             secret=None, raw=None):
        return self.post(self.delivery(topic, payload, webhook_id=webhook_id, event_id=event_id,
                                       triggered_at=triggered_at, secret=secret, raw=raw))

    def send_all(self, deliveries, order="as_given", times=1, delay_s=0.0, seed=None):
        """Posts each delivery `times` times (retries repeat its headers), in the
        order given, reversed or shuffled, delay_s apart -> [(status, body)]."""
        seq = [d for d in deliveries for _ in range(times)]
        if order == "reversed":
            seq.reverse()
        elif order == "shuffled":
            random.Random(seed).shuffle(seq)
        elif order != "as_given":
            raise ValueError(order)
        out = []
        for i, d in enumerate(seq):
            if i and delay_s:
                time.sleep(delay_s)
            out.append(self.post(d))
        return out
