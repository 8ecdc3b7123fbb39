#!/usr/bin/env bash
# Compares two Livery binaries on a noisy machine: alternating runs at maximum
# throughput (closed loop, 64 connections), everything pinned as run.sh pins it
# (oha on the first CPU, the mock and Livery on the second), the bench
# configuration of gateway.bench.toml. Throughput of the same binary moves by
# ±20% between runs on a shared VM; the mock's CPU per request moves with it, so
# each run reports Livery's CPU per request divided by the mock's in that run.
#
#   benches/load/ab.sh OLD_BIN NEW_BIN [PAIRS] [REQUESTS]
#
# e.g. build the old commit into another target directory, then
#   benches/load/ab.sh /tmp/old/livery target/release/livery 5 60000
# PAIRS defaults to 5 and REQUESTS (per run, after 20,000 warm-up) to 60,000.
# With REDIS=1 both run with Redis-backed limits (a redis-server of their own,
# pinned with them, 1 s timeout so that no run falls back to local limits) and
# the CPU column counts Livery and Redis together.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

[ $# -ge 2 ] || { sed -n 2,16p "$0"; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-5}
REQUESTS=${4:-60000}
prepare_pinned_bench

make_run_dir livery-ab

# One run of binary $1; prints "req/s livery_us mock_us".
run_once() {
    local bin=$1 dir="$TMP/run.$RANDOM"
    mkdir -p "$dir"
    start_pinned_mock "$dir"
    seal_bench_key "$bin" "$dir"
    local redis_pid="" port
    if [ -n "${REDIS:-}" ]; then
        port=$(free_port)
        taskset -c 1 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.log" 2>&1 &
        redis_pid=$!
        echo "$redis_pid" >>"$TMP/pids"
        wait_for "$dir/redis.log" "Ready to accept connections"
        render_bench_config "$dir" | with_redis_limits "$port" 1000 >"$dir/gateway.toml"
    else
        render_bench_config "$dir" >"$dir/gateway.toml"
    fi
    start_pinned_livery "$bin" "$dir"
    local result
    # shellcheck disable=SC2086 # no Redis: no PID
    result=$(measure_at_max "http://127.0.0.1:$LIVERY_PORT/v1/chat/completions" "$MOCK_PID" "$LIVERY_PID" $redis_pid)
    if grep -q "redis unavailable" "$dir/livery.log"; then
        log "$bin fell back to local limits during the run"
    fi
    # shellcheck disable=SC2086
    kill -TERM "$LIVERY_PID" "$MOCK_PID" $redis_pid 2>/dev/null || true
    # shellcheck disable=SC2086
    wait "$LIVERY_PID" "$MOCK_PID" $redis_pid 2>/dev/null || true
    echo "$result"
}

log "old: $OLD"
log "new: $NEW"
log "$PAIRS pairs of $REQUESTS requests each, alternating"
proxy="Livery"
if [ -n "${REDIS:-}" ]; then
    command -v redis-server >/dev/null || apt_install redis-server
    proxy="Livery + Redis"
fi
printf '| pair | binary | req/s | %s CPU µs/request | mock CPU µs/request | %s / mock |\n|---:|---|---:|---:|---:|---:|\n' "$proxy" "$proxy"
for i in $(seq "$PAIRS"); do
    for which in old new; do
        bin=$OLD
        [ "$which" = new ] && bin=$NEW
        read -r rps livery mock _ < <(run_once "$bin")
        ratio=$(awk -v l="$livery" -v m="$mock" 'BEGIN { printf "%.2f", (m > 0) ? l / m : 0 }')
        printf '| %d | %s | %s | %s | %s | %s |\n' "$i" "$which" "$rps" "$livery" "$mock" "$ratio"
        echo "$ratio" >>"$TMP/ratio.$which"
        echo "$rps" >>"$TMP/rps.$which"
    done
done
for which in old new; do
    printf 'median %s: %s / mock CPU per request %s, %s req/s\n' "$which" "$proxy" \
        "$(median <"$TMP/ratio.$which")" "$(median <"$TMP/rps.$which")"
done
