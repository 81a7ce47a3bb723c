#!/usr/bin/env bash
# Bounded load test (issue 7): 64 connections for DURATION seconds (default
# 60) mixing health, top-k, kNN and thumbnails against a fresh local daemon
# with the demo model and data; reports requests/s and p99, the daemon's
# peak RSS against --cache-mb, and fails on any 5xx, a crash, or RSS over
# cache + OVERHEAD_MB (default 1024: model, torch arenas, inference buffers).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
CACHE_MB=${CACHE_MB:-256}
OVERHEAD_MB=${OVERHEAD_MB:-1024}
BIN=${BIN:-./build/deepeverestd} # another build to compare against
command -v wrk >/dev/null || apt-get install -y -q --no-install-recommends wrk >/dev/null
DATA=$(mktemp -d); trap 'kill $PID 2>/dev/null; rm -rf "$DATA"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
U=http://127.0.0.1:$PORT
"$BIN" --data "$DATA" --listen 127.0.0.1:$PORT --cache-mb $CACHE_MB >"$DATA/log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -s $U/v1/health >/dev/null && break; sleep 0.1; done
FM=/usr/share/datasets/fashion-mnist
curl -sf -X POST $U/v1/models -d "{\"name\":\"cnn\",\"path\":\"$PWD/models/fmnist_cnn.pt\"}" >/dev/null
curl -sf -X POST $U/v1/datasets -d "{\"name\":\"fmnist\",\"path\":\"$FM/t10k-images-idx3-ubyte.gz\",\"labels_path\":\"$FM/t10k-labels-idx1-ubyte.gz\",\"scale\":0.00392156862745098,\"mean\":0.286,\"std\":0.353}" >/dev/null
job=$(curl -sf -X POST $U/v1/indexes -d '{"model":"cnn","dataset":"fmnist","layer":"fc1"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"])')
until curl -s $U/v1/jobs/$job | grep -q '"done"\|"failed"'; do sleep 0.2; done
q0=$(curl -s $U/metrics | awk '/^deepeverest_queries_(topk|knn)_total/{s+=$2} END{print s+0}')
peak=0
( while kill -0 $PID 2>/dev/null; do awk '/VmRSS/{print $2}' /proc/$PID/status; sleep 0.2; done ) >"$DATA/rss" &
out=$(wrk -t2 -c64 -d${DURATION}s --timeout 30s -s scripts/loadtest.lua $U)
echo "$out"
kill -0 $PID || { echo "FAIL: the daemon died"; tail -20 "$DATA/log"; exit 1; }
peak=$(sort -n "$DATA/rss" | tail -1)
fivexx=$(curl -s $U/metrics | awk '/^deepeverest_http_errors_5xx_total/{print $2}')
q1=$(curl -s $U/metrics | awk '/^deepeverest_queries_(topk|knn)_total/{s+=$2} END{print s+0}')
# wrk's rate counts every request; the queries' own (top-k and kNN answered)
# come from the daemon's counters
echo "requests/s: $(echo "$out" | awk '/Requests\/sec/{print $2}')  queries/s: $(( (q1 - q0) / DURATION ))  5xx: $fivexx  peak RSS: $((peak/1024)) MiB (cache bound $CACHE_MB MiB + overhead $OVERHEAD_MB MiB)"
[ "$fivexx" = 0 ] || { echo "FAIL: 5xx answers"; exit 1; }
[ $((peak/1024)) -le $((CACHE_MB + OVERHEAD_MB)) ] || { echo "FAIL: RSS over bound"; exit 1; }
echo "load test passed"
