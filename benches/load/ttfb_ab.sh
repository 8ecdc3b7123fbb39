#!/usr/bin/env bash
# A stream's first event through two Livery binaries side by side: N streams
# each, one at a time on a fresh connection (as the harness measures TTFB),
# the direct mock, OLD and NEW in turn, each round in a new random order, so
# that both see the same minutes of this VM. Prints each build's TTFB p50 and
# what it adds to the direct one.
#
#   benches/load/ttfb_ab.sh OLD_BIN NEW_BIN [N]     # N defaults to 300 (about 1 minute)
#
# Pinned as the harness pins: the mock and both Livery on CPU 1, the client on CPU 0.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

[ $# -ge 2 ] || { sed -n 2,9p "$0"; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
N=${3:-300}
[ "$(nproc)" -ge 2 ] || { log "needs two CPUs (client and servers apart)"; exit 1; }
MOCK_BIN="$ROOT/target/release/livery-mock"
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock

make_run_dir livery-ttfb
start_pinned_mock "$TMP"
seal_bench_key "$NEW" "$TMP"
mkdir -p "$TMP/old" "$TMP/new"
render_bench_config "$TMP/old" >"$TMP/old/gateway.toml"
render_bench_config "$TMP/new" >"$TMP/new/gateway.toml"
start_pinned_livery "$OLD" "$TMP/old"
OLD_PORT=$LIVERY_PORT
start_pinned_livery "$NEW" "$TMP/new"
NEW_PORT=$LIVERY_PORT

taskset -c 0 python3 - "$ROOT" "${MOCK_URL##*:}" "$OLD_PORT" "$NEW_PORT" "$N" <<'PY'
import random
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1] + "/benches/load")
import harness  # noqa: E402

mock, old, new, n = map(int, sys.argv[2:6])
first = {"direct": [], "old": [], "new": []}
targets = [("direct", mock), ("old", old), ("new", new)]
for _ in range(n):
    # A new order every round: in a fixed one the second build read 15-20 us
    # faster than the first, whichever it was (a stream finds the caches as
    # the one before it left them).
    random.shuffle(targets)
    for name, port in targets:
        first[name].append(harness.one_stream(port)[0])
    time.sleep(0.005)
direct = statistics.median(first["direct"])
print(f"direct: first event p50 {direct:.0f} us")
for name in ("old", "new"):
    p50 = statistics.median(first[name])
    print(f"{name}: first event p50 {p50:.0f} us, added {p50 - direct:.0f} us")
PY
