"""Section 6.1 and 6.2: POST /v1/batch in its four encodings (JSON array, NDJSON,
msgpack array, msgpack stream), against the single routes, with an ownership file."""
import json
import os
import tempfile
import time

import msgpack
import pytest

from harness import Server, expect_error, now_ms, uid

_dir = tempfile.mkdtemp(prefix="atpd-bb-batch-")
with open(os.path.join(_dir, "ownership.json"), "w") as f:
    json.dump({"fields": {
        "counts": {"writers": ["erp", "wms"], "owner": "inventory-control"},
        "adjustments": {"writers": ["pos", "wms", "erp", "oms", "shopify"], "owner": "store-ops"},
        "safety_stock": {"writers": ["ops"], "owner": "merchandising"},
        "groups": {"writers": ["ops"], "owner": "ecommerce"},
        "reservations": {"writers": ["checkout", "pos", "oms", "shopify"], "owner": "ecommerce"},
    }}, f)
SERVER_ARGS = ["--ownership", os.path.join(_dir, "ownership.json")]

ENCODINGS = ("json", "ndjson", "msgpack", "mpstream")
encodings = pytest.mark.parametrize("enc", ENCODINGS)


def encode_batch(ops, enc):
    if enc == "json":
        return json.dumps(ops).encode(), "application/json"
    if enc == "ndjson":
        return b"".join(json.dumps(o).encode() + b"\n" for o in ops), "application/x-ndjson"
    if enc == "msgpack":
        return msgpack.packb(ops, use_bin_type=True), "application/msgpack"
    assert enc == "mpstream"
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in ops), "application/msgpack"


def batch(c, ops, enc, results=None, raw=None, content_type=None):
    body, ct = encode_batch(ops, enc) if raw is None else (raw, content_type)
    path = "/v1/batch" + ("?results=" + results if results else "")
    return c.post(path, raw=body, content_type=content_type or ct)


def ok_batch(c, ops, enc, results=None):
    r = batch(c, ops, enc, results)
    assert r.status == 200, r
    d = r.data
    assert d["received"] == len(ops), d
    assert d["applied"] + d["replayed"] + d["rejected"] + d["queued"] == d["received"], d
    return d


def adj(sku, loc="L1", delta=5, flow="erp", **kw):
    o = dict(op="adjust", flow=flow, id=uid("adj"), sku=sku, location=loc, delta=delta,
             reason="received")
    o.update(kw)
    return o


def on_hand(c, sku, loc="L1"):
    return c.pos(sku, loc)["on_hand"]


# --- every op kind against its single route -----------------------------------------

