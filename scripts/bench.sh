#!/usr/bin/env bash
# The benchmark: order creation throughput and latency, created→delivered
# latency through the whole event pipeline, and memory per service, on a
# local deployment of release builds with nothing breaking. Prints numbers;
# asserts nothing.
#   scripts/bench.sh                       (2000 orders, 32 clients, 1 replica each)
#   scripts/bench.sh --orders 5000 --concurrency 64 --replicas 2 --fsync everysec
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
scripts/infra.sh deps >&2
# The shipped binaries exactly as `make run` builds them, then the driver.
cargo build --release --locked --quiet
cargo build --release --locked --quiet -p chaos
exec target/release/chaos bench "$@"
