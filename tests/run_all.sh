#!/usr/bin/env bash
# Runs the suites against the binaries in BUILD (default build/): the Check
# unit suites, the shim suite, then the integration tests that start the real
# daemon. WHAT (default all) picks: unit (the Check suites), integration (the
# shim suite and the integration tests) or all. Prints one closing line
# "N passed, M failed" over them and exits non-zero if anything failed.
set -u
BUILD=${1:-build}
WHAT=${2:-all}
case "$WHAT" in all|unit|integration) ;; *) echo "run_all.sh: WHAT is all, unit or integration" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
passed=0; failed=0; failed_suites=()
log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT

# Check prints "NN%: Checks: C, Failures: F, Errors: E" per suite.
count_check() {
  local out=$1 line c f e
  line=$(grep -E "^[0-9]+%: Checks: [0-9]+" "$out" | tail -1)
  if [ -z "$line" ]; then echo "0 1"; return; fi
  c=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
  f=$(sed -E 's/.*Failures: ([0-9]+).*/\1/' <<<"$line")
  e=$(sed -E 's/.*Errors: ([0-9]+).*/\1/' <<<"$line")
  echo "$((c - f - e)) $((f + e))"
}

run_suite() { # name, command...
  local name=$1; shift
  local out="$log/$name.out"
  local t0=$(date +%s)
  "$@" >"$out" 2>&1
  local rc=$?
  local p f
  read -r p f < <(count_check "$out")
  if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  printf '%-28s %4d passed %3d failed  (%ds)\n' "$name" "$p" "$f" $(( $(date +%s) - t0 ))
  if [ $rc -ne 0 ] || [ "$f" -ne 0 ]; then
    failed_suites+=("$name"); sed 's/^/    | /' "$out" | tail -60
  fi
}

if [ "$WHAT" != integration ]; then
  for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    run_suite "$(basename "$t")" "$t"
  done
fi
[ "$WHAT" = unit ] && { echo; echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit; }
if [ -x "$BUILD/tests/shim_test" ]; then
  CK_FORK=no run_suite shim_test "$BUILD/tests/shim_test"
fi

# Integration: python3 (Debian's) drives the real daemon over HTTP; each test
# file prints a Check-style summary line so it is counted the same way.
for t in tests/integration/test_*.py; do
  [ -f "$t" ] || continue
  run_suite "$(basename "$t" .py)" /usr/bin/python3 "$t" --build "$BUILD"
done

echo
[ ${#failed_suites[@]} -gt 0 ] && echo "failed suites: ${failed_suites[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
