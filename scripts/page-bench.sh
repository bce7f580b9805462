#!/usr/bin/env bash
# The web app's benchmark: page weight, page load → menu shown, and event
# reaching notify-svc → DOM update (p50/p99 over 200 orders, simulator delays
# at zero), in a real headless Chromium on the real services (release build).
#
#   scripts/page-bench.sh                          200 orders, 30 warm + 5 cold loads
#   scripts/page-bench.sh --orders 50 --loads 10 --cold-loads 3
#
# What each number means: tests/src/bin/page-bench.rs. Writes
# target/bench/page/bench.json. It asserts nothing.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/infra.sh deps
exec cargo run --release --locked --quiet -p foodchain-tests --bin page-bench -- "$@"
