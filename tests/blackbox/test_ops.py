"""Section 7 (operations routes) and unknown routes."""
import re

from harness import expect_error, formats, uid

PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                       r'[-+]?([0-9.eE+-]+|NaN|Inf|\+Inf|-Inf)( [0-9]+)?$')


@formats()
def test_healthz(srv, fmt):
    r = srv.client(fmt).get("/healthz", check_ct=False)
    assert r.status == 200, r


@formats()
def test_readyz(srv, fmt):
    r = srv.client(fmt).get("/readyz", check_ct=False)
    assert r.status == 200, r


def test_metrics_prometheus_text(srv):
    c = srv.client()
    # some traffic first so that per-route and per-status series exist
    c.adjust(uid("m"), "L1", 5)
    c.get("/v1/availability", params=dict(sku=uid("none"), location="L1"))
    r = c.get("/metrics", check_ct=False)
    assert r.status == 200, r
    ct = r.content_type.lower()
    assert ct.startswith("text/plain"), "metrics Content-Type %r" % r.content_type
    text = r.body.decode("utf-8")
    assert "# TYPE" in text, "no # TYPE lines in metrics"
    bad = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and not PROM_LINE.match(ln)]
    assert not bad, "lines not in Prometheus text format: %r" % bad[:5]
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert any(t == "histogram" for _, t in types), "no latency histogram in metrics: %r" % types
    low = text.lower()
    for word in ("request", "reservation", "position"):
        assert word in low, "metrics mention no %r" % word
    assert re.search(r'status="?404', text) or re.search(r'code="?404', text), \
        "requests by status: no 404 series after a 404 answer"


def test_metrics_count_grows(srv):
    c = srv.client()
    def total():
        t = 0.0
        for ln in c.get("/metrics", check_ct=False).body.decode().splitlines():
            if ln.startswith("#") or not ln.strip():
                continue
            name = ln.split("{")[0].split(" ")[0]
            if "request" in name and name.endswith("_total"):
                t += float(ln.split()[-1] if "}" not in ln else ln.rsplit("}", 1)[1].split()[0])
        return t
    before = total()
    for _ in range(5):
        c.get("/healthz", check_ct=False)
    after = total()
    assert after >= before + 5, "request counters did not grow: %s -> %s" % (before, after)


@formats()
def test_unknown_route_404(srv, fmt):
    c = srv.client(fmt)
    expect_error(c.get("/v1/nope"), 404, "not_found")
    expect_error(c.get("/nope"), 404, "not_found")
    expect_error(c.post("/v1/nope", {"a": 1}), 404, "not_found")


@formats()
def test_wrong_method_is_an_error(srv, fmt):
    c = srv.client(fmt)
    r = c.delete("/v1/availability?sku=x&location=y")
    assert r.status in (404, 405), r
    r.error
    r = c.request("PATCH", "/v1/reservations/x", {"a": 1})
    assert r.status in (404, 405), r
    r.error
