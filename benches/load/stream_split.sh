#!/usr/bin/env bash
# Where a stream's added first event is: before the mock has the request, in
# the mock, or after it answers. The mock stamps each event with the time its
# handler got the request and the time it sent the event (`"stamp": true`: rx_us
# and t_us, µs since the epoch, the clock the client reads too), so each
# stream's first event splits into request -> the mock's handler (the proxy's
# request path and the upstream hop), handler -> the mock's send (the mock's own
# work) and the mock's send -> the client has it (the proxy's relay).
#
#   benches/load/stream_split.sh [ROUNDS] NAME=BIN[:VARIANT] ...
#
# Starts the mock, nginx (the bare hop of run.sh) and one Livery per argument
# (features.sh variants, default all), all on the second CPU; each round sends
# one stream of the harness's shape (20 events 5 ms apart, a fresh
# connection, read to the end) to the direct mock, every Livery and nginx, in
# a new random order, ROUNDS (200) times. Prints the p50 of each part and what
# each target adds to it over the direct mock. Twenty-sixth session, BOLT build
# of ee33c63: Livery added 124 + 2 + 65 us, nginx 76 - 2 + 44.
#
#   benches/load/stream_split.sh 200 all=target/bolt/livery bare=target/bolt/livery:bare
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

ROUNDS=${1:-}
[[ $ROUNDS =~ ^[0-9]+$ ]] && shift || ROUNDS=200
[ $# -ge 1 ] || { sed -n 2,20p "$0"; exit 2; }
prepare_pinned_bench nginx
make_run_dir livery-stream-split
prepare_tmpfs_variants "$@"
start_pinned_mock "$TMP"
first=${1#*=}
seal_bench_key "$(realpath "${first%%:*}")" "$TMP"
TARGETS=(direct="${MOCK_URL##*:}")
for spec in "$@"; do
    split_target_spec "$spec"
    name=$SPEC_NAME bin=$SPEC_BIN variant=$SPEC_VARIANT
    mkdir -p "$TMP/$name"
    render_variant "$variant" "$TMP/$name"
    start_pinned_livery "$(realpath "$bin")" "$TMP/$name"
    log "$name: $bin, $variant"
    TARGETS+=("$name=$LIVERY_PORT")
done
NGINX_PORT=$(free_port)
start_pinned_nginx "$TMP" "$NGINX_PORT"
TARGETS+=("nginx=$NGINX_PORT")
cd "$ROOT/benches/load"
taskset -c 0 python3 stream_split.py "$ROUNDS" "${TARGETS[@]}"
