#!/usr/bin/env bash
# What Livery adds to four request shapes, against the direct mock: a plain
# answer and a stream's first event, each on a keep-alive and on a fresh
# connection, every round in a new random order (paths.py).
#
#   benches/load/paths.sh [LIVERY_BIN] [ROUNDS] [VARIANT]
#
# Pinned as the harness pins (the mock and Livery on CPU 1, the client on
# CPU 0); the bench configuration with a features.sh VARIANT (default all);
# ROUNDS (300) of eight requests. Tells whether a cost is the connection's or
# the stream's (twenty-fifth session: a fresh connection added nothing over a
# keep-alive one; a stream's first event 25-50 us more than a plain answer,
# which the twenty-sixth session traced to the first event waiting for the
# whole burst: fixed by FirstFrameAlone, now about the same as a plain answer).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"
BIN=$(realpath "${1:-$ROOT/target/release/livery}")
ROUNDS=${2:-300}
VARIANT=${3:-all}
prepare_pinned_bench
make_run_dir livery-paths
start_pinned_mock "$TMP"
seal_bench_key "$BIN" "$TMP"
mkdir -p "$TMP/livery"
render_variant "$VARIANT" "$TMP/livery"
start_pinned_livery "$BIN" "$TMP/livery"
bench_load "http://127.0.0.1:$LIVERY_PORT/v1/chat/completions" -n 5000 >/dev/null
cd "$ROOT/benches/load"
taskset -c 0 python3 paths.py "${MOCK_URL##*:}" "$LIVERY_PORT" "$ROUNDS"
