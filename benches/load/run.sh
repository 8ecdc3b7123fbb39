#!/usr/bin/env bash
# Livery's load benchmarks (issue 7): the mock directly, a bare nginx hop,
# Livery with every implemented feature on, and the same Livery with Redis-backed
# limits (a redis-server the harness starts on loopback), measured side by side in
# alternating rounds on loopback. See benches/README.md.
#
#   benches/load/run.sh            # full run, about 8 minutes -> benches/load/results/latest.{md,json}
#   benches/load/run.sh --quick    # one short round, < 2 minutes -> results/latest-quick.{md,json}
#   benches/load/run.sh --pgo      # Livery built profile-guided first (benches/load/pgo.sh, ~12 minutes)
#   benches/load/run.sh --bolt     # the same, then BOLT on top (benches/load/bolt.sh, ~2 minutes more)
#
# Extra options are passed to harness.py (--rounds N, --duration S, --rates 500,2000,
# --streams N, --soak-min M, --load-cpu C, --server-cpu C, --out DIR, --redis-server PATH,
# --mock-bin PATH).
# Installs what is missing (nginx and redis-server from apt, oha from crates.io), builds Livery and
# livery-mock in release, pins the load generator to one CPU and the servers to
# another, and stops everything it started (by PID) on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=benches/load/lib.sh
. "$ROOT/benches/load/lib.sh"

# ---------------------------------------------------------------- tools
PATH="$PATH:/usr/sbin:/sbin"
command -v python3 >/dev/null || apt_install python3
command -v taskset >/dev/null || apt_install util-linux
command -v nginx >/dev/null || apt_install nginx-light || apt_install nginx
ensure_redis_server
ensure_oha

# ---------------------------------------------------------------- build
LIVERY_BIN=()
if [ "${1:-}" = "--pgo" ]; then
    shift
    "$ROOT/benches/load/pgo.sh"
    LIVERY_BIN=(--livery-bin "$ROOT/target/pgo/release/livery")
elif [ "${1:-}" = "--bolt" ]; then
    shift
    "$ROOT/benches/load/pgo.sh"
    "$ROOT/benches/load/bolt.sh"
    LIVERY_BIN=(--livery-bin "$ROOT/target/bolt/livery")
fi
log "building livery and livery-mock (release, fat LTO: about 5 minutes from scratch on 2 cores)"
cargo build --release --quiet --features mock-server --bin livery --bin livery-mock

# ---------------------------------------------------------------- run
make_run_dir livery-bench

# 1,000 open streams need about 2,000 descriptors in the proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

CPUS=$(nproc)
if [ "$CPUS" -ge 2 ]; then
    LOAD_CPU=0
    SERVER_CPU=1
    PIN=(taskset -c "$LOAD_CPU")
    SPLIT=(--load-cpu "$LOAD_CPU" --server-cpu "$SERVER_CPU")
else
    log "only one CPU: nothing is pinned"
    PIN=()
    SPLIT=()
fi

"${PIN[@]}" python3 "$ROOT/benches/load/harness.py" --root "$ROOT" --tmp "$TMP" \
    --oha "$(command -v oha)" --redis-server "$REDIS_SERVER" "${SPLIT[@]}" "${LIVERY_BIN[@]}" "$@"
