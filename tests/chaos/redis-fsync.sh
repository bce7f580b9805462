#!/usr/bin/env bash
# Why Redis runs with `appendfsync always` (docs/delivery-guarantees.md):
#
# 1. kill -9 of Redis under load with everysec: nothing is lost, because Redis
#    write(2)s the AOF before replying in every mode; the kernel keeps it.
# 2. An OS crash with everysec loses the writes of the last second, which
#    were already acknowledged. Simulated: kill -9 Redis and cut the AOF back
#    to its size one second earlier. Expected: invariants break (orders whose
#    outbox-published events or simulator timers vanished never finish).
# 3. With always, every acknowledged write is on disk before the reply, so
#    only unacknowledged writes can be lost: kill -9 under always holds.
#
# Exits 0 when each scenario behaves as stated above.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
stamp=$(date +%Y%m%d-%H%M%S)
run() { "$CHAOS" run --orders 300 --rate 10 --faults 3 --seed "${SEED:-21}" --settle-secs 60 "$@"; }

echo "== 1. kill -9 Redis, appendfsync everysec (expect: all invariants hold)"
run --fault kill-redis --fsync everysec --out "$OUT_BASE/fsync-$stamp/kill-everysec"
echo "== 2. OS crash, appendfsync everysec (expect: violations)"
if run --fault lose-redis-last-second --fsync everysec --out "$OUT_BASE/fsync-$stamp/oscrash-everysec"; then
  echo "unexpected: losing a second of acknowledged writes broke nothing" >&2
  exit 1
fi
echo "== 3. kill -9 Redis, appendfsync always (expect: all invariants hold)"
run --fault kill-redis --fsync always --out "$OUT_BASE/fsync-$stamp/kill-always"
echo "fsync scenarios behaved as documented; reports under $OUT_BASE/fsync-$stamp"
