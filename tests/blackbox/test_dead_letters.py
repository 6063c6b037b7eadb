"""Section 6.3 on the single routes: rejected flow writes become dead letters with owners."""
import json
import os
import tempfile

from harness import Server, expect_error, formats, now_ms, uid

_dir = tempfile.mkdtemp(prefix="atpd-bb-dl-")
OWNERSHIP = os.path.join(_dir, "ownership.json")
with open(OWNERSHIP, "w") as f:
    # adjustments have no entry: every flow writes them and owns its own rejections.
    json.dump({"fields": {
        "counts": {"writers": ["erp", "wms"], "owner": "inventory-control"},
        "safety_stock": {"writers": ["ops"], "owner": "merchandising"},
        "groups": {"writers": ["ops"], "owner": "ecommerce"},
        "reservations": {"writers": ["checkout", "pos"], "owner": "ecommerce"},
    }}, f)
SERVER_ARGS = ["--ownership", OWNERSHIP]


def dead_letters(c, **params):
    r = c.get("/v1/dead-letters", params=params)
    assert r.status == 200, r
    return r.data


def find(c, sku, **params):
    return [d for d in dead_letters(c, limit=1000, **params)["dead_letters"]
            if isinstance(d["payload"], dict) and d["payload"].get("sku") == sku]


@formats()
def test_every_rejection_kind_is_kept_with_its_owner(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    flow = uid("feed")
    c.adjust(sku, "L1", 5, source=flow)
    # bad_request: owner is the flow itself (adjustments have no entry)
    expect_error(c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=0,
                                                reason="received", source=flow)), 400, "bad_request")
    # not_owner: counts belong to inventory-control
    expect_error(c.post("/v1/counts", dict(id=uid("c"), sku=sku, location="L1", on_hand=1,
                                           counted_at=now_ms(), source="pos")), 403, "not_owner")
    # idempotency_mismatch
    aid = uid("a")
    assert c.post("/v1/adjustments", dict(id=aid, sku=sku, location="L1", delta=1,
                                          reason="received", source=flow)).status == 200
    expect_error(c.post("/v1/adjustments", dict(id=aid, sku=sku, location="L1", delta=2,
                                                reason="received", source=flow)), 422,
                 "idempotency_mismatch")
    # conflict: change_from differs
    expect_error(c.post("/v1/adjustments", dict(id=uid("a"), sku=sku, location="L1", delta=1,
                                                reason="received", source=flow, change_from=99)),
                 409, "conflict")
    # not_found: unknown group
    expect_error(c.post("/v1/reservations", dict(id=uid("r"), channel="checkout",
                                                 lines=[dict(sku=sku, group=uid("nogroup"), qty=1)])),
                 404, "not_found")
    # insufficient_stock is a business outcome: no dead letter
    expect_error(c.post("/v1/reservations", dict(id=uid("r"), channel="checkout",
                                                 lines=[dict(sku=sku, location="L1", qty=1000)])),
                 409, "insufficient_stock")
    # reservation lines carry the sku in lines[], not at the top: look them up by flow
    mine = find(c, sku)
    got = sorted((d["error"]["code"], d["owner"], d["flow"]) for d in mine)
    assert got == sorted([("bad_request", flow, flow), ("not_owner", "inventory-control", "pos"),
                          ("idempotency_mismatch", flow, flow), ("conflict", flow, flow)]), got
    res = [d for d in dead_letters(c, limit=1000, flow="checkout")["dead_letters"]
           if d["payload"]["lines"][0]["sku"] == sku]
    assert [(d["error"]["code"], d["owner"]) for d in res] == [("not_found", "ecommerce")], res
    for d in mine + res:
        assert d["status"] == "open" and d["attempts"] == 1 and d["index"] == 0, d
        assert d["dl_id"].startswith("dl-") and d["received_at"] > 0, d
        assert d["origin"]["method"] == "POST", d
    # filters
    assert {d["dl_id"] for d in find(c, sku, owner="inventory-control")} == \
        {d["dl_id"] for d in mine if d["owner"] == "inventory-control"}
    assert find(c, sku, status="resolved") == []
    expect_error(c.get("/v1/dead-letters", params=dict(status="lost")), 400, "bad_request", "status")


@formats()
def test_paging_by_cursor(srv, fmt):
    c = srv.client(fmt)
    flow = uid("pager")
    for i in range(5):
        expect_error(c.post("/v1/adjustments", dict(id=uid("a"), sku=uid("s"), location="L1",
                                                    delta=0, reason="received", source=flow)),
                     400, "bad_request")
    seen, cursor = [], None
    while True:
        params = dict(flow=flow, limit=2)
        if cursor:
            params["cursor"] = cursor
        page = dead_letters(c, **params)
        assert len(page["dead_letters"]) <= 2
        seen += [d["dl_id"] for d in page["dead_letters"]]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and len(set(seen)) == 5
    assert seen == sorted(seen, key=lambda s: int(s[3:])), seen
    expect_error(c.get("/v1/dead-letters", params=dict(cursor="nope")), 400, "bad_request", "cursor")
    expect_error(c.get("/v1/dead-letters", params=dict(limit="0")), 400, "bad_request", "limit")


