#!/usr/bin/env bash
# What each Livery feature costs, measured the way ab.sh compares binaries:
# alternating runs at maximum throughput (closed loop, 64 connections), oha on
# the first CPU, the mock and the proxy on the second, each run's proxy CPU per
# request divided by the mock's in that run (steady on a shared VM where req/s
# moves by ±20%). Variants of gateway.bench.toml, each with one feature off,
# then all of them off, and the nginx hop of run.sh as the reference:
#
#   all           the bench configuration (everything on)
#   no-mirror     without the JSONL usage mirror
#   no-ledger     without the durable ledger (spool, SQLite), mirror kept
#   no-sqlite     the spool without its SQLite sink (`sinks = []`; not in the
#                 default set, pick it with VARIANTS)
#   fsync-1s      the spool's group commit once a second instead of every
#                 5 ms (`fsync_interval_ms = 1000`; not in the default set)
#   spool-tmpfs   the spool in /dev/shm (no block device, no journal behind
#                 its writes and syncs; not in the default set)
#   ledger-tmpfs  the spool and the SQLite ledger in /dev/shm (not in the
#                 default set)
#   http1-upstream  HTTP/1.1 to the mock (pooled keep-alive connections, as
#                 nginx's) instead of HTTP/2 (not in the default set)
#   no-limits     the plan without limits (no admission buckets)
#   platform-key  no sealed tenant credential: nothing unsealed per request
#   bare          all four off: authentication, routing, HTTP/2 upstream and
#                 the usage record remain
#   bare-in-process  bare with the built-in mock provider answering in
#                 process instead of the HTTP/2 upstream (not in the default
#                 set; its direct baseline still counts the mock's answer)
#   floor         livery-floor (benches/floor/main.rs), the least proxy on
#                 Livery's stack: hyper in, h2 out, nothing else (not in the
#                 default set)
#   nginx         the bare nginx hop (proxy_pass, keep-alive upstream)
#   alt           everything on, as `all`, with the binary $ALT_BIN (another
#                 build of the same code, e.g. BOLT's against profile-guided)
#
# With the proxy and the mock sharing one saturated CPU, throughput is
# 1 / (proxy + mock CPU per request), so a variant's modelled throughput
# relative to nginx is (1 + nginx ratio) / (1 + variant ratio).
#
#   benches/load/features.sh [LIVERY_BIN] [ROUNDS] [REQUESTS]
#
# LIVERY_BIN defaults to target/release/livery, ROUNDS to 3, REQUESTS (per run,
# after 20,000 warm-up) to 60,000. Prints a markdown table.
#
# With RATE=N in the environment it measures latency instead: each run sends
# N req/s open loop (oha -q N --latency-correction, 64 connections) for
# DURATION seconds (default 10) straight to the mock, then through the proxy,
# and the table gives the added p50 and p99 (proxy minus direct, medians over
# rounds) and each against nginx's.
#
# VARIANTS="all bare nginx" picks variants; the table's references must be
# among them (nginx always, and all unless RATE is set).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

BIN=$(realpath "${1:-$ROOT/target/release/livery}")
ROUNDS=${2:-3}
REQUESTS=${3:-60000}
RATE=${RATE:-}
DURATION=${DURATION:-10}
# shellcheck disable=SC2206
VARIANTS=(${VARIANTS:-all no-mirror no-ledger no-limits platform-key bare nginx})
needed=(nginx)
[ -n "$RATE" ] || needed+=(all)
for v in "${needed[@]}"; do
    [[ " ${VARIANTS[*]} " == *" $v "* ]] || { log "VARIANTS must include $v (the table's reference)"; exit 2; }
done
prepare_pinned_bench nginx

make_run_dir livery-features
prepare_tmpfs_variants "${VARIANTS[@]}"

