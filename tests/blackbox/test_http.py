"""HTTP/1.1 behaviour over raw sockets: pipelining, chunked bodies, Connection:
close, limits (413, 431), garbage, slow clients; the server survives it all."""
import json
import os
import socket
import threading
import time

import msgpack

from harness import build_request, expect_error, uid

ASAN = True
_slow = {}


def adj_raw(sku, loc, delta):
    return json.dumps(dict(id=uid("adj"), sku=sku, location=loc, delta=delta, reason="received",
                           source="erp")).encode()


def test_slowloris_start(srv):
    """Opens partial requests now; later tests run meanwhile; the last test checks them."""
    conns = []
    for i in range(5):
        c = srv.conn()
        c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        conns.append(c)
    body = srv.conn()
    body.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json",
                                                        "Content-Length: 500"], b'{"id":'))
    _slow["conns"] = conns
    _slow["body"] = body
    _slow["t0"] = time.time()
    cl = srv.client()
    for _ in range(5):
        assert cl.get("/healthz", check_ct=False).status == 200, "served while slow clients hang"


def test_pipelining_in_order(srv):
    c = srv.client()
    sku = uid("sku")
    for i in range(1, 9):
        c.adjust(sku, "P%d" % i, i)
    reqs = b""
    expect = []
    for i in range(10):
        if i == 4:
            reqs += build_request("POST", "/v1/adjustments", ["Content-Type: application/json"],
                                  adj_raw(sku, "P9", 9))
            expect.append(("adj", 9))
        elif i == 7:
            reqs += build_request("GET", "/v1/availability?sku=%s&location=nowhere" % sku)
            expect.append(("404", None))
        else:
            n = i + 1 if i < 8 else 1
            reqs += build_request("GET", "/v1/availability?sku=%s&location=P%d" % (sku, n))
            expect.append(("get", n))
    conn = srv.conn()
    conn.send(reqs)  # all ten in one write
    for i, (kind, n) in enumerate(expect):
        r = conn.read_response()
        if kind == "get":
            assert r.status == 200 and r.data["on_hand"] == n, "answer %d out of order: %r" % (i, r)
        elif kind == "adj":
            assert r.status == 200 and r.data["position"]["location"] == "P9", (i, r)
        else:
            expect_error(r, 404, "not_found")
    conn.close()


def test_pipelining_deeper_than_server_queue(srv):
    """300 requests in one write (the server parses at most 64 ahead): all answered, in order."""
    sku = uid("sku")
    c = srv.client()
    c.adjust(sku, "L1", 1)
    reqs = b"".join(build_request("GET", "/v1/availability?sku=%s&location=%s" % (sku, "L1" if i % 3 else "none"))
                    for i in range(300))
    conn = srv.conn(timeout=20)
    conn.send(reqs)
    for i in range(300):
        r = conn.read_response()
        want = 200 if i % 3 else 404
        assert r.status == want, "answer %d: %r" % (i, r)
    conn.close()


def test_pipelining_byte_by_byte(srv):
    conn = srv.conn()
    data = build_request("GET", "/healthz") * 3
    for b in data:
        conn.send(bytes([b]))
    for _ in range(3):
        assert conn.read_response().status == 200
    conn.close()


def test_chunked_request_body(srv):
    sku = uid("sku")
    body = adj_raw(sku, "L1", 6)
    chunks = [body[:5], body[5:6], body[6:40], body[40:]]
    enc = b"".join(b"%x\r\n%s\r\n" % (len(ch), ch) for ch in chunks) + b"0\r\n\r\n"
    conn = srv.conn()
    conn.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json",
                                                        "Transfer-Encoding: chunked"]))
    for i in range(0, len(enc), 7):
        conn.send(enc[i:i + 7])
        time.sleep(0.002)
    r = conn.read_response()
    assert r.status == 200, r
    assert r.data["position"]["on_hand"] == 6, r.data
    # keep-alive still works after a chunked request, with a chunk extension and trailer
    enc2 = b"%x;ext=1\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n" % (len(body), adj_raw(sku, "L1", 1))
    conn.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json",
                                                        "Transfer-Encoding: chunked"]) + enc2)
    r = conn.read_response()
    assert r.status == 200 and r.data["position"]["on_hand"] == 7, r
    conn.close()