@formats()
def test_replay_with_a_corrected_payload_then_resolve(srv, fmt):
    c = srv.client(fmt)
    sku = uid("sku")
    flow = uid("feed")
    bad = dict(id=uid("a"), sku=sku, location="L1", delta=0, reason="received", source=flow)
    expect_error(c.post("/v1/adjustments", bad), 400, "bad_request")
    [d] = find(c, sku)
    dl = d["dl_id"]
    # replayed as it is: rejected again, stays open, attempts counted
    r = c.post("/v1/dead-letters/%s/replay" % dl, dict(by="ops-team"))
    expect_error(r, 400, "bad_request", "delta")
    [d] = find(c, sku)
    assert d["status"] == "open" and d["attempts"] == 2, d
    # corrected: the op's own answer
    good = dict(bad, delta=4)
    r = c.post("/v1/dead-letters/%s/replay" % dl, dict(payload=good, by="ops-team"))
    assert r.status == 200 and r.data["position"]["on_hand"] == 4, r
    [d] = find(c, sku)
    assert d["status"] == "replayed" and d["attempts"] == 3 and d["payload"]["delta"] == 4, d
    # idempotent: a second replay is the op's replay and changes nothing
    r = c.post("/v1/dead-letters/%s/replay" % dl, dict(by="ops-team"))
    assert r.status == 200 and r.data.get("replayed") is True, r
    assert c.pos(sku, "L1")["on_hand"] == 4
    [d] = find(c, sku)
    assert d["attempts"] == 4 and d["status"] == "replayed", d
    # resolve, then neither resolve nor replay again
    r = c.post("/v1/dead-letters/%s/resolve" % dl, dict(note="fixed upstream", by="ops-team"))
    assert r.status == 200 and r.data["status"] == "resolved" and r.data["note"] == "fixed upstream", r
    expect_error(c.post("/v1/dead-letters/%s/resolve" % dl, dict(note="again", by="x")), 409, "conflict")
    expect_error(c.post("/v1/dead-letters/%s/replay" % dl, dict(by="x")), 409, "conflict")
    assert [x["dl_id"] for x in find(c, sku, status="resolved")] == [dl]
    expect_error(c.post("/v1/dead-letters/dl-999999999/resolve", dict(note="n", by="x")), 404, "not_found")
    expect_error(c.post("/v1/dead-letters/bogus/replay", dict(by="x")), 404, "not_found")
    # without a token holder, by is required
    expect_error(c.post("/v1/dead-letters/%s/resolve" % dl, dict(note="n")), 400, "bad_request", "by")


def metric(c, name):
    for line in c.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_bound_drops_closed_first_then_open_and_says_so(binary):
    srv = Server(binary=binary, args=["--dead-letters-max", "3", "--durability", "none"])
    try:
        c = srv.client()
        flow = uid("bound")

        def reject():
            expect_error(c.post("/v1/adjustments", dict(id=uid("a"), sku=uid("s"), location="L1",
                                                        delta=0, reason="received", source=flow)),
                         400, "bad_request")
        for _ in range(3):
            reject()
        ids = [d["dl_id"] for d in dead_letters(c, flow=flow)["dead_letters"]]
        assert len(ids) == 3
        # the middle one resolved: it goes first, though the first is older
        assert c.post("/v1/dead-letters/%s/resolve" % ids[1], dict(note="n", by="x")).status == 200
        reject()
        now = [d["dl_id"] for d in dead_letters(c, flow=flow)["dead_letters"]]
        assert now[:2] == [ids[0], ids[2]] and len(now) == 3, now
        assert metric(c, 'atpd_dead_letters_dropped_total{status="closed"}') == 1
        assert metric(c, 'atpd_dead_letters_dropped_total{status="open"}') == 0
        # only open ones left: the oldest open goes, counted and logged
        reject()
        after = [d["dl_id"] for d in dead_letters(c, flow=flow)["dead_letters"]]
        assert ids[0] not in after and len(after) == 3, after
        assert metric(c, 'atpd_dead_letters_dropped_total{status="open"}') == 1
        assert metric(c, 'atpd_dead_letters_open{owner="%s"}' % flow) == 3
        assert "dropped the oldest open one" in srv.stderr_text()
    finally:
        problem = srv.stop()
        assert problem is None, problem


@formats()
def test_batch_rejections_are_dead_letters_and_replay(srv, fmt):
    c = srv.client(fmt)
    flow, sku = uid("feed"), uid("sku")
    ops = [dict(op="adjust", flow=flow, id=uid("a"), sku=sku, location="L1", delta=2,
                reason="received"),
           dict(op="adjust", flow=flow, id=uid("a"), sku=sku, location="L1", delta=0,
                reason="received"),
           dict(op="count", flow="pos", id=uid("c"), sku=sku, location="L1", on_hand=1,
                counted_at=now_ms())]
    r = c.post("/v1/batch", ops)
    assert r.status == 200 and r.data["rejected"] == 2, r
    mine = find(c, sku)
    got = sorted((d["index"], d["error"]["code"], d["owner"], d["origin"].get("batch")) for d in mine)
    assert got == [(1, "bad_request", flow, True), (2, "not_owner", "inventory-control", True)], got
    dl = [d for d in mine if d["index"] == 1][0]["dl_id"]
    fixed = dict(ops[1], delta=3)
    r = c.post("/v1/dead-letters/%s/replay" % dl, dict(payload=fixed, by="x"))
    assert r.status == 200 and r.data["status"] == 200, r
    assert c.pos(sku, "L1")["on_hand"] == 5
    [d] = [d for d in find(c, sku) if d["dl_id"] == dl]
    assert d["status"] == "replayed" and d["attempts"] == 2, d