def scenario(world, t0):
    """The same story told as ops: (kind, single-route method, path, body, batch fields)."""
    sku, grp = world["sku"], world["group"]
    r1, r2, r3, r4 = world["res"]
    steps = [
        ("adjust", "POST", "/v1/adjustments",
         dict(id=uid("a"), sku=sku, location="L1", delta=20, reason="received", source="erp"), {}),
        ("adjust", "POST", "/v1/adjustments",
         dict(id=uid("a"), sku=sku, location="L2", delta=7, reason="received", source="erp"), {}),
        ("count", "POST", "/v1/counts",
         dict(id=uid("c"), sku=sku, location="L2", on_hand=6, counted_at=t0, source="wms"), {}),
        ("safety_stock", "POST", "/v1/safety-stock",
         dict(sku=sku, location="L1", safety_stock=2, source="ops"), {}),
        ("group", "PUT", "/v1/groups/" + grp, dict(locations=["L2", "L1"], source="ops"),
         dict(name=grp)),
        ("reserve", "POST", "/v1/reservations",
         dict(id=r1, lines=[dict(sku=sku, group=grp, qty=3)], channel="oms"), {}),
        ("commit", "POST", "/v1/reservations/%s/commit" % r1, dict(order_id="O-1"), dict(id=r1)),
        ("reserve", "POST", "/v1/reservations",
         dict(id=r2, lines=[dict(sku=sku, location="L1", qty=5)], channel="oms"), {}),
        ("extend", "POST", "/v1/reservations/%s/extend" % r2, dict(ttl_ms=600000), dict(id=r2)),
        ("release", "POST", "/v1/reservations/%s/release" % r2,
         dict(release_id=uid("rel"), lines=[dict(sku=sku, location="L1", qty=2)]), dict(id=r2)),
        ("reserve", "POST", "/v1/reservations",
         dict(id=r3, lines=[dict(sku=sku, location="L1", qty=4)], channel="oms"), {}),
        ("fulfil", "POST", "/v1/reservations/%s/fulfil" % r3,
         dict(fulfillment_id=uid("f"), lines=[dict(sku=sku, location="L1", qty=1)]), dict(id=r3)),
        ("reserve", "POST", "/v1/reservations",
         dict(id=r4, lines=[dict(sku=sku, location="L1", qty=1)], channel="oms"), {}),
        ("amend", "POST", "/v1/reservations/%s/amend" % r4,
         dict(amend_id=uid("am"), release=[dict(sku=sku, location="L1", qty=1)],
              add=[dict(sku=sku, location="L2", qty=2)]), dict(id=r4)),
        # refusals: insufficient stock, a conflict, an unknown reservation
        ("reserve", "POST", "/v1/reservations",
         dict(id=uid("r"), lines=[dict(sku=sku, location="L2", qty=999)], channel="oms"), {}),
        ("adjust", "POST", "/v1/adjustments",
         dict(id=uid("a"), sku=sku, location="L1", delta=1, reason="received", source="erp",
              change_from=12345), {}),
        ("commit", "POST", "/v1/reservations/%s/commit" % uid("nope"), {}, None),
    ]
    return steps


FLOW = {"adjust": "erp", "count": "wms", "safety_stock": "ops", "group": "ops"}


def new_world():
    return dict(sku=uid("sku"), group=uid("g"), res=[uid("res") for _ in range(4)])


def as_op(kind, body, extra, flow):
    o = dict(body)
    o.update(op=kind, flow=flow)
    if extra is None:  # the follow-up's reservation id lives in the path only
        raise ValueError
    o.update(extra)
    for k in ("source", "channel"):
        o.pop(k, None)  # the flow stands for them
    return o


def comparable_reservation(r):
    return (r["status"], r.get("order_id"),
            sorted((ln["location"], ln["qty"], ln["fulfilled"], ln["released"])
                   for ln in r["lines"]))


@encodings
def test_every_op_kind_as_its_single_route(srv, enc):
    c = srv.client("json")
    t0 = now_ms() - 60000
    single, batched = new_world(), new_world()
    single_statuses = []
    for kind, method, path, body, extra in scenario(single, t0):
        r = c.request(method, path, body)
        single_statuses.append((r.status, r.error["code"] if r.status >= 300 else None))
    ops = []
    for kind, method, path, body, extra in scenario(batched, t0):
        if extra is None:  # the unknown reservation: the path's id goes into the op
            extra = dict(id=path.split("/")[3])
        ops.append(as_op(kind, body, extra, FLOW.get(kind, "oms")))
    d = ok_batch(c, ops, enc, results="all")
    assert [x["index"] for x in d["results"]] == list(range(len(ops))), d
    got = [(x["status"], x.get("error", {}).get("code")) for x in d["results"]]
    assert got == single_statuses, (got, single_statuses)
    assert d["rejected"] == 3 and d["applied"] == len(ops) - 3 and d["replayed"] == 0, d
    assert d["results"][15]["error"]["field"] == "change_from", d["results"][15]
    # Every position and reservation ends as the single routes left theirs.
    for loc in ("L1", "L2"):
        a, b = c.pos(single["sku"], loc), c.pos(batched["sku"], loc)
        for k in ("on_hand", "safety_stock", "reserved", "committed", "available"):
            assert a[k] == b[k], (loc, k, a, b)
    for ra, rb in zip(single["res"], batched["res"]):
        a, b = c.get("/v1/reservations/" + ra), c.get("/v1/reservations/" + rb)
        assert a.status == b.status == 200, (a, b)
        assert comparable_reservation(a.data) == comparable_reservation(b.data), (a.data, b.data)
    g = c.get("/v1/groups/" + batched["group"])
    assert g.status == 200 and g.data["locations"] == ["L2", "L1"], g


