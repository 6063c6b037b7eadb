"""Error sentences read the same on every route (issue 9, item 15): one short sentence,
capital first, period last, the same words for the same refusal."""
import re

from harness import expect_error, formats, uid

SENTENCE = re.compile(r"^[A-Z][^\n]*[.]$")


def check(e):
    msg = e["message"]
    assert SENTENCE.match(msg), "not a sentence (capital first, period last): %r" % (e,)
    assert not re.search(r"\ba [aeiou]", msg), "article before a vowel: %r" % msg
    return msg


@formats()
def test_refusals_are_sentences(srv, fmt):
    c = srv.client(fmt)
    sku = uid("msg")
    c.adjust(sku, "L1", 5)
    # unknown reservation: the route's 404 and the engine's agree
    m1 = check(expect_error(c.get("/v1/reservations/" + uid("nope")), 404, "not_found"))
    m2 = check(expect_error(c.post("/v1/reservations/%s/commit" % uid("nope"), {}), 404,
                            "not_found"))
    assert m1 == m2 == "Unknown reservation.", (m1, m2)
    # a conflict names the status
    rid = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid).status == 201
    assert c.post("/v1/reservations/%s/release" % rid, {}).status == 200
    m = check(expect_error(c.post("/v1/reservations/%s/commit" % rid, {}), 409, "conflict"))
    assert "released" in m, m
    # an unknown group in a line
    check(expect_error(c.reserve([dict(sku=sku, group=uid("g"), qty=1)]), 404, "not_found"))
    # not enough stock
    check(expect_error(c.reserve([dict(sku=sku, location="L1", qty=50)]), 409,
                       "insufficient_stock"))
    # a group with a location twice
    check(expect_error(c.put("/v1/groups/" + uid("g"), dict(locations=["L1", "L1"])), 400,
                       "bad_request"))
    # an id reused with other content
    body = dict(id=uid("adj"), sku=sku, location="L1", delta=1, reason="received", source="erp")
    assert c.post("/v1/adjustments", body).status == 200
    check(expect_error(c.post("/v1/adjustments", dict(body, delta=2)), 422,
                       "idempotency_mismatch"))
    rid2 = uid("res")
    assert c.reserve([dict(sku=sku, location="L1", qty=1)], rid=rid2).status == 201
    check(expect_error(c.reserve([dict(sku=sku, location="L1", qty=2)], rid=rid2), 422,
                       "idempotency_mismatch"))
    # a compare-and-set that does not match
    r = c.post("/v1/adjustments", dict(body, id=uid("adj"), change_from=999))
    assert r.status == 409, r
    check(r.error)
