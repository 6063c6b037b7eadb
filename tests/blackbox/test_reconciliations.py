"""Section 6.5: reconciliation reports in JSON, msgpack and CSV; apply, close, listing,
bounds and bad input (own server with --ownership and --tokens)."""
import json
import os
import tempfile

from harness import Server, expect_error, formats, now_ms, rfc3339, uid

_dir = tempfile.mkdtemp(prefix="atpd-bb-recon-")
with open(os.path.join(_dir, "ownership.json"), "w") as f:
    json.dump({"fields": {"counts": {"writers": ["erp", "wms"], "owner": "inventory-control"}}}, f)
TOKEN = "recon-integration-token-0001"
ANON = "recon-integration-token-0002"
with open(os.path.join(_dir, "tokens"), "w") as f:
    f.write("%s integration ann.lee\n%s integration\n" % (TOKEN, ANON))
ASAN = True
SERVER_ARGS = ["--ownership", os.path.join(_dir, "ownership.json"),
               "--tokens", os.path.join(_dir, "tokens")]


def client(srv, fmt="json"):
    return srv.client(fmt, token=TOKEN)


def adjust(c, sku, loc, delta, occurred_at=None, source="erp"):
    b = dict(id=uid("adj"), sku=sku, location=loc, delta=delta,
             reason="received" if delta > 0 else "sale", source=source)
    if occurred_at is not None:
        b["occurred_at"] = occurred_at
    r = c.post("/v1/adjustments", b)
    assert r.status == 200, r
    return r.data["position"]


def on_hand(c, sku, loc):
    r = c.get("/v1/availability", params=dict(sku=sku, location=loc))
    assert r.status == 200, r
    return r.data["on_hand"]


def post_json(c, rid, as_of, positions, source="wms"):
    return c.post("/v1/reconciliations", dict(id=rid, source=source, as_of=as_of,
                                              positions=positions))


def post_csv(c, rid, as_of, lines, source="wms", header="sku,location,on_hand"):
    body = (header + "\n" + "".join(l + "\n" for l in lines)).encode()
    return c.request("POST", "/v1/reconciliations", raw=body, content_type="text/csv",
                     params=dict(id=rid, source=source, as_of=as_of))


def post(c, fmt, rid, as_of, positions, source="wms"):
    """JSON or msgpack as the client's format; 'csv' sends the same positions as text/csv."""
    if fmt == "csv":
        return post_csv(c, rid, as_of, ["%s,%s,%d" % (p["sku"], p["location"], p["on_hand"])
                                        for p in positions], source=source)
    return post_json(c, rid, as_of, positions, source=source)


def items_by_key(report):
    return {(i["sku"], i["location"]): i for i in report["items"]}


def figures(report):
    return tuple(report[k] for k in ("compared", "matched", "mismatched", "missing_here",
                                     "missing_there"))


# --- comparisons ------------------------------------------------------------------

@formats("json", "msgpack", "csv")
def test_matched_mismatched_missing(srv, fmt):
    c = client(srv, "json" if fmt == "csv" else fmt)
    loc, other = uid("L"), uid("L")
    a, b, gone, extra, zero, far = (uid("sku") for _ in range(6))
    as_of = now_ms() - 60000
    adjust(c, a, loc, 10, occurred_at=as_of - 5000)
    adjust(c, b, loc, 7, occurred_at=as_of - 5000)
    adjust(c, extra, loc, 4, occurred_at=as_of - 5000)       # here, not in the export
    adjust(c, zero, loc, 3, occurred_at=as_of - 5000)
    adjust(c, zero, loc, -3, occurred_at=as_of - 4000)       # here at 0: agrees with absence
    adjust(c, far, other, 9, occurred_at=as_of - 5000)       # a location the export lacks
    rid = uid("rec")
    r = post(c, fmt, rid, as_of, [
        dict(sku=a, location=loc, on_hand=10),                 # matched
        dict(sku=b, location=loc, on_hand=5),                  # mismatched by 2
        dict(sku=gone, location=loc, on_hand=6),               # missing_here
        dict(sku=uid("sku"), location=loc, on_hand=0),         # unseen and 0: matched
    ])
    assert r.status == 201, r
    rep = r.data
    assert rep["id"] == rid and rep["source"] == "wms" and rep["as_of"] == as_of, rep
    assert rep["status"] == "open", rep
    assert figures(rep) == (6, 3, 1, 1, 1), rep
    items = items_by_key(rep)
    assert set(items) == {(b, loc), (gone, loc), (extra, loc)}, items
    assert items[(b, loc)] == dict(sku=b, location=loc, ours=7, theirs=5, diff=2,
                                   changes_after_as_of=0, reason="unexplained",
                                   approximate=False), items[(b, loc)]
    assert items[(gone, loc)]["reason"] == "missing_here", items
    assert (items[(gone, loc)]["ours"], items[(gone, loc)]["theirs"],
            items[(gone, loc)]["diff"]) == (0, 6, -6), items
    assert items[(extra, loc)]["reason"] == "missing_there", items
    assert (items[(extra, loc)]["ours"], items[(extra, loc)]["theirs"],
            items[(extra, loc)]["diff"]) == (4, 0, 4), items
    assert rep["items_total"] == 3 and "items_next" not in rep, rep
    # A comparison changes no stock.
    assert (on_hand(c, a, loc), on_hand(c, b, loc), on_hand(c, far, other)) == (10, 7, 9)
    # GET answers the same report.
    g = client(srv, "json" if fmt == "csv" else fmt).get("/v1/reconciliations/" + rid)
    assert g.status == 200 and figures(g.data) == figures(rep), g
    assert items_by_key(g.data) == items


