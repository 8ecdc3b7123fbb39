#!/usr/bin/env bash
# Livery against LiteLLM's proxy, the incumbent (issue 7's optional target), with
# the mock as the baseline, in one run: benches/load/incumbent.py.
#
#   benches/load/incumbent.sh            # 3 rounds, about 4 minutes -> benches/load/results/incumbent.{md,json}
#
# Installs LiteLLM's proxy (`litellm[proxy]` from PyPI) into benches/load/.venv-litellm
# and oha if missing, builds Livery and livery-mock in release, pins the load
# generator to CPU 0 and the servers to CPU 1, and stops what it started (by PID)
# on exit. Extra options go to incumbent.py (--rounds N, --duration S, --rate R).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=benches/load/lib.sh
. "$ROOT/benches/load/lib.sh"

VENV="$ROOT/benches/load/.venv-litellm"
if ! "$VENV/bin/litellm" --version >/dev/null 2>&1; then
    log "installing litellm[proxy] into $VENV (about 2 minutes)"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'litellm[proxy]'
fi
ensure_oha
command -v taskset >/dev/null || { log "taskset (util-linux) is required"; exit 1; }

log "building livery and livery-mock (release)"
cargo build --release --quiet --features mock-server --bin livery --bin livery-mock

make_run_dir livery-incumbent

taskset -c 0 python3 "$ROOT/benches/load/incumbent.py" --root "$ROOT" --tmp "$TMP" \
    --litellm "$VENV/bin/litellm" --oha "$(command -v oha)" --load-cpu 0 --server-cpu 1 "$@"