# --- idempotency --------------------------------------------------------------------

@encodings
def test_replays_counted_and_mismatches_rejected(srv, enc):
    c = srv.client("json")
    sku = uid("sku")
    ops = [adj(sku, delta=4), dict(op="count", flow="wms", id=uid("c"), sku=sku, location="L2",
                                    on_hand=9, counted_at=now_ms() - 1000),
           dict(op="reserve", flow="oms", id=uid("r"), lines=[dict(sku=sku, location="L1", qty=1)])]
    d = ok_batch(c, ops, enc)
    assert (d["applied"], d["replayed"], d["rejected"], d["results"]) == (3, 0, 0, []), d
    d = ok_batch(c, ops, enc, results="all")
    assert (d["applied"], d["replayed"], d["rejected"]) == (0, 3, 0), d
    assert all(x.get("replayed") is True for x in d["results"]), d
    assert [x["status"] for x in d["results"]] == [200, 200, 201], d
    assert on_hand(c, sku) == 4 and on_hand(c, sku, "L2") == 9
    changed = [dict(ops[0], delta=5), dict(ops[1], on_hand=8),
               dict(ops[2], lines=[dict(sku=sku, location="L1", qty=2)])]
    d = ok_batch(c, changed, enc)
    assert (d["applied"], d["replayed"], d["rejected"]) == (0, 0, 3), d
    for x in d["results"]:
        assert x["status"] == 422 and x["error"]["code"] == "idempotency_mismatch", x
    assert on_hand(c, sku) == 4 and on_hand(c, sku, "L2") == 9
    # The single route sees the batch's ids the same way.
    r = c.post("/v1/adjustments", dict({k: v for k, v in ops[0].items() if k not in ("op", "flow")},
                                       source="erp"))
    assert r.status == 200 and r.data.get("replayed") is True, r


# --- malformed ops --------------------------------------------------------------------

@encodings
def test_malformed_ops_rejected_the_rest_applied(srv, enc):
    c = srv.client("json")
    sku = uid("sku")
    ops = [adj(sku, delta=1), 7, dict(op="nope", flow="erp"), dict(op="adjust", id=uid("a")),
           dict(flow="erp", id=uid("a")), adj(sku, delta=100), adj(sku, delta=2),
           adj(sku, delta=3, source="pos"), ["adjust"], adj(sku, delta=4, flow="")]
    ops[5].pop("sku")
    d = ok_batch(c, ops, enc)
    assert (d["applied"], d["rejected"]) == (2, 8), d
    want = {1: None, 2: "op", 3: "flow", 4: "op", 5: "sku", 7: "source", 8: None, 9: "flow"}
    assert [x["index"] for x in d["results"]] == sorted(want), d
    for x in d["results"]:
        assert x["status"] == 400 and x["error"]["code"] == "bad_request", x
        assert x["error"].get("field") == want[x["index"]], x
    assert on_hand(c, sku) == 3


def test_unparseable_items_rejected_the_rest_applied(srv):
    c = srv.client("json")
    sku = uid("sku")
    good = [json.dumps(adj(sku, delta=d)) for d in (1, 2)]
    raw = ("[%s, {\"op\": \"adjust\",, }, %s, {\"a\":1}}, {\"a\":1,\"a\":2}]" % tuple(good)).encode()
    r = batch(c, None, None, raw=raw, content_type="application/json")
    assert r.status == 200, r
    assert [(x["index"], x["status"]) for x in r.data["results"]] == [(1, 400), (3, 400), (4, 400)], r.data
    assert "byte" in r.data["results"][0]["error"]["message"], r.data
    nd = ("%s\n{not json\n\n%s\n" % tuple(good)).encode()
    r = batch(c, None, None, raw=nd, content_type="application/x-ndjson")
    assert r.status == 200 and r.data["received"] == 3 and r.data["replayed"] == 2, r.data
    assert r.data["results"][0]["index"] == 1, r.data
    assert on_hand(c, sku) == 3  # the ndjson ops were replays of the JSON ones


