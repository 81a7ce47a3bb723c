#!/usr/bin/env bash
# make bench: deepeverest against ReprocessAll and PreprocessAll on the demo
# model over Fashion-MNIST train+test (scripts/bench.py), then the scaling run
# on a synthetic dataset of up to 1,000,000 inputs (scripts/bench_scale.py).
# Results: bench/results/{bench.json,bench.md,speedups.png,scale.json,scale.md,scale.png}.
#   BENCH_QUICK=1      10,000 inputs, fewer repetitions (smoke test; results under bench/tmp/)
#   BENCH_SCALE=0      skip the scaling run;  BENCH_MAIN=0 skip the main run
#   BENCH_ARGS="..."   extra arguments for scripts/bench.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3   # Debian's: it sees python3-torch and python3-matplotlib

if ! $PY -c 'import matplotlib' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "bench: installing python3-matplotlib (for the chart)"
    apt-get install -y --no-install-recommends python3-matplotlib >/dev/null || true
  else
    echo "bench: python3-matplotlib is missing; the charts will be skipped (sudo apt-get install python3-matplotlib)"
  fi
fi
[ -x build/deepeverestd ] || { echo "bench: build/deepeverestd is missing: run make" >&2; exit 1; }

quick=()
[ "${BENCH_QUICK:-0}" = 1 ] && quick=(--quick)
rc=0
if [ "${BENCH_MAIN:-1}" = 1 ]; then
  # shellcheck disable=SC2086
  $PY scripts/bench.py "${quick[@]}" ${BENCH_ARGS:-} || rc=$?
fi
if [ "${BENCH_SCALE:-1}" = 1 ]; then
  $PY scripts/bench_scale.py "${quick[@]}" || rc=$?
fi
exit $rc
