"""A recording HTTP/1.1 server for bin/atpctl's tests: it keeps every request
(method, path, query, headers, body, which TCP connection carried it) and answers
what the test says, so atpctl's wire shapes are checked against the contract even
for routes atpd does not serve yet, and timeouts, 429s and keep-alive can be staged."""
import http.server
import json
import socketserver
import threading
import time
import urllib.parse


class Request:
    def __init__(self, method, target, headers, body, conn):
        self.method = method
        u = urllib.parse.urlsplit(target)
        self.path = u.path
        self.query = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body
        self.conn = conn

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<%s %s %r %r>" % (self.method, self.path, self.query, self.body[:200])


class Fake:
    """answer(req) -> (status, body object or bytes[, headers dict]); default 200 {}."""

    def __init__(self, answer=None):
        self.requests = []
        self.answer = answer or (lambda req: (200, {}))
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = Request(self.command, self.path, self.headers, body, id(self.connection))
                fake.requests.append(req)
                out = fake.answer(req)
                status, obj = out[0], out[1]
                extra = out[2] if len(out) > 2 else {}
                data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def batch_answer(req):
    """Answers POST /v1/batch as atpd would when every op applies."""
    if req.path != "/v1/batch":
        return 200, {}
    ct = req.headers.get("content-type", "")
    if "ndjson" in ct:
        n = sum(1 for ln in req.body.split(b"\n") if ln.strip())
    else:
        import msgpack
        u = msgpack.Unpacker(raw=False)
        u.feed(req.body)
        n = sum(1 for _ in u)
    return 200, {"received": n, "applied": n, "replayed": 0, "rejected": 0, "queued": 0,
                 "results": []}


def slow(seconds, then=None):
    def answer(req):
        time.sleep(seconds)
        return (then or (lambda r: (200, {})))(req)
    return answer