def test_connection_close_honoured(srv):
    conn = srv.conn()
    conn.send(build_request("GET", "/healthz", ["Connection: close"]))
    r = conn.read_response()
    assert r.status == 200, r
    assert r.headers.get("connection", "").lower() == "close", "Connection: close in answer: %r" % r.headers
    assert conn.wait_closed(3), "server kept the connection open after Connection: close"
    # pipelined after a close: only the first is answered
    conn = srv.conn()
    conn.send(build_request("GET", "/healthz", ["Connection: close"]) + build_request("GET", "/healthz"))
    assert conn.read_response().status == 200
    assert conn.wait_closed(3) and conn.buf == b"", "answered past Connection: close: %r" % conn.buf
    # HTTP/1.0 without keep-alive closes too
    conn = srv.conn()
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert conn.read_response().status == 200
    assert conn.wait_closed(3)


def test_head_is_get_without_body(srv):
    c = srv.client()
    c.adjust("HEADSKU", "L1", 5)
    path = "/v1/availability?sku=HEADSKU&location=L1"
    get = c.get(path)
    assert get.status == 200, get
    conn = srv.conn()
    conn.send(build_request("HEAD", path) + build_request("GET", "/healthz"))
    head = conn.read_response(method="HEAD")
    assert head.status == 200, head
    assert head.body == b"", "HEAD carries no body: %r" % head.body
    assert int(head.headers["content-length"]) == len(get.body), head.headers
    # the next pipelined answer starts right after the head: no stray body bytes
    assert conn.read_response().status == 200
    conn.close()


def test_keep_alive_many_requests(srv):
    conn = srv.conn()
    for _ in range(200):
        conn.send(build_request("GET", "/healthz"))
        assert conn.read_response().status == 200
    conn.close()


def test_body_too_large_413(srv):
    conn = srv.conn()
    big = b'{"id":"' + b"a" * (1024 * 1024 + 10) + b'"}'
    conn.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json",
                                                        "Content-Length: %d" % len(big)]))
    conn.send_lenient(big)
    r = conn.read_response()
    expect_error(r, 413, "payload_too_large")
    conn.close()
    # announced length alone is enough to refuse
    conn = srv.conn()
    conn.send(build_request("POST", "/v1/reservations", ["Content-Type: application/json",
                                                         "Content-Length: 2000000"]))
    expect_error(conn.read_response(), 413, "payload_too_large")
    conn.close()
    # chunked past the limit
    conn = srv.conn()
    conn.send(build_request("POST", "/v1/counts", ["Content-Type: application/json",
                                                   "Transfer-Encoding: chunked"]))
    piece = b"x" * 65536
    ok = True
    for _ in range(20):
        ok = conn.send_lenient(b"%x\r\n%s\r\n" % (len(piece), piece))
        if not ok:
            break
    conn.send_lenient(b"0\r\n\r\n")
    expect_error(conn.read_response(), 413, "payload_too_large")
    conn.close()
    # exactly at the limit is not 413 (it is a bad body)
    conn = srv.conn()
    body = b'{"id":"' + b"a" * (1024 * 1024 - 9) + b'"}'
    assert len(body) == 1024 * 1024
    conn.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json"], body))
    r = conn.read_response()
    expect_error(r, 400, "bad_request")
    conn.close()


def test_headers_too_large_431(srv):
    conn = srv.conn()
    hdrs = ["X-Pad-%d: %s" % (i, "v" * 1000) for i in range(70)]
    conn.send_lenient(build_request("GET", "/healthz", hdrs))
    r = conn.read_response()
    assert r.status == 431, r
    conn.close()
    conn = srv.conn()
    conn.send_lenient(build_request("GET", "/healthz", ["X-Big: " + "v" * (70 * 1024)]))
    assert conn.read_response().status == 431
    conn.close()
    # well under the limit is fine
    conn = srv.conn()
    conn.send(build_request("GET", "/healthz", ["X-Pad-%d: %s" % (i, "v" * 1000) for i in range(30)]))
    assert conn.read_response().status == 200
    conn.close()


def test_long_url(srv):
    conn = srv.conn()
    conn.send_lenient(b"GET /v1/availability?sku=" + b"a" * 20000 + b"&location=x HTTP/1.1\r\nHost: x\r\n\r\n")
    r = conn.read_response()
    assert r.status in (400, 414, 431), r
    conn.close()