def test_broken_framing_refused_whole(srv):
    c = srv.client("json")
    sku = uid("sku")
    one = json.dumps(adj(sku, delta=1))
    for raw in ("[%s, %s" % (one, one), one, "[%s] [%s]" % (one, one), "[%s, \"x]" % one):
        r = batch(c, None, None, raw=raw.encode(), content_type="application/json")
        expect_error(r, 400, "bad_request")
        assert "Malformed batch" in r.error["message"], r.error
    mp = msgpack.packb(adj(sku, delta=1)) + msgpack.packb(adj(sku, delta=1))[:-3]
    expect_error(batch(c, None, None, raw=mp, content_type="application/msgpack"), 400,
                 "bad_request")
    expect_error(batch(c, None, None, raw=b"\x93" + msgpack.packb(adj(sku)),
                       content_type="application/msgpack"), 400, "bad_request")
    assert c.position(sku, "L1").status == 404, "nothing may be applied"
    expect_error(batch(c, None, None, raw=b"", content_type="application/json"), 400,
                 "bad_request")
    expect_error(batch(c, None, None, raw=b"sku,location\n", content_type="text/csv"), 415,
                 "unsupported_media_type")
    expect_error(c.post("/v1/batch?results=some", raw=b"[]", content_type="application/json"),
                 400, "bad_request", field="results")
    d = ok_batch(c, [], "json")
    assert d == dict(received=0, applied=0, replayed=0, rejected=0, queued=0, results=[]), d


# --- results and business outcomes ----------------------------------------------------

@encodings
def test_results_default_non_2xx_all_on_request(srv, enc):
    c = srv.client("json")
    sku = uid("sku")
    ops = [adj(sku, delta=2), dict(op="reserve", flow="oms", id=uid("r"),
                                   lines=[dict(sku=sku, location="L1", qty=5)]),
           dict(op="reserve", flow="oms", id=uid("r"), lines=[dict(sku=sku, location="L1", qty=2)])]
    d = ok_batch(c, ops, enc)
    assert (d["applied"], d["rejected"]) == (2, 1), d
    assert d["results"] == [dict(index=1, status=409, error=d["results"][0]["error"])], d
    assert d["results"][0]["error"]["code"] == "insufficient_stock", d
    ops2 = [adj(sku, delta=1), adj(sku, delta=1)]
    d = ok_batch(c, ops2, enc, results="all")
    assert d["results"] == [dict(index=0, status=200), dict(index=1, status=200)], d
    d = ok_batch(c, [adj(sku, delta=1)], enc, results="rejected")
    assert d["results"] == [], d
    assert c.pos(sku, "L1")["reserved"] == 2


# --- the bound --------------------------------------------------------------------------

def test_at_most_100000_ops(srv):
    c = srv.client("json")
    c.timeout = 60
    sku = uid("sku")
    lines = [json.dumps(dict(op="adjust", flow="erp", id="%s-%d" % (sku, i), sku=sku,
                             location="L1", delta=1, reason="received")) for i in range(100001)]
    r = c.post("/v1/batch", raw=("\n".join(lines)).encode(), content_type="application/x-ndjson")
    e = expect_error(r, 400, "bad_request", field="ops")
    assert "100000" in e["message"], e
    assert c.position(sku, "L1").status == 404, "nothing may be applied"
    r = c.post("/v1/batch", raw=msgpack.packb([0] * 100001), content_type="application/msgpack")
    expect_error(r, 400, "bad_request", field="ops")
    t = time.time()
    r = c.post("/v1/batch", raw=("\n".join(lines[:100000])).encode(),
               content_type="application/x-ndjson")
    elapsed = time.time() - t
    assert r.status == 200 and r.data["applied"] == 100000 and r.data["results"] == [], r
    assert on_hand(c, sku) == 100000
    print("100000 adjustments in one NDJSON batch: %.3f s" % elapsed)


# --- ownership ---------------------------------------------------------------------------

