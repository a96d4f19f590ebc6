#!/usr/bin/env bash
# Where a fan-out's CPU goes: user space vs kernel, in µs per delivery, for sidestream or
# nchan, on the same fanbench load as compare.sh. compare.sh gives the total; this splits it
# (utime and stime of the server's processes from /proc, between fanbench's "publishing"
# line and its end), and can record the profile that explains it.
#
#   tests/benches/cpu_split.sh KIND N M RATE [deflate]     # e.g. ws 1000 100 10
#   PEER=nchan tests/benches/cpu_split.sh ws 1000 100 10   # the same for nginx+nchan
#   PERF=1 ...   # perf record -g of the publish phase -> $OUT_DIR/perf-KIND-N-PEER.data
#   PERF=dwarf ...  # the same with DWARF call graphs (whole stacks without frame pointers):
#                   # tests/benches/perf_fold.py FILE [--faults] sums them by code region
#                # (perf report -i FILE --no-children --sort dso,sym)
#   PSTAT=1 ...  # perf stat: context switches, page faults, syscalls, softirqs
#   SIDESTREAM_BIN=/tmp/old-sidestream ...   # another build, same load (an A/B)
#   PHASE=connect ...  # the connect phase instead (fanbench's start to its "publishing"
#                      # line): µs per new connection, and fanbench's connect_per_s
#
# Also prints anonymous RSS per idle connection (RssAnon: the figure without the binary's
# code pages, which the first connections fault in: ~0.9 MiB, i.e. 0.9 KiB "per connection"
# at 1 000). Loopback only (ports 8070/8071 for sidestream, 8090 for nchan); every wait is
# bounded. Needs fanbench (../shared or SIDESTREAM_SHARED), bc, and for PERF/PSTAT `perf`;
# nchan: apt-get install -y nginx-light libnginx-mod-nchan.
set -uo pipefail
cd "$(dirname "$0")/../.."
. tests/benches/lib.sh
[ $# -ge 4 ] || { sed -n 2,16p "$0" >&2; exit 64; }
KIND=$1 N=$2 M=$3 RATE=$4 DEFLATE=${5:-}
PEER=${PEER:-sidestream}
SHARED=${SIDESTREAM_SHARED:-../shared}
BENCH="$SHARED/bench"
OUT_DIR=${OUT_DIR:-/tmp/sidestream-cpu-split}
FANBENCH=${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}/release/fanbench
TOKEN="fanbench-publish-token-0123456789"
[ -d "$BENCH/fanbench" ] || { echo "cpu_split.sh: fanbench not found at $BENCH/fanbench; set SIDESTREAM_SHARED" >&2; exit 2; }
command -v bc > /dev/null || { echo "cpu_split.sh: bc is missing: apt-get install -y bc" >&2; exit 2; }
if [ -n "${PERF:-}${PSTAT:-}" ] && ! command -v perf > /dev/null; then
  echo "cpu_split.sh: perf is missing: apt-get install -y linux-perf" >&2; exit 2
fi
# DWARF stacks are sampled 4x as often: fewer samples survive a short connect phase whole.
RECORD=(-F 999 -g)
[ "${PERF:-}" = dwarf ] && RECORD=(-F 4000 --call-graph dwarf,16384)
mkdir -p "$OUT_DIR" /tmp/anchors/sidestream
(cd "$BENCH/fanbench" && cargo build --release -q --target-dir "${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}") || exit 1

topic="t$(date +%s%N | tail -c 7)"
args=(--kind "$KIND" -n "$N" -m "$M" --rate "$RATE" --topic "$topic" --label "cpu-split-$PEER"
      --payload-size 100 --settle-ms 2000 --drain-timeout-ms 30000 --connect-timeout-ms 10000
      --connect-phase-timeout-ms 120000 --max-seconds 400)
[ -n "$DEFLATE" ] && args+=(--ws-deflate)
case $PEER in
  sidestream)
    bin=${SIDESTREAM_BIN:-target/release/sidestream}
    [ -n "${SIDESTREAM_BIN:-}" ] || cargo build --release -q --bin sidestream || exit 1
    RUST_LOG=warn "$bin" --config tests/benches/bench.toml > "$OUT_DIR/server.log" 2>&1 &
    server=$!
    echo "$server" > /tmp/anchors/sidestream/server.pids
    trap 'kill $server 2>/dev/null' EXIT
    wait_port 8070 || exit 1
    url="http://127.0.0.1:8070/bench/{topic}"
    [ "$KIND" = longpoll ] && url+="?wait=60"
    args+=(--url "$url" --publish-url "http://127.0.0.1:8071/publish/bench/{topic}"
           --publish-header "Authorization: Bearer $TOKEN" --pids-file /tmp/anchors/sidestream/server.pids)
    [ "$KIND" = sse ] && args+=(--header "Accept: text/event-stream") ;;
  nchan)
    "$BENCH/anchors/nchan/start.sh" > "$OUT_DIR/nchan.start.log" 2>&1 || { cat "$OUT_DIR/nchan.start.log" >&2; exit 1; }
    trap '"$BENCH/anchors/nchan/stop.sh" > /dev/null 2>&1' EXIT
    path=$KIND; [ "$KIND" = longpoll ] && path=lp
    args+=(--url "http://127.0.0.1:8090/$path/{topic}" --pub-pipeline --pids-file /tmp/anchors/nchan/server.pids
           --publish-url "http://127.0.0.1:8090/$([ -n "$DEFLATE" ] && echo pubz || echo pub)/{topic}") ;;
  *) echo "cpu_split.sh: PEER is sidestream or nchan" >&2; exit 64 ;;
