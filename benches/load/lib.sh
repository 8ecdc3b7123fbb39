# Shared by benches/load/run.sh and benches/load/incumbent.sh (sourced, not run).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# oha from crates.io when it is not on PATH.
ensure_oha() {
    PATH="$HOME/.cargo/bin:$PATH"
    if ! command -v oha >/dev/null; then
        log "installing oha (cargo install oha --locked; about 5 minutes on 2 cores)"
        cargo install oha --locked --quiet
    fi
}

# A temporary directory in $TMP whose processes (one PID a line in $TMP/pids,
# written by the Python drivers) are stopped, and which is removed, on exit.
make_run_dir() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap stop_run_dir EXIT
    trap 'exit 130' INT TERM
}

stop_run_dir() {
    local pid
    if [ -f "$TMP/pids" ]; then
        while read -r pid; do
            kill -TERM "$pid" 2>/dev/null || true
        done <"$TMP/pids"
        sleep 0.5
        while read -r pid; do
            kill -KILL "$pid" 2>/dev/null || true
        done <"$TMP/pids"
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
