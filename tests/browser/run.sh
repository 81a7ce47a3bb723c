#!/usr/bin/env bash
# Browser test of the neuron explorer (server/static/): starts the real daemon
# on a free loopback port with a fresh data dir, then drives the page in
# headless Chromium (tests/browser/explorer.test.mjs) and checks what it shows
# against the same requests sent straight to the API.
#   tests/browser/run.sh [BUILD]      BUILD defaults to build (the daemon is BUILD/deepeverestd)
# Prints "N passed, M failed" last (after a Check-style "P%: Checks: ..." line,
# so tests/run_all.sh can count it with run_suite); exits non-zero on failure.
# Screenshots: tests/out/browser/*.png. Needs node + npm, Debian's chromium
# (apt-get install -y chromium) and models/fmnist_cnn.pt. DE_STATIC=DIR serves the
# page from DIR instead of server/static (to check that a broken page fails);
# DE_SHARDS=N runs it through a coordinator over N shards (the same answers).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
DAEMON="$BUILD/deepeverestd"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
OUT="$ROOT/tests/out/browser"

# Both summary lines: Check's (which tests/run_all.sh counts) and the plain one.
summary_fail() { echo "0%: Checks: 1, Failures: 1, Errors: 0"; echo "0 passed, 1 failed"; }
fail() { echo "browser test: $*" >&2; summary_fail; exit 1; }

[ -x "$DAEMON" ] || fail "no daemon at $DAEMON (run make)"
[ -x "$CHROMIUM" ] || fail "no Chromium at $CHROMIUM (apt-get install -y chromium)"
[ -f "$ROOT/models/fmnist_cnn.pt" ] || fail "no demo model at models/fmnist_cnn.pt"
command -v node >/dev/null || fail "node is not installed"

mkdir -p "$OUT"
if [ ! -f "$HERE/node_modules/playwright-core/package.json" ]; then
  echo "installing playwright-core (npm)..."
  (cd "$HERE" && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) \
    >"$OUT/npm-install.log" 2>&1 || { cat "$OUT/npm-install.log" >&2; fail "npm install failed"; }
fi
DATA=$(mktemp -d /tmp/de-browser-XXXXXX)
PIDS=()
cleanup() {
  for PID in "${PIDS[@]}"; do
    if kill -0 "$PID" 2>/dev/null; then
      kill -TERM "$PID" 2>/dev/null
      for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$PID" 2>/dev/null
    fi
  done
  rm -rf "$DATA"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
wait_up() { # pid port log
  for _ in $(seq 1 300); do
    kill -0 "$1" 2>/dev/null || break
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' "http://127.0.0.1:$2/v1/health" 2>/dev/null; then
      return 0
    fi
    sleep 0.2
  done
  tail -30 "$3" >&2
  return 1
}
STATIC="${DE_STATIC:-$ROOT/server/static}"
PORT=$(free_port)
if [ "${DE_SHARDS:-0}" -gt 0 ]; then
  # DE_SHARDS=N: the same test through a coordinator over N shard daemons
  urls=()
  for i in $(seq 0 $((DE_SHARDS - 1))); do
    sp=$(free_port); mkdir -p "$DATA/shard-$i"
    "$DAEMON" --data "$DATA/shard-$i" --listen "127.0.0.1:$sp" --threads 1 >"$OUT/shard-$i.log" 2>&1 &
    PIDS+=($!)
    wait_up $! "$sp" "$OUT/shard-$i.log" || fail "shard $i did not start"
    urls+=("http://127.0.0.1:$sp")
  done
  "$DAEMON" --coordinator --shards "$(IFS=,; echo "${urls[*]}")" --listen "127.0.0.1:$PORT" --static "$STATIC" \
    >"$OUT/daemon.log" 2>&1 &
else
  "$DAEMON" --data "$DATA" --listen "127.0.0.1:$PORT" --static "$STATIC" >"$OUT/daemon.log" 2>&1 &
fi
PIDS+=($!)
wait_up $! "$PORT" "$OUT/daemon.log" || fail "the daemon did not start"

DE_URL="http://127.0.0.1:$PORT" DE_ROOT="$ROOT" DE_OUT="$OUT" CHROMIUM="$CHROMIUM" \
  timeout 170 node "$HERE/explorer.test.mjs"
rc=$?
if [ $rc -eq 124 ]; then echo "browser test: timed out after 170 s" >&2; summary_fail; fi
if [ $rc -ne 0 ]; then echo "daemon log (last lines):" >&2; tail -15 "$OUT/daemon.log" >&2; fi
exit $rc
