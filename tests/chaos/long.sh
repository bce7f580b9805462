#!/usr/bin/env bash
# The long chaos run: 2000 orders at 8/s with 20 faults (every kind at least
# twice), about 5 minutes of load.
#   tests/chaos/long.sh             (SEED=<n> to replay a run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$CHAOS" run --orders "${ORDERS:-2000}" --rate "${RATE:-8}" --faults "${FAULTS:-20}" \
  --seed "${SEED:-2}" --out "$OUT_BASE/long-$(date +%Y%m%d-%H%M%S)" "$@"
