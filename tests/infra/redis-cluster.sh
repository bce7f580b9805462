#!/usr/bin/env bash
# The local Redis Cluster of `REDIS_MODE=cluster scripts/infra.sh` (issue 18,
# docs/scaling.md §5), on its own data directory and ports:
#
# 1. `up` forms 3 primaries with one replica each, every node `cluster_state:ok`,
#    and a second `up` changes nothing;
# 2. kill -9 of a primary: its replica is promoted, the survivors say ok again,
#    and a key written before the kill on that shard is still there;
# 3. `up` again restarts the killed node, which rejoins as a replica;
# 4. a plain `down` (single mode) stops every node.
#
# Exits 0 when all of that holds. Leaves nothing running.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
INFRA=$ROOT/scripts/infra.sh
export INFRA_DIR
INFRA_DIR=$(mktemp -d "${TMPDIR:-/tmp}/foodchain-cluster.XXXXXX")
export REDIS_MODE=cluster
# Ports away from the defaults (each node's bus is +10000).
export REDIS_CLUSTER_PORT=$((20000 + RANDOM % 5000))
export MONGO_PORT=$((REDIS_CLUSTER_PORT + 200))
PORTS=$(seq "$REDIS_CLUSTER_PORT" $((REDIS_CLUSTER_PORT + 5)))

say() { printf '\033[1m[cluster-test]\033[0m %s\n' "$*" >&2; }
fail() { printf '\033[31m[cluster-test] %s\033[0m\n' "$*" >&2; exit 1; }
cleanup() { REDIS_MODE=single "$INFRA" down >/dev/null 2>&1 || true; rm -rf "$INFRA_DIR"; }
trap cleanup EXIT

field() { # <port> <field> <command...>
  local port=$1 name=$2; shift 2
  redis-cli -p "$port" "$@" 2>/dev/null | tr -d '\r' | sed -n "s/^$name://p"
}
role() { field "$1" role info replication; }
wait_for() { # <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  for _ in $(seq $((secs * 10))); do "$@" && return 0; sleep 0.1; done
  fail "timed out after ${secs}s waiting for $what"
}
all_ok() { # <ports...>
  local p
  for p in "$@"; do [ "$(field "$p" cluster_state cluster info)" = ok ] || return 1; done
}

say "1. up: six nodes on $REDIS_CLUSTER_PORT.., data in $INFRA_DIR"
"$INFRA" up >/dev/null
masters=0
for p in $PORTS; do [ "$(role "$p")" = master ] && masters=$((masters + 1)); done
[ $masters = 3 ] || fail "expected 3 primaries, found $masters"
# shellcheck disable=SC2086 # one port per word
all_ok $PORTS || fail "not every node says cluster_state:ok"
created=$(stat -c %Y "$INFRA_DIR/redis-cluster.log")
"$INFRA" up >/dev/null
[ "$(stat -c %Y "$INFRA_DIR/redis-cluster.log")" = "$created" ] || fail "a second up created the cluster again"

say "2. kill -9 the primary of a key's shard"
redis-cli -c -p "$REDIS_CLUSTER_PORT" set chaos:key before-the-kill >/dev/null
slot=$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster keyslot chaos:key)
# The node serving the slot: `cluster nodes` lists "<id> <ip:port@bus> <flags> ... <slot ranges>".
victim=$(redis-cli -p "$REDIS_CLUSTER_PORT" cluster nodes | awk -v s="$slot" '
  $3 ~ /master/ { for (i = 9; i <= NF; i++) { split($i, r, "-"); if (r[2] == "") r[2] = r[1];
    if (s >= r[1] && s <= r[2]) { split($2, a, "[:@]"); print a[2] } } }')
[ -n "$victim" ] || fail "no primary serves slot $slot"
replica=""
for p in $PORTS; do
  if [ "$(role "$p")" = slave ] && [ "$(field "$p" master_port info replication)" = "$victim" ]; then replica=$p; fi
done
[ -n "$replica" ] || fail "primary $victim has no replica"
# A replica that has not synced refuses to take over (its data is too old
# to be trusted): wait for the link, and for the key to reach the replica.
wait_for "replica $replica to sync" 30 sh -c "redis-cli -p $replica info replication | grep -q '^master_link_status:up'"
[ "$(redis-cli -p "$victim" wait 1 5000)" -ge 1 ] || fail "the key did not reach replica $replica"
kill -9 "$(cat "$INFRA_DIR/redis-$victim.pid")"
survivors=$(for p in $PORTS; do [ "$p" = "$victim" ] || echo "$p"; done)
wait_for "replica $replica to be promoted" 30 sh -c "[ \"\$(redis-cli -p $replica role 2>/dev/null | head -1)\" = master ]"
# shellcheck disable=SC2086
wait_for "cluster_state:ok on the survivors" 30 all_ok $survivors
[ "$(redis-cli -c -p "$replica" get chaos:key)" = before-the-kill ] || fail "the key written before the kill is gone"
redis-cli -c -p "$replica" set chaos:key after-the-kill >/dev/null

say "3. up again: $victim rejoins as a replica"
"$INFRA" up >/dev/null
wait_for "$victim to rejoin as a replica" 30 sh -c "[ \"\$(redis-cli -p $victim role 2>/dev/null | head -1)\" = slave ]"
# shellcheck disable=SC2086
wait_for "cluster_state:ok on every node" 30 all_ok $PORTS
[ "$(redis-cli -c -p "$victim" get chaos:key)" = after-the-kill ] || fail "the write after the failover is gone"

say "4. a plain down stops every node"
REDIS_MODE=single "$INFRA" down >/dev/null 2>&1
for p in $PORTS; do
  redis-cli -p "$p" ping >/dev/null 2>&1 && fail "node $p still runs after down"
done
say "the local cluster forms, fails over, and rejoins as documented"
