#!/bin/sh
# check-prefetch.sh - fails if a release object has fewer prefetch
# instructions than its source has __builtin_prefetch calls.
#
# GCC 12 drops a static helper whose only effects are prefetches, and every
# call to it, as dead code (its mod-ref analysis counts a prefetch as no
# effect): the ticker's look-ahead was built that way without a word from the
# compiler. Such helpers are now ATP_PREFETCHER (always inlined); this check
# keeps a new one from slipping back. x86-64 only, where the instructions
# are named prefetch*.
set -eu
[ "$(uname -m)" = x86_64 ] || exit 0
status=0
for src in src/*/*.c; do
  want=$(grep -c '__builtin_prefetch(' "$src" || true)
  [ "$want" -gt 0 ] || continue
  obj=build/release/obj/${src#src/}; obj=${obj%.c}.o
  have=$(objdump -d --no-show-raw-insn "$obj" | grep -c '	prefetch' || true)
  if [ "$have" -lt "$want" ]; then
    echo "check-prefetch: $obj has $have prefetch instructions; $src asks for $want" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "check-prefetch: every prefetch the sources ask for is in the objects"
exit $status
