#!/usr/bin/env bash
# Added latency of Livery builds and configurations at a fixed rate, measured
# request by request in turn (interleave.rs) rather than one target per burst:
# every target sees the same seconds of this shared VM, so differences of a
# few microseconds repeat (the same binary against itself: within 2 us; a
# features.sh or harness round moves by 10-30 us).
#
#   benches/load/interleave.sh NAME=BIN[:VARIANT] ...
#
# Starts the mock, nginx (the bare hop of run.sh) and one Livery per argument,
# all on the second CPU, each Livery on the bench configuration with VARIANT
# applied (features.sh lists them; default all); warms each up with 20,000
# requests; then sends RATE (2000) req/s in all, round robin over the direct
# mock, every Livery and nginx, for DURATION (30) s, REPEATS (3) times. Prints
# each target's added p50/p90/p99 (minus the direct mock's) per repeat and a
# markdown table of the medians. Each target gets CONNS (16) keep-alive
# connections, used in turn. The client spins on the first CPU; its
# absolute figures are lower than oha's (no wake-up of its own per answer),
# so compare them with each other, not with the harness's. BIN may be a
# wrapper script that execs a binary with some environment.
#
# With FLOOR=1 it also measures `livery-floor` (benches/floor/main.rs), the
# least proxy on Livery's stack (hyper in, h2 out, nothing else): what Livery
# adds over it is its pipeline and features, what it adds over nginx the stack.
#
# e.g. BOLT's build against the profile-guided one, and a feature's cost:
#   benches/load/interleave.sh pgo=target/pgo/release/livery bolt=target/bolt/livery
#   benches/load/interleave.sh all=target/bolt/livery bare=target/bolt/livery:bare
#   FLOOR=1 benches/load/interleave.sh all=target/bolt/livery bare=target/bolt/livery:bare
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

[ $# -ge 1 ] || { sed -n 2,28p "$0"; exit 2; }
RATE=${RATE:-2000}
SECONDS_EACH=${DURATION:-30}
REPEATS=${REPEATS:-3}
prepare_pinned_bench nginx
CLIENT="$ROOT/target/interleave"
if [ ! -x "$CLIENT" ] || [ "$ROOT/benches/load/interleave.rs" -nt "$CLIENT" ]; then
    rustc -O --edition 2021 "$ROOT/benches/load/interleave.rs" -o "$CLIENT"
fi

make_run_dir livery-interleave
prepare_tmpfs_variants "$@"

start_pinned_mock "$TMP"
first=${1#*=}
seal_bench_key "$(realpath "${first%%:*}")" "$TMP"
TARGETS=(direct="${MOCK_URL#http://}")
NAMES=()
for spec in "$@"; do
    split_target_spec "$spec"
    name=$SPEC_NAME bin=$SPEC_BIN variant=$SPEC_VARIANT
    dir="$TMP/$name"
    mkdir -p "$dir"
    render_variant "$variant" "$dir"
    start_pinned_livery "$(realpath "$bin")" "$dir"
    bench_load "http://127.0.0.1:$LIVERY_PORT/v1/chat/completions" -n 20000 >/dev/null
    log "$name: $bin, $variant"
    TARGETS+=("$name=127.0.0.1:$LIVERY_PORT")
    NAMES+=("$name")
done
if [ "${FLOOR:-0}" = 1 ]; then
    start_pinned_floor "$TMP"
    bench_load "http://127.0.0.1:$FLOOR_PORT/v1/chat/completions" -n 20000 >/dev/null
    log "floor: target/release/livery-floor"
    TARGETS+=("floor=127.0.0.1:$FLOOR_PORT")
    NAMES+=(floor)
fi
NGINX_PORT=$(free_port)
start_pinned_nginx "$TMP" "$NGINX_PORT"
bench_load "http://127.0.0.1:$NGINX_PORT/v1/chat/completions" -n 20000 >/dev/null
TARGETS+=("nginx=127.0.0.1:$NGINX_PORT")
NAMES+=(nginx)

log "$REPEATS x $SECONDS_EACH s at $RATE req/s in all, round robin over ${#TARGETS[@]} targets"
for r in $(seq "$REPEATS"); do
    taskset -c 0 "$CLIENT" --rate "$RATE" --seconds "$SECONDS_EACH" --conns "${CONNS:-16}" \
        "${TARGETS[@]}" >"$TMP/repeat.$r"
    line="repeat $r:"
    for n in "${NAMES[@]}"; do
        read -r a50 a90 a99 < <(awk -v n="$n" '$1 == "direct" {d50 = $2; d90 = $3; d99 = $4}
            $1 == n {t50 = $2; t90 = $3; t99 = $4}
            END {print t50 - d50, t90 - d90, t99 - d99}' "$TMP/repeat.$r")
        echo "$a50" >>"$TMP/p50.$n"
        echo "$a90" >>"$TMP/p90.$n"
        echo "$a99" >>"$TMP/p99.$n"
        line+=" $n +$a50/+$a90/+$a99"
    done
    log "$line us (added p50/p90/p99)"
done

n50=$(median <"$TMP/p50.nginx")
n99=$(median <"$TMP/p99.nginx")
echo "| target | added p50 us | / nginx | added p90 us | added p99 us | / nginx |"
echo "|---|---:|---:|---:|---:|---:|"
for n in "${NAMES[@]}"; do
    awk -v n="$n" -v a="$(median <"$TMP/p50.$n")" -v b="$(median <"$TMP/p90.$n")" \
        -v c="$(median <"$TMP/p99.$n")" -v n50="$n50" -v n99="$n99" \
        'BEGIN {printf "| %s | %.0f | %.2f | %.0f | %.0f | %.2f |\n", n, a, a / n50, b, c, c / n99}'
done
echo
echo "Medians of $REPEATS repeats of $SECONDS_EACH s, $RATE req/s round robin over ${#TARGETS[@]} targets" \
    "(each $((RATE / ${#TARGETS[@]})) req/s); direct mock p50 $(awk '$1 == "direct" {print $2}' "$TMP/repeat.1") us in the first."
