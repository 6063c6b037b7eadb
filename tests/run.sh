#!/usr/bin/env bash
# Runs the test suites and prints one total "N passed, N failed" as the last line.
#   tests/run.sh            everything make test runs
#   tests/run.sh unit|asan|tsan|blackbox|blackbox-tsan|openapi|fuzz [seconds]
# Every suite ends with its own "N passed, N failed" line, or pytest's closing
# "=== N passed, N failed, N errors in Ts ===" (errors count as failures); a
# suite that ends without one (a crash) counts as one failure.
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
  grep -E "${FAIL_LINES:-^(FAIL|  )}" "$log" | head -40
  local p f last
  last=$(grep -E '^=+ .*[0-9]+ (passed|failed|errors?)\b.* in [0-9.]+s.* =+$' "$log" | tail -1)
  if [[ -n $last ]]; then # pytest
    p=$(grep -oE '[0-9]+ passed' <<<"$last" | grep -oE '[0-9]+' || echo 0)
    f=0; for n in $(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | grep -oE '^[0-9]+'); do f=$((f + n)); done
  else
    last=$(grep -E '^([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    if [[ -z $last ]]; then
      echo "   no summary line (exit $rc); last lines of $log:"; tail -15 "$log" | sed 's/^/   /'
      total_fail=$((total_fail + 1)); return
    fi
    p=$(sed -E 's/^([A-Za-z]+: )?([0-9]+) passed.*/\2/' <<<"$last"); f=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$last")
  fi
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

# The black-box suite under pytest (tests/blackbox/conftest.py); extra
# arguments go to pytest, e.g. tests/run.sh blackbox -k reservations.
blackbox() {
  FAIL_LINES='^(FAILED|ERROR) |^openapi: ' suite blackbox /usr/bin/python3 -m pytest tests/blackbox -n 2 --dist loadfile --tb=short "$@"
}

# The durability module again against bin/atpd-tsan: the journal's writer
# thread, the loop's own commits and the parked answers under ThreadSanitizer
# (tests/tsan.supp: libuv is not instrumented). Its ASan runs are skipped.
blackbox_tsan() {
  FAIL_LINES='^(FAILED|ERROR) ' suite blackbox-tsan env ATPD_BIN=bin/atpd-tsan ATPD_ASAN=0 \
    TSAN_OPTIONS="exitcode=86 suppressions=$PWD/tests/tsan.supp" \
    /usr/bin/python3 -m pytest tests/blackbox/test_durability.py -n 2 --dist loadfile --tb=short "$@"
}

# proto/openapi.yaml through redocly lint (proto/redocly.yaml: any problem is
# an error); one check in the totals.
openapi_lint() {
  local log=$log_dir/openapi-lint.log redocly=build/npm/node_modules/.bin/redocly
  echo "== openapi-lint"
  if [[ ! -x $redocly ]]; then
    echo "   $redocly is missing (make deps installs it)"; total_fail=$((total_fail + 1)); return
  fi
  if "$redocly" lint --config proto/redocly.yaml --format=stylish proto/openapi.yaml >"$log" 2>&1; then
    echo "   1 passed, 0 failed"; total_pass=$((total_pass + 1))
  else
    grep -E '^ +[0-9]+:[0-9]+ ' "$log" | head -40; tail -2 "$log" | sed 's/^/   /'
    echo "   0 passed, 1 failed"; total_fail=$((total_fail + 1))
  fi
}

case $mode in
  unit) run_variant release ;;
  asan) run_variant asan ;;
  tsan) run_variant tsan ;;
  blackbox) shift; blackbox "$@" ;;
  blackbox-tsan) shift; blackbox_tsan "$@" ;;
  openapi) openapi_lint ;;
  fuzz)
    for f in build/fuzz/fuzz_*; do
      [[ -x $f ]] || continue
      n=$(basename "$f"); corpus=tests/fuzz/corpus/${n#fuzz_}; work=build/fuzz/work-$n; mkdir -p "$work"
      suite "fuzz/$n" tests/fuzz/run-one.sh "$f" "$corpus" "$work" "${2:-60}"
    done ;;
  all)
    run_variant release; run_variant asan; run_variant tsan
    openapi_lint; blackbox; blackbox_tsan ;;
  *) echo "usage: tests/run.sh [unit|asan|tsan|blackbox [pytest args]|blackbox-tsan|openapi|fuzz [seconds]]" >&2; exit 2 ;;
esac
echo "$total_pass passed, $total_fail failed"
((total_fail == 0))
