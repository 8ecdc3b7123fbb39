#!/usr/bin/env bash
# Where a request's time goes at a fixed rate, from the scheduler's side: for
# Livery (the bench configuration, everything on) and then the nginx hop, the
# CPU time each task on the servers' CPU spent per request, how often it was
# switched in, and how long it waited for the CPU once woken (perf sched).
# The added latency of a hop at low rates is its tasks' CPU time on a cold
# core plus these waits; this shows which task the difference is in.
#
#   RATE=2000 benches/load/sched.sh [LIVERY_BIN] [OUT_DIR]
#
# Each target gets 20,000 requests of warm-up at maximum, then RATE req/s
# (open loop, 64 connections) for 6 s, with `perf sched record -C 1` over 2 s
# of it; the p50/p99 of those 6 s are printed too. Needs perf (Debian's
# linux-perf) and root for its tracepoints. OUT_DIR (target/sched) keeps the
# two perf.data files for `perf sched timehist -i`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

BIN=$(realpath "${1:-$ROOT/target/release/livery}")
OUT=$(realpath -m "${2:-$ROOT/target/sched}")
RATE=${RATE:-2000}
MOCK_BIN="$ROOT/target/release/livery-mock"
[ "$(nproc)" -ge 2 ] || { log "needs two CPUs (load generator and servers apart)"; exit 1; }
command -v perf >/dev/null || apt_install linux-perf
command -v nginx >/dev/null || apt_install nginx
ensure_oha
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock
mkdir -p "$OUT"

make_run_dir livery-sched
start_pinned_mock "$TMP"
seal_bench_key "$BIN" "$TMP"
render_bench_config "$TMP" >"$TMP/gateway.toml"
start_pinned_livery "$BIN" "$TMP"
NGINX_PORT=$(free_port)
start_pinned_nginx "$TMP" "$NGINX_PORT"

percentiles() { awk '/50.00%/ {p50 = $3 * 1000} /99.00%/ {p99 = $3 * 1000} END {printf "p50 %.0f us, p99 %.0f us", p50, p99}'; }

log "direct to the mock at $RATE req/s"
direct=$(bench_load "$MOCK_URL/v1/chat/completions" -z 6s -q "$RATE" --latency-correction | percentiles)
for target in livery nginx; do
    port=$LIVERY_PORT
    [ "$target" = nginx ] && port=$NGINX_PORT
    url=http://127.0.0.1:$port/v1/chat/completions
    bench_load "$url" -n 20000 >/dev/null
    (sleep 2; perf sched record -C 1 -o "$OUT/$target.data" -- sleep 2 >/dev/null 2>&1) &
    rec=$!
    log "$target at $RATE req/s"
    lat=$(bench_load "$url" -z 6s -q "$RATE" --latency-correction | percentiles)
    wait "$rec"
    printf '%s\n' "$lat" >"$OUT/$target.latency"
done
kill -QUIT "$(cat "$TMP/nginx.pid")" 2>/dev/null || true

echo "direct: $direct"
for target in livery nginx; do
    echo
    echo "$target: $(cat "$OUT/$target.latency") (direct $direct)"
    perf sched timehist -i "$OUT/$target.data" -s 2>/dev/null >"$OUT/$target.timehist" || true
    perf sched latency -i "$OUT/$target.data" 2>/dev/null >"$OUT/$target.latency.txt" || true
    python3 - "$OUT/$target.timehist" "$OUT/$target.latency.txt" "$RATE" <<'PY'
import re, sys
timehist, latency, rate = open(sys.argv[1]).read(), open(sys.argv[2]).read(), int(sys.argv[3])
requests = 2 * rate  # the 2 s recorded
delays = {}
for m in re.finditer(r"^\s*(\S.*?):(\d+)\s*\|\s*([\d.]+) ms\s*\|\s*(\d+)\s*\|\s*avg:\s*([\d.]+) ms", latency, re.M):
    delays[m.group(2)] = (int(m.group(4)), float(m.group(5)))
print("| task | CPU us / request | switched in / request | avg wait for the CPU once woken, us |")
print("|---|---:|---:|---:|")
summary = timehist.split("Runtime summary", 1)[-1]
rows = []
for m in re.finditer(r"^\s*(\S+)\[(\d+)(?:/\d+)?\]\s+\d+\s+(\d+)\s+([\d.]+)", summary, re.M):
    comm, tid, count, ms = m.group(1), m.group(2), int(m.group(3)), float(m.group(4))
    if comm.startswith(("perf", "swapper")):
        continue
    rows.append((ms, comm, tid, count))
for ms, comm, tid, count in sorted(rows, reverse=True):
    if ms * 1000 / requests < 0.05:
        continue
    wait = delays.get(tid)
    wait_s = f"{wait[1] * 1000:.0f}" if wait and wait[0] > 1 else ""
    print(f"| {comm} | {ms * 1000 / requests:.1f} | {count / requests:.2f} | {wait_s} |")
idle = re.search(r"CPU\s+1 idle for\s+([\d.]+)\s+msec\s+\(\s*([\d.]+)%\)", timehist)
if idle:
    print(f"\nCPU 1 idle {idle.group(2)}% of the 2 s")
PY
done
