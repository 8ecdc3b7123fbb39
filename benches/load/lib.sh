# Shared by the scripts of benches/load/ (sourced, not run).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# oha from crates.io when it is not on PATH.
ensure_oha() {
    PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install oha --locked; about 5 minutes on 2 cores)"
        cargo install oha --locked --quiet
    fi
}

# REDIS_SERVER: $LIVERY_REDIS_SERVER, else redis-server on PATH, else from apt.
ensure_redis_server() {
    REDIS_SERVER=${LIVERY_REDIS_SERVER:-$(command -v redis-server || true)}
    if [ -z "$REDIS_SERVER" ]; then
        apt_install redis-server
        REDIS_SERVER=$(command -v redis-server)
    fi
}

# The major version of rustc's LLVM (its llvm-profdata and BOLT must match).
rustc_llvm_major() { rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p'; }

# pgo.sh's and bolt.sh's training workload (pgo_train.py) on the instrumented
# binary $1, working in directory $2: the load on CPU 0, the servers on CPU 1
# as the harness pins them. Needs REDIS_SERVER (ensure_redis_server) and oha.
run_training() {
    local pin=()
    [ "$(nproc)" -ge 2 ] && pin=(taskset -c 0)
    "${pin[@]}" python3 "$ROOT/benches/load/pgo_train.py" --root "$ROOT" --tmp "$2" \
        --livery-bin "$1" --oha "$(command -v oha)" --redis-server "$REDIS_SERVER"
}

# A temporary directory in $TMP whose processes (one PID a line in $TMP/pids,
# written by the Python drivers) are stopped, and which is removed, on exit.
make_run_dir() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap stop_run_dir EXIT
    trap 'exit 130' INT TERM
}

stop_run_dir() {
    local rc=$? pid keep
    if [ -f "$TMP/pids" ]; then
        while read -r pid; do
            kill -TERM "$pid" 2>/dev/null || true
        done <"$TMP/pids"
        sleep 0.5
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done <"$TMP/pids"
    fi
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
        # A failed run's logs (Livery's, the mock's, nginx's, Redis's) are kept
        # for the post-mortem; the bulky data (spools, ledgers) is not.
        keep=$(mktemp -d "${TMPDIR:-/tmp}/livery-failed-run.XXXXXX")
        (cd "$TMP" && find . -maxdepth 2 -type f \( -name '*.log' -o -name '*.stderr' -o -name '*.toml' \) \
            -exec cp --parents {} "$keep" \;) 2>/dev/null || true
        log "the run failed (exit $rc): its logs are in $keep"
    fi
    rm -rf "$TMP"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
    log "installing $* from apt"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get install -y --no-install-recommends "$@" >/dev/null ||
        { as_root apt-get update >/dev/null && as_root apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

# ab.sh and features.sh: pinned runs at maximum throughput (the mock and the
# proxy on CPU 1, oha on CPU 0), each in its own directory under $TMP.

# Waits (30 s at most) until file $1 holds pattern $2.
wait_for() {
    for _ in $(seq 300); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    log "timed out waiting for '$2' in $1"
    cat "$1" >&2
    return 1
}

# The median of the numbers on standard input, one a line.
median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# Starts $MOCK_BIN pinned to CPU 1 as run.sh starts it, logging in directory $1;
# sets MOCK_PID and MOCK_URL.
start_pinned_mock() {
    taskset -c 1 "$MOCK_BIN" --listen 127.0.0.1:0 --delay-ms 0 --chunks 12 --gap-ms 0 >"$1/mock.log" 2>&1 &
    MOCK_PID=$!
    echo "$MOCK_PID" >>"$TMP/pids"
    wait_for "$1/mock.log" "listening on"
    MOCK_URL=$(grep -o "listening on [^ ]*" "$1/mock.log" | head -1 | awk '{print $3}')
    case "$MOCK_URL" in http*) ;; *) MOCK_URL="http://$MOCK_URL" ;; esac
}