# One run of variant $1; prints "req/s proxy_us mock_us".
run_once() {
    local variant=$1 dir="$TMP/run.$RANDOM"
    mkdir -p "$dir"
    start_pinned_mock "$dir"
    local port proxies
    if [ "$variant" = nginx ]; then
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        start_pinned_nginx "$dir" "$port"
        proxies="$(cat "$dir/nginx.pid") $(pgrep -P "$(cat "$dir/nginx.pid")" | tr '\n' ' ')"
    elif [ "$variant" = floor ]; then
        start_pinned_floor "$dir"
        port=$FLOOR_PORT proxies=$FLOOR_PID
    else
        local bin=$BIN
        [ "$variant" = alt ] && bin=$(realpath "${ALT_BIN:?alt needs ALT_BIN}")
        seal_bench_key "$bin" "$dir"
        render_variant "$variant" "$dir"
        start_pinned_livery "$bin" "$dir"
        port=$LIVERY_PORT proxies=$LIVERY_PID
    fi
    local result url="http://127.0.0.1:$port/v1/chat/completions"
    if [ -n "$RATE" ]; then
        result=$(measure_at_rate "$url" "$MOCK_URL/v1/chat/completions")
    else
        # shellcheck disable=SC2086
        result=$(measure_at_max "$url" "$MOCK_PID" $proxies)
    fi
    if [ "$variant" = nginx ]; then
        kill -QUIT "$(cat "$dir/nginx.pid")" 2>/dev/null || true
    else
        kill -TERM "$proxies" 2>/dev/null || true
    fi
    kill -TERM "$MOCK_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    echo "$result"
}

log "livery: $BIN"
if [ -n "$RATE" ]; then
    log "$ROUNDS rounds of ${#VARIANTS[@]} variants, $RATE req/s for ${DURATION} s each, order rotated per round"
else
    log "$ROUNDS rounds of ${#VARIANTS[@]} variants, $REQUESTS requests each, order rotated per round"
fi
for r in $(seq "$ROUNDS"); do
    n=${#VARIANTS[@]}
    for j in $(seq 0 $((n - 1))); do
        v=${VARIANTS[$(((j + r - 1) % n))]}
        if [ -n "$RATE" ]; then
            read -r p50 p99 < <(run_once "$v")
            log "round $r $v: added p50 $p50 µs, p99 $p99 µs at $RATE req/s"
            echo "$p50" >>"$TMP/p50.$v"
            echo "$p99" >>"$TMP/p99.$v"
            continue
        fi
        read -r rps proxy mock sys < <(run_once "$v")
        ratio=$(awk -v p="$proxy" -v m="$mock" 'BEGIN { printf "%.3f", (m > 0) ? p / m : 0 }')
        log "round $r $v: $rps req/s, proxy $proxy µs ($sys in the kernel), mock $mock µs per request, ratio $ratio"
        echo "$ratio" >>"$TMP/ratio.$v"
        echo "$rps" >>"$TMP/rps.$v"
        echo "$proxy" >>"$TMP/proxy.$v"
        echo "$sys" >>"$TMP/sys.$v"
        echo "$mock" >>"$TMP/mock.$v"
    done
done

if [ -n "$RATE" ]; then
    ng50=$(median <"$TMP/p50.nginx")
    ng99=$(median <"$TMP/p99.nginx")
    printf '| variant | added p50 µs (median) | / nginx | added p99 µs (median) | / nginx |\n'
    printf '|---|---:|---:|---:|---:|\n'
    for v in "${VARIANTS[@]}"; do
        awk -v v="$v" -v a="$(median <"$TMP/p50.$v")" -v b="$(median <"$TMP/p99.$v")" \
            -v n50="$ng50" -v n99="$ng99" \
            'function r(x, y) { return (y > 0) ? sprintf("%.2f", x / y) : "n/a" }
             BEGIN { printf "| %s | %.0f | %s | %.0f | %s |\n", v, a, r(a, n50), b, r(b, n99) }'
    done
    exit 0
fi
ng=$(median <"$TMP/ratio.nginx")
all=$(median <"$TMP/ratio.all")
printf '| variant | req/s (median) | proxy CPU µs/request (median) | of it in the kernel | mock CPU µs/request | proxy / mock CPU (median) | vs all on | modelled throughput / nginx |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|\n'
for v in "${VARIANTS[@]}"; do
    r=$(median <"$TMP/ratio.$v")
    awk -v v="$v" -v rps="$(median <"$TMP/rps.$v")" -v us="$(median <"$TMP/proxy.$v")" \
        -v sys="$(median <"$TMP/sys.$v")" -v mock="$(median <"$TMP/mock.$v")" \
        -v r="$r" -v all="$all" -v ng="$ng" \
        'BEGIN { printf "| %s | %.0f | %.1f | %.1f | %.1f | %.2f | %+.0f%% | %.2f |\n", v, rps, us, sys, mock, r, (r / all - 1) * 100, (1 + ng) / (1 + r) }'
done
