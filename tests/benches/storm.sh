#!/usr/bin/env bash
# Reconnect storm and accept rate against a release sidestream on tests/benches/bench.toml
# (loopback, ports 8070/8071). Prints storm.py's JSON lines.
#
#   tests/benches/storm.sh            # storm: 8 000 SSE clients at once × 5 rounds, then accept
#   PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 tests/benches/storm.sh   # another allocator
#   CLIENTS=8000 ROUNDS=5 MODES="storm accept" tests/benches/storm.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/benches/lib.sh
CLIENTS=${CLIENTS:-8000}
ROUNDS=${ROUNDS:-5}
MODES=${MODES:-"storm accept"}
BIN=${SIDESTREAM_BIN:-target/release/sidestream}
[ -x "$BIN" ] || cargo build --release -q --bin sidestream
ulimit -n 20000
for mode in $MODES; do
  env ${PRELOAD:+LD_PRELOAD=$PRELOAD} RUST_LOG=warn "$BIN" --config tests/benches/bench.toml > /tmp/sidestream-storm.log 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_port 8070 || true
  sleep 1
  python3 tests/benches/storm.py "$mode" --pid "$pid" --clients "$CLIENTS" --rounds "$ROUNDS" || echo "storm.py $mode: rc=$?"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  trap - EXIT
done
