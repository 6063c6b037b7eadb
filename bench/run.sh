#!/usr/bin/env bash
# bench/run.sh - what `make bench` runs: the engine micro-benchmark, then atpd over HTTP
# (one server thread, wrk -t1 -c32) against the peers of /work/shared/peers in the same run.
#
#   bench/run.sh                    everything
#   DURATION_S=5 bench/run.sh       shorter wrk/peer runs (default 10 s each)
#
# Environment:
#   DURATION_S      seconds per wrk and peer figure (default 10)
#   CONNS           connections, for atpd and the peers alike (default 32)
#   ENGINE_S        seconds per bench_engine figure (default 2)
#   DURABILITY      atpd --durability for the HTTP runs (default batch, the product default)
#   MODES           durability modes for the "modes" part: POST reservation JSON once per
#                   mode on a fresh server, figures atpd_reserve_json_<mode>_rps and _p99_ms,
#                   and the issue's ratios against none and Redis AOF (default: none batch
#                   always). E.g. the durability comparison alone, Redis AOF in the same run:
#                   SKIP="engine mem http" PEER_SET="redis redis-aof" bench/run.sh
#   PEER_SET        which peers run-peers.sh runs (default: all of them)
#   SKIP            space-separated parts to skip: engine mem http modes peers
#   PEERS_DIR       where run-peers.sh lives (default: ../shared/peers beside the repo)
#   PERF=1          perf record -g on atpd during each wrk run; top symbols to stderr,
#                   perf.data files kept in build/bench/
#
# stdout: one "name value" line per figure as it is measured, then the ratios, then a
# Markdown block (between "<!-- results -->" markers) to paste into bench/RESULTS.md.
# Progress and wrk's own output go to stderr. Exit status 1 if any atpd run got a
# non-2xx answer or a socket error (such a figure is void and printed as VOID).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dur=${DURATION_S:-10} conns=${CONNS:-32} engine_s=${ENGINE_S:-2}
durability=${DURABILITY:-batch} skip=" ${SKIP:-} " modes=${MODES:-none batch always}
started=$(date -u '+%Y-%m-%d %H:%M UTC')
command_line="${DURATION_S:+DURATION_S=$DURATION_S }${CONNS:+CONNS=$CONNS }${ENGINE_S:+ENGINE_S=$ENGINE_S }${DURABILITY:+DURABILITY=$DURABILITY }${SKIP:+SKIP=\"$SKIP\" }make bench"
say() { echo "bench: $*" >&2; }
skipped() { [[ $skip == *" $1 "* ]]; }

