#!/usr/bin/env bash
# bench/modes_ab.sh MODE [SECONDS] - one durability mode on a fresh server, with the
# journal's own figures: POST reservation JSON, wrk -t1 -c32 (bench/wrk/reserve.lua),
# one server thread. For A/B runs of the group commit, alternate binaries or settings:
#   BIN=/tmp/base/bin/atpd bench/modes_ab.sh batch 5; bench/modes_ab.sh batch 5
#   ATPD_COMMIT_ON_LOOP=0 bench/modes_ab.sh batch 5   (the writer thread alone)
#   KEEP=/tmp/wrk.out bench/modes_ab.sh batch 5        (keeps wrk's own output)
#   DATA_PARENT=/dev/shm bench/modes_ab.sh batch 5     (the data dir on tmpfs: fsync free)
# Prints one line: rps, p99, the server's CPU us per request (utime+stime of the whole
# process over the run), groups, records per group, the loop's own rounds and its
# hand-offs to the writer thread, mean fdatasync, zero-fill bytes and the zero-fill time
# in all; then the fdatasync histogram (cumulative counts per upper bound in seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: bench/modes_ab.sh none|batch|always [seconds]} secs=${2:-5}
bin=${BIN:-bin/atpd}
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
d=$(mktemp -d "${DATA_PARENT:-/tmp}/atpd-modes.XXXXXX")
trap 'kill "$pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] && cp "$d/wrk" "$KEEP"; rm -rf "$d"' EXIT
"$bin" --threads 1 --listen "127.0.0.1:$port" --data-dir "$d" --durability "$mode" \
  --access-log off 2>"$d/log" &
pid=$!
for _ in $(seq 100); do curl -sf "localhost:$port/readyz" >/dev/null && break; sleep 0.1; done
python3 bench/load_positions.py "127.0.0.1:$port" >/dev/null
curl -s "localhost:$port/metrics" >"$d/m0"
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
wrk -t1 -c32 -d"${secs}s" --latency -s bench/wrk/reserve.lua "http://127.0.0.1:$port" \
  -- json "ab$RANDOM" >"$d/wrk"
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
curl -s "localhost:$port/metrics" >"$d/m1"
python3 - "$d" "$mode" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import re, sys
d, mode, t0, t1, hz = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def load(f):
    m = {}
    for l in open(f):
        if l.startswith('#') or not l.strip():
            continue
        k, v = l.rsplit(' ', 1)
        try:
            m[k] = float(v)
        except ValueError:
            pass
    return m
a, b = load(d + "/m0"), load(d + "/m1")
dd = lambda k: b.get(k, 0) - a.get(k, 0)
w = open(d + "/wrk").read()
rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", w).group(1))
reqs = float(re.search(r"([0-9]+) requests in", w).group(1))
p99 = re.search(r"^\s+99%\s+(\S+)", w, re.M).group(1)
g = dd('atpd_journal_group_records_count')
print("%s rps=%.0f p99=%s cpu_us/req=%.2f groups=%d recs/group=%.1f loop_rounds=%d "
      "handoffs=%d fsync_mean_us=%.0f zero_bytes=%d zero_ms=%.1f" % (
          mode, rps, p99, (t1 - t0) / hz * 1e6 / reqs, g, dd('atpd_journal_group_records_sum') / g if g else 0,
          dd('atpd_journal_loop_rounds_total'), dd('atpd_journal_loop_handoffs_total'),
          dd('atpd_journal_fsync_seconds_sum') * 1e6 / max(1, dd('atpd_journal_fsync_seconds_count')),
          dd('atpd_journal_prealloc_bytes_total'),
          dd('atpd_journal_prealloc_seconds_total') * 1e3))
hist = [(re.search(r'le="([^"]+)"', k).group(1), int(v)) for k, v in b.items()
        if k.startswith('atpd_journal_fsync_seconds_bucket')]
print("fsync histogram: " + " ".join("le %s: %d" % h for h in hist))
PY
