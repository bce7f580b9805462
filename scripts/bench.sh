#!/usr/bin/env bash
# The benchmark, on a local deployment of release builds with nothing
# breaking (chaos/src/bench/): CPU per delivered order of every process
# (servers included) and memory; closed-loop creation at c=1/8/32/256 with
# 5xx counted; created→delivered and hop latency at 10 orders/s and at 80 %
# of the sustained rate; the sustained rate (backlog does not grow); the
# floor (bare MongoDB order transaction, raw XADD and XREADGROUP+XACK on the
# same servers) and ours ÷ floor; WebSocket fan-out (10,000 trackers on
# 1,000 orders). Prints numbers and writes bench.json; asserts nothing.
# About 12 minutes on 2 cores.
#
#   scripts/bench.sh                                  everything, defaults
#   scripts/bench.sh --quick                          creation, pipeline, CPU, memory only (~1 min)
#   scripts/bench.sh --ladder 1,32 --step-secs 5 --fanout-sockets 2000
#   scripts/bench.sh --bin-dir <dir>                  other builds of the services (before/after)
#   scripts/bench.sh --pace 10,55 --no-sustained      the pace (each hop's median too) at fixed rates
#   scripts/bench.sh --redis-cluster                  the streams on a local 3+3 Redis Cluster (1 node vs cluster)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/infra.sh deps >&2
# The shipped binaries exactly as `make run` builds them, then the driver.
cargo build --release --locked --quiet
cargo build --release --locked --quiet -p chaos
# The fan-out opens tens of thousands of sockets (both ends on this machine).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec target/release/chaos bench "$@"
