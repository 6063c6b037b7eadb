"""Helpers for the black-box tests: a server fixture and a raw HTTP/1.1 client.

Only the Python stdlib and Debian's python3-msgpack (and, in openapi_check.py,
python3-yaml and python3-jsonschema). The client talks over a plain socket so
that pipelining, chunked bodies, partial requests and garbage bytes can be sent
exactly as written.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

import msgpack

import openapi_check

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "WARNING: ThreadSanitizer")

CT = {
    "json": "application/json",
    "msgpack": "application/msgpack",
    "x-msgpack": "application/x-msgpack",
}
# The encoding of a response expected for each request format.
CANON = {"json": "json", "msgpack": "msgpack", "x-msgpack": "msgpack"}


def formats(*fmts):
    """Parametrises a test over request formats: the runner calls it once per format."""
    if not fmts:
        fmts = ("json", "msgpack")

    def deco(fn):
        fn.params = fmts
        return fn
    return deco


def uid(prefix="t"):
    return "%s-%016x" % (prefix, random.getrandbits(64))


def now_ms():
    return int(time.time() * 1000)


def rfc3339(ms, offset_min=0):
    """An RFC 3339 string for ms, in the given UTC offset, with milliseconds."""
    sec, milli = divmod(ms, 1000)
    t = time.gmtime(sec + offset_min * 60)
    if offset_min == 0:
        zone = "Z"
    else:
        sign = "+" if offset_min > 0 else "-"
        zone = "%s%02d:%02d" % (sign, abs(offset_min) // 60, abs(offset_min) % 60)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".%03d" % milli + zone


# --- encoding ------------------------------------------------------------------

def _no_dup_pairs(pairs):
    d = {}
    for k, v in pairs:
        assert k not in d, "duplicate key %r in JSON response" % k
        d[k] = v
    return d


def encode(fmt, obj):
    if CANON[fmt] == "json":
        return json.dumps(obj, separators=(",", ":")).encode()
    return msgpack.packb(obj, use_bin_type=True)


def decode(content_type, body):
    ct = (content_type or "").split(";")[0].strip().lower()
    if ct == "application/json":
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_dup_pairs)
    if ct in ("application/msgpack", "application/x-msgpack"):
        return msgpack.unpackb(body, raw=False, strict_map_key=True)
    raise AssertionError("response Content-Type %r is neither JSON nor msgpack; body %r"
                         % (content_type, body[:200]))


# --- HTTP ----------------------------------------------------------------------

class Resp:
    def __init__(self, status, reason, headers, body, version="HTTP/1.1"):
        self.status = status
        self.reason = reason
        self.headers = headers  # lower-case name -> value (repeats joined by ", ")
        self.body = body
        self.version = version
        self._data = None
        self._decoded = False

    @property
    def content_type(self):
        return self.headers.get("content-type", "")

    @property
    def data(self):
        if not self._decoded:
            self._data = decode(self.content_type, self.body)
            self._decoded = True
        return self._data

    @property
    def error(self):
        d = self.data
        assert isinstance(d, dict) and isinstance(d.get("error"), dict), \
            "error body must be {\"error\": {...}}, got %r" % (d,)
        e = d["error"]
        assert isinstance(e.get("code"), str) and e["code"], "error.code missing: %r" % (d,)
        assert isinstance(e.get("message"), str) and e["message"], "error.message missing: %r" % (d,)
        return e

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.content_type, self.body[:300])


class ConnClosed(Exception):
    pass


class Conn:
    """One raw HTTP/1.1 connection with a buffered response reader."""

    def __init__(self, port, timeout=10.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def send_lenient(self, data):
        """Sends what the peer takes; the peer may answer and close early."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _fill(self):
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnClosed("connection closed by server")
        self.buf += chunk

    def _read_until(self, sep):
        while sep not in self.buf:
            self._fill()
        i = self.buf.index(sep)
        out, self.buf = self.buf[:i], self.buf[i + len(sep):]
        return out

    def _read_n(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self, method="GET"):
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/1."), "bad status line %r" % lines[0]
        status = int(parts[1])
        reason = parts[2] if len(parts) > 2 else ""
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            v = v.strip()
            headers[k] = headers[k] + ", " + v if k in headers else v
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self._read_until(b"\r\n"):
                        pass
                    break
                body += self._read_n(size)
                self._read_n(2)
        elif "content-length" in headers:
            body = self._read_n(int(headers["content-length"]))
        else:
            while True:
                try:
                    self._fill()
                except ConnClosed:
                    break
            body, self.buf = self.buf, b""
        return Resp(status, reason, headers, body, parts[0])

    def wait_closed(self, timeout):
        """True when the server closes the connection within timeout seconds."""
        self.sock.settimeout(timeout)
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        return False


def build_request(method, target, headers=(), body=b"", host="127.0.0.1"):
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % host]
    names = {h.split(":", 1)[0].strip().lower() for h in headers}
    lines.extend(headers)
    if body or method in ("POST", "PUT", "PATCH"):
        if "content-length" not in names and "transfer-encoding" not in names:
            lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def qs(**params):
    return urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="")


_UNSET = object()


