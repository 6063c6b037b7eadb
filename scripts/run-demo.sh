#!/usr/bin/env bash
# Starts bin/atpd with the demo catalogue on 127.0.0.1:8080 in the foreground
# (used by `make run`), after printing example calls to paste into another
# terminal. Ctrl-C stops it cleanly. Works from the repo root or anywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x bin/atpd ]] || make bin/atpd bin/atpctl >/dev/null
LISTEN=${ATPD_LISTEN:-127.0.0.1:8080}
U="http://$LISTEN"
J='-H Content-Type:application/json'
cat <<EOT
atpd demo on $U: 3000 SKUs over store-01..store-10, groups "north" (01-05) and "south" (06-10).
Try, in another terminal:

  # one position, then the endless aisle (every store, best first), then a group
  curl -s -w '\n' '$U/v1/availability?sku=SKU-00001&location=store-01'
  curl -s -w '\n' '$U/v1/availability?sku=SKU-00001'
  curl -s -w '\n' '$U/v1/availability?sku=SKU-00001&group=north'
  # a Shopify GID as a SKU, percent-encoded
  curl -s -w '\n' '$U/v1/availability?sku=gid%3A%2F%2Fshopify%2FProductVariant%2F1000010'
  # several at once
  curl -s -w '\n' $J -d '{"items":[{"sku":"SKU-00002","location":"store-03"},{"sku":"SKU-00002","group":"south"}]}' $U/v1/availability/query

  # a checkout reservation: create, commit, or release
  curl -s -w '\n' $J -d '{"id":"r-1","lines":[{"sku":"SKU-00001","location":"store-01","qty":2}],"ttl_ms":600000,"channel":"checkout"}' $U/v1/reservations
  curl -s -w '\n' $J -d '{"order_id":"order-1001"}' $U/v1/reservations/r-1/commit
  curl -s -w '\n' $J -d '{"id":"r-2","lines":[{"sku":"SKU-00003","group":"north","qty":1}]}' $U/v1/reservations
  curl -s -w '\n' $J -d '{}' $U/v1/reservations/r-2/release

  # stock changes: a cycle count (counted_at is now, in ms, computed by your shell
  # when you run the line), then a received delivery on top of it
  curl -s -w '\n' $J -d '{"id":"cnt-1","sku":"SKU-00001","location":"store-01","on_hand":30,"counted_at":'\$((\$(date +%s)*1000))',"source":"wms"}' $U/v1/counts
  curl -s -w '\n' $J -d '{"id":"adj-1","sku":"SKU-00001","location":"store-01","delta":24,"reason":"received","source":"erp"}' $U/v1/adjustments

  # operations
  curl -s $U/metrics | grep atpd_http_requests_total
  bin/atpctl --url $U get SKU-00001 store-01

EOT
exec bin/atpd --demo --listen "$LISTEN" "$@"
