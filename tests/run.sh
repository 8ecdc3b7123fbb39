#!/usr/bin/env bash
# Livery's test command: the whole suite on a fresh machine with the Rust
# toolchain and python3 (3.11+ with venv and pip). It installs what the tests
# need (the `openai` and `anthropic` Python SDKs into .venv), then runs formatting, lints, and
# every unit and integration test. `.ci/run` runs exactly this.
#
#   tests/run.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

step() { printf '\n==> %s\n' "$*"; }

# ------------------------------------------------------------ system packages
# Services the tests start themselves. `ensure_apt_package PROGRAM PACKAGE`
# installs PACKAGE when `command -v PROGRAM` finds nothing, running
# `apt-get update` once for all of them.
APT_UPDATED=0
ensure_apt_package() {
    local program="$1" package="$2"
    if command -v "$program" >/dev/null 2>&1; then
        return 0
    fi
    step "installing $package (for $program)"
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package"
}

# Shared rate limits (tests/limits.rs) start their own redis-server on a free
# loopback port; with LIVERY_REQUIRE_REDIS=1 they fail instead of skipping.
ensure_apt_package redis-server redis-server
LIVERY_REDIS_SERVER="$(command -v redis-server)"
export LIVERY_REDIS_SERVER
export LIVERY_REQUIRE_REDIS=1

# On-demand ACME (tests/tls/pebble.rs) runs Debian's pebble ACME test server on
# loopback; with LIVERY_REQUIRE_PEBBLE=1 the test fails instead of skipping.
ensure_apt_package pebble pebble
LIVERY_PEBBLE="$(command -v pebble)"
export LIVERY_PEBBLE
export LIVERY_REQUIRE_PEBBLE=1

# ------------------------------------------- Python + openai and anthropic SDKs
OPENAI_SPEC='openai>=1.50,<3'
ANTHROPIC_SPEC='anthropic>=0.40,<3'
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

step "Python venv with the openai and anthropic SDKs ($VENV)"
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
        # Debian splits ensurepip into python3-venv.
        rm -rf "$VENV"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv
        python3 -m venv "$VENV"
    fi
fi
# A no-op (no download) when a matching version is already installed.
"$PY" -m pip install --quiet --disable-pip-version-check "$OPENAI_SPEC" "$ANTHROPIC_SPEC"
"$PY" -c 'import sys, openai, anthropic; print(f"python {sys.version.split()[0]}, openai {openai.__version__}, anthropic {anthropic.__version__}")'

export LIVERY_PYTHON="$PY"
# The SDK tests fail, instead of skipping, when the SDK is missing.
export LIVERY_REQUIRE_SDK=1

# ------------------------------------------------------------------ Rust
step "cargo fmt --check"
cargo fmt --all --check

# With the bench mock (`--features mock-server`, benches/mock/): it is linted and
# its tests run with the rest, and the feature set is the same for both
# commands, so the library builds once.
step "cargo clippy --all-targets --features mock-server -- -D warnings"
cargo clippy --all-targets --features mock-server --quiet -- -D warnings

step "cargo test --all-targets --features mock-server"
cargo test --all-targets --features mock-server

step "all checks passed"
