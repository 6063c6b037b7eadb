#!/usr/bin/env bash
# bench/peers_redis.sh - the Redis peers of ../shared/peers/run-peers.sh, with positions
# under the keys redis-benchmark actually asks for, so that every reservation is granted
# and written (and, with the AOF, appended and synced).
#
#   bench/peers_redis.sh            (DURATION_S, CONNS, PIPELINE as for run-peers.sh)
#
# Why it exists: run-peers.sh loads its positions as inv:0 .. inv:9999, but
# `redis-benchmark -r 10000` expands __rand_int__ to twelve digits (inv:000000000042), so
# every EVALSHA there reads a hash that does not exist, finds nothing available and
# returns 0 without writing. Its AOF figures then append nothing and never fsync (strace
# of redis-server 7.0 under appendfsync always: no fdatasync at all), and its HMGET reads
# nil fields. The same script and commands here, on keys that exist.
#
# stdout, one "name value" line each:
#   redis_granted_evalsha_reserve_p1_ops    persistence off
#   redis_granted_evalsha_reserve_p16_ops   the same, 16 commands pipelined
#   redis_granted_hmget_p1_ops              the matching read, of existing fields
#   redis_granted_evalsha_reserve_aof_everysec_p1_ops, ..._aof_always_p1_ops
#   ..._granted  after each reservation figure: units reserved / requests sent (1.00:
#                every reservation was granted and written)
#   redis_granted_aof_always_bytes_per_op   AOF growth per reservation under always
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
peers=${PEERS_DIR:-}
for d in "$here/../../shared/peers" /work/shared/peers; do
  [[ -z $peers && -f $d/reserve.lua ]] && peers=$(cd "$d" && pwd)
done
[[ -n $peers ]] || { echo "reserve.lua not found (set PEERS_DIR)" >&2; exit 2; }
dur=${DURATION_S:-5} conns=${CONNS:-32} depth=${PIPELINE:-16}
work=$(mktemp -d /tmp/atpd-redis-peers.XXXXXX)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start ARGS...: a fresh redis-server with the 10,000 positions; sets p, sha.
start() {
  p=$(port)
  mkdir -p "$work/$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --dir "$work/$p" "$@" >/dev/null 2>&1 &
  pid=$!
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
  sha=$(redis-cli -p "$p" SCRIPT LOAD "$(cat "$peers/reserve.lua")")
  for i in $(seq 0 9999); do
    printf 'HSET inv:%012d on_hand 1000000000 safety 2 reserved 0\n' "$i"
  done | redis-cli -p "$p" --pipe >/dev/null
}
stop() { redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; wait "$pid" 2>/dev/null || true; pid=""; }
reserved() {
  redis-cli -p "$p" EVAL "local s = 0 for i = 0, 9999 do s = s + tonumber(redis.call('HGET', \
string.format('inv:%012d', i), 'reserved')) end return s" 0
}
rb() { redis-benchmark -p "$p" -c "$conns" -r 10000 --csv "$@" | tail -1 | cut -d, -f2 | tr -d '"' | cut -d. -f1; }
# reserve NAME N [redis-benchmark options]: the figure and its granted share.
reserve() {
  local name=$1 n=$2 before after
  shift 2
  before=$(reserved)
  echo "$name $(rb -n "$n" "$@" EVALSHA "$sha" 1 inv:__rand_int__ 1)"
  after=$(reserved)
  echo "${name}_granted $(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN {printf "%.2f", (a - b) / n}')"
}

n=$((dur * 60000))
start --appendonly no
reserve redis_granted_evalsha_reserve_p1_ops "$n"
reserve redis_granted_evalsha_reserve_p16_ops $((n * 4)) -P "$depth"
echo "redis_granted_hmget_p1_ops $(rb -n "$n" HMGET inv:__rand_int__ on_hand safety reserved)"
stop
n=$((dur * 20000))
for mode in everysec always; do
  start --appendonly yes --appendfsync "$mode"
  aof0=$(du -sb "$work/$p" | cut -f1)
  reserve "redis_granted_evalsha_reserve_aof_${mode}_p1_ops" "$n"
  aof1=$(du -sb "$work/$p" | cut -f1)
  [[ $mode == always ]] &&
    echo "redis_granted_aof_always_bytes_per_op $(( (aof1 - aof0) / n ))"
  stop
done
