"""Checks live responses against proto/openapi.yaml (python3-jsonschema, draft 2020-12).

harness.Client.request calls check() for every response it reads, so a test
fails when the server sends a status, media type or body shape the document
does not describe: the operation is found by method and path template, the
response by status, the schema by Content-Type. Fields the document does not
list are allowed (the schemas do not close their objects); required fields,
types, enums and bounds are enforced. A request to a path or method the
document does not have may only answer an error in the Error shape.

Tests that provoke answers outside the contract on purpose pass
validate=False to Client.request (or set client.validate = False).
"""
import os
import re
import threading

import jsonschema
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SPEC_PATH = os.path.join(ROOT, "proto", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")

COUNTS = {"validated": 0, "no_body": 0, "not_checked": 0}
_lock = threading.Lock()
_violations = []
_spec = None
_routes = None
_validators = {}


class Violation(AssertionError):
    pass


def _load():
    global _spec, _routes
    if _spec is None:
        with open(SPEC_PATH) as f:
            spec = yaml.safe_load(f)
        routes = []
        for tpl, item in spec.get("paths", {}).items():
            rx = re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(tpl)) + "$")
            # Literal paths before templated ones when both would match.
            routes.append((tpl.count("{"), tpl, rx, item))
        routes.sort(key=lambda r: r[0])
        _routes = routes
        _spec = spec
    return _spec


def _deref(node):
    spec = _load()
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), "only local $refs are supported: %r" % ref
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        seen += 1
        assert seen < 20, "$ref loop at %r" % ref
    return node


def _validator(pointer, schema):
    v = _validators.get(pointer)
    if v is None:
        resolver = jsonschema.RefResolver(base_uri="", referrer=_load())
        v = jsonschema.Draft202012Validator(schema, resolver=resolver)
        _validators[pointer] = v
    return v


def _where(path):
    out = "$"
    for p in path:
        out += "[%d]" % p if isinstance(p, int) else "." + str(p)
    return out


def _describe(err, depth=0):
    pad = "    " * depth
    lines = ["%s  at %s: %s" % (pad, _where(err.absolute_path), _short(err.message))]
    if err.validator in ("oneOf", "anyOf") and err.context:
        branches = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        alts = err.validator_value
        for i, subs in sorted(branches.items()):
            name = alts[i].get("$ref", "alternative %d" % i) if isinstance(alts[i], dict) else i
            lines.append("%s    %s %s:" % (pad, err.validator, name))
            for sub in subs[:4]:
                lines.extend(_describe(sub, depth + 1))
    return lines


def _short(text, n=300):
    return text if len(text) <= n else text[:n] + "..."


def _fail(method, target, resp, what):
    __tracebackhide__ = True  # pytest shows the test's line, not these frames
    msg = "openapi: %s %s -> %d %s: %s" % (method, target, resp.status,
                                           resp.content_type or "(no Content-Type)", what)
    with _lock:
        _violations.append(msg)
    raise Violation(msg)


def begin_test():
    with _lock:
        del _violations[:]


def end_test():
    with _lock:
        out = list(_violations)
        del _violations[:]
    return out


def _count(key):
    with _lock:
        COUNTS[key] = COUNTS.get(key, 0) + 1


def not_checked():
    _count("not_checked")


def summary():
    c = COUNTS
    return ("openapi: %d live responses validated against proto/openapi.yaml"
            " (%d documented as bodiless, %d not checked on the test's request)"
            % (c.get("validated", 0), c.get("no_body", 0), c.get("not_checked", 0)))


def find_operation(method, path):
    """(template, operation or None, path item or None) for a request path."""
    _load()
    m = method.lower()
    for _, tpl, rx, item in _routes:
        if rx.match(path):
            op = item.get(m) or (item.get("get") if m == "head" else None)
            return tpl, op, item
    return None, None, None


def check(method, target, resp):
    """Raises Violation unless resp is what proto/openapi.yaml says for the request."""
    __tracebackhide__ = True
    _load()
    path = target.split("?", 1)[0]
    tpl, op, item = find_operation(method, path)
    status = str(resp.status)
    if op is None:
        # Not a documented operation: only an error in the contract's shape is right.
        if resp.status < 400:
            _fail(method, target, resp, "%s is not in the document but answered %s" % (
                "path" if tpl is None else "method %s on %s" % (method, tpl), status))
        where = "#/components/schemas/Error (undocumented %s)" % ("path" if tpl is None else "method")
        if not resp.body:
            _fail(method, target, resp, "an error answer without a body; %s expected" % where)
        _check_body(method, target, resp, {"$ref": "#/components/schemas/Error"}, where)
        return
    responses = op.get("responses", {})
    rdoc = responses.get(status) or responses.get(status[0] + "XX") or responses.get("default")
    if rdoc is None:
        _fail(method, target, resp, "status %s is not documented for %s %s (documented: %s)" % (
            status, method.upper() if method != "HEAD" else "GET", tpl, ", ".join(sorted(responses))))
    pointer = "#/paths/%s/%s/responses/%s" % (tpl.replace("~", "~0").replace("/", "~1"),
                                              method.lower(), status)
    if isinstance(rdoc, dict) and "$ref" in rdoc:
        pointer = rdoc["$ref"]
    rdoc = _deref(rdoc)
    content = rdoc.get("content") or {}
    if method == "HEAD" or resp.status in (204, 304):
        if resp.body:
            _fail(method, target, resp, "a body on a bodiless answer")
        _count("no_body")
        return
    if not resp.body:
        if content:
            _fail(method, target, resp, "no body, but %s documents %s" % (pointer, ", ".join(content)))
        _count("no_body")
        return
    if not content:
        _fail(method, target, resp, "a %d-byte body, but %s documents no content" % (
            len(resp.body), pointer))
    ct = (resp.content_type or "").split(";")[0].strip().lower()
    media = content.get(ct)
    if media is None:
        _fail(method, target, resp, "media type %r is not documented at %s (documented: %s)" % (
            ct, pointer, ", ".join(content)))
    schema = media.get("schema")
    if schema is None:
        _count("validated")
        return
    _check_body(method, target, resp, schema, "%s/content/%s/schema" % (pointer, ct.replace("/", "~1")))


def _check_body(method, target, resp, schema, where):
    __tracebackhide__ = True
    ct = (resp.content_type or "").split(";")[0].strip().lower()
    if ct.startswith("text/"):
        data = resp.body.decode("utf-8", "replace")
    else:
        try:
            data = resp.data
        except Exception as e:  # noqa: BLE001 (undecodable body)
            _fail(method, target, resp, "the body does not decode: %s" % e)
    errs = sorted(_validator(where, schema).iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errs:
        # The first line names the field the lead fixes; the rest shows every
        # error (each oneOf alternative's reasons) and the body.
        best = jsonschema.exceptions.best_match(errs)
        lines = []
        for e in errs[:5]:
            lines.extend(_describe(e))
        _fail(method, target, resp, "%s: %s (schema %s)\n%s\n  body: %s" % (
            _where(best.absolute_path), _short(best.message, 200), where, "\n".join(lines),
            _short(repr(data), 600)))
    _count("validated")
