#!/usr/bin/env bash
# What Redis-backed limits cost Redis, in instructions per request (callgrind,
# so the figure repeats where timings on this shared VM do not): redis-server
# runs under valgrind, a Livery of the bench configuration plus
# `[limits] backend = "redis"` sends it every request's admission, settlement
# and slot release, and the instructions Redis executed for REQUESTS requests
# (after a warm-up, counters zeroed) are divided by REQUESTS.
#
#   benches/load/redis_cost.sh [LIVERY_BIN] [REQUESTS]
#
# LIVERY_BIN defaults to target/release/livery, REQUESTS to 2,000 (sent 4 at a
# time). The Redis timeout is raised to 10 s: under valgrind Redis is ~50x
# slower, and a timed-out admission would fall back to local limits and not be
# counted. The script checks that no request fell back.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

BIN=$(realpath "${1:-$ROOT/target/release/livery}")
REQUESTS=${2:-2000}
command -v valgrind >/dev/null || apt_install valgrind
command -v redis-server >/dev/null || apt_install redis-server
ensure_oha
MOCK_BIN="$ROOT/target/release/livery-mock"
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock

make_run_dir livery-redis-cost
port=$(free_port)
valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" \
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!
echo "$REDIS_PID" >>"$TMP/pids"
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done

start_pinned_mock "$TMP"
seal_bench_key "$BIN" "$TMP"
render_bench_config "$TMP" | with_redis_limits "$port" 10000 >"$TMP/gateway.toml"
start_pinned_livery "$BIN" "$TMP"
url="http://127.0.0.1:$LIVERY_PORT/v1/chat/completions"

ok=$(CONNS=4 bench_load "$url" -n 300 | awk '$1 == "[200]" && $3 == "responses" {print $2}')
[ "${ok:-0}" -eq 300 ] || { log "warm-up: not every request succeeded"; exit 1; }
sleep 1
callgrind_control -z "$REDIS_PID" >/dev/null 2>&1
ok=$(CONNS=4 bench_load "$url" -n "$REQUESTS" | awk '$1 == "[200]" && $3 == "responses" {print $2}')
[ "${ok:-0}" -eq "$REQUESTS" ] || { log "not every request succeeded"; exit 1; }
# Settles and releases are sent in the background: let the last ones land.
sleep 2
callgrind_control -d "$REDIS_PID" >/dev/null 2>&1
# The dump is written asynchronously.
if grep -q "redis unavailable" "$TMP/livery.log"; then
    log "Livery fell back to local limits during the run; the figure would be wrong"
    exit 1
fi
sleep 1
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$TMP"/callgrind.out.*)
echo "redis-server instructions per request: $((total / REQUESTS))"