# Seals the bench tenant's provider key with Livery binary $1 under a new KEK
# (a scratch config in directory $2); sets BENCH_KEK and BENCH_CREDENTIAL.
seal_bench_key() {
    BENCH_KEK=$("$1" vault keygen)
    BENCH_CREDENTIAL=$(printf %s fake-bench-tenant-provider-key-not-a-secret |
        LIVERY_MASTER_KEY=$BENCH_KEK "$1" vault seal --owner tenant:bench/bench-tenant \
            --provider upstream --config "$2/none.toml")
}

# gateway.bench.toml rendered for the mock at $MOCK_URL, with its usage file in
# directory $1, on standard output. The tenant's credential line is $2 when
# given ("" for none), else the one sealed by seal_bench_key.
render_bench_config() {
    local creds="credentials = { upstream = \"$BENCH_CREDENTIAL\" }"
    [ $# -ge 2 ] && creds=$2
    sed -e "s#@MOCK_URL@#$MOCK_URL#" -e "s#@USAGE_PATH@#$1/usage.jsonl#" \
        -e "s#@CREDENTIALS@#$creds#" "$ROOT/benches/load/gateway.bench.toml"
}

# The bench configuration with variant $1 applied (features.sh lists them),
# written to directory $2 as gateway.toml. The tmpfs variants need $SHM, a
# directory in /dev/shm.
render_variant() {
    local variant=$1 dir=$2 cfg
    # An empty path, not none: without the key the mirror is `usage.jsonl`
    # (until the twenty-ninth session this variant left the key out, so its
    # mirror, and bare's, stayed on).
    no_mirror() { sed 's|^jsonl_path = .*|jsonl_path = ""|'; }
    # Standard input with the line $1 put first in `[usage]`.
    usage_setting() { sed "s|^\[usage\]\$|[usage]\n$1|"; }
    no_ledger() { usage_setting 'ledger = false'; }
    no_sqlite() { usage_setting 'sinks = []'; }
    fsync_1s() { usage_setting 'fsync_interval_ms = 1000'; }
    # The spool (and with ledger-tmpfs the SQLite ledger too) in memory.
    spool_tmpfs() { mkdir -p "$SHM/$(basename "$dir")"; usage_setting "spool_dir = \"$SHM/$(basename "$dir")/spool\""; }
    ledger_tmpfs() { spool_tmpfs | usage_setting "sqlite_path = \"$SHM/$(basename "$dir")/usage.db\""; }
    no_limits() { grep -Ev '^(requests_per_minute|tokens_per_minute|tokens_per_month|max_concurrent) = '; }
    http1_upstream() { sed 's/^http2_prior_knowledge = true$/http2_prior_knowledge = false/'; }
    # The built-in mock provider answers in process: no upstream leg at all.
    in_process() { sed -e 's/^kind = "openai"$/kind = "mock"/' -e '/^base_url = /d' -e '/^http2_prior_knowledge = /d'; }
    case $variant in
        platform-key | bare) cfg=$(render_bench_config "$dir" "") ;;
        *) cfg=$(render_bench_config "$dir") ;;
    esac
    case $variant in
        no-mirror) no_mirror ;;
        no-ledger) no_ledger ;;
        no-sqlite) no_sqlite ;;
        fsync-1s) fsync_1s ;;
        spool-tmpfs) spool_tmpfs ;;
        ledger-tmpfs) ledger_tmpfs ;;
        no-limits) no_limits ;;
        http1-upstream) http1_upstream ;;
        bare) no_mirror | no_ledger | no_limits ;;
        bare-in-process) no_mirror | no_ledger | no_limits | in_process ;;
        *) cat ;;
    esac <<<"$cfg" >"$dir/gateway.toml"
}

