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


# JSON Schema 2020-12 keywords plus OpenAPI 3.1's schema additions: a key
# outside this set in a schema is a typo or YAML that did not parse as meant
# (an unquoted comma inside a {flow: mapping} makes the rest of the line a key).
SCHEMA_KEYWORDS = {
    "$ref", "$id", "$schema", "$defs", "$comment", "$anchor", "$dynamicRef", "$dynamicAnchor",
    "type", "enum", "const", "format", "title", "description", "default", "examples", "example",
    "deprecated", "readOnly", "writeOnly", "properties", "patternProperties",
    "additionalProperties", "unevaluatedProperties", "propertyNames", "required",
    "minProperties", "maxProperties", "dependentRequired", "dependentSchemas", "items",
    "prefixItems", "contains", "minContains", "maxContains", "unevaluatedItems", "minItems",
    "maxItems", "uniqueItems", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minLength", "maxLength", "pattern", "contentEncoding", "contentMediaType",
    "allOf", "anyOf", "oneOf", "not", "if", "then", "else", "discriminator", "xml",
    "externalDocs",
}
SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SUBSCHEMA_ONE = ("items", "additionalProperties", "unevaluatedProperties", "propertyNames",
                 "contains", "not", "if", "then", "else", "unevaluatedItems")


def check_schema(schema, where, problems):
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        problems.append("%s: a schema must be an object, got %r" % (where, schema))
        return
    for k, v in schema.items():
        if k not in SCHEMA_KEYWORDS and not str(k).startswith("x-"):
            problems.append("%s: %r is not a schema keyword (value %r)" % (where, k, v))
    for k in SUBSCHEMA_MAPS:
        for name, sub in (schema.get(k) or {}).items():
            check_schema(sub, "%s/%s/%s" % (where, k, name), problems)
    for k in SUBSCHEMA_LISTS:
        for i, sub in enumerate(schema.get(k) or []):
            check_schema(sub, "%s/%s/%d" % (where, k, i), problems)
    for k in SUBSCHEMA_ONE:
        if k in schema:
            check_schema(schema[k], "%s/%s" % (where, k), problems)


def all_schemas(node, where):
    """Every schema the document holds: components/schemas and each inline 'schema'."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "schema":
                yield "%s/schema" % where, v
            elif k == "schemas" and where == "#/components":
                for name, s in v.items():
                    yield "#/components/schemas/%s" % name, s
            else:
                yield from all_schemas(v, "%s/%s" % (where, str(k).replace("/", "~1")))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from all_schemas(v, "%s/%d" % (where, i))


def test_no_null_values():
    """A key with no value is what YAML makes of the tail of an unquoted comma."""
    bad = []

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if v is None:
                    bad.append("%s/%s" % (where, k))
                walk(v, "%s/%s" % (where, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, "%s/%d" % (where, i))
    walk(load_spec(), "#")
    assert not bad, "keys without a value (quote descriptions holding commas): %s" % ", ".join(bad)


def test_schemas_have_no_stray_properties():
    problems = []
    n = 0
    for where, schema in all_schemas(load_spec(), "#"):
        check_schema(schema, where, problems)
        n += 1
    assert n > 20, "found only %d schemas" % n
    assert not problems, "\n".join(problems)


def test_every_v1_operation_documents_a_client_error():
    """What redocly's operation-4xx-response checks, minus the open probes (proto/redocly.yaml)."""
    spec = load_spec()
    for path, item in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for m, op in item.items():
            if m in METHODS:
                assert any(str(s).startswith("4") for s in op["responses"]), \
                    "%s %s documents no 4XX response" % (m.upper(), path)
