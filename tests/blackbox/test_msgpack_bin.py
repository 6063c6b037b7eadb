"""msgpack bin where a string is expected (issue 9, item 15): older clients send every
string as bin. Valid UTF-8 is read as the string; anything else is refused naming the
field, and changes nothing."""
import msgpack

from harness import expect_error, uid

ADJ = "/v1/adjustments"


def as_bin(obj):
    """obj with every str (keys too) packed as bin."""
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, dict):
        return {as_bin(k): as_bin(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_bin(v) for v in obj]
    return obj


def post_raw(c, path, obj):
    return c.post(path, raw=msgpack.packb(obj, use_bin_type=True))


def adj(sku, **kw):
    b = dict(id=uid("adj"), sku=sku, location="L1", delta=4, reason="received", source="erp")
    b.update(kw)
    return b


def test_bin_strings_are_strings(srv):
    c = srv.client("msgpack")
    sku = uid("bin")
    r = post_raw(c, ADJ, as_bin(adj(sku)))
    assert r.status == 200, r
    assert c.pos(sku, "L1")["on_hand"] == 4
    # a reservation, nested lines included, all in bin
    r = post_raw(c, "/v1/reservations", as_bin(dict(id=uid("res"), lines=[
        dict(sku=sku, location="L1", qty=1)])))
    assert r.status == 201, r
    assert c.pos(sku, "L1")["reserved"] == 1


def test_bin_utf8_beyond_ascii(srv):
    c = srv.client("msgpack")
    sku = uid("bin") + "-caf\u00e9"
    r = post_raw(c, ADJ, dict(adj(sku), sku=sku.encode()))
    assert r.status == 200, r
    assert c.pos(sku, "L1")["on_hand"] == 4


def test_bin_same_as_str_for_idempotency(srv):
    c = srv.client("msgpack")
    body = adj(uid("bin"))
    assert post_raw(c, ADJ, body).status == 200
    r = post_raw(c, ADJ, as_bin(body))
    assert r.status == 200 and r.data.get("replayed") is True, r


def test_bin_not_utf8_names_field(srv):
    c = srv.client("msgpack")
    sku = uid("bin")
    e = expect_error(post_raw(c, ADJ, dict(adj(sku), location=b"\xc3\x28")), 400, "bad_request",
                     "location")
    assert e["field"] == "location", e
    e = expect_error(post_raw(c, "/v1/reservations", dict(id=uid("res"), lines=[
        dict(sku=sku, location="L1", qty=1), dict(sku=b"\xff", location="L1", qty=1)])),
        400, "bad_request")
    assert e.get("field") == "lines[1].sku", e
    r = c.position(sku, "L1")
    assert r.status == 404, "a refused request changed something: %r" % r


def test_ext_names_field(srv):
    c = srv.client("msgpack")
    sku = uid("bin")
    e = expect_error(post_raw(c, ADJ, dict(adj(sku), ref=msgpack.ExtType(5, b"xy"))), 400,
                     "bad_request")
    assert e.get("field") == "ref", e


def test_bin_where_a_number_is_expected_is_a_type_error(srv):
    c = srv.client("msgpack")
    expect_error(post_raw(c, ADJ, dict(adj(uid("bin")), delta=b"4")), 400, "bad_request", "delta")
