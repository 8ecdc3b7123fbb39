#!/usr/bin/env bash
# BOLT on top of the profile-guided build (issue 7): LLVM's post-link optimiser
# lays out the machine code of target/pgo/release/livery by a profile of the
# same training as pgo.sh (hot blocks together, cold ones split out of line,
# functions ordered by their calls). It does not save instructions: at maximum
# throughput, where the request path stays in cache, it changes nothing; at
# 2,000 req/s, where each request starts on a core that ran something else,
# fewer instruction-cache and TLB misses take ~10% off the added latency
# (benches/README.md, "BOLT").
#
#   benches/load/bolt.sh        # -> target/bolt/livery (about 2 minutes after pgo.sh)
#   benches/load/run.sh --bolt  # pgo.sh, this, then the benchmark of target/bolt/livery
#
# Needs Debian's bolt-N of rustc's LLVM version (installed from apt when
# missing) and a profile-guided build linked with its relocations
# (`--emit-relocs`, as pgo.sh links it), which BOLT needs to move functions;
# runs pgo.sh first when there is none.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=benches/load/lib.sh
. "$ROOT/benches/load/lib.sh"

LLVM=$(rustc_llvm_major)
BOLT_BIN=/usr/lib/llvm-$LLVM/bin
[ -x "$BOLT_BIN/llvm-bolt" ] || apt_install "bolt-$LLVM"
command -v objcopy >/dev/null || apt_install binutils
ensure_redis_server
ensure_oha

PGO_BIN="$ROOT/target/pgo/release/livery"
if [ ! -x "$PGO_BIN" ] || ! readelf -S "$PGO_BIN" | grep -q '\.rela\.text'; then
    log "no profile-guided build with relocations: running pgo.sh first"
    "$ROOT/benches/load/pgo.sh"
fi
cargo build --release --quiet --features mock-server --bin livery-mock

make_run_dir livery-bolt
OUT="$ROOT/target/bolt"
mkdir -p "$OUT" "$TMP/fdata" "$TMP/train"

# BOLT's instrumentation writes each call edge, caller's and callee's names,
# through one 10 KiB buffer and aborts on longer ones (llvm-project#169899).
# Rust's legacy mangling spells out the type of a `drop_in_place`, and the
# Redis client's parser futures take 5 KiB. Those symbols (about 35 longer than
# 1,000 bytes) get short names; code and addresses are unchanged.
nm "$PGO_BIN" | awk 'length($3) > 1000 { print $3 }' | sort -u |
    awk '{ printf "%s livery_long_symbol_%d\n", $1, NR }' >"$TMP/long-symbols"
objcopy --redefine-syms="$TMP/long-symbols" "$PGO_BIN" "$TMP/livery.input"
log "renamed $(wc -l <"$TMP/long-symbols") long symbols; instrumenting"

"$BOLT_BIN/llvm-bolt" "$TMP/livery.input" -instrument -o "$TMP/livery.instrumented" \
    --instrumentation-file="$TMP/fdata/livery.fdata" --instrumentation-file-append-pid \
    >"$TMP/instrument.log" 2>&1 || { tail -20 "$TMP/instrument.log" >&2; exit 1; }

log "training (the workload of pgo.sh)"
# The instrumented binary writes its profile when it exits (one file per process).
run_training "$TMP/livery.instrumented" "$TMP/train"
"$BOLT_BIN/merge-fdata" "$TMP"/fdata/*.fdata >"$TMP/livery.fdata" 2>"$TMP/merge.log"
log "merged $(find "$TMP/fdata" -name '*.fdata' | wc -l) profiles"

# The usual options for a large server binary (BOLT's docs, "Optimizing"):
# blocks by ext-TSP, functions by their call graph (cdsort), cold code split
# out of every function, identical functions folded. `-hugify`: the hot code
# (about 1.3 MiB) is laid out on one aligned 2 MiB range and, at start,
# `madvise`d for a transparent huge page, so a request on a cold core takes one
# instruction-TLB miss for it instead of one per 4 KiB page. On kernels from
# 5.10 BOLT's runtime relies on the page cache's huge pages for that; where they
# are missing (the twenty-sixth session's 6.18 VM: `FilePmdMapped` 0) the code
# stays on 4 KiB pages, which measured the same as a forced anonymous huge page.
"$BOLT_BIN/llvm-bolt" "$TMP/livery.input" -o "$OUT/livery.new" -data="$TMP/livery.fdata" \
    -reorder-blocks=ext-tsp -reorder-functions=cdsort -split-functions -split-all-cold -split-eh \
    -icf=1 -use-gnu-stack -hugify -dyno-stats >"$TMP/optimize.log" 2>&1 || { tail -20 "$TMP/optimize.log" >&2; exit 1; }
grep -E "taken branches|executed instructions" "$TMP/optimize.log" | tail -2 | sed 's/^ */  /' >&2 || true
mv "$OUT/livery.new" "$OUT/livery"
log "done: target/bolt/livery"
