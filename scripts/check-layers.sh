#!/usr/bin/env bash
# check-layers.sh - fails when a folder of src/ (or a public header) includes
# what its layer may not, or when the engine's objects call I/O.
#
# The layers (README, "Layout"), lowest first:
#   base    error table, assert, memory, log: libc and jemalloc only
#   engine  the ATP engine: base only, no third-party library
#   codec   JSON and MessagePack: base; yajl and msgpack-c live here only
#   http    the HTTP/1.1 server: base; llhttp lives here only, libuv here
#           and in flows (the Shopify push runs libcurl on a loop of its own)
#   store   journal, snapshots, restore: base, engine, codec; hiredis here only
#   flows   batch, flows, dead letters, change feed, connectors: base, engine,
#           codec, store; libcurl (with cmd) and libcrypto here only
#   app     router, requests, auth, metrics, routes: every layer above but cmd
#   cmd     the programs and their configuration: every layer, and libcurl for
#           atpctl's HTTP (linked into bin/atpctl only)
# Every public header include/atp/NAME.h belongs to one layer (HEADER_LAYER);
# a header not listed there fails the check, so a new one gets a place.
set -euo pipefail
cd "$(dirname "$0")/.."

declare -A HEADER_LAYER=(
  [assert]=base [clock]=base [error]=base [limits]=base [log]=base [memory]=base [version]=base
  [engine]=engine [timerwheel]=engine
  [codec]=codec
  [http]=http
  [journal]=store [snapshot]=store [records]=store [crc32c]=base [durability]=store [payload]=store
  [redisstream]=store
  [batch]=flows [flows]=flows [feed]=flows [shopify]=flows [reconcile]=flows [http_client]=flows [shopify_push]=flows
  [deadletters]=flows [flowstate]=flows [audit]=flows [wire]=flows
  [auth]=app [metrics]=app [request]=app [router]=app [app]=app
  [config]=cmd [demo]=cmd [instance]=cmd
)
# What each layer may include, besides its own headers.
declare -A MAY_USE=(
  [base]=""
  [engine]="base"
  [codec]="base"
  [http]="base"
  [store]="base engine codec"
  [flows]="base engine codec store"
  [app]="base engine codec http store flows"
  [cmd]="base engine codec http store flows app"
)
# Third-party headers (the part before the first '/' or '.h') and the layers
# that may include them (space-separated; a layer not listed may not, cmd
# included).
declare -A THIRD_PARTY=(
  [jemalloc]=base
  [yajl]=codec [msgpack]=codec
  [uv]="http flows" [llhttp]=http
  [hiredis]=store
  [curl]="flows cmd" [openssl]=flows
)

status=0
fail() {
  echo "check-layers: $*" >&2
  status=1
}

allowed() { # layer, target layer
  [[ $1 == "$2" ]] && return 0
  local l
  for l in ${MAY_USE[$1]}; do [[ $l == "$2" ]] && return 0; done
  return 1
}

check_file() { # file, layer
  local file=$1 layer=$2 line name target lib
  while IFS= read -r line; do
    if [[ $line =~ ^#include\ \"atp/([a-z0-9_]+)\.h\" ]]; then
      name=${BASH_REMATCH[1]}
      target=${HEADER_LAYER[$name]:-}
      if [[ -z $target ]]; then
        fail "$file includes atp/$name.h, which has no layer in scripts/check-layers.sh"
      elif ! allowed "$layer" "$target"; then
        fail "$file ($layer) includes atp/$name.h of layer $target"
      fi
    elif [[ $line =~ ^#include\ \"\.\./ ]]; then
      fail "$file reaches into another folder: $line"
    elif [[ $line =~ ^#include\ \<([a-z0-9_]+)[./] ]]; then
      lib=${BASH_REMATCH[1]}
      target=${THIRD_PARTY[$lib]:-}
      if [[ -n $target && " $target " != *" $layer "* ]]; then
        fail "$file ($layer) includes <$lib...>, which only these layers may use: $target"
      fi
    fi
  done <"$file"
}

for dir in src/*/; do
  layer=$(basename "$dir")
  [[ -n ${MAY_USE[$layer]+x} ]] || { fail "src/$layer is not a known layer"; continue; }
  for f in "$dir"*.c "$dir"*.h; do
    [[ -e $f ]] && check_file "$f" "$layer"
  done
done
for f in src/*.c src/*.h; do
  [[ -e $f ]] && fail "$f is outside the layer folders"
done
for h in include/atp/*.h; do
  name=$(basename "$h" .h)
  layer=${HEADER_LAYER[$name]:-}
  if [[ -z $layer ]]; then
    fail "$h has no layer in scripts/check-layers.sh"
    continue
  fi
  check_file "$h" "$layer"
done

# <assert.h> is off under NDEBUG, and a broken invariant must stop the process
# in every build: include/atp/assert.h's ATP_ASSERT is the only assert.
for f in src/*/*.c src/*/*.h include/atp/*.h; do
  [[ -e $f ]] || continue
  if grep -qE '^[[:space:]]*#[[:space:]]*include[[:space:]]*<assert\.h>' "$f"; then
    fail "$f includes <assert.h>; use ATP_ASSERT from atp/assert.h"
  fi
done

# The engine does no I/O: its objects may not call the functions that reach a
# file, a socket or a terminal (base's log and assert are the only way out).
io='^(open|openat|creat|read|write|pread|pwrite|readv|writev|close|lseek|fsync|fdatasync|socket|connect|bind|listen|accept|accept4|send|sendto|sendmsg|recv|recvfrom|recvmsg|fopen|fdopen|fclose|fread|fwrite|fprintf|printf|vfprintf|vprintf|puts|fputs|fputc|putchar|fflush|perror|syslog|mkdir|unlink|rename|stat|fstat|epoll_wait|poll|select)(@.*)?$'
for obj in build/release/obj/engine/*.o; do
  [[ -e $obj ]] || continue
  bad=$(nm -u "$obj" | awk '{print $2}' | grep -E "$io" || true)
  [[ -z $bad ]] || fail "$obj calls I/O: $(echo $bad)"
done

[[ $status -eq 0 ]] && echo "check-layers: every folder includes only what its layer may; no <assert.h>; the engine does no I/O"
exit $status