@encodings
def test_ownership_by_flow(srv, enc):
    c = srv.client("json")
    sku = uid("sku")
    rid = uid("res")
    ops = [
        adj(sku, delta=10, flow="erp"),
        adj(sku, delta=10, flow="ops"),  # 1: ops may not adjust
        dict(op="count", flow="pos", id=uid("c"), sku=sku, location="L1", on_hand=1,
             counted_at=now_ms()),  # 2
        dict(op="safety_stock", flow="erp", sku=sku, location="L1", safety_stock=1),  # 3
        dict(op="safety_stock", flow="ops", sku=sku, location="L1", safety_stock=1),
        dict(op="group", flow="erp", name=uid("g"), locations=["L1"]),  # 5
        dict(op="reserve", flow="erp", id=uid("r"), lines=[dict(sku=sku, location="L1", qty=1)]),  # 6
        dict(op="reserve", flow="oms", id=rid, lines=[dict(sku=sku, location="L1", qty=1)]),
        dict(op="commit", flow="erp", id=rid),  # 8: follow-ups need a reservations writer
        dict(op="commit", flow="pos", id=rid),
        adj(sku, delta=1, flow="erp", source="pos"),  # 10: source must be the flow
        dict(op="reserve", flow="oms", id=uid("r"), channel="checkout",
             lines=[dict(sku=sku, location="L1", qty=1)]),  # 11
    ]
    d = ok_batch(c, ops, enc)
    got = {x["index"]: (x["status"], x["error"]["code"], x["error"].get("field")) for x in d["results"]}
    nfo = (403, "not_owner", "flow")
    assert got == {1: nfo, 2: nfo, 3: nfo, 5: nfo, 6: nfo, 8: nfo,
                   10: (400, "bad_request", "source"), 11: (400, "bad_request", "channel")}, got
    p = c.pos(sku, "L1")
    assert (p["on_hand"], p["safety_stock"], p["committed"]) == (10, 1, 1), p


def test_without_ownership_file_every_flow_writes(srv):
    free = Server()  # starts itself
    try:
        c = free.client("json")
        sku = uid("sku")
        ops = [adj(sku, delta=3, flow="anyone"),
               dict(op="safety_stock", flow="crm", sku=sku, location="L1", safety_stock=1),
               dict(op="reserve", flow="wms", id=uid("r"), lines=[dict(sku=sku, location="L1", qty=1)])]
        d = ok_batch(c, ops, "json")
        assert (d["applied"], d["rejected"]) == (3, 0), d
    finally:
        free.stop()


# --- a 64 MiB body ---------------------------------------------------------------------

def rss_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(key)


def test_64_mib_body_streams(srv):
    c = srv.client("json")
    c.timeout = 120
    sku = uid("sku")
    def line(i, pad):  # note is an unknown field: ignored, but parsed with each op
        return json.dumps(dict(op="adjust", flow="erp", id="%s-%06d" % (sku, i), sku=sku,
                               location="L1", delta=1, reason="received", note="x" * pad))
    pad = (63 << 20) // 100000 - len(line(0, 0)) - 1
    lines = [line(i, pad) for i in range(100000)]
    body = ("\n".join(lines)).encode()
    assert 60 << 20 < len(body) < 64 << 20, len(body)
    # The first time, the engine grows by 100,000 remembered ids and a position's
    # history; the second time every op is a replay (parsed and looked up, nothing
    # kept), so what the server's memory grows by is the body and its parsing.
    r = c.post("/v1/batch", raw=body, content_type="application/x-ndjson")
    assert r.status == 200 and r.data["applied"] == 100000, r
    pid = srv.proc.pid
    before = rss_kib(pid, "VmRSS")
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    r = c.post("/v1/batch", raw=body, content_type="application/x-ndjson")
    assert r.status == 200 and r.data["replayed"] == 100000, r
    peak = rss_kib(pid, "VmHWM")
    grew = (peak - before) * 1024
    print("64 MiB batch: VmRSS before %d KiB, peak %d KiB, growth %.1f MiB for a %.1f MiB body"
          % (before, peak, grew / 2**20, len(body) / 2**20))
    # The body itself is held once; a tree of it (or a second copy) would double it.
    assert grew < 1.5 * len(body), (grew, len(body))
    assert on_hand(c, sku) == 100000
