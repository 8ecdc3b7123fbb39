#!/usr/bin/env bash
# Compares two Livery binaries on a noisy machine: alternating runs at maximum
# throughput (closed loop, 64 connections), everything pinned as run.sh pins it
# (oha on the first CPU, the mock and Livery on the second), the bench
# configuration of gateway.bench.toml. Throughput of the same binary moves by
# ±20% between runs on a shared VM; the mock's CPU per request moves with it, so
# each run reports Livery's CPU per request divided by the mock's in that run.
#
#   benches/load/ab.sh OLD_BIN NEW_BIN [PAIRS] [REQUESTS]
#
# e.g. build the old commit into another target directory, then
#   benches/load/ab.sh /tmp/old/livery target/release/livery 5 60000
# PAIRS defaults to 5 and REQUESTS (per run, after 20,000 warm-up) to 60,000.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/benches/load/lib.sh"

[ $# -ge 2 ] || { sed -n 2,13p "$0"; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
PAIRS=${3:-5}
REQUESTS=${4:-60000}
[ "$(nproc)" -ge 2 ] || { log "needs two CPUs (load generator and servers apart)"; exit 1; }
command -v taskset >/dev/null || apt_install util-linux
ensure_oha
MOCK_BIN="$ROOT/target/release/livery-mock"
[ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock

make_run_dir livery-ab
KEY=sk-livery-bench-0123456789
BODY='{"model":"demo","messages":[{"role":"user","content":"Hello"}]}'

# CPU ticks (user + system) of a process so far.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

wait_for() { # file pattern
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    log "timed out waiting for '$2' in $1"
    cat "$1" >&2
    return 1
}

# One run of binary $1; prints "req/s livery_us mock_us".
run_once() {
    local bin=$1 dir="$TMP/run.$RANDOM"
    mkdir -p "$dir"
    taskset -c 1 "$MOCK_BIN" --listen 127.0.0.1:0 --delay-ms 0 --chunks 12 --gap-ms 0 >"$dir/mock.log" 2>&1 &
    local mock=$!
    echo "$mock" >>"$TMP/pids"
    wait_for "$dir/mock.log" "listening on"
    local mock_url
    mock_url=$(grep -o "listening on [^ ]*" "$dir/mock.log" | head -1 | awk '{print $3}')
    case "$mock_url" in http*) ;; *) mock_url="http://$mock_url" ;; esac
    local kek cred
    kek=$("$bin" vault keygen)
    cred=$(printf %s fake-bench-tenant-provider-key-not-a-secret |
        LIVERY_MASTER_KEY=$kek "$bin" vault seal --owner tenant:bench/bench-tenant \
            --provider upstream --config "$dir/none.toml")
    sed -e "s#@MOCK_URL@#$mock_url#" -e "s#@USAGE_PATH@#$dir/usage.jsonl#" \
        -e "s#@CREDENTIALS@#credentials = { upstream = \"$cred\" }#" \
        "$ROOT/benches/load/gateway.bench.toml" >"$dir/gateway.toml"
    (cd "$dir" && LIVERY_MASTER_KEY=$kek LIVERY_BENCH_PLATFORM_KEY=fake-bench-platform-key-not-a-secret \
        exec taskset -c 1 "$bin" serve --config "$dir/gateway.toml" --listen 127.0.0.1:0 >"$dir/livery.log" 2>&1) &
    local livery=$!
    echo "$livery" >>"$TMP/pids"
    wait_for "$dir/livery.log" "livery listening on"
    local port
    port=$(grep -o "livery listening on [^ ]*" "$dir/livery.log" | head -1 | rev | cut -d: -f1 | rev)
    local url="http://127.0.0.1:$port/v1/chat/completions"
    load() {
        taskset -c 0 oha --no-tui -m POST -T application/json -H "Authorization: Bearer $KEY" \
            -d "$BODY" -c 64 "$@" "$url"
    }
    load -n 20000 >/dev/null
    local l0 m0 l1 m1 rps
    l0=$(ticks "$livery")
    m0=$(ticks "$mock")
    rps=$(load -n "$REQUESTS" | awk '/Requests\/sec/ {print $2}')
    l1=$(ticks "$livery")
    m1=$(ticks "$mock")
    kill -TERM "$livery" "$mock" 2>/dev/null || true
    wait "$livery" "$mock" 2>/dev/null || true
    local hz
    hz=$(getconf CLK_TCK)
    awk -v r="$rps" -v l=$((l1 - l0)) -v m=$((m1 - m0)) -v n="$REQUESTS" -v hz="$hz" \
        'BEGIN { printf "%.0f %.1f %.1f\n", r, l * 1e6 / hz / n, m * 1e6 / hz / n }'
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

log "old: $OLD"
log "new: $NEW"
log "$PAIRS pairs of $REQUESTS requests each, alternating"
printf '| pair | binary | req/s | Livery CPU µs/request | mock CPU µs/request | Livery / mock |\n|---:|---|---:|---:|---:|---:|\n'
for i in $(seq "$PAIRS"); do
    for which in old new; do
        bin=$OLD
        [ "$which" = new ] && bin=$NEW
        read -r rps livery mock < <(run_once "$bin")
        ratio=$(awk -v l="$livery" -v m="$mock" 'BEGIN { printf "%.2f", (m > 0) ? l / m : 0 }')
        printf '| %d | %s | %s | %s | %s | %s |\n' "$i" "$which" "$rps" "$livery" "$mock" "$ratio"
        echo "$ratio" >>"$TMP/ratio.$which"
        echo "$rps" >>"$TMP/rps.$which"
    done
done
for which in old new; do
    printf 'median %s: Livery / mock CPU per request %s, %s req/s\n' "$which" \
        "$(median <"$TMP/ratio.$which")" "$(median <"$TMP/rps.$which")"
done
