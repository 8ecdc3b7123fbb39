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
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-5}
REQUESTS=${4:-60000}
[ "$(nproc)" -ge 2 ] || { log "needs two CPUs (load generator and servers apart)"; exit 1; }
command -v taskset >/dev/null || apt_install util-linux
ensure_oha
MOCK_BIN="$ROOT/target/release/livery-mock"
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock

make_run_dir livery-ab

# One run of binary $1; prints "req/s livery_us mock_us".
run_once() {
    local bin=$1 dir="$TMP/run.$RANDOM"
    mkdir -p "$dir"
    start_pinned_mock "$dir"
    seal_bench_key "$bin" "$dir"
    render_bench_config "$dir" >"$dir/gateway.toml"
    start_pinned_livery "$bin" "$dir"
    local result
    result=$(measure_at_max "http://127.0.0.1:$LIVERY_PORT/v1/chat/completions" "$MOCK_PID" "$LIVERY_PID")
    kill -TERM "$LIVERY_PID" "$MOCK_PID" 2>/dev/null || true
    wait "$LIVERY_PID" "$MOCK_PID" 2>/dev/null || true
    echo "$result"
}

log "old: $OLD"
log "new: $NEW"
log "$PAIRS pairs of $REQUESTS requests each, alternating"
printf '| pair | binary | req/s | Livery CPU µs/request | mock CPU µs/request | Livery / mock |\n|---:|---|---:|---:|---:|---:|\n'
for i in $(seq "$PAIRS"); do
    for which in old new; do
        bin=$OLD
        [ "$which" = new ] && bin=$NEW
        read -r rps livery mock < <(run_once "$bin")
        ratio=$(awk -v l="$livery" -v m="$mock" 'BEGIN { printf "%.2f", (m > 0) ? l / m : 0 }')
        printf '| %d | %s | %s | %s | %s | %s |\n' "$i" "$which" "$rps" "$livery" "$mock" "$ratio"
        echo "$ratio" >>"$TMP/ratio.$which"
        echo "$rps" >>"$TMP/rps.$which"
    done
done
for which in old new; do
    printf 'median %s: Livery / mock CPU per request %s, %s req/s\n' "$which" \
        "$(median <"$TMP/ratio.$which")" "$(median <"$TMP/rps.$which")"
done
