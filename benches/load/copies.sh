#!/usr/bin/env bash
# The memory copies Livery's request thread makes per request: how many, how
# large, and from where. callgrind counts a `rep movsb` copy (glibc's choice
# for a few KiB and up) as a handful of instructions whatever its length, so
# its instruction counts understate large copies that perf's samples show.
#
#   benches/load/copies.sh [LIVERY_BIN] [REQUESTS]
#
# Starts the mock and Livery (the bench configuration; VARIANT as in
# features.sh) on CPU 1, warms up with 20,000 requests, then puts uprobes on
# glibc's memmove/memcpy implementations (the length argument recorded) and
# records REQUESTS (500) requests at 16 connections with DWARF call graphs.
# Prints calls and bytes per request of the request thread by size class, and
# the 25 call sites that copy the most bytes (the caller, with its caller).
# The probes make each copy cost microseconds, so time nothing with them on.
# Any uprobes already in perf's probe_libc group are deleted first and last.
# A release build (target/release/livery, line tables and inline frames)
# names the call sites better than BOLT's output.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

BIN=$(realpath "${1:-$ROOT/target/release/livery}")
REQUESTS=${2:-500}
VARIANT=${VARIANT:-all}
command -v perf >/dev/null || apt_install linux-perf
prepare_pinned_bench
LIBC=$(ldd "$BIN" | awk '/libc\.so/ {print $3}')
[ -n "$LIBC" ] || { log "cannot find the libc $BIN links"; exit 1; }

make_run_dir livery-copies
prepare_tmpfs_variants "$VARIANT"
# The uprobes go when the run does, whatever ends it (with the tmpfs variants'
# directory, which prepare_tmpfs_variants's own trap would have removed).
trap 'perf probe -q --del "probe_libc:*" 2>/dev/null || true; stop_run_dir; [ -z "$SHM" ] || rm -rf "$SHM"' EXIT
start_pinned_mock "$TMP"
seal_bench_key "$BIN" "$TMP"
render_variant "$VARIANT" "$TMP"
start_pinned_livery "$BIN" "$TMP"
URL=http://127.0.0.1:$LIVERY_PORT/v1/chat/completions
bench_load "$URL" -n 20000 >/dev/null

# glibc picks one of its copies for this CPU at load time (AVX, AVX-512, ...):
# probe every unaligned variant; only the chosen one fires. memcpy's are the
# same code at the same address as memmove's, so probing both would count a
# copy twice. The length is the third argument, in rdx. (The filter lets in
# the local symbols, which the default one leaves out.)
perf probe -q --del "probe_libc:*" 2>/dev/null || true
probes=0
for fn in $(perf probe -x "$LIBC" -F --filter='*' 2>/dev/null | grep -E '^__memmove_[a-z0-9]+_unaligned(_erms)?$'); do
    perf probe -q -x "$LIBC" --add "$fn len=%dx:u64" 2>/dev/null && probes=$((probes + 1))
done
[ "$probes" -gt 0 ] || { log "no uprobe could be placed on $LIBC's memmove"; exit 1; }
log "$probes probes on $LIBC; recording $REQUESTS requests"
perf record -q -e 'probe_libc:*' --call-graph dwarf,4096 -p "$LIVERY_PID" -o "$TMP/perf.data" 2>/dev/null &
PERF_PID=$!
sleep 0.5
CONNS=16 bench_load "$URL" -n "$REQUESTS" >/dev/null
sleep 0.2
kill -INT "$PERF_PID"
wait "$PERF_PID" 2>/dev/null || true

perf script -i "$TMP/perf.data" -F comm,tid,trace,ip,sym >"$TMP/copies.txt" 2>/dev/null
# The request path runs on the main thread, whose id is the process's.
python3 - "$REQUESTS" "$LIVERY_PID" "$TMP/copies.txt" <<'PY'
import collections, re, sys
n, main_tid = int(sys.argv[1]), int(sys.argv[2])
records = open(sys.argv[3]).read().split("\n\n")
classes = [(64, "under 64 B"), (256, "64-255 B"), (1024, "256 B-1 KiB"), (4096, "1-4 KiB"), (1 << 62, "4 KiB and more")]
calls, size = collections.Counter(), collections.Counter()
sites, site_calls = collections.Counter(), collections.Counter()
for r in records:
    lines = r.strip().split("\n")
    head = re.search(r"^\S+\s+(\d+).*len=(\d+)", lines[0]) if lines else None
    if not head or int(head.group(1)) != main_tid:
        continue
    length = int(head.group(2))
    label = next(l for limit, l in classes if length < limit)
    calls[label] += 1
    size[label] += length
    frames = [re.sub(r"^\s*[0-9a-f]+\s+", "", f) for f in lines[2:4]]
    site = "  <-  ".join(f[:90] for f in frames) or "?"
    sites[site] += length
    site_calls[site] += 1
total = sum(size.values())
print(f"request thread: {sum(calls.values()) / n:.1f} copies and {total / n:,.0f} bytes per request")
for _, label in classes:
    print(f"  {label:>15}: {calls[label] / n:6.1f} copies, {size[label] / n:8,.0f} bytes")
print("\nthe 25 call sites copying the most (bytes and copies per request; the copy's caller <- its caller):")
for site, b in sites.most_common(25):
    print(f"{b / n:8,.0f} B {site_calls[site] / n:5.1f}  {site}")
PY