# --- what the run needs ------------------------------------------------------------
need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }
have wrk || need_pkgs+=(wrk)
have curl || need_pkgs+=(curl)
have python3 || need_pkgs+=(python3)
if ! skipped peers; then
  have nginx || need_pkgs+=(nginx-light)
  have redis-server || need_pkgs+=(redis-server)
  have redis-benchmark || need_pkgs+=(redis-tools)
  ls /usr/lib/postgresql/*/bin/pgbench >/dev/null 2>&1 && have psql || need_pkgs+=(postgresql)
fi
if [[ -n ${PERF:-} ]] && ! have perf; then need_pkgs+=(linux-perf); fi
if ((${#need_pkgs[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  say "installing ${need_pkgs[*]}"
  $sudo apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${need_pkgs[@]}" >&2
fi
if [[ ! -x bin/atpd || ! -x build/release/bench/bench_engine ]]; then
  make -j2 bin/atpd build/release/bench/bench_engine >&2
fi
peers=${PEERS_DIR:-}
if [[ -z $peers ]]; then
  for d in "$root/../shared/peers" "$(dirname "$root")/shared/peers" /work/shared/peers; do
    [[ -f $d/run-peers.sh ]] && { peers=$(cd "$d" && pwd); break; }
  done
fi
if ! skipped peers && [[ ! -f ${peers:-/nonexistent}/run-peers.sh ]]; then
  say "run-peers.sh not found (looked in ../shared/peers; set PEERS_DIR)"; exit 2
fi

# --- figures -----------------------------------------------------------------------
declare -A fig=()
order=()
put() { fig[$1]=$2; order+=("$1"); echo "$1 $2"; }
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
put load_avg_start "$load_start"

work=$(mktemp -d /tmp/atpd-bench.XXXXXX)
atpd_pid=""
stop_atpd() {
  if [[ -n $atpd_pid ]]; then
    kill "$atpd_pid" 2>/dev/null || true
    wait "$atpd_pid" 2>/dev/null || true
    atpd_pid=""
  fi
}
cleanup() { stop_atpd; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a fresh atpd (new data dir, 1 thread, access log off) and loads the positions.
start_atpd() {
  stop_atpd
  local dir port
  dir=$(mktemp -d "$work/data.XXXX")
  port=$(free_port)
  bin/atpd --threads 1 --listen "127.0.0.1:$port" --data-dir "$dir" \
    --durability "$durability" --access-log off 2>>"$work/atpd.log" &
  atpd_pid=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    kill -0 "$atpd_pid" 2>/dev/null || { cat "$work/atpd.log" >&2; exit 1; }
    sleep 0.1
  done
  url="http://127.0.0.1:$port"
  python3 bench/load_positions.py "127.0.0.1:$port"
}

void=0
# run_wrk NAME SCRIPT ARGS...: one wrk run against $url, figures NAME_rps, NAME_p99_ms.
run_wrk() {
  local name=$1 script=$2; shift 2
  local out="$work/$name.wrk" perf_pid=""
  say "wrk $name (${dur}s, -t1 -c$conns)"
  if [[ -n ${PERF:-} && -n $atpd_pid ]]; then
    mkdir -p build/bench
    perf record -g -o "build/bench/perf-$name.data" -p "$atpd_pid" -- sleep "$dur" \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  wrk -t1 -c"$conns" -d"${dur}s" --latency -s "bench/wrk/$script" "$url" -- "$@" >"$out"
  [[ -z $perf_pid ]] || wait "$perf_pid" || true
  sed 's/^/  /' "$out" >&2
  local rps p99 non2xx sockerr checked
  rps=$(awk '$1 == "wrk_rps" {print $2}' "$out")
  p99=$(awk '$1 == "wrk_p99_us" {printf "%.2f", $2 / 1000}' "$out")
  non2xx=$(awk '$1 == "wrk_non2xx" {print $2}' "$out")
  checked=$(awk '$1 == "wrk_checked" {print $2}' "$out")
  sockerr=$(awk '$1 == "wrk_socket_errors" {print $2}' "$out")
  if [[ -z $rps || ${checked:-0} -eq 0 || ${non2xx:-1} -ne 0 || ${sockerr:-1} -ne 0 ]]; then
    say "$name is VOID: non2xx=${non2xx:-?} socket_errors=${sockerr:-?} checked=${checked:-?}"
    void=1
    put "${name}_rps" VOID
  else
    put "${name}_rps" "$rps"
  fi
  put "${name}_p99_ms" "$p99"
  put "${name}_non2xx" "${non2xx:-?}"
  if [[ -n $perf_pid ]]; then
    perf report -i "build/bench/perf-$name.data" --no-children --percent-limit 1.5 \
      --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -30 | sed "s/^/  perf $name: /" >&2
  fi
}

# --- engine micro-benchmark --------------------------------------------------------
if ! skipped engine; then
  say "bench_engine ($engine_s s per figure)"
  while read -r k v; do put "engine_$k" "$v"; done < <(build/release/bench/bench_engine "$engine_s")
fi
# --- atpd over HTTP ----------------------------------------------------------------
tag=b$(date +%s)
if ! skipped http; then
  start_atpd
  run_wrk atpd_get_json availability.lua json
  run_wrk atpd_get_msgpack availability.lua msgpack
  # Each reservation run gets a fresh server: reservations are held 15 min and the
  # engine keeps at most 1M live plus retained ones.
  start_atpd
  run_wrk atpd_reserve_json reserve.lua json "$tag-j"
  start_atpd
  run_wrk atpd_reserve_msgpack reserve.lua msgpack "$tag-m"
  stop_atpd
fi
# --- the durability modes, one fresh server each --------------------------------------
if ! skipped modes; then
  saved_durability=$durability
  for durability in $modes; do
    start_atpd
    run_wrk "atpd_reserve_json_$durability" reserve.lua json "$tag-$durability"
  done
  stop_atpd
  durability=$saved_durability
fi

# --- peers, same run, same duration and connections ----------------------------------
if ! skipped peers; then
  say "peers: $peers/run-peers.sh (${dur}s, CONNS=$conns)"
  while read -r k v; do
    [[ -n $k && -n $v ]] && put "$k" "$v"
  done < <(DURATION_S=$dur CONNS=$conns bash "$peers/run-peers.sh" ${PEER_SET:-})
  # run-peers.sh's Redis reservations are all refused (its keys are not the ones
  # redis-benchmark asks for; bench/peers_redis.sh says why): the same Redis figures with
  # every reservation granted and written, which the ratios below use.
  if [[ -z ${PEER_SET:-} || " ${PEER_SET} " == *" redis"* ]]; then
    say "peers: bench/peers_redis.sh (${dur}s, CONNS=$conns)"
    while read -r k v; do
      [[ -n $k && -n $v ]] && put "$k" "$v"
    done < <(DURATION_S=$dur CONNS=$conns PEERS_DIR=$peers bash bench/peers_redis.sh)
  fi
fi
# Control: the same nginx fixed response driven by the same wrk client as atpd (Lua
# request generator and response hook), so the client's own cost shows: on a 2-core
# machine wrk shares the CPUs with the server.
if ! skipped peers && ! skipped http && [[ -f $peers/nginx.conf.template ]]; then
  nport=$(free_port); ndir=$(mktemp -d "$work/nginx.XXXX"); chmod 755 "$work" "$ndir"
  sed "s#@DIR@#$ndir#g; s#@PORT@#$nport#" "$peers/nginx.conf.template" >"$ndir/nginx.conf"
  nginx -c "$ndir/nginx.conf" -p "$ndir" >/dev/null 2>&1 &
  nginx_pid=$!
  sleep 0.5
  url="http://127.0.0.1:$nport"
  run_wrk nginx_fixed_json_same_client availability.lua json
  kill "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
fi
load_end=$(cut -d' ' -f1-3 /proc/loadavg)
put load_avg_end "$load_end"
# Last: the exit of a process that held 1 GiB of huge pages slows the machine for a
# few seconds (a wrk run right after it had a p99 of 6-16 ms instead of 0.4 ms).
if ! skipped mem; then
  say "bench_engine mem"
  while read -r k v; do put "engine_$k" "$v"; done < <(build/release/bench/bench_engine mem)
fi

# --- ratios ------------------------------------------------------------------------
ratio_names=()
ratio() { # ratio NAME NUM DEN
  local n=${fig[$2]:-} d=${fig[$3]:-}
  [[ $n =~ ^[0-9.]+$ && $d =~ ^[0-9.]+$ && $d != 0 ]] || return 0
  fig[$1]=$(awk -v n="$n" -v d="$d" 'BEGIN {printf "%.2f", n / d}')
  ratio_names+=("$1")
  echo "$1 ${fig[$1]}"
}
ratio ratio_get_json_vs_nginx atpd_get_json_rps nginx_fixed_json_rps
ratio ratio_reserve_batch_vs_none atpd_reserve_json_batch_rps atpd_reserve_json_none_rps
ratio ratio_reserve_always_vs_none atpd_reserve_json_always_rps atpd_reserve_json_none_rps
ratio ratio_reserve_none_vs_redis_p1 atpd_reserve_json_none_rps redis_granted_evalsha_reserve_p1_ops
ratio ratio_reserve_batch_vs_redis_everysec atpd_reserve_json_batch_rps redis_granted_evalsha_reserve_aof_everysec_p1_ops
ratio ratio_reserve_always_vs_redis_always atpd_reserve_json_always_rps redis_granted_evalsha_reserve_aof_always_p1_ops
ratio ratio_get_msgpack_vs_nginx atpd_get_msgpack_rps nginx_fixed_json_rps
ratio ratio_get_json_vs_nginx_same_client atpd_get_json_rps nginx_fixed_json_same_client_rps
ratio ratio_nginx_same_client_vs_plain nginx_fixed_json_same_client_rps nginx_fixed_json_rps
ratio ratio_reserve_json_vs_redis_p1 atpd_reserve_json_rps redis_granted_evalsha_reserve_p1_ops
ratio ratio_reserve_msgpack_vs_redis_p1 atpd_reserve_msgpack_rps redis_granted_evalsha_reserve_p1_ops
ratio ratio_get_json_vs_redis_hmget_p1 atpd_get_json_rps redis_granted_hmget_p1_ops
ratio ratio_get_json_vs_postgres_read atpd_get_json_rps postgres_read_tps
ratio ratio_get_msgpack_vs_postgres_read atpd_get_msgpack_rps postgres_read_tps
ratio ratio_reserve_json_vs_postgres atpd_reserve_json_rps postgres_reserve_tps
ratio ratio_reserve_msgpack_vs_postgres atpd_reserve_msgpack_rps postgres_reserve_tps

verdict() { # verdict RATIO: met / missed / n/a for a ">= 1" target
  local r=${fig[$1]:-}
  [[ -n $r ]] || { echo "n/a"; return; }
  awk -v r="$r" 'BEGIN {print (r >= 1.0) ? "met" : "missed"}'
}

# --- Markdown block ----------------------------------------------------------------
model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
v() { echo "${fig[$1]:-n/a}"; }
{
  echo
  echo "<!-- results -->"
  echo "Date: $started. Machine: $(nproc) CPUs, ${model:-unknown CPU}, $(uname -sr)."
  echo "Command: \`$command_line\` (wrk -t1 -c$conns -d${dur}s --latency; atpd --threads 1"
  echo "--durability $durability --access-log off, fresh --data-dir; peers: run-peers.sh with"
  echo "DURATION_S=$dur CONNS=$conns). Load average (1/5/15 min): $load_start at start, $load_end at end."
  echo
  echo "| figure | atpd | peer | ratio | target |"
  echo "|---|---:|---:|---:|---|"
  echo "| GET availability JSON, rps | $(v atpd_get_json_rps) | nginx fixed $(v nginx_fixed_json_rps) | $(v ratio_get_json_vs_nginx) | >= 1: $(verdict ratio_get_json_vs_nginx) |"
  echo "| GET availability msgpack, rps | $(v atpd_get_msgpack_rps) | nginx fixed $(v nginx_fixed_json_rps) | $(v ratio_get_msgpack_vs_nginx) | >= 1: $(verdict ratio_get_msgpack_vs_nginx) |"
  echo "| GET availability JSON, rps | $(v atpd_get_json_rps) | nginx fixed, same wrk script as atpd $(v nginx_fixed_json_same_client_rps) | $(v ratio_get_json_vs_nginx_same_client) | (control) |"
  echo "| POST reservation JSON, rps | $(v atpd_reserve_json_rps) | Redis EVALSHA p1, granted $(v redis_granted_evalsha_reserve_p1_ops) | $(v ratio_reserve_json_vs_redis_p1) | >= 1: $(verdict ratio_reserve_json_vs_redis_p1) |"
  echo "| POST reservation msgpack, rps | $(v atpd_reserve_msgpack_rps) | Redis EVALSHA p1, granted $(v redis_granted_evalsha_reserve_p1_ops) | $(v ratio_reserve_msgpack_vs_redis_p1) | >= 1: $(verdict ratio_reserve_msgpack_vs_redis_p1) |"
  echo "| GET availability JSON, rps | $(v atpd_get_json_rps) | Redis HMGET p1, existing fields $(v redis_granted_hmget_p1_ops) | $(v ratio_get_json_vs_redis_hmget_p1) | |"
  echo "| GET availability JSON, rps | $(v atpd_get_json_rps) | PostgreSQL SELECT $(v postgres_read_tps) | $(v ratio_get_json_vs_postgres_read) | |"
  echo "| GET availability msgpack, rps | $(v atpd_get_msgpack_rps) | PostgreSQL SELECT $(v postgres_read_tps) | $(v ratio_get_msgpack_vs_postgres_read) | |"
  echo "| POST reservation JSON, rps | $(v atpd_reserve_json_rps) | PostgreSQL UPDATE $(v postgres_reserve_tps) | $(v ratio_reserve_json_vs_postgres) | |"
  echo "| POST reservation msgpack, rps | $(v atpd_reserve_msgpack_rps) | PostgreSQL UPDATE $(v postgres_reserve_tps) | $(v ratio_reserve_msgpack_vs_postgres) | |"
  echo
  echo "Durability modes (POST reservation JSON, one fresh server each): none $(v atpd_reserve_json_none_rps) rps"
  echo "(p99 $(v atpd_reserve_json_none_p99_ms) ms), batch $(v atpd_reserve_json_batch_rps) (p99 $(v atpd_reserve_json_batch_p99_ms) ms),"
  echo "always $(v atpd_reserve_json_always_rps) (p99 $(v atpd_reserve_json_always_p99_ms) ms); Redis AOF, every reservation granted"
  echo "(bench/peers_redis.sh): everysec $(v redis_granted_evalsha_reserve_aof_everysec_p1_ops), always $(v redis_granted_evalsha_reserve_aof_always_p1_ops)"
  echo "(run-peers.sh's, every reservation refused: $(v redis_evalsha_reserve_aof_everysec_p1_ops) and $(v redis_evalsha_reserve_aof_always_p1_ops)); none against Redis"
  echo "without persistence $(v ratio_reserve_none_vs_redis_p1) (the HTTP rows above run --durability $durability). batch/none $(v ratio_reserve_batch_vs_none)"
  echo "(target >= 0.9), batch/everysec $(v ratio_reserve_batch_vs_redis_everysec) (>= 1), always/always $(v ratio_reserve_always_vs_redis_always) (>= 1)."
  echo
  echo "atpd p99 latency (ms): GET JSON $(v atpd_get_json_p99_ms), GET msgpack $(v atpd_get_msgpack_p99_ms),"
  echo "POST JSON $(v atpd_reserve_json_p99_ms), POST msgpack $(v atpd_reserve_msgpack_p99_ms)."
  echo "Non-2xx answers (a run with any is void): GET JSON $(v atpd_get_json_non2xx), GET msgpack"
  echo "$(v atpd_get_msgpack_non2xx), POST JSON $(v atpd_reserve_json_non2xx), POST msgpack $(v atpd_reserve_msgpack_non2xx)."
  echo
  echo '```'
  for k in "${order[@]}"; do echo "$k ${fig[$k]}"; done
  for k in "${ratio_names[@]}"; do echo "$k ${fig[$k]}"; done
  echo '```'
  echo "<!-- /results -->"
}
exit $void
