#!/usr/bin/env bash
# Runs the test suites and prints one total "N passed, N failed" as the last line.
#   tests/run.sh            everything make test runs
#   tests/run.sh unit|asan|tsan|blackbox|fuzz [seconds]
# Every suite ends with its own "N passed, N failed" line; a suite that ends
# without one (a crash) counts as one failure.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:-all}
total_pass=0 total_fail=0
log_dir=build/test-logs; mkdir -p "$log_dir"

suite() { # name, command...
  local name=$1; shift
  local log="$log_dir/$name.log"
  mkdir -p "$(dirname "$log")"
  echo "== $name"
  "$@" >"$log" 2>&1
  local rc=$?
  grep -E '^(FAIL|  )' "$log" | head -40
  local last; last=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
  if [[ -z $last ]]; then
    echo "   no summary line (exit $rc); last lines of $log:"; tail -15 "$log" | sed 's/^/   /'
    total_fail=$((total_fail + 1)); return
  fi
  local p f; p=$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed.*/\2/' <<<"$last"); f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$last")
  if ((rc != 0 && f == 0)); then f=1; echo "   exit $rc"; fi
  echo "   $p passed, $f failed"
  total_pass=$((total_pass + p)); total_fail=$((total_fail + f))
}

run_variant() { # variant
  local v=$1 t
  for t in build/"$v"/tests/*/test_*; do
    [[ -x $t ]] || continue
    suite "$v/${t#build/"$v"/tests/}" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 "$t"
  done
}

case $mode in
  unit) run_variant release ;;
  asan) run_variant asan ;;
  tsan) run_variant tsan ;;
  blackbox) suite blackbox /usr/bin/python3 tests/blackbox/run.py ;;
  fuzz)
    for f in build/fuzz/fuzz_*; do
      [[ -x $f ]] || continue
      n=$(basename "$f"); corpus=tests/fuzz/corpus/${n#fuzz_}; work=build/fuzz/work-$n; mkdir -p "$work"
      suite "fuzz/$n" tests/fuzz/run-one.sh "$f" "$corpus" "$work" "${2:-60}"
    done ;;
  all)
    run_variant release; run_variant asan; run_variant tsan
    [[ -f tests/blackbox/run.py ]] && suite blackbox /usr/bin/python3 tests/blackbox/run.py ;;
  *) echo "usage: tests/run.sh [unit|asan|tsan|blackbox|fuzz [seconds]]" >&2; exit 2 ;;
esac
echo "$total_pass passed, $total_fail failed"
((total_fail == 0))
