#!/usr/bin/env bash
# A profile-guided build of Livery (issue 7): build it instrumented, run the
# training workload (benches/load/pgo_train.py: the load harness's configuration,
# local and Redis-backed limits, plain and streamed completions, dropped streams,
# refusals), merge the profiles, and build again with them.
#
#   benches/load/pgo.sh              # -> target/pgo/release/livery (about 12 minutes on 2 cores)
#   benches/load/run.sh --pgo        # builds it if needed, then benchmarks it
#
# Needs llvm-profdata of rustc's LLVM version (Debian's llvm-N, installed from
# apt when missing). The training runs pinned like the harness: load on one CPU,
# servers on the other.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=benches/load/lib.sh
. "$ROOT/benches/load/lib.sh"

LLVM=$(rustc_llvm_major)
PROFDATA=$(command -v "llvm-profdata-$LLVM" || true)
if [ -z "$PROFDATA" ]; then
    apt_install "llvm-$LLVM"
    PROFDATA=$(command -v "llvm-profdata-$LLVM")
fi
ensure_redis_server
ensure_oha

make_run_dir livery-pgo
RAW="$TMP/profraw"
PROFILE="$ROOT/target/pgo/livery.profdata"

log "building the mock (release) and an instrumented livery (target/pgo-gen)"
cargo build --release --quiet --features mock-server --bin livery-mock
RUSTFLAGS="-Cprofile-generate=$RAW" cargo build --release --quiet --bin livery --target-dir target/pgo-gen
# Build scripts are instrumented too and leave profiles of their own: only the
# training's count.
rm -rf "$RAW"

log "training"
run_training "$ROOT/target/pgo-gen/release/livery" "$TMP"

mkdir -p "$(dirname "$PROFILE")"
"$PROFDATA" merge -o "$PROFILE" "$RAW"
log "merged $(find "$RAW" -name '*.profraw' | wc -l) profiles into $PROFILE"

log "building livery with the profile (target/pgo)"
# With its relocations kept (`--emit-relocs`: sections that are not loaded, so
# the program and its memory are the same), so that bolt.sh can move functions.
RUSTFLAGS="-Cprofile-use=$PROFILE -Clink-arg=-Wl,--emit-relocs" cargo build --release --quiet --bin livery --target-dir target/pgo
log "done: target/pgo/release/livery"
