#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the repeatable
# figure (to a fraction of a percent) behind benches/HISTORY.md's "callgrind N -> M
# instructions per request", where req/s and CPU time on this VM move by 10%
# between rounds of the same binary.
#
#   benches/load/callgrind.sh [LIVERY_BIN] [REQUESTS] [OUT_DIR]
#
# Starts the mock (release build) and Livery under callgrind on the bench
# configuration (everything on, as run.sh's "Livery"), both on CPU 1; sends
# 1,000 requests at 16 connections (CONNS; 1 sends one request at a time, as
# at a low rate) to warm up, zeroes the counters, sends REQUESTS (4,000) more,
# and dumps. Every thread of Livery is counted (the ledger's shippers too), so
# the figure is the whole process's work per request. Prints the total per
# request (and the main thread's, which runs the request path), and the 25
# functions with the most instructions of their own, per request; OUT_DIR
# (target/callgrind) keeps the dump (callgrind.out.1, for callgrind_annotate or
# kcachegrind) and callgrind_annotate's inclusive listing (inclusive.txt).
# VARIANT picks another configuration of features.sh's (bare, no-ledger, ...),
# or floor: livery-floor, the least proxy on Livery's stack, in Livery's place.
# BY_FILE=1 also prints the main thread's instructions by the source file they
# were written in (inlined code in its own file: hyper's, h2's, std's), and
# with BASE=OUT_DIR of an earlier run (e.g. VARIANT=floor's; each side per its
# own request count) the difference by file: what this configuration does
# that that one does not. Release builds
# carry the line tables this needs (BOLT's output does not).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

BIN=$(realpath "${1:-$ROOT/target/release/livery}")
REQUESTS=${2:-4000}
CONNS=${CONNS:-16}
VARIANT=${VARIANT:-all}
OUT=$(realpath -m "${3:-$ROOT/target/callgrind}")
MOCK_BIN="$ROOT/target/release/livery-mock"
[ "$(nproc)" -ge 2 ] || { log "needs two CPUs (load generator and servers apart)"; exit 1; }
command -v valgrind >/dev/null || apt_install valgrind
ensure_oha
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock

mkdir -p "$OUT"
rm -f "$OUT"/callgrind.out*
make_run_dir livery-callgrind
prepare_tmpfs_variants "$VARIANT"
start_pinned_mock "$TMP"
if [ "$VARIANT" = floor ]; then
    BIN=$(floor_bin)
    COMMAND=("$BIN" "${MOCK_URL#http://}")
else
    seal_bench_key "$BIN" "$TMP"
    render_variant "$VARIANT" "$TMP"
    COMMAND=("$BIN" serve --config "$TMP/gateway.toml" --listen 127.0.0.1:0)
fi
(cd "$TMP" && LIVERY_MASTER_KEY=${BENCH_KEK:-} LIVERY_BENCH_PLATFORM_KEY=fake-bench-platform-key-not-a-secret \
    exec taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --dump-instr=no --separate-threads=yes \
    "${COMMAND[@]}" >"$TMP/livery.log" 2>&1) &
VG_PID=$!
echo "$VG_PID" >>"$TMP/pids"
wait_for "$TMP/livery.log" "livery listening on"
PORT=$(listening_port "$TMP/livery.log")
URL=http://127.0.0.1:$PORT/v1/chat/completions

log "warming up (1,000 requests), then counting $REQUESTS"
bench_load "$URL" -n 1000 >/dev/null
callgrind_control -z "$VG_PID" >/dev/null
ok=$(bench_load "$URL" -n "$REQUESTS" | awk '$1 == "[200]" {print $2}')
[ "${ok:-0}" -eq "$REQUESTS" ] || { log "only ${ok:-0} of $REQUESTS requests got a 200"; exit 1; }
# The ledger's shippers finish the batch the requests left.
sleep 1
callgrind_control -d "$VG_PID" >/dev/null
kill -TERM "$VG_PID"
wait "$VG_PID" 2>/dev/null || true

# The dump taken after zeroing (callgrind.out.1-NN, a file per thread, 01 the
# main thread, which runs the request path) in directory $1, in thread order;
# the final one at exit holds only the shutdown.
counted_dumps() { ls "$1"/callgrind.out.1-* 2>/dev/null | sort -V || true; }
DUMPS=$(counted_dumps "$OUT")
# What the counts are divided by, for a later run that compares with this one.
echo "$REQUESTS" >"$OUT/requests"
[ -n "$DUMPS" ] || { log "no callgrind dump in $OUT"; exit 1; }
DUMP=$(echo "$DUMPS" | head -1)
callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" >"$OUT/inclusive.txt" 2>/dev/null || true
python3 "$ROOT/benches/load/callgrind_report.py" own "$REQUESTS" "$BIN" $DUMPS
if [ -n "${BY_FILE:-}" ]; then
    BASE_ARGS=()
    if [ -n "${BASE:-}" ]; then
        BASE_DUMP=$(counted_dumps "$BASE" | head -1)
        [ -n "$BASE_DUMP" ] && [ -s "$BASE/requests" ] ||
            { log "no callgrind dump (or its request count) in $BASE"; exit 1; }
        BASE_ARGS=("$BASE_DUMP" "$(cat "$BASE/requests")")
    fi
    echo
    python3 "$ROOT/benches/load/callgrind_report.py" files "$REQUESTS" "$DUMP" "${BASE_ARGS[@]}"
fi
log "callgrind output in $OUT ($(basename "$DUMP"), inclusive.txt)"
