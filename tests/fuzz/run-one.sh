#!/usr/bin/env bash
# Runs one libFuzzer harness time-boxed, on a copy of its seed corpus.
#   tests/fuzz/run-one.sh BINARY CORPUS_DIR WORK_DIR SECONDS
# The copy in WORK_DIR/corpus keeps what earlier runs found; the checked-in
# seeds are never written to. A missing CORPUS_DIR starts from nothing.
# Last line: "1 passed, 0 failed" when the run ended clean, "0 passed, 1 failed"
# when libFuzzer found a crash, leak, timeout or out-of-memory (the input is
# saved under WORK_DIR/artifacts/ and the end of the log is printed).
set -uo pipefail
if (($# != 4)); then
  echo "usage: $0 BINARY CORPUS_DIR WORK_DIR SECONDS" >&2
  exit 2
fi
bin=$1 corpus=$2 work=$3 seconds=$4
mkdir -p "$work/corpus" "$work/artifacts"
if [[ -d $corpus ]]; then
  cp -R "$corpus"/. "$work/corpus"/
fi
log=$work/fuzz.log
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$work/corpus" >"$log" 2>&1
rc=$?
grep -E '^(stat::number_of_executed_units|#[0-9]+ +DONE)' "$log" | tail -2
if ((rc == 0)); then
  echo "1 passed, 0 failed"
  exit 0
fi
echo "fuzzer exit $rc; end of $log:"
tail -30 "$log"
echo "0 passed, 1 failed"
exit 1