# A target NAME=BIN[:VARIANT] of interleave.sh or stream_split.sh into
# SPEC_NAME, SPEC_BIN and SPEC_VARIANT (all when none is given); exits on a
# name that is not lower-case letters, digits, - and _, or that is taken.
split_target_spec() {
    SPEC_NAME=${1%%=*}
    local rest=${1#*=}
    SPEC_BIN=${rest%%:*}
    SPEC_VARIANT=all
    [[ $rest == *:* ]] && SPEC_VARIANT=${rest#*:}
    [[ $SPEC_NAME =~ ^[a-z0-9_-]+$ ]] && [ "$SPEC_NAME" != direct ] && [ "$SPEC_NAME" != nginx ] ||
        { log "bad target name: $SPEC_NAME"; exit 2; }
}

# Sets SHM for render_variant's tmpfs variants: a directory in /dev/shm,
# removed on exit after the run directory, when any argument names one;
# else empty. Call after make_run_dir.
prepare_tmpfs_variants() {
    SHM=""
    [[ " $* " == *"-tmpfs "* ]] || return 0
    SHM=$(mktemp -d /dev/shm/livery-bench.XXXXXX)
    trap 'stop_run_dir; rm -rf "$SHM"' EXIT
}

# Standard input with a `[limits]` table for the Redis backend at 127.0.0.1:$1
# (timeout $2 ms) put before `[server]`: the bench configuration in Redis mode.
with_redis_limits() {
    sed "s#^\[server\]\$#[limits]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:$1/0\"\nredis_timeout_ms = $2\n\n[server]#"
}

# Starts nginx pinned to CPU 1 as the harness's hop to the mock at $MOCK_URL,
# listening on port $2, its files in directory $1; waits for its PID file.
start_pinned_nginx() {
    python3 - "$ROOT" "$1" "${MOCK_URL##*:}" "$2" <<'PY'
import sys
sys.path.insert(0, sys.argv[1] + "/benches/load")
import harness
open(sys.argv[2] + "/nginx.conf", "w").write(
    harness.NGINX_CONF.format(tmp=sys.argv[2], mock_port=sys.argv[3], port=sys.argv[4]))
PY
    taskset -c 1 nginx -p "$1" -c "$1/nginx.conf" >"$1/nginx.log" 2>&1 &
    echo $! >>"$TMP/pids"
    for _ in $(seq 50); do [ -s "$1/nginx.pid" ] && break; sleep 0.1; done
    sleep 0.3
}

# A free loopback TCP port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts Livery binary $1 pinned to CPU 1 on $2/gateway.toml (working directory
# $2, the KEK of seal_bench_key); sets LIVERY_PID and LIVERY_PORT.
start_pinned_livery() {
    (cd "$2" && LIVERY_MASTER_KEY=$BENCH_KEK LIVERY_BENCH_PLATFORM_KEY=fake-bench-platform-key-not-a-secret \
        exec taskset -c 1 "$1" serve --config "$2/gateway.toml" --listen 127.0.0.1:0 >"$2/livery.log" 2>&1) &
    LIVERY_PID=$!
    echo "$LIVERY_PID" >>"$TMP/pids"
    wait_for "$2/livery.log" "livery listening on"
    LIVERY_PORT=$(listening_port "$2/livery.log")
}

# The port in the first "livery listening on ADDR" line of log file $1.
listening_port() {
    grep -o "livery listening on [^ ]*" "$1" | head -1 | rev | cut -d: -f1 | rev
}

# The path of livery-floor (benches/floor/main.rs), built if missing.
floor_bin() {
    local bin="$ROOT/target/release/livery-floor"
    [ -x "$bin" ] || cargo build --release --quiet --features mock-server --bin livery-floor >&2
    echo "$bin"
}

# Starts livery-floor (benches/floor/main.rs; built if missing) pinned to CPU 1
# in front of the mock at $MOCK_URL, its log in directory $1; sets FLOOR_PORT
# and FLOOR_PID.
start_pinned_floor() {
    local bin
    bin=$(floor_bin)
    (exec taskset -c 1 "$bin" "${MOCK_URL#http://}" >"$1/floor.log" 2>&1) &
    FLOOR_PID=$!
    echo "$FLOOR_PID" >>"$TMP/pids"
    wait_for "$1/floor.log" "livery listening on"
    FLOOR_PORT=$(listening_port "$1/floor.log")
}

# CPU ticks (user + system) of the given processes so far; with SYS=1 in the
# environment, system (kernel) ticks only.
ticks() {
    local t=0 p field='$14 + $15'
    [ -n "${SYS:-}" ] && field='$15'
    for p in "$@"; do t=$((t + $(awk "{print $field}" "/proc/$p/stat"))); done
    echo "$t"
}

# oha pinned to CPU 0 against URL $1 with the bench tenant's request (or
# BENCH_BODY, e.g. the same with "stream":true), $CONNS (64) connections; the
# remaining arguments go to oha.
BENCH_REQUEST='{"model":"demo","messages":[{"role":"user","content":"Hello"}]}'
bench_load() {
    local url=$1
    shift
    taskset -c 0 oha --no-tui -m POST -T application/json \
        -H "Authorization: Bearer sk-livery-bench-0123456789" \
        -d "${BENCH_BODY:-$BENCH_REQUEST}" -c "${CONNS:-64}" "$@" "$url"
}

# What the pinned comparisons (ab.sh, features.sh, interleave.sh) need: two
# CPUs, taskset, oha, the release mock (built if missing; MOCK_BIN may name
# another), and nginx too with the argument `nginx`.
prepare_pinned_bench() {
    [ "$(nproc)" -ge 2 ] || { log "needs two CPUs (load generator and servers apart)"; exit 1; }
    command -v taskset >/dev/null || apt_install util-linux
    if [ "${1:-}" = nginx ]; then
        command -v nginx >/dev/null || apt_install nginx
    fi
    ensure_oha
    MOCK_BIN=${MOCK_BIN:-"$ROOT/target/release/livery-mock"}
    [ -x "$MOCK_BIN" ] || cargo build --release --quiet --features mock-server --bin livery-mock
}

# Sends a 20,000-request warm-up, then $REQUESTS requests, to URL $1 and prints
# "req/s proxy_us mock_us proxy_sys_us": the CPU per request of the processes
# named after the mock's PID ($2) and of the mock itself, and how much of the
# former was spent in the kernel (nginx's path is mostly the kernel's, Livery's
# mostly its own code: a host with a cheaper kernel path favours nginx).
measure_at_max() {
    local url=$1 mock=$2
    shift 2
    local out warm p0 m0 s0 p1 m1 s1 rps
    out=$(bench_load "$url" -n 20000)
    warm=$(awk '$1 == "[200]" && $3 == "responses" {print $2}' <<<"$out")
    if [ "${warm:-0}" -ne 20000 ]; then
        log "$url: not every warm-up request succeeded:"
        sed -n '/Status code distribution/,$p' <<<"$out" >&2
        return 1
    fi
    p0=$(ticks "$@")
    s0=$(SYS=1 ticks "$@")
    m0=$(ticks "$mock")
    rps=$(bench_load "$url" -n "$REQUESTS" | awk '/Requests\/sec/ {print $2}')
    p1=$(ticks "$@")
    s1=$(SYS=1 ticks "$@")
    m1=$(ticks "$mock")
    awk -v r="$rps" -v p=$((p1 - p0)) -v m=$((m1 - m0)) -v s=$((s1 - s0)) -v n="$REQUESTS" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { printf "%.0f %.1f %.1f %.1f\n", r, p * 1e6 / hz / n, m * 1e6 / hz / n, s * 1e6 / hz / n }'
}

# Latency at a fixed rate: $RATE req/s open loop (oha -q with latency
# correction, 64 connections) for $DURATION s, first straight to the mock at
# URL $2 and then through the proxy at URL $1, after a 20,000-request warm-up
# of the proxy; prints "p50_added_us p99_added_us" (proxy minus direct).
measure_at_rate() {
    local url=$1 direct=$2 warm d p
    warm=$(bench_load "$url" -n 20000 | awk '$1 == "[200]" && $3 == "responses" {print $2}')
    [ "${warm:-0}" -eq 20000 ] || { log "$url: not every warm-up request succeeded"; return 1; }
    d=$(bench_load "$direct" -z "${DURATION}s" -q "$RATE" --latency-correction --output-format json)
    p=$(bench_load "$url" -z "${DURATION}s" -q "$RATE" --latency-correction --output-format json)
    python3 - "$d" "$p" <<'PY'
import json, sys
d, p = (json.loads(a) for a in sys.argv[1:3])
for r in (d, p):
    codes = r.get("statusCodeDistribution") or {}
    if set(codes) - {"200"}:
        sys.exit(f"answers other than 200: {codes}")
pct = lambda r, k: r["latencyPercentiles"][k] * 1e6
print(f'{pct(p, "p50") - pct(d, "p50"):.0f} {pct(p, "p99") - pct(d, "p99"):.0f}')
PY
}
