"""proto/openapi.yaml lists exactly the routes bin/atpd serves (bin/atpd --routes)."""
import os
import re
import subprocess

import yaml

from harness import ROOT

SPEC = os.path.join(ROOT, "proto", "openapi.yaml")
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def norm(path):
    return re.sub(r"\{[^}]*\}", "{}", path)


def load_spec():
    with open(SPEC) as f:
        return yaml.safe_load(f)


def served_routes(binary):
    binary = binary or os.environ.get("ATPD_BIN") or os.path.join(ROOT, "bin", "atpd")
    if not os.path.isabs(binary):
        binary = os.path.join(ROOT, binary)
    out = subprocess.run([binary, "--routes"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, "bin/atpd --routes exit %d: %s" % (out.returncode, out.stderr)
    routes = set()
    for line in out.stdout.splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.split()
        assert len(parts) == 2 and parts[1].startswith("/"), "bad --routes line %r" % line
        routes.add((parts[0].upper(), norm(parts[1])))
    assert routes, "bin/atpd --routes printed no route"
    return routes


def spec_routes(spec):
    routes = set()
    for path, item in spec["paths"].items():
        for m in item:
            if m in METHODS:
                routes.add((m.upper(), norm(path)))
    return routes


def test_spec_is_openapi_31():
    spec = load_spec()
    assert str(spec.get("openapi", "")).startswith("3.1"), spec.get("openapi")
    assert spec["info"]["title"] and spec["info"]["version"]
    assert "bearer" in str(spec["components"]["securitySchemes"]).lower()


def test_refs_resolve():
    spec = load_spec()
    refs = set(re.findall(r"\$ref: ['\"]?#/([^'\"\s]+)", open(SPEC).read()))
    for ref in refs:
        node = spec
        for part in ref.split("/"):
            assert isinstance(node, dict) and part in node, "unresolved $ref #/%s" % ref
            node = node[part]


def test_every_operation_documents_responses():
    spec = load_spec()
    for path, item in spec["paths"].items():
        params = re.findall(r"\{([^}]*)\}", path)
        for m, op in item.items():
            if m not in METHODS:
                continue
            assert op.get("operationId"), "%s %s lacks operationId" % (m, path)
            assert op.get("responses"), "%s %s lacks responses" % (m, path)
            declared = {p.get("name") for p in op.get("parameters", []) + item.get("parameters", [])
                        if isinstance(p, dict) and p.get("in") == "path"}
            refs = [p for p in op.get("parameters", []) + item.get("parameters", []) if "$ref" in p]
            for r in refs:
                node = spec
                for part in r["$ref"][2:].split("/"):
                    node = node[part]
                if node.get("in") == "path":
                    declared.add(node["name"])
            assert set(params) <= declared, "%s %s: path parameters %r not declared" % (m, path, params)


def test_routes_match_server(binary):
    served = served_routes(binary)
    spec = spec_routes(load_spec())
    missing = sorted(served - spec)
    extra = sorted(spec - served)
    msg = []
    if missing:
        msg.append("served but not in openapi.yaml: %s" % ", ".join("%s %s" % r for r in missing))
    if extra:
        msg.append("in openapi.yaml but not served: %s" % ", ".join("%s %s" % r for r in extra))
    assert not msg, "\n".join(msg)
