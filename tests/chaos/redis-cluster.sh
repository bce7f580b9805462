#!/usr/bin/env bash
# The Redis Cluster chaos run (part of `make test`, about 1 minute): the
# streams split into 4 partitions over a local 3-primary, 3-replica Redis
# Cluster (two replicas of every service sharing the partitions by lease),
# 600 orders at 20/s, and five times kill -9 of the primary that holds a
# random partition, each time until a replica has taken its slot over and
# the node has rejoined as a replica.
# Then every invariant. With REDIS_MIN_REPLICAS_ACKED=0 (no WAIT before the
# outbox forgets an event) the same run loses events (docs/scaling.md §4).
#   tests/chaos/redis-cluster.sh    (SEED=<n> to replay a run)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exec "$CHAOS" run --redis-cluster --partitions "${PARTITIONS:-4}" --orders "${ORDERS:-600}" --rate "${RATE:-20}" \
  --fault kill-redis-primary --faults "${FAULTS:-5}" --seed "${SEED:-3}" \
  --out "$OUT_BASE/redis-cluster-$(date +%Y%m%d-%H%M%S)" "$@"
