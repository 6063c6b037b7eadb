"""The fake Shopify Admin API (tests/fake_shopify/server.js) from Python.

    fake = FakeShopify(restore_rate=1000, bucket_max=2000, token="shpat_test").start()
    fake.admin_url        # http://127.0.0.1:<port>/admin/api/2026-10/graphql.json
    fake.set_levels([{"inventory_item_id": 1, "location_id": 2, "available": 5}])
    fake.state()["levels"]  # {"<item>:<loc>": qty}; fake.level(item, loc) -> qty or None
    fake.faults(throttle=3) / fake.config(restore_rate=100) / fake.log(since=0)
    fake.stop()

or the module-scoped pytest fixture `fake_shopify` (import it into the test
module: `from shopify_fake import fake_shopify`): one fake per module; call
.reset() between tests that must not see each other's state.
Ids may be integers (above 2^53 too), digit strings or GIDs: the fake reads
large integer literals exactly.
"""
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERVER_JS = os.path.join(ROOT, "tests", "fake_shopify", "server.js")
GRAPHQL_JS = os.path.join(ROOT, "build", "npm", "node_modules", "graphql")


def schema_path(version):
    return os.path.join(ROOT, "build", "deps", "shopify", "admin_%s.json.gz" % version)


def available():
    """None when the fake can run, else why not (for pytest.skip)."""
    import shutil
    if not shutil.which("node"):
        return "node is not installed (make deps)"
    if not os.path.isdir(GRAPHQL_JS):
        return "graphql-js is not in build/npm (make deps)"
    if not os.path.exists(schema_path("2026-10")):
        return "the Shopify Admin schema is not in build/deps/shopify (make deps)"
    return None


class FakeShopify:
    def __init__(self, restore_rate=1000, bucket_max=2000, token="shpat_test",
                 version="2026-10", schema=None):
        self.restore_rate = restore_rate
        self.bucket_max = bucket_max
        self.token = token
        self.version = version
        self.schema = schema or schema_path(version)
        self.proc = None
        self.port = None
        self._stderr = []

    # --- process --------------------------------------------------------------

    def start(self, timeout=30.0):
        args = ["node", SERVER_JS, "--port", "0", "--schema", self.schema, "--token", self.token,
                "--restore-rate", str(self.restore_rate), "--bucket-max", str(self.bucket_max),
                "--version", self.version]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # The stderr reader keeps the pipe from filling; its text helps a failure.
        threading.Thread(target=self._drain, daemon=True).start()
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline().decode()
        finally:
            timer.cancel()
        if not line.startswith("listening "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("fake Shopify did not start: %r %s" % (line, self.stderr_text()))
        self.port = int(line.split()[1])
        return self

    def _drain(self):
        for line in self.proc.stderr:
            self._stderr.append(line.decode(errors="replace"))

    def stderr_text(self):
        return "".join(self._stderr[-50:])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc = None

    # --- addresses ------------------------------------------------------------

    @property
    def base_url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def admin_url(self):
        return "%s/admin/api/%s/graphql.json" % (self.base_url, self.version)

    # --- control API ----------------------------------------------------------

    def _call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise AssertionError("fake Shopify %s %s -> %d %s" % (
                method, path, e.code, e.read().decode(errors="replace")))

    def state(self):
        return self._call("GET", "/_fake/state")

    def level(self, item, loc):
        """The fake's available quantity at (item, location), or None."""
        return self.state()["levels"].get("%s:%s" % (_digits(item), _digits(loc)))

    def levels(self):
        """{(item int, location int): qty}."""
        out = {}
        for k, v in self.state()["levels"].items():
            item, loc = k.split(":")
            out[(int(item), int(loc))] = v
        return out

    def set_levels(self, levels):
        """levels: [{inventory_item_id, location_id, available}] or (item, loc, qty)
        tuples; available None forgets the level."""
        rows = [l if isinstance(l, dict) else
                {"inventory_item_id": l[0], "location_id": l[1], "available": l[2]} for l in levels]
        return self._call("POST", "/_fake/levels", {"levels": rows})

    def catalog(self, variants=None, locations=None):
        """variants: [{variant_id, sku, inventory_item_id}], locations: [{id, name}]."""
        body = {}
        if variants is not None:
            body["variants"] = variants
        if locations is not None:
            body["locations"] = locations
        return self._call("POST", "/_fake/catalog", body)

    def faults(self, **kw):
        """throttle=N, status429=N, error5xx=N (error_status=503), slow_ms=M
        (slow_count=N; without it until cleared), down=bool."""
        return self._call("POST", "/_fake/faults", kw)

    def canned(self, operation=None, body=None, status=200, count=1):
        """The next `count` calls of `operation` (-1: until reset) get `body`
        with `status` as is; no operation clears them."""
        if operation is None:
            return self._call("POST", "/_fake/canned", {})
        return self._call("POST", "/_fake/canned", {"operation": operation, "body": body,
                                                     "status": status, "count": count})

    def config(self, **kw):
        """restore_rate=, bucket_max=, bucket_available=."""
        return self._call("POST", "/_fake/config", kw)

    def log(self, since=0):
        return self._call("GET", "/_fake/log?since=%d" % since)

    def reset(self):
        return self._call("POST", "/_fake/reset", {})

    # --- GraphQL, as a client would call it -----------------------------------

    def graphql(self, query, variables=None, token=None, operation_name=None, version=None):
        """-> (HTTP status, decoded body or text)."""
        body = {"query": query}
        if variables is not None:
            body["variables"] = variables
        if operation_name is not None:
            body["operationName"] = operation_name
        url = self.admin_url if version is None else "%s/admin/api/%s/graphql.json" % (
            self.base_url, version)
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-Shopify-Access-Token":
                                                  self.token if token is None else token})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")


def _digits(v):
    if isinstance(v, int):
        return str(v)
    return str(v).rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def fake_shopify():
    why = available()
    if why:
        # Not a skip: make deps installs all three, and a suite that skips
        # the connector's tests where they cannot run would pass untested.
        pytest.fail(why, pytrace=False)
    fake = FakeShopify().start()
    try:
        yield fake
    finally:
        fake.stop()