class Client:
    """Keep-alive client in one format: json, msgpack or x-msgpack.

    The request format is the Content-Type; GETs in msgpack send Accept:
    application/msgpack. By default each answer's Content-Type must be the one
    the contract promises for the request (check_ct=False turns that off), and
    every answer must be one proto/openapi.yaml describes (openapi_check.py;
    validate=False turns that off for answers a test provokes outside it)."""

    def __init__(self, port, fmt="json", token=None, timeout=10.0, validate=True):
        self.port = port
        self.fmt = fmt
        self.token = token
        self.timeout = timeout
        self.conn = None
        self.validate = validate

    def close(self):
        if self.conn:
            self.conn.close()
            self.conn = None

    def request(self, method, path, body=_UNSET, *, fmt=None, accept=_UNSET, headers=(),
                raw=None, content_type=_UNSET, token=_UNSET, check_ct=True, params=None,
                validate=None):
        fmt = fmt or self.fmt
        hdrs = list(headers)
        payload = b""
        if raw is not None:
            payload = raw
        elif body is not _UNSET:
            payload = encode(fmt, body)
        if content_type is _UNSET:
            content_type = CT[fmt] if (raw is not None or body is not _UNSET) else None
        if content_type:
            hdrs.append("Content-Type: " + content_type)
        if accept is _UNSET:
            accept = CT[fmt] if (content_type is None and CANON[fmt] == "msgpack") else None
        if accept:
            hdrs.append("Accept: " + accept)
        tok = self.token if token is _UNSET else token
        if tok:
            hdrs.append("Authorization: Bearer " + tok)
        if params:
            path = path + "?" + qs(**params)
        data = build_request(method, path, hdrs, payload)
        resp = None
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = Conn(self.port, self.timeout)
                fresh = True
            else:
                fresh = False
            try:
                self.conn.send(data)
                resp = self.conn.read_response(method)
                break
            except (ConnClosed, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt:
                    raise
        if resp.headers.get("connection", "").lower() == "close":
            self.close()
        if check_ct and resp.body:
            rev = {v: k for k, v in CT.items()}
            if accept in rev:
                want = CT[CANON[rev[accept]]]
            elif content_type in rev:
                want = CT[CANON[rev[content_type]]]
            else:
                want = CT["json"]
            got = resp.content_type.split(";")[0].strip().lower()
            if resp.status < 500 and got != "text/plain":
                assert got == want, "%s %s: response Content-Type %r, expected %r (body %r)" % (
                    method, path, resp.content_type, want, resp.body[:200])
        if self.validate if validate is None else validate:
            openapi_check.check(method, path, resp)
        else:
            openapi_check.not_checked()
        return resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=_UNSET, **kw):
        return self.request("POST", path, body, **kw)

    def put(self, path, body=_UNSET, **kw):
        return self.request("PUT", path, body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    # --- domain shortcuts ----------------------------------------------------
    def adjust(self, sku, location, delta, reason="received", source="erp", **extra):
        body = dict(id=uid("adj"), sku=sku, location=location, delta=delta, reason=reason,
                    source=source)
        body.update(extra)
        r = self.post("/v1/adjustments", body)
        assert r.status == 200, "adjustment %r -> %r" % (body, r)
        return r.data

    def position(self, sku, location):
        return self.get("/v1/availability", params=dict(sku=sku, location=location))

    def pos(self, sku, location):
        r = self.position(sku, location)
        assert r.status == 200, "position %s@%s -> %r" % (sku, location, r)
        check_position(r.data)
        return r.data

    def reserve(self, lines, rid=None, **extra):
        body = dict(id=uid("res") if rid is None else rid, lines=lines)
        body.update(extra)
        return self.post("/v1/reservations", body)


# --- shape checks -----------------------------------------------------------------

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def check_position(p, found=None):
    assert isinstance(p, dict), "position must be an object: %r" % (p,)
    for k in ("sku", "location"):
        assert isinstance(p.get(k), str), "position.%s: %r" % (k, p)
    for k in ("on_hand", "safety_stock", "reserved", "committed", "available", "shortfall",
              "version"):
        assert is_int(p.get(k)), "position.%s must be an integer: %r" % (k, p)
    if "counted_at" in p:
        assert is_int(p["counted_at"]), "position.counted_at must be an integer: %r" % (p,)
    want_av = max(0, p["on_hand"] - p["safety_stock"] - p["reserved"] - p["committed"])
    assert p["available"] == want_av, "available %d != max(0, on_hand - ss - reserved - committed) = %d: %r" % (
        p["available"], want_av, p)
    want_sf = max(0, p["reserved"] + p["committed"] - p["on_hand"])
    assert p["shortfall"] == want_sf, "shortfall %d != %d: %r" % (p["shortfall"], want_sf, p)
    if found is not None:
        assert p.get("found") is found, "found must be %r: %r" % (found, p)
        if found is False:
            for k in ("on_hand", "safety_stock", "reserved", "committed", "available",
                      "shortfall", "version"):
                assert p[k] == 0, "unseen position must be zeros: %r" % (p,)


RES_STATUSES = ("held", "committed", "released", "expired", "fulfilled")


def check_reservation(r, status=None):
    assert isinstance(r, dict), "reservation must be an object: %r" % (r,)
    assert isinstance(r.get("id"), str), "reservation.id: %r" % (r,)
    assert r.get("status") in RES_STATUSES, "reservation.status: %r" % (r,)
    if status:
        assert r["status"] == status, "status %r, expected %r: %r" % (r["status"], status, r)
    assert is_int(r.get("created_at")), "reservation.created_at: %r" % (r,)
    assert is_int(r.get("ttl_ms")), "reservation.ttl_ms: %r" % (r,)
    if r["status"] == "held":
        assert is_int(r.get("expires_at")), "held reservation needs expires_at: %r" % (r,)
    else:
        assert "expires_at" not in r, "expires_at only while held: %r" % (r,)
    assert isinstance(r.get("lines"), list) and r["lines"], "reservation.lines: %r" % (r,)
    for ln in r["lines"]:
        for k in ("sku", "location"):
            assert isinstance(ln.get(k), str), "line.%s: %r" % (k, r)
        for k in ("qty", "fulfilled", "released"):
            assert is_int(ln.get(k)), "line.%s: %r" % (k, r)
    for k in ("order_ref", "order_id", "channel", "customer_id"):
        if k in r:
            assert isinstance(r[k], str) and r[k], "%s must be a non-empty string or absent: %r" % (k, r)


def expect_error(resp, status, code, field=None):
    assert resp.status == status, "expected %d %s, got %r" % (status, code, resp)
    e = resp.error
    assert e["code"] == code, "expected code %r, got %r" % (code, e)
    if field is not None:
        got = e.get("field")
        assert isinstance(got, str) and field in got, "expected field naming %r, got %r" % (field, e)
    return e


def line_by_loc(res, location):
    ls = [ln for ln in res["lines"] if ln["location"] == location]
    assert len(ls) == 1, "expected one line at %s: %r" % (location, res)
    return ls[0]


# --- the server -------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """bin/atpd on a free port with a temp data dir; stop() checks exit 0 and sanitizers."""

    def __init__(self, binary=None, args=(), env=None, threads=2, ready_timeout=15.0):
        self.binary = binary or os.environ.get("ATPD_BIN") or os.path.join(ROOT, "bin", "atpd")
        if not os.path.isabs(self.binary):
            self.binary = os.path.join(ROOT, self.binary)
        self.args = list(args)
        self.env = env or {}
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.proc = None
        self.tmp = tempfile.mkdtemp(prefix="atpd-bb-")
        self.data_dir = os.path.join(self.tmp, "data")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.port = None
        self.start()

    def start(self):
        if not os.access(self.binary, os.X_OK):
            raise AssertionError("server binary %s is missing (run make)" % self.binary)
        last = ""
        for _ in range(3):
            self.port = free_port()
            env = dict(os.environ)
            env.update({"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=86",
                        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"})
            env.update(self.env)
            cmd = [self.binary, "--listen", "127.0.0.1:%d" % self.port, "--threads",
                   str(self.threads), "--data-dir", self.data_dir] + self.args
            self.stderr_f = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen(cmd, stdout=self.stderr_f, stderr=self.stderr_f,
                                         stdin=subprocess.DEVNULL, cwd=self.tmp, env=env)
            if self._wait_ready():
                return
            last = self.stderr_tail()
            self.kill()
        raise AssertionError("server did not become ready on /readyz: %s\n%s" % (cmd, last))

    def _wait_ready(self):
        deadline = time.time() + self.ready_timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                c = Conn(self.port, timeout=2)
                c.send(build_request("GET", "/readyz"))
                r = c.read_response()
                c.close()
                if r.status == 200:
                    return True
            except (OSError, ConnClosed, AssertionError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def client(self, fmt="json", token=None, validate=True):
        return Client(self.port, fmt, token, validate=validate)

    def conn(self, timeout=10.0):
        return Conn(self.port, timeout)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, n=40):
        return "\n".join(self.stderr_text().splitlines()[-n:])

    def sanitizer_report(self):
        text = self.stderr_text()
        for mark in SANITIZER_MARKS:
            i = text.find(mark)
            if i >= 0:
                return text[max(0, i - 200):i + 3000]
        return None

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout=15.0):
        """SIGTERM; returns a problem sentence or None when it exited 0 cleanly."""
        problems = []
        if self.proc.poll() is not None:
            problems.append("server had already exited with %s" % self.proc.returncode)
        else:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
                if rc != 0:
                    problems.append("SIGTERM: exit status %d, expected 0" % rc)
            except subprocess.TimeoutExpired:
                self.kill()
                problems.append("SIGTERM: server did not exit within %.0f s" % timeout)
        self.stderr_f.close()
        rep = self.sanitizer_report()
        if rep:
            problems.append("sanitizer report in server stderr:\n" + rep)
        if problems:
            return "\n".join(problems) + "\n--- server stderr (%s) tail:\n%s" % (
                self.stderr_path, self.stderr_tail())
        shutil.rmtree(self.tmp, ignore_errors=True)
        return None