@formats("json", "msgpack", "csv")
def test_explained_by_changes_after_as_of(srv, fmt):
    """Adjust after as_of and export the pre-change figure: matched."""
    c = client(srv, "json" if fmt == "csv" else fmt)
    loc, sku = uid("L"), uid("sku")
    as_of = now_ms() - 30000
    adjust(c, sku, loc, 20, occurred_at=as_of - 10000)
    adjust(c, sku, loc, -3, occurred_at=as_of + 5000)
    adjust(c, sku, loc, 4, occurred_at=as_of + 6000)
    assert on_hand(c, sku, loc) == 21
    r = post(c, fmt, uid("rec"), as_of, [dict(sku=sku, location=loc, on_hand=20)])
    assert r.status == 201, r
    assert figures(r.data) == (1, 1, 0, 0, 0) and r.data["items"] == [], r.data
    # One unit short at as_of: a mismatch that lists the explained part.
    r = post(c, fmt, uid("rec"), as_of, [dict(sku=sku, location=loc, on_hand=19)])
    assert figures(r.data) == (1, 0, 1, 0, 0), r.data
    it = r.data["items"][0]
    assert (it["ours"], it["theirs"], it["changes_after_as_of"], it["diff"]) == (21, 19, 1, 1), it


def test_as_of_rfc3339_and_history_window(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    adjust(c, sku, loc, 5)
    old = now_ms() - 80 * 3600 * 1000     # older than the 72 h history window
    r = post_json(c, uid("rec"), rfc3339(old), [dict(sku=sku, location=loc, on_hand=2)])
    assert r.status == 201, r
    assert r.data["as_of"] == old and r.data["approximate"] == 1, r.data
    it = r.data["items"][0]
    assert it["reason"] == "history_window" and it["approximate"] is True, it


def test_future_as_of_refused(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    r = post_json(c, uid("rec"), now_ms() + 3600 * 1000, [dict(sku=sku, location=loc, on_hand=1)])
    expect_error(r, 400, "bad_request", "as_of")
    r = post_csv(c, uid("rec"), str(now_ms() + 3600 * 1000), ["%s,%s,1" % (sku, loc)])
    expect_error(r, 400, "bad_request", "as_of")


# --- the journey: an export taken while changes were in flight --------------------

def test_journey_wms_export_with_changes_in_flight(srv):
    """A WMS exports its stock at as_of while POS sales keep arriving: some sales with
    occurred_at after as_of reach us before the export is posted, some after; an offline sale
    from before as_of (which the WMS already counted) arrives late. The report explains what
    the in-flight sales explain, and the apply leaves every position right."""
    c = client(srv)
    loc = uid("STORE")
    shelf, busy, late, wrong = (uid("sku") for _ in range(4))
    t0 = now_ms() - 120000
    for sku in (shelf, busy, late, wrong):
        adjust(c, sku, loc, 10, occurred_at=t0)
    as_of = t0 + 60000
    # Sales after as_of that arrive before the export is posted.
    adjust(c, busy, loc, -2, occurred_at=as_of + 1000, source="pos")
    adjust(c, wrong, loc, -1, occurred_at=as_of + 2000, source="pos")
    # The WMS export at as_of: shelf 10, busy 10, late 9 (it counted the offline sale we do
    # not have yet), wrong 7 (three units lost that no one recorded).
    export = ["%s,%s,10" % (shelf, loc), "%s,%s,10" % (busy, loc),
              "%s,%s,9" % (late, loc), "%s,%s,7" % (wrong, loc)]
    rid = uid("wms")
    r = post_csv(c, rid, as_of, export)
    assert r.status == 201, r
    assert figures(r.data) == (4, 2, 2, 0, 0), r.data
    items = items_by_key(r.data)
    assert set(items) == {(late, loc), (wrong, loc)}, items
    assert items[(wrong, loc)]["changes_after_as_of"] == -1 and items[(wrong, loc)]["diff"] == 3
    assert items[(late, loc)]["diff"] == 1, items
    # More in flight after the post: a sale after as_of, and the late offline sale from
    # before as_of.
    adjust(c, shelf, loc, -1, occurred_at=as_of + 3000, source="pos")
    adjust(c, wrong, loc, -1, occurred_at=as_of + 4000, source="pos")
    adjust(c, late, loc, -1, occurred_at=as_of - 1000, source="pos")
    assert [on_hand(c, s, loc) for s in (shelf, busy, late, wrong)] == [9, 8, 9, 8]
    # The WMS owns counts: apply counts the two items at as_of.
    r = c.post("/v1/reconciliations/%s/apply" % rid, {})
    assert r.status == 200, r
    assert r.data["status"] == "applied" and r.data["apply"]["applied"] == 2, r.data
    items = items_by_key(r.data)
    # wrong: 7 at as_of plus the two sales after as_of.
    assert items[(wrong, loc)]["apply"]["outcome"] == "applied", items
    assert items[(wrong, loc)]["apply"]["on_hand"] == 5, items
    # late: the WMS figure already included the sale that arrived late.
    assert items[(late, loc)]["apply"]["on_hand"] == 9, items
    assert [on_hand(c, s, loc) for s in (shelf, busy, late, wrong)] == [9, 8, 9, 5]
    # A sale from before as_of that arrives after the apply is absorbed by the count.
    r = c.post("/v1/adjustments", dict(id=uid("adj"), sku=wrong, location=loc, delta=-1,
                                       reason="sale", source="pos", occurred_at=as_of - 500))
    assert r.status == 200 and r.data["adjustment"]["absorbed"] is True, r
    # And one after as_of still moves the figure.
    adjust(c, wrong, loc, -1, occurred_at=as_of + 9000, source="pos")
    assert [on_hand(c, s, loc) for s in (shelf, busy, late, wrong)] == [9, 8, 9, 4]
    # A fresh reconciliation against the same export now matches everything it can explain.
    r = post_csv(c, uid("wms"), as_of, export)
    assert r.status == 201 and figures(r.data) == (4, 4, 0, 0, 0), r.data


# --- apply ------------------------------------------------------------------------

@formats()
def test_apply_by_owner_and_retry(srv, fmt):
    c = client(srv, fmt)
    loc = uid("L")
    a, gone, extra = uid("sku"), uid("sku"), uid("sku")
    as_of = now_ms() - 20000
    adjust(c, a, loc, 8, occurred_at=as_of - 1000)
    adjust(c, a, loc, -1, occurred_at=as_of + 1000)
    adjust(c, extra, loc, 3, occurred_at=as_of - 1000)
    rid = uid("rec")
    r = post_json(c, rid, as_of, [dict(sku=a, location=loc, on_hand=5),
                                  dict(sku=gone, location=loc, on_hand=2)])
    assert figures(r.data) == (3, 0, 1, 1, 1), r.data
    r = c.post("/v1/reconciliations/%s/apply" % rid, {})
    assert r.status == 200, r
    assert r.data["apply"] == dict(applied=2, stale=0, replayed=0, skipped=1, failed=0), r.data
    assert "replayed" not in r.data, r.data
    applied_at = r.data["applied_at"]
    items = items_by_key(r.data)
    assert items[(a, loc)]["apply"]["on_hand"] == 4, items    # 5 at as_of, -1 after
    assert items[(gone, loc)]["apply"]["on_hand"] == 2, items
    assert items[(extra, loc)]["apply"]["outcome"] == "skipped", items
    assert (on_hand(c, a, loc), on_hand(c, gone, loc), on_hand(c, extra, loc)) == (4, 2, 3)
    pos = c.get("/v1/availability", params=dict(sku=a, location=loc)).data
    assert pos["counted_at"] == as_of, pos
    # The retry changes nothing: not stock, not the report.
    r2 = c.post("/v1/reconciliations/%s/apply" % rid, {})
    assert r2.status == 200 and r2.data.get("replayed") is True, r2
    assert r2.data["applied_at"] == applied_at and r2.data["apply"] == r.data["apply"], r2.data
    assert c.get("/v1/availability", params=dict(sku=a, location=loc)).data["version"] == \
        pos["version"]
    # Zeroing what the export lacks is a choice the caller makes.
    r3 = c.post("/v1/reconciliations/%s/apply" % rid, dict(zero_missing_there=True))
    assert r3.status == 200 and "replayed" not in r3.data, r3
    assert r3.data["apply"] == dict(applied=1, stale=0, replayed=2, skipped=0, failed=0), r3.data
    assert on_hand(c, extra, loc) == 0


def test_apply_stale_when_counted_after_as_of(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    as_of = now_ms() - 20000
    adjust(c, sku, loc, 5, occurred_at=as_of - 1000)
    rid = uid("rec")
    assert post_json(c, rid, as_of, [dict(sku=sku, location=loc, on_hand=3)]).status == 201
    r = c.post("/v1/counts", dict(id=uid("cnt"), sku=sku, location=loc, on_hand=6,
                                  counted_at=as_of + 5000, source="erp"))
    assert r.status == 200, r
    r = c.post("/v1/reconciliations/%s/apply" % rid)
    assert r.status == 200, r
    it = r.data["items"][0]["apply"]
    assert it["outcome"] == "stale" and it["on_hand"] == 6, it
    assert "counted after as_of" in it["message"], it
    assert on_hand(c, sku, loc) == 6


def test_apply_by_non_owner(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    adjust(c, sku, loc, 5)
    rid = uid("rec")
    as_of = now_ms() - 1000
    assert post_json(c, rid, as_of, [dict(sku=sku, location=loc, on_hand=1)],
                     source="shopify").status == 201
    r = c.post("/v1/reconciliations/%s/apply" % rid, {})
    expect_error(r, 403, "not_owner", "source")
    assert on_hand(c, sku, loc) == 5
    g = c.get("/v1/reconciliations/" + rid).data
    assert g["status"] == "open" and "apply" not in g["items"][0], g
    expect_error(c.post("/v1/reconciliations/%s/apply" % uid("none"), {}), 404, "not_found")


# --- close, listing ---------------------------------------------------------------

@formats()
def test_close(srv, fmt):
    c = client(srv, fmt)
    loc, sku = uid("L"), uid("sku")
    adjust(c, sku, loc, 5)
    rid = uid("rec")
    assert post_json(c, rid, now_ms() - 1000, [dict(sku=sku, location=loc, on_hand=4)]).status == 201
    expect_error(c.post("/v1/reconciliations/%s/close" % rid, dict(by="x")), 400, "bad_request",
                 "note")
    r = c.post("/v1/reconciliations/%s/close" % rid, dict(note="shrink written off"))
    assert r.status == 200, r
    assert r.data["status"] == "closed" and r.data["note"] == "shrink written off", r.data
    assert r.data["by"] == "ann.lee" and isinstance(r.data["closed_at"], int), r.data
    r2 = c.post("/v1/reconciliations/%s/close" % rid, dict(note="again", by="bob"))
    assert r2.status == 200 and r2.data.get("replayed") is True and r2.data["by"] == "ann.lee", r2
    r = c.post("/v1/reconciliations/%s/apply" % rid, {})
    expect_error(r, 409, "conflict")
    assert on_hand(c, sku, loc) == 5
    # A token without a holder must name who closes.
    rid2 = uid("rec")
    assert post_json(c, rid2, now_ms() - 1000, [dict(sku=sku, location=loc, on_hand=4)]).status == 201
    anon = srv.client(fmt, token=ANON)
    expect_error(anon.post("/v1/reconciliations/%s/close" % rid2, dict(note="n")), 400,
                 "bad_request", "by")
    r = anon.post("/v1/reconciliations/%s/close" % rid2, dict(note="n", by="carol"))
    assert r.status == 200 and r.data["by"] == "carol", r
    expect_error(c.post("/v1/reconciliations/%s/close" % uid("none"), dict(note="n")), 404,
                 "not_found")


@formats()
def test_listing_with_cursor(srv, fmt):
    c = client(srv, fmt)
    loc, sku = uid("L"), uid("sku")
    ids = []
    for _ in range(5):
        rid = uid("lst")
        ids.append(rid)
        assert post_json(c, rid, now_ms() - 1000, [dict(sku=sku, location=loc, on_hand=1)]).status == 201
    seen, cursor = [], None
    while True:
        params = dict(limit=2)
        if cursor:
            params["cursor"] = cursor
        r = c.get("/v1/reconciliations", params=params)
        assert r.status == 200, r
        assert len(r.data["reconciliations"]) <= 2
        for rep in r.data["reconciliations"]:
            assert "items" not in rep, rep
            seen.append(rep["id"])
        cursor = r.data.get("cursor")
        if not cursor:
            break
    assert [i for i in seen if i in ids] == ids, seen
    assert len(seen) == len(set(seen)), seen
    c.post("/v1/reconciliations/%s/close" % ids[0], dict(note="done"))
    closed = c.get("/v1/reconciliations", params=dict(status="closed", limit=1000)).data
    assert ids[0] in [x["id"] for x in closed["reconciliations"]], closed
    assert all(x["status"] == "closed" for x in closed["reconciliations"]), closed
    expect_error(c.get("/v1/reconciliations", params=dict(status="done")), 400, "bad_request",
                 "status")
    expect_error(c.get("/v1/reconciliations", params=dict(limit=0)), 400, "bad_request", "limit")


# --- idempotency, bounds, bad input -------------------------------------------------

def test_replay_and_mismatch(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    adjust(c, sku, loc, 5)
    rid, as_of = uid("rec"), now_ms() - 1000
    body = [dict(sku=sku, location=loc, on_hand=4)]
    assert post_json(c, rid, as_of, body).status == 201
    r = post_json(c, rid, as_of, body)
    assert r.status == 200 and r.data.get("replayed") is True, r
    expect_error(post_json(c, rid, as_of, [dict(sku=sku, location=loc, on_hand=3)]), 422,
                 "idempotency_mismatch", "id")


def test_items_are_paged(srv):
    c = client(srv)
    loc = uid("L")
    lines = ["%s-%04d,%s,%d" % ("pg", i, loc, 1 + i % 3) for i in range(1500)]
    r = post_csv(c, uid("rec"), now_ms() - 1000, lines)
    assert r.status == 201, r
    rep = r.data
    assert rep["missing_here"] == 1500 and rep["items_total"] == 1500, figures(rep)
    assert len(rep["items"]) == 1000 and rep["items_next"] == 1000, len(rep["items"])
    r = c.get("/v1/reconciliations/" + rep["id"], params=dict(items_from=1000, items_limit=400))
    assert len(r.data["items"]) == 400 and r.data["items_next"] == 1400, r.data.get("items_next")
    assert r.data["items"][0]["sku"] == "pg-1000", r.data["items"][0]
    r = c.get("/v1/reconciliations/" + rep["id"], params=dict(items_from=1400))
    assert len(r.data["items"]) == 100 and "items_next" not in r.data, r.data.get("items_next")
    expect_error(c.get("/v1/reconciliations/" + rep["id"], params=dict(items_limit=10001)), 400,
                 "bad_request", "items_limit")


def test_reports_bounded():
    """1000 reports at most; a full store drops its oldest closed report, and with none
    closed refuses with 429 saying what to do."""
    s = Server(args=["--durability", "none"])
    try:
        c = s.client()
        as_of = now_ms() - 1000
        first = None
        for i in range(1000):
            rid = "b-%04d" % i
            first = first or rid
            r = post_json(c, rid, as_of, [dict(sku="S", location="L", on_hand=1)])
            assert r.status == 201, (i, r)
        r = post_json(c, "b-over", as_of, [dict(sku="S", location="L", on_hand=1)])
        expect_error(r, 429, "too_many_requests")
        assert "close" in r.error["message"], r.error
        assert c.get("/v1/reconciliations/b-over").status == 404
        assert c.post("/v1/reconciliations/b-0500/close", dict(note="n", by="ops")).status == 200
        r = post_json(c, "b-over", as_of, [dict(sku="S", location="L", on_hand=1)])
        assert r.status == 201, r
        assert c.get("/v1/reconciliations/b-0500").status == 404
        assert c.get("/v1/reconciliations/" + first).status == 200
        m = c.get("/metrics").body.decode()
        assert 'atpd_reconciliations{status="open"} 1000' in m, m[-2000:]
        assert "atpd_reconciliations_evicted_total 1" in m
        assert "atpd_reconciliation_positions_compared_total 1001" in m
    finally:
        s.stop()


@formats()
def test_bad_input_changes_nothing(srv, fmt):
    c = client(srv, fmt)
    loc, sku = uid("L"), uid("sku")
    adjust(c, sku, loc, 5)
    as_of = now_ms() - 1000
    good = dict(sku=sku, location=loc, on_hand=1)
    cases = [
        (dict(source="wms", as_of=as_of, positions=[good]), "id"),
        (dict(id=uid("r"), as_of=as_of, positions=[good]), "source"),
        (dict(id=uid("r"), source="wms", positions=[good]), "as_of"),
        (dict(id=uid("r"), source="wms", as_of="yesterday", positions=[good]), "as_of"),
        (dict(id=uid("r"), source="wms", as_of=as_of), "positions"),
        (dict(id=uid("r"), source="wms", as_of=as_of, positions=[]), "positions"),
        (dict(id=uid("r"), source="wms", as_of=as_of,
              positions=[good, good, good, dict(sku=sku, location=loc, on_hand=-1)]),
         "positions[3].on_hand"),
        (dict(id=uid("r"), source="wms", as_of=as_of,
              positions=[good, dict(sku=sku, location=loc, on_hand="7")]),
         "positions[1].on_hand"),
        (dict(id=uid("r"), source="wms", as_of=as_of, positions=[dict(location=loc, on_hand=1)]),
         "positions[0].sku"),
        (dict(id=uid("r"), source="wms", as_of=as_of, positions=[good, 5]), "positions[1]"),
        (dict(id=uid("r"), source="wms", as_of=as_of,
              positions=[good, dict(sku=uid("s"), location=loc, on_hand=1), dict(good)]),
         "positions[2]"),
    ]
    before = c.get("/v1/reconciliations", params=dict(limit=1000)).data["reconciliations"]
    for body, field in cases:
        r = c.post("/v1/reconciliations", body)
        expect_error(r, 400, "bad_request", field)
    r = c.post("/v1/reconciliations", dict(id=uid("r"), source="wms", as_of=as_of,
                                           positions=[good, good]))
    assert "positions[0]" in r.error["message"], r.error
    after = c.get("/v1/reconciliations", params=dict(limit=1000)).data["reconciliations"]
    assert len(after) == len(before), (len(before), len(after))
    assert on_hand(c, sku, loc) == 5


def test_bad_csv_names_the_line(srv):
    c = client(srv)
    loc, sku = uid("L"), uid("sku")
    as_of = now_ms() - 1000
    before = len(c.get("/v1/reconciliations", params=dict(limit=1000)).data["reconciliations"])
    ok = "%s,%s,1" % (sku, loc)
    cases = [
        (["%s,%s,1" % (uid("s"), loc), ok, "%s,%s,x" % (uid("s"), loc)], None, "line 4.on_hand"),
        ([ok, "%s,%s,-2" % (uid("s"), loc)], None, "line 3.on_hand"),
        ([ok, ",%s,1" % loc], None, "line 3.sku"),
        ([ok, "only-two,%s" % loc], None, "line 3"),
        ([ok, ok], None, "line 3"),
        ([ok, '"%s,%s,1' % (uid("s"), loc)], None, "line 3"),
        ([ok], "sku,where,on_hand", "line 1"),
        ([], None, "positions"),
    ]
    for lines, header, field in cases:
        kw = dict(header=header) if header else {}
        r = post_csv(c, uid("r"), as_of, lines, **kw)
        expect_error(r, 400, "bad_request", field)
    # Columns in another order, extra columns, quotes and CRLF are fine.
    body = ('bin,on_hand,location,sku\r\nA-1,3,"%s","%s"\r\n' % (loc, sku)).encode()
    r = c.request("POST", "/v1/reconciliations", raw=body, content_type="text/csv",
                  params=dict(id=uid("r"), source="wms", as_of=as_of))
    assert r.status == 201 and r.data["missing_here"] == 1, r
    assert r.data["items"][0]["theirs"] == 3, r.data
    # Missing query parameters name themselves.
    r = c.request("POST", "/v1/reconciliations", raw=b"sku,location,on_hand\nA,B,1\n",
                  content_type="text/csv", params=dict(source="wms", as_of=as_of))
    expect_error(r, 400, "bad_request", "id")
    r = c.request("POST", "/v1/reconciliations", raw=b"a\tb", content_type="text/plain")
    expect_error(r, 415, "unsupported_media_type")
    after = len(c.get("/v1/reconciliations", params=dict(limit=1000)).data["reconciliations"])
    assert after == before + 1


def test_roles(srv):
    c = srv.client("json")
    r = c.get("/v1/reconciliations")
    expect_error(r, 401, "unauthorized")