def test_garbage_bytes(srv):
    for junk in (b"\x00\x01\x02\xff\xfe garbage\r\n\r\n", b"HELLO\r\n\r\n",
                 b"GET / HTTP/9.9\r\n\r\n", b"GET /healthz HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                 b"POST /v1/adjustments HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
                 b"POST /v1/adjustments HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                 bytes(range(256)) * 64):
        conn = srv.conn(timeout=5)
        conn.send_lenient(junk)
        try:
            r = conn.read_response()
            assert 400 <= r.status < 500, "garbage %r answered %r" % (junk[:40], r)
            assert conn.wait_closed(3), "connection kept open after a protocol error"
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001  closing without an answer is fine
            pass
        conn.close()
    assert srv.client().get("/healthz", check_ct=False).status == 200


def test_client_disconnects_midway(srv):
    for cut in (10, 40, 90):
        conn = srv.conn()
        data = build_request("POST", "/v1/adjustments", ["Content-Type: application/json"],
                             adj_raw(uid("sku"), "L1", 1))
        conn.send(data[:cut])
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST
    # many clients that send a full request and close before reading
    for _ in range(50):
        conn = srv.conn()
        conn.send(build_request("GET", "/metrics"))
        conn.close()
    assert srv.client().get("/healthz", check_ct=False).status == 200


def test_parallel_clients(srv):
    errors = []

    def worker(k):
        try:
            c = srv.client("msgpack" if k % 2 else "json")
            sku = uid("par")
            for i in range(30):
                c.adjust(sku, "L1", 1)
            assert c.pos(sku, "L1")["on_hand"] == 30
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not errors, errors


def _raw_error(srv, data, status, code):
    """Sends raw bytes, expects the server's own refusal; returns the response."""
    conn = srv.conn(timeout=5)
    conn.send_lenient(data)
    r = conn.read_response()
    conn.close()
    expect_error(r, status, code)
    return r


def _is_msgpack(r):
    return r.content_type.startswith("application/msgpack")


def test_server_errors_honour_msgpack(srv):
    """413, 414, 431 and framing 400s answer in msgpack when Accept or Content-Type asks."""
    big = b"x" * 64
    cases = [
        # 413 by Content-Length, the body not even sent
        (build_request("POST", "/v1/adjustments", ["Accept: application/msgpack",
                                                  "Content-Type: application/json",
                                                  "Content-Length: %d" % (2 << 20)]),
         413, "payload_too_large"),
        # 413 on a chunked body, the format from Content-Type alone
        (build_request("POST", "/v1/adjustments", ["Content-Type: application/msgpack",
                                                  "Transfer-Encoding: chunked"])
         + (b"100000\r\n" + b"\x00" * 0x100000 + b"\r\n") * 2, 413, "payload_too_large"),
        (b"GET /v1/availability?sku=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n"
         b"Accept: application/msgpack\r\n\r\n", 414, "uri_too_long"),
        (build_request("GET", "/healthz", ["Accept: application/x-msgpack"] +
                       ["X-Pad-%d: %s" % (i, "v" * 1000) for i in range(70)]),
         431, "bad_request"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: application/msgpack\r\nBad Header\r\n\r\n",
         400, "bad_request"),
        (b"POST /v1/adjustments HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
         b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + big, 400, "bad_request"),
    ]
    for data, status, code in cases:
        r = _raw_error(srv, data, status, code)
        assert _is_msgpack(r), "%d not in msgpack: %r" % (status, r)
        assert r.headers.get("connection") == "close", r
    # Accept naming JSON first wins over a msgpack body; nothing named: JSON.
    r = _raw_error(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nAccept: application/json, "
                        b"application/msgpack\r\nBad Header\r\n\r\n", 400, "bad_request")
    assert r.content_type.startswith("application/json"), r
    r = _raw_error(srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400, "bad_request")
    assert r.content_type.startswith("application/json"), r
    r = _raw_error(srv, b"GET /" + b"u" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long")
    assert r.error["message"], r


def test_transfer_coding_before_chunked_501(srv):
    """RFC 9112 6.1: a coding we do not know is 501, not decoded as plain chunked."""
    body = adj_raw(uid("sku"), "L1", 5)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for te in ("gzip, chunked", "x-custom,chunked", "identity, chunked"):
        r = _raw_error(srv, build_request("POST", "/v1/adjustments",
                                          ["Content-Type: application/json",
                                           "Transfer-Encoding: " + te]) + chunked,
                       501, "bad_request")
        assert "chunked" in r.error["message"], r
    # two lines count as one list
    _raw_error(srv, build_request("POST", "/v1/adjustments",
                                  ["Content-Type: application/json", "Transfer-Encoding: gzip",
                                   "Transfer-Encoding: chunked"]) + chunked, 501, "bad_request")
    # plain chunked, in any case, still works
    conn = srv.conn()
    conn.send(build_request("POST", "/v1/adjustments", ["Content-Type: application/json",
                                                       "Transfer-Encoding: Chunked"]) + chunked)
    r = conn.read_response()
    assert r.status == 200, r
    conn.close()


def test_obs_fold_400(srv):
    """Obsolete line folding is refused, in Transfer-Encoding (smuggling) and elsewhere."""
    body = adj_raw(uid("sku"), "L1", 5)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for head in (b"Transfer-Encoding:\r\n chunked\r\n", b"Transfer-Encoding: \r\n\tchunked\r\n",
                 b"X-Note: a\r\n b\r\n"):
        data = (b"POST /v1/adjustments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + head + b"\r\n" + chunked)
        r = _raw_error(srv, data, 400, "bad_request")
        assert "folding" in r.error["message"], r
    # a fold split across two writes is found too
    conn = srv.conn(timeout=5)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n")
    time.sleep(0.05)
    conn.send_lenient(b" b\r\n\r\n")
    expect_error(conn.read_response(), 400, "bad_request")
    conn.close()


def test_http11_needs_one_host(srv):
    _raw_error(srv, b"GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request")
    r = _raw_error(srv, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_request")
    assert "Host" in r.error["message"], r
    # HTTP/1.0 needs none
    conn = srv.conn()
    conn.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert conn.read_response().status == 200
    conn.close()


def test_duplicate_query_parameter_400(srv):
    c = srv.client()
    sku = uid("sku")
    c.adjust(sku, "L1", 3)
    for q in ("sku=%s&sku=other&location=L1" % sku, "sku=%s&location=L1&location=L1" % sku,
              "sku=%s&location=L1&s%%6Bu=x" % sku):
        r = c.get("/v1/availability?" + q)
        e = expect_error(r, 400, "bad_request")
        assert e.get("field") in ("sku", "location"), e
        assert "more than once" in e["message"], e
    assert c.get("/v1/availability?sku=%s&location=L1" % sku).status == 200


def _rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for %d" % pid)


def test_idle_connections_after_big_bodies_pin_little(srv):
    """200 keep-alive connections that each sent one ~1 MiB body, then idle: the
    server gives the big buffers back when each request ends."""
    if "asan" in os.path.basename(srv.binary):
        return  # ASan's quarantine holds freed memory on purpose
    pad = b"x" * ((1 << 20) - 64)
    body = b'{"pad":"' + pad + b'"}'
    req = build_request("POST", "/v1/adjustments", ["Content-Type: application/json"], body)
    conns = []
    warm = srv.conn()
    for _ in range(3):  # the allocator's first big extents
        warm.send(req)
        warm.read_response()
    warm.close()
    time.sleep(0.2)
    before = _rss_kb(srv.proc.pid)
    try:
        for _ in range(200):
            c = srv.conn(timeout=20)
            c.send(req)
            r = c.read_response()
            assert r.status == 400, r  # the body is no adjustment; it was read whole
            conns.append(c)
        time.sleep(0.2)
        grown_mb = (_rss_kb(srv.proc.pid) - before) / 1024.0
        # about 1 MiB each before the fix (~200 MB); ~13 KB each after (~3 MB)
        assert grown_mb < 20, "RSS grew %.0f MB for 200 idle connections" % grown_mb
        # they still serve
        conns[0].send(build_request("GET", "/healthz"))
        assert conns[0].read_response().status == 200
    finally:
        for c in conns:
            c.close()


def test_slowloris_others_served_and_closed(srv):
    """The partial requests of the first test: still served others; eventually closed."""
    conns = _slow.get("conns", [])
    assert conns, "slowloris setup did not run"
    assert srv.client().get("/healthz", check_ct=False).status == 200
    # The header timeout is 10 s; the slack is for a loaded machine (an ASan
    # server among other tests), and each wait ends as soon as its close comes.
    left = 20.0 - (time.time() - _slow["t0"])
    closed = [c.wait_closed(max(0.1, left)) for c in conns[:1]]
    closed += [c.wait_closed(2.0) for c in conns[1:]]
    for c in conns:
        c.close()
    _slow["body"].close()
    assert all(closed), "partial request heads not closed after ~20 s: %r" % closed


def test_still_healthy(srv):
    c = srv.client()
    assert c.get("/healthz", check_ct=False).status == 200
    assert c.get("/readyz", check_ct=False).status == 200


def test_metrics_label_408_and_505(srv):
    """The slow heads above were answered 408; with a 505 both get their own label."""
    conn = srv.conn()
    conn.send_lenient(b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n")
    try:
        assert conn.read_response().status == 505
    finally:
        conn.close()
    text = srv.client().get("/metrics", check_ct=False).body.decode()
    assert 'status="505"' in text, text
    assert 'status="408"' in text, text
    assert 'status="other"' not in text, [ln for ln in text.splitlines() if "other" in ln]
