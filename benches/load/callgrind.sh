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
# main thread, which runs the request path); the final one at exit holds only
# the shutdown.
DUMPS=$(ls "$OUT"/callgrind.out.1-* 2>/dev/null | sort -V || true)
[ -n "$DUMPS" ] || { log "no callgrind dump in $OUT"; exit 1; }
DUMP=$(echo "$DUMPS" | head -1)
callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" >"$OUT/inclusive.txt" 2>/dev/null || true
# Own (self) instructions per function, read from the dump itself: a call
# line's cost is the callee's, not the caller's own.
python3 - "$REQUESTS" "$BIN" $DUMPS <<'PY'
import collections, re, sys
n, binary, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
own = collections.Counter()
per_thread = []
for path in paths:
    names, mine = {}, collections.Counter()
    def name(rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), rest)
    fn, callee_cost = None, False
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            fn = name(line[3:].rstrip("\n"))
        elif line.startswith("cfn="):
            name(line[4:].rstrip("\n"))
        elif line.startswith("calls="):
            callee_cost = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2:
                if callee_cost:
                    callee_cost = False
                else:
                    mine[fn] += int(parts[1])
    per_thread.append(sum(mine.values()))
    own.update(mine)
total = sum(own.values())
print(f"{binary}: {total / n:,.0f} instructions per request ({total:,} over {n:,} requests)")
# The other threads' share moves between runs with the ledger's batch sizes;
# the main thread's is the steadier figure for a change to the request path.
print(f"  main thread (the request path) {per_thread[0] / n:,.0f}, other threads (usage ledger, mirror) {(total - per_thread[0]) / n:,.0f}")
print("\ninstructions of their own per request, top 25:")
for f, c in own.most_common(25):
    print(f"{c / n:9,.0f}  {100 * c / total:5.1f}%  {f[:110]}")
PY
log "callgrind output in $OUT ($(basename "$DUMP"), inclusive.txt)"
