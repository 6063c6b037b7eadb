#!/usr/bin/env bash
# Installs the Debian packages atpd builds and tests with, when missing, and
# unpacks node-llhttp's C sources into the ignored build tree (installing the
# package itself would drag in Node.js). Idempotent and quiet when all is there.
# make test also lints proto/openapi.yaml with @redocly/cli, which npm installs
# into build/npm at the version pinned below (Debian's nodejs and npm when no
# npm is on PATH). The Shopify connector's tests run a fake Admin API
# (tests/fake_shopify/server.js) that validates every document with graphql-js
# (pinned below, into build/npm) against Shopify's published Admin schema, which
# the npm package @shopify/dev-mcp ships; only the schema files are unpacked,
# into build/deps/shopify.
set -euo pipefail
cd "$(dirname "$0")/.."
# libyajl-dev: the JSON codec; libjansson-dev, libcjson-dev and libjson-c5: only
# bench/bench_json.c's comparison (built by `make bench`; json-c is dlopen'd).
pkgs=(build-essential pkg-config clang libclang-rt-14-dev clang-format
      libuv1-dev libhiredis-dev libjemalloc-dev libmsgpack-dev libyajl-dev
      libjansson-dev libcjson-dev libjson-c5
      redis-server redis-tools wrk python3 python3-msgpack python3-yaml curl
      python3-pytest python3-pytest-timeout python3-pytest-xdist python3-jsonschema
      libcurl4-openssl-dev libssl-dev openssl)
# 1.x runs on Debian 12's Node.js 18 (2.x needs Node.js 20.19 or 22.12).
redocly_version=1.34.20
graphql_version=16.11.0
devmcp_version=1.16.0
shopify_schemas=(admin_2026-10 admin_2026-04)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v npm >/dev/null || missing+=(nodejs npm)
sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
if [[ ! -f /usr/share/llhttp/llhttp.c && ! -f build/deps/usr/share/llhttp/llhttp.c ]]; then
  echo "deps: unpacking node-llhttp into build/deps"
  mkdir -p build/deps
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download node-llhttp >/dev/null 2>&1 || { $sudo apt-get update -q && apt-get download node-llhttp; })
  dpkg -x "$tmp"/node-llhttp_*.deb build/deps
  rm -rf "$tmp"
fi
redocly_pkg=build/npm/node_modules/@redocly/cli/package.json
if ! grep -q "\"version\": \"$redocly_version\"" "$redocly_pkg" 2>/dev/null; then
  echo "deps: npm install @redocly/cli@$redocly_version into build/npm"
  mkdir -p build/npm
  npm install --prefix build/npm --no-audit --no-fund --loglevel=error "@redocly/cli@$redocly_version"
fi
graphql_pkg=build/npm/node_modules/graphql/package.json
if ! grep -q "\"version\": \"$graphql_version\"" "$graphql_pkg" 2>/dev/null; then
  echo "deps: npm install graphql@$graphql_version into build/npm"
  mkdir -p build/npm
  npm install --prefix build/npm --no-audit --no-fund --loglevel=error "graphql@$graphql_version"
fi
schemas_missing=0
for s in "${shopify_schemas[@]}"; do
  [[ -s build/deps/shopify/$s.json.gz ]] || schemas_missing=1
done
if ((schemas_missing)); then
  echo "deps: unpacking the Shopify Admin schemas from @shopify/dev-mcp@$devmcp_version into build/deps/shopify"
  mkdir -p build/deps/shopify
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent --loglevel=error "@shopify/dev-mcp@$devmcp_version" >/dev/null)
  members=()
  for s in "${shopify_schemas[@]}"; do members+=("package/dist/data/$s.json.gz"); done
  tar -xzf "$tmp"/shopify-dev-mcp-"$devmcp_version".tgz -C "$tmp" "${members[@]}"
  for s in "${shopify_schemas[@]}"; do mv "$tmp/package/dist/data/$s.json.gz" build/deps/shopify/; done
  rm -rf "$tmp"
fi
