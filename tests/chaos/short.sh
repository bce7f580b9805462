#!/usr/bin/env bash
# The CI chaos run (part of `make test`, about 2 minutes): 300 orders at 5/s,
# two replicas of every service, every fault kind once (kill -9 of each
# service at its worst moment, SIGSTOP of a consumer, graceful Redis and
# MongoDB restarts, poison in every stream), then every invariant.
#   tests/chaos/short.sh            (SEED=<n> to replay a run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$CHAOS" run --orders "${ORDERS:-300}" --rate "${RATE:-5}" --seed "${SEED:-1}" \
  --out "$OUT_BASE/short-$(date +%Y%m%d-%H%M%S)" "$@"