esac
pids=$(tr '\n' ' ' < "/tmp/anchors/$PEER/server.pids")
sleep 1

ticks() { local t=0 p f; for p in $pids; do read -r -a f < "/proc/$p/stat"; t=$((t + f[13] * ${1:-0} + f[14] * ${2:-0})); done; echo $t; }
anon_kib() { for p in $pids; do grep RssAnon "/proc/$p/status" | grep -oE '[0-9]+'; done | paste -sd+ | bc; }
anon_before=$(anon_kib)
log="$OUT_DIR/fanbench-$KIND-$N-$PEER.log"
PHASE=${PHASE:-publish}
case $PHASE in publish|connect) ;; *) echo "cpu_split.sh: PHASE is publish or connect" >&2; exit 64 ;; esac
recorder=
if [ "$PHASE" = connect ]; then
  user0=$(ticks 1 0) sys0=$(ticks 0 1)
  if [ -n "${PERF:-}" ]; then
    perf record "${RECORD[@]}" -p "$(echo $pids | tr ' ' ',')" -o "$OUT_DIR/perf-connect-$N-$PEER.data" > "$OUT_DIR/perf.log" 2>&1 &
    recorder=$!
  fi
fi
timeout 600 "$FANBENCH" "${args[@]}" > "$log" 2>&1 &
fanbench=$!
for _ in $(seq 1 6000); do grep -q '^publishing' "$log" && break; kill -0 $fanbench 2>/dev/null || break; sleep 0.05; done
if [ "$PHASE" = connect ]; then
  user1=$(ticks 1 0) sys1=$(ticks 0 1)
  if [ -n "$recorder" ]; then kill -INT $recorder; wait $recorder; fi
  wait $fanbench
  grep -oE '"connect_per_s":[0-9.]+' "$log"
  [ -n "${PERF:-}" ] && echo "profile: $OUT_DIR/perf-connect-$N-$PEER.data"
  hz=$(getconf CLK_TCK)
  python3 - "$hz" "$user0" "$user1" "$sys0" "$sys1" "$N" "$PEER" <<'EOF'
import sys
hz, u0, u1, s0, s1, n = (int(x) for x in sys.argv[1:7])
user, kernel = (u1 - u0) / hz, (s1 - s0) / hz
per = lambda seconds: seconds / n * 1e6
print(f"{sys.argv[7]}: user {per(user):.1f} µs + kernel {per(kernel):.1f} µs = {per(user + kernel):.1f} µs per new connection "
      f"({user:.2f} s + {kernel:.2f} s over {n} connections, fanbench's settle included; /proc ticks of 1/{hz} s)")
EOF
  exit 0
fi
user0=$(ticks 1 0) sys0=$(ticks 0 1) anon_idle=$(anon_kib)
if [ -n "${PERF:-}" ]; then
  perf record "${RECORD[@]}" -p "$(echo $pids | tr ' ' ',')" -o "$OUT_DIR/perf-$KIND-$N-$PEER.data" > "$OUT_DIR/perf.log" 2>&1 &
  recorder=$!
elif [ -n "${PSTAT:-}" ]; then
  perf stat -e task-clock,context-switches,cpu-migrations,page-faults,raw_syscalls:sys_enter,irq:softirq_entry \
    -p "$(echo $pids | tr ' ' ',')" -o "$OUT_DIR/perf-stat-$KIND-$N-$PEER.txt" &
  recorder=$!
fi
wait $fanbench
user1=$(ticks 1 0) sys1=$(ticks 0 1)
if [ -n "$recorder" ]; then kill -INT $recorder; wait $recorder; fi
grep -E '^(delivery|latency|server)' "$log"
[ -n "${PSTAT:-}" ] && cat "$OUT_DIR/perf-stat-$KIND-$N-$PEER.txt"
[ -n "${PERF:-}" ] && echo "profile: $OUT_DIR/perf-$KIND-$N-$PEER.data"
hz=$(getconf CLK_TCK)
python3 - "$hz" "$user0" "$user1" "$sys0" "$sys1" "$((N * M))" "$anon_before" "$anon_idle" "$N" "$PEER" <<'EOF'
import sys
hz, u0, u1, s0, s1, deliveries, a0, a1, n = (int(x) for x in sys.argv[1:10])
user, kernel = (u1 - u0) / hz, (s1 - s0) / hz
per = lambda seconds: seconds / deliveries * 1e6
print(f"{sys.argv[10]}: user {per(user):.2f} µs + kernel {per(kernel):.2f} µs = {per(user + kernel):.2f} µs per delivery "
      f"({user:.2f} s + {kernel:.2f} s over {deliveries} deliveries; /proc ticks of 1/{hz} s); "
      f"anonymous RSS per idle connection {(a1 - a0) * 1024 / n:.0f} B")
EOF
