#!/usr/bin/env bash
# User-space instructions per delivery, counted by callgrind: deterministic where CPU time on
# a shared 2-vCPU VM is not (the same binary's µs per delivery moves ±20 % within minutes), so
# a change to a hot path can be compared with the one before it in one run each.
#
#   tests/benches/callgrind.sh [KIND N M RATE]      # default: longpoll 200 50 10
#   SIDESTREAM_BIN=/tmp/old-sidestream tests/benches/callgrind.sh   # another build, same load
#
# Runs a release sidestream under `valgrind --tool=callgrind` on tests/benches/bench.toml
# (loopback, ports 8070/8071) with fanbench (from ../shared, or SIDESTREAM_SHARED) as the
# load, zeroes the counters once the clients are connected, dumps them when fanbench is done
# and prints instructions ÷ deliveries. The dump (callgrind_annotate it) is left in
# $OUT_DIR/callgrind.out.1. The kernel's share (send, recv) is not counted: see perf for that.
# Needs: apt-get install -y valgrind.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/benches/lib.sh
KIND=${1:-longpoll} N=${2:-200} M=${3:-50} RATE=${4:-10}
SHARED=${SIDESTREAM_SHARED:-../shared}
OUT_DIR=${OUT_DIR:-/tmp/sidestream-callgrind}
TOKEN="fanbench-publish-token-0123456789"
command -v valgrind > /dev/null && command -v callgrind_control > /dev/null || {
  echo "callgrind.sh: valgrind is missing: apt-get install -y valgrind" >&2
  exit 2
}
[ -d "$SHARED/bench/fanbench" ] || {
  echo "callgrind.sh: fanbench not found at $SHARED/bench/fanbench; set SIDESTREAM_SHARED" >&2
  exit 2
}
FANBENCH_TARGET=${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}
(cd "$SHARED/bench/fanbench" && cargo build --release -q --target-dir "$FANBENCH_TARGET")
BIN=${SIDESTREAM_BIN:-target/release/sidestream}
[ -n "${SIDESTREAM_BIN:-}" ] || cargo build --release -q --bin sidestream
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/callgrind.out*
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT_DIR/callgrind.out" \
  "$BIN" --config tests/benches/bench.toml > "$OUT_DIR/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_port 8070 600 || true
url="http://127.0.0.1:8070/bench/{topic}"
[ "$KIND" = longpoll ] && url+="?wait=60"
args=(--kind "$KIND" -n "$N" -m "$M" --rate "$RATE" --topic "cg$RANDOM" --label callgrind
      --url "$url" --publish-url "http://127.0.0.1:8071/publish/bench/{topic}"
      --publish-header "Authorization: Bearer $TOKEN" --payload-size 100 --settle-ms 4000
      --drain-timeout-ms 30000 --connect-timeout-ms 10000 --connect-phase-timeout-ms 120000
      --max-seconds 400)
[ "$KIND" = sse ] && args+=(--header "Accept: text/event-stream")
"$FANBENCH_TARGET/release/fanbench" "${args[@]}" > "$OUT_DIR/fanbench.log" 2>&1 &
load=$!
# Zero the counters in the settle phase: connecting is not what is measured.
for _ in $(seq 1 300); do
  grep -q "^connect:" "$OUT_DIR/fanbench.log" 2>/dev/null && break
  sleep 0.2
done
sleep 2
callgrind_control -z "$pid" > /dev/null 2>&1
wait "$load" || { echo "callgrind.sh: fanbench failed (see $OUT_DIR/fanbench.log)" >&2; exit 1; }
callgrind_control -d "$pid" > /dev/null 2>&1
sleep 1
grep '^delivery' "$OUT_DIR/fanbench.log"
received=$(grep -oP 'unique \K[0-9]+' "$OUT_DIR/fanbench.log" | head -1)
instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$OUT_DIR/callgrind.out.1")
echo "instructions $instructions, deliveries $received: $((instructions / received)) per delivery"
