#!/usr/bin/env bash
# Cluster fan-out benchmark (issue 14): the same fanbench run against one sidestream and
# against a 3-sidecar cluster on one Redis, where messages are published on A and the
# subscribers sit on B and C (both listen on one port with reuse_port, so the kernel spreads
# the connections over them). Prints p50/p99 delivery latency, server CPU per delivery and
# Redis commands per published message for both. Loopback only; every run is bounded.
#
#   tests/benches/cluster.sh [OUT.jsonl]
#   N=1000 M=3000 RATE=100 KIND=sse tests/benches/cluster.sh
#
# Needs: redis-server (apt-get install -y redis-server) and ../shared/bench/fanbench.
set -uo pipefail
cd "$(dirname "$0")/../.."
SHARED=${SIDESTREAM_SHARED:-../shared}
BENCH="$SHARED/bench"
if [ ! -d "$BENCH/fanbench" ]; then
  echo "cluster.sh: fanbench not found at $BENCH/fanbench; put the team's tools at ../shared or set SIDESTREAM_SHARED" >&2
  exit 2
fi
OUT=${1:-/tmp/sidestream-cluster.jsonl}
LOGDIR=${LOGDIR:-/tmp/sidestream-cluster-logs}
N=${N:-1000} M=${M:-3000} RATE=${RATE:-100} KIND=${KIND:-sse}
REDIS_PORT=${REDIS_PORT:-6391}
TOKEN="fanbench-publish-token-0123456789"
FANBENCH=${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}/release/fanbench
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install -y redis-server" >&2; exit 1; }
mkdir -p "$LOGDIR"
rm -f "$OUT"
(cd "$BENCH/fanbench" && cargo build --release -q --target-dir "${FANBENCH_TARGET_DIR:-/tmp/fanbench-target}") || exit 1
cargo build --release -q --bin sidestream || exit 1

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

. tests/benches/lib.sh

# config NAME LISTEN ADMIN [cluster lines]: bench.toml with other ports and extra sections.
config() {
  local file="$LOGDIR/$1.toml"
  sed -e "s/127.0.0.1:8070/127.0.0.1:$2/" -e "s/127.0.0.1:8071/127.0.0.1:$3/" tests/benches/bench.toml > "$file"
  if [ -n "${4:-}" ]; then
    # reuse_port belongs to [server]: insert it right after the section header.
    sed -i "s/^\[server\]$/[server]\nreuse_port = true/" "$file"
    printf '\n[cluster]\nredis_url = "redis://127.0.0.1:%s"\ninstance_id = "%s"\nkey_prefix = "bench%s"\n' \
      "$REDIS_PORT" "$1" "$(date +%s)" >> "$file"
  fi
  echo "$file"
}

start() { # NAME CONFIG
  RUST_LOG=warn target/release/sidestream --config "$2" > "$LOGDIR/$1.log" 2>&1 &
  pids+=($!)
  echo $! >> "$LOGDIR/server.pids"
}

# "<all commands> <round trips>": commands run inside scripts count in the first figure;
# the second counts what clients sent (EVALSHA/EVAL and plain commands, not the inner ones).
redis_calls() {
  redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[=,:]' '
    /^cmdstat_/ { sum += $3; sent += ($1 ~ /eval/ || $1 ~ /subscribe|ping|hello|client/) ? $3 : 0 }
    END { print sum + 0, sent + 0 }'
}

run() { # LABEL URL PUBLISH_URL
  local args=(--kind "$KIND" -n "$N" -m "$M" --rate "$RATE" --topic "t$(date +%s%N | tail -c 7)"
              --label "$1" --json-out "$OUT" --pids-file "$LOGDIR/server.pids"
              --url "$2" --publish-url "$3" --publish-header "Authorization: Bearer $TOKEN"
              --payload-size 100 --settle-ms 2000 --drain-timeout-ms 30000 --max-seconds 400)
  [ "$KIND" = sse ] && args+=(--header "Accept: text/event-stream")
  echo "=== $1  $(date +%T)"
  timeout 600 "$FANBENCH" "${args[@]}" > "$LOGDIR/$1.fanbench.log" 2>&1
  echo "    rc=$? $(grep -E '^(delivery|latency)' "$LOGDIR/$1.fanbench.log" | cut -c1-160 | tr '\n' '|')"
}

# 1. One sidestream, no cluster.
rm -f "$LOGDIR/server.pids"
start single "$(config single 8070 8071)"
wait_port 8070 && run "single-$KIND-n$N-r$RATE" "http://127.0.0.1:8070/bench/{topic}" "http://127.0.0.1:8071/publish/bench/{topic}"
cleanup; pids=()

# 2. Redis + A (publisher) + B, C (subscribers, one shared port). Redis counts as server CPU.
rm -f "$LOGDIR/server.pids"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$LOGDIR" \
  > "$LOGDIR/redis.log" 2>&1 &
pids+=($!); echo $! >> "$LOGDIR/server.pids"
wait_port "$REDIS_PORT"
start a "$(config a 8170 8171 cluster)"
start b "$(config b 8070 8072 cluster)"
start c "$(config c 8070 8073 cluster)"
wait_port 8170 && wait_port 8070 && wait_port 8072 && wait_port 8073
before=$(redis_calls)
# Where the subscribers are, sampled while the run publishes (the kernel spreads them over B, C).
( sleep 8
  for admin in 8171 8072 8073; do
    echo "    subscribers on admin :$admin: $(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^sidestream_subscribers\{/ { s += $2 } END { print s + 0 }')"
  done ) > "$LOGDIR/spread.txt" &
run "cluster-$KIND-n$N-r$RATE" "http://127.0.0.1:8070/bench/{topic}" "http://127.0.0.1:8171/publish/bench/{topic}"
after=$(redis_calls)
cat "$LOGDIR/spread.txt"
python3 - $before $after "$M" <<'PY'
import sys
all0, sent0, all1, sent1, messages = map(int, sys.argv[1:])
print(f"    redis per published message: {(all1 - all0) / messages:.2f} commands executed "
      f"(inside the script included), {(sent1 - sent0) / messages:.2f} round trips")
PY
cleanup; pids=()
python3 "$BENCH/fanbench/summarize.py" "$OUT"
echo "results: $OUT   logs: $LOGDIR"
