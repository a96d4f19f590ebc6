#!/usr/bin/env bash
# Fan-out comparison: sidestream (push source), nginx+nchan and Pushpin through the same
# fanbench matrix, in one run, one table. Loopback only; every run is bounded.
#
#   tests/benches/compare.sh [OUT.jsonl]
#   PEERS="sidestream nchan" RUNS="sse:1000:100:10" tests/benches/compare.sh
#
# Needs: apt-get install -y pushpin nginx-light libnginx-mod-nchan (the peers), and the
# team's tools (fanbench, the peers' start/stop scripts) at ../shared next to the checkout,
# or wherever SIDESTREAM_SHARED points.
# Writes OUT (JSON lines), prints summarize.py's table, and draws OUT.svg (tests/benches/plot.py:
# µs CPU per delivery, p99 latency, KiB per connection; PLOT=path to put it elsewhere).
# RUNS: space-separated KIND:N:M:RATE[:deflate]. PEERS: any of "sidestream nchan pushpin".
# REPEAT=3: each run that many times, the peers alternating (sidestream, nchan, sidestream,
# …), so summarize.py's medians are not decided by one noisy moment.
# Two default runs offer more than either server sustains (1 000 subscribers × 1 000 msg/s):
# their deliveries/s are the delivery ceiling, not the offered rate. The last one is the
# connection accept rate: 15 000 SSE subscribers opened by fanbench's connect phase (its
# `connect_per_s`; storm.sh's accept mode is the same with a Python client, slower than either
# server).
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/benches/lib.sh
SHARED=${SIDESTREAM_SHARED:-../shared}
BENCH="$SHARED/bench"
if [ ! -d "$BENCH/fanbench" ]; then
  echo "compare.sh: fanbench not found at $BENCH/fanbench; put the team's tools at ../shared or set SIDESTREAM_SHARED" >&2
  exit 2
fi
OUT=${1:-/tmp/sidestream-compare.jsonl}
LOGDIR=${LOGDIR:-/tmp/sidestream-compare-logs}
PEERS=${PEERS:-"sidestream nchan pushpin"}
RUNS=${RUNS:-"sse:1000:100:10 ws:1000:100:10 longpoll:1000:100:10 sse:10000:100:10 ws:10000:100:10 ws:1000:100:10:deflate sse:1000:2000:200 sse:1000:20000:1000 ws:1000:20000:1000 sse:15000:10:10"}
REPEAT=${REPEAT:-1}
TOKEN="fanbench-publish-token-0123456789"
COMMON=(--payload-size 100 --settle-ms 2000 --drain-timeout-ms 30000
        --connect-timeout-ms 10000 --connect-phase-timeout-ms 120000 --max-seconds 400)
FANBENCH=${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}/release/fanbench
mkdir -p "$LOGDIR" /tmp/anchors/sidestream
(cd "$BENCH/fanbench" && cargo build --release -q --target-dir "${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}") || exit 1
cargo build --release -q --bin sidestream || exit 1

start_sidestream() {
  RUST_LOG=warn target/release/sidestream --config tests/benches/bench.toml > "$LOGDIR/sidestream.server.log" 2>&1 &
  echo $! > /tmp/anchors/sidestream/server.pids
  wait_port 8070
}
stop_sidestream() {
  local pid; pid=$(cat /tmp/anchors/sidestream/server.pids 2>/dev/null) || return 0
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null
}

run_one() {
  local peer=$1 kind=$2 n=$3 m=$4 rate=$5 deflate=${6:-}
  local label="$peer-$kind-n$n-m$m-r$rate${deflate:+-deflate}"
  local topic="t$(date +%s%N | tail -c 7)"
  local path; case $kind in sse) path=sse ;; ws) path=ws ;; longpoll) path=lp ;; esac
  local args=(--kind "$kind" -n "$n" -m "$m" --rate "$rate" --topic "$topic" --label "$label"
              --json-out "$OUT" --pids-file "/tmp/anchors/$peer/server.pids" "${COMMON[@]}")
  [ -n "$deflate" ] && args+=(--ws-deflate)
  case $peer in
    sidestream)
      # One --url per run: fanbench refuses two (a held long poll asks for ?wait=60).
      local url="http://127.0.0.1:8070/bench/{topic}"
      [ "$kind" = longpoll ] && url+="?wait=60"
      args+=(--url "$url" --publish-url "http://127.0.0.1:8071/publish/bench/{topic}"
             --publish-header "Authorization: Bearer $TOKEN")
      [ "$kind" = sse ] && args+=(--header "Accept: text/event-stream") ;;
    nchan)
      args+=(--url "http://127.0.0.1:8090/$path/{topic}"
             --publish-url "http://127.0.0.1:8090/$([ -n "$deflate" ] && echo pubz || echo pub)/{topic}" --pub-pipeline) ;;
    pushpin)
      args+=(--url "http://127.0.0.1:7999/$path/{topic}" --publish-url "http://127.0.0.1:5561/publish/"
             --publish-body-file "$BENCH/anchors/pushpin/publish-body.json"
             --publish-content-type application/json --pub-conns 4) ;;
  esac
  echo "=== $label  $(date +%T)"
  case $peer in
    sidestream) start_sidestream || { echo "sidestream did not start"; stop_sidestream; return; } ;;
    pushpin) PUSHPIN_WS_DEFLATE=${deflate:+1} "$BENCH/anchors/pushpin/start.sh" > "$LOGDIR/$label.start.log" 2>&1 || { echo "start failed"; "$BENCH/anchors/pushpin/stop.sh" >/dev/null 2>&1; return; } ;;
    nchan) "$BENCH/anchors/nchan/start.sh" > "$LOGDIR/$label.start.log" 2>&1 || { echo "start failed"; "$BENCH/anchors/nchan/stop.sh" >/dev/null 2>&1; return; } ;;
  esac
  sleep 1
  timeout 600 "$FANBENCH" "${args[@]}" > "$LOGDIR/$label.log" 2>&1
  echo "    rc=$? $(grep -E '^(delivery|latency):' "$LOGDIR/$label.log" | cut -c1-150 | tr '\n' '|')"
  case $peer in
    sidestream) stop_sidestream ;;
    *) "$BENCH/anchors/$peer/stop.sh" > /dev/null 2>&1 ;;
  esac
  sleep 1
}

for spec in $RUNS; do
  IFS=: read -r kind n m rate deflate <<< "$spec"
  for _ in $(seq 1 "$REPEAT"); do
    for peer in $PEERS; do run_one "$peer" "$kind" "$n" "$m" "$rate" "$deflate"; done
  done
done
python3 "$BENCH/fanbench/summarize.py" "$OUT"
# The picture of the same results (redraw any time: tests/benches/plot.py OUT.jsonl -o X.svg).
PLOT=${PLOT:-${OUT%.jsonl}.svg}
python3 tests/benches/plot.py "$OUT" -o "$PLOT" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "results: $OUT   plot: $PLOT   logs: $LOGDIR"
