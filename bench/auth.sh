#!/usr/bin/env bash
# Keystone auth against noauth, side by side on this machine (release build): port creates at
# concurrency 8 through the shared Neutron harness against a `--auth keystone` controller
# (tokens cached) and a noauth one, in turn, then the first request with a fresh token (the
# validation round trip) against cached and noauth requests. Needs .venv-keystone (./test.sh
# makes it).   Usage: bench/auth.sh [--ports N] [--repeat R] [--fresh-tokens N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p isthmus
exec python3 bench/auth.py --harness "${NEUTRON_BENCH:-../shared/bench/neutron_api_bench.py}" "$@"
