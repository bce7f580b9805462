#!/usr/bin/env bash
# Local infrastructure for foodchain: Redis (AOF on) and MongoDB (replica set).
#
#   scripts/infra.sh deps     install redis-server, chromium + chromedriver (browser tests) and promtool;
#                             build SecantusDB once if no mongod
#   scripts/infra.sh up       start both (idempotent), print their URLs
#   scripts/infra.sh down     stop both (data is kept under $INFRA_DIR)
#   scripts/infra.sh status   say what runs
#   scripts/infra.sh env      print `export` lines for the URLs
#
# Settings (env, with defaults):
#   INFRA_DIR=<repo>/.infra         data, pid files and logs (git-ignored)
#   REDIS_PORT=16379                MONGO_PORT=37017
#   REDIS_APPENDFSYNC=always        AOF fsync policy (why: docs/delivery-guarantees.md)
#   REDIS_MAXMEMORY=0               Redis memory ceiling (0: none); never evicting (docs/scaling.md)
#   REDIS_MODE=single               single: one Redis on REDIS_PORT; cluster: six nodes, 3 primaries
#                                   and 3 replicas, each with the same AOF and memory policy (docs/scaling.md)
#   REDIS_CLUSTER_PORT=17000        cluster nodes on 17000..17005; each one's cluster bus is its port+10000
#   REDIS_CLUSTER_NODE_TIMEOUT_MS=2000   how long a primary may be unreachable before its replica is promoted
#   MONGO_CACHE_SIZE=256M           SecantusDB WiredTiger cache
#   SECANTUS_ROOT=${XDG_CACHE_HOME:-~/.cache}/foodchain/secantus   where SecantusDB is built once
#
# MongoDB is a real `mongod` when one is on PATH (started with --replSet rs0,
# then initiated); otherwise SecantusDB's `secantusd-rs`, a MongoDB-wire server
# that is born a one-node replica set.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INFRA_DIR=${INFRA_DIR:-$ROOT/.infra}
REDIS_PORT=${REDIS_PORT:-16379}
MONGO_PORT=${MONGO_PORT:-37017}
REDIS_APPENDFSYNC=${REDIS_APPENDFSYNC:-always}
REDIS_MAXMEMORY=${REDIS_MAXMEMORY:-0}
REDIS_MODE=${REDIS_MODE:-single}
REDIS_CLUSTER_PORT=${REDIS_CLUSTER_PORT:-17000}
REDIS_CLUSTER_NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}
MONGO_CACHE_SIZE=${MONGO_CACHE_SIZE:-256M}
SECANTUS_VERSION=0.5.3-beta.196
SECANTUS_ROOT=${SECANTUS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/secantus}
SECANTUS_BIN=$SECANTUS_ROOT/bin/secantusd-rs
TOOLS_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"

say() { printf '\033[1m[infra]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[infra] %s\033[0m\n' "$*" >&2; exit 1; }

REDIS_CLUSTER_PORTS=()
case $REDIS_MODE in
  single) ;;
  cluster)
    # Six node ports from REDIS_CLUSTER_PORT, and each one's cluster bus 10000 above.
    if ! [[ $REDIS_CLUSTER_PORT =~ ^[1-9][0-9]*$ ]] || [ $((REDIS_CLUSTER_PORT + 5 + 10000)) -gt 65535 ]; then
      die "REDIS_CLUSTER_PORT must be a port number from 1 to 55530, not '$REDIS_CLUSTER_PORT'"
    fi
    for i in 0 1 2 3 4 5; do REDIS_CLUSTER_PORTS+=($((REDIS_CLUSTER_PORT + i))); done
    # A comma-separated list of nodes is what makes the services use the cluster client.
    REDIS_URL=$(printf 'redis://127.0.0.1:%s,' "${REDIS_CLUSTER_PORTS[@]}")
    REDIS_URL=${REDIS_URL%,}
    ;;
  *) die "REDIS_MODE must be 'single' or 'cluster', not '$REDIS_MODE'" ;;
esac

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install $* yourself"
  say "installing $* (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 || {
    as_root apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
}

mongo_kind() {
  if [ "${MONGO_IMPL:-}" != secantus ] && command -v mongod >/dev/null 2>&1; then echo mongod
  else echo secantus
  fi
}

cmd_deps() {
  command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust (https://rustup.rs), then run this again"
  local pkgs=()
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    pkgs+=(redis-server redis-tools)
  fi
  # Headless Chromium and its WebDriver: the browser tests (tests/tests/browser)
  # drive the web app in them. One apt run for both.
  if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    pkgs+=(chromium chromium-driver)
  fi
  if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  # promtool (checks /metrics output in the tests): taken out of Debian's
  # prometheus package without installing it (no service gets started).
  if ! command -v promtool >/dev/null 2>&1 && [ ! -x "$TOOLS_DIR/promtool" ]; then
    say "fetching promtool into $TOOLS_DIR"
    local tmp; tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) ||
      { as_root apt-get update -qq >/dev/null && (cd "$tmp" && apt-get download prometheus >/dev/null); }
    dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
    mkdir -p "$TOOLS_DIR" && cp "$tmp/x/usr/bin/promtool" "$TOOLS_DIR/promtool"
    rm -rf "$tmp"
  fi
  if [ "$(mongo_kind)" = secantus ] && [ ! -x "$SECANTUS_BIN" ]; then
    command -v cmake >/dev/null 2>&1 || apt_install cmake
    command -v cc >/dev/null 2>&1 || apt_install build-essential
    say "building SecantusDB $SECANTUS_VERSION once into $SECANTUS_ROOT (about 8 minutes on 2 cores)"
    cargo install secantus-mdb --version "$SECANTUS_VERSION" --locked --ignore-rust-version \
      --root "$SECANTUS_ROOT" --quiet
    [ -x "$SECANTUS_BIN" ] || die "SecantusDB build did not produce $SECANTUS_BIN"
  fi
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() { # <what> <seconds> <command...>
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@"; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${secs}s"
    sleep 0.1
  done
}

redis_ping() { [ "$(redis-cli -p "${1:-$REDIS_PORT}" ping 2>/dev/null)" = PONG ]; }

# One field of INFO / CLUSTER INFO (their lines end in \r); empty if the node is down.
redis_field() { # <port> <field> <command...>
  local port=$1 field=$2; shift 2
  redis-cli -p "$port" "$@" 2>/dev/null | tr -d '\r' | sed -n "s/^$field://p"
}

# Every Redis node, single or in the cluster, runs with these: AOF with
# REDIS_APPENDFSYNC, no RDB snapshots, never evicting.
redis_server() { # <port> <dir> <pidfile> <logfile> [more redis-server args...]
  local port=$1 dir=$2 pidfile=$3 logfile=$4; shift 4
  redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" \
    --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save "" \
    --maxmemory-policy noeviction --maxmemory "$REDIS_MAXMEMORY" \
    --daemonize yes --pidfile "$pidfile" --logfile "$logfile" "$@"
}

start_redis() {
  local pidfile=$INFRA_DIR/redis.pid
  if pid_alive "$pidfile" && redis_ping; then say "redis already running on $REDIS_PORT"; return; fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another program: set REDIS_PORT"
  mkdir -p "$INFRA_DIR/redis"
  redis_server "$REDIS_PORT" "$INFRA_DIR/redis" "$pidfile" "$INFRA_DIR/redis.log"
  wait_until "redis" 10 redis_ping
  say "redis up on $REDIS_PORT (AOF, appendfsync $REDIS_APPENDFSYNC)"
}

start_redis_node() { # <port>
  local port=$1 pidfile=$INFRA_DIR/redis-$1.pid dir=$INFRA_DIR/redis-cluster/$1
  if pid_alive "$pidfile" && redis_ping "$port"; then say "redis node already running on $port"; return; fi
  port_open "$port" && die "port $port is taken by another program: set REDIS_CLUSTER_PORT"
  port_open $((port + 10000)) &&
    die "port $((port + 10000)) (cluster bus of node $port) is taken by another program: set REDIS_CLUSTER_PORT"
  mkdir -p "$dir"
  # nodes.conf is the node's own record of the cluster: a restarted node
  # rejoins from it (as a replica, if its replica was promoted meanwhile).
  redis_server "$port" "$dir" "$pidfile" "$INFRA_DIR/redis-$port.log" \
    --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
    --cluster-node-timeout "$REDIS_CLUSTER_NODE_TIMEOUT_MS"
  wait_until "redis node $port" 10 redis_ping "$port"
}

cluster_ok() {
  local port
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    [ "$(redis_field "$port" cluster_state cluster info)" = ok ] || return 1
  done
}

start_redis_cluster() {
  local port fresh=0 addrs=()
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    start_redis_node "$port"
    addrs+=("127.0.0.1:$port")
    # Fresh: knows no other node and serves no slot (--cluster create needs all six so).
    if [ "$(redis_field "$port" cluster_known_nodes cluster info)" = 1 ] &&
      [ "$(redis_field "$port" cluster_slots_assigned cluster info)" = 0 ]; then
      fresh=$((fresh + 1))
    fi
  done
  if [ $fresh = ${#REDIS_CLUSTER_PORTS[@]} ]; then
    say "creating the redis cluster (3 primaries, 3 replicas)"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
      >"$INFRA_DIR/redis-cluster.log" 2>&1 ||
      die "redis-cli --cluster create failed: see $INFRA_DIR/redis-cluster.log"
  elif [ $fresh != 0 ]; then
    # Some nodes lost their nodes.conf: joining them back by hand beats guessing.
    die "$fresh of the redis cluster nodes are not part of the cluster: run down, then remove $INFRA_DIR/redis-cluster to start over"
  fi
  wait_until "redis cluster (cluster_state:ok on every node)" 30 cluster_ok
  say "redis cluster up on ${REDIS_CLUSTER_PORTS[0]}..${REDIS_CLUSTER_PORTS[5]} (AOF, appendfsync $REDIS_APPENDFSYNC, node timeout ${REDIS_CLUSTER_NODE_TIMEOUT_MS}ms)"
}

start_mongo() {
  local pidfile=$INFRA_DIR/mongo.pid
  if pid_alive "$pidfile" && port_open "$MONGO_PORT"; then say "mongo already running on $MONGO_PORT"; return; fi
  port_open "$MONGO_PORT" && die "port $MONGO_PORT is taken by another program: set MONGO_PORT"
  mkdir -p "$INFRA_DIR/mongo"
  if [ "$(mongo_kind)" = mongod ]; then
    mongod --replSet rs0 --bind_ip 127.0.0.1 --port "$MONGO_PORT" --dbpath "$INFRA_DIR/mongo" \
      --fork --logpath "$INFRA_DIR/mongo.log" --pidfilepath "$pidfile" --quiet >/dev/null
    wait_until "mongod" 30 port_open "$MONGO_PORT"
    mongo_setup mongod
    say "mongod up on $MONGO_PORT (replica set rs0)"
  else
    # setsid: its own session, so a Ctrl-C meant for `make run` does not reach it.
    setsid "$SECANTUS_BIN" --host 127.0.0.1 --port "$MONGO_PORT" --storage-path "$INFRA_DIR/mongo" \
      --cache-size "$MONGO_CACHE_SIZE" --log-file-max 16MB --log-level WARNING \
      >>"$INFRA_DIR/mongo.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    wait_until "SecantusDB" 30 port_open "$MONGO_PORT"
    mongo_setup secantus
    say "SecantusDB up on $MONGO_PORT (replica set 'secantus')"
  fi
}

# Initiates a mongod replica set and lowers transactionLifetimeLimitSeconds to
# MONGO_TXN_LIFETIME_SECS (default 10): a transaction whose client was killed
# mid-commit then blocks its documents for seconds, not a minute.
mongo_setup() { # <mongod|secantus>
  (cd "$ROOT" && cargo run -q --locked -p testkit --bin mongo-setup -- \
    "$MONGO_URL" "$MONGO_PORT" "$1" "${MONGO_TXN_LIFETIME_SECS:-10}")
}

stop_pidfile() { # <name> <pidfile>
  local pid
  pid_alive "$2" || { rm -f "$2"; return; }
  pid=$(cat "$2")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && { say "$1 ignored SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; }
  rm -f "$2"
  say "$1 stopped"
}

cmd_up() {
  cmd_deps
  mkdir -p "$INFRA_DIR"
  if [ "$REDIS_MODE" = cluster ]; then start_redis_cluster; else start_redis; fi
  start_mongo
  cmd_env
}

cmd_down() {
  local pidfile port
  # Whatever runs, whichever REDIS_MODE started it: the single node and any cluster nodes.
  stop_pidfile redis "$INFRA_DIR/redis.pid"
  for pidfile in "$INFRA_DIR"/redis-[0-9]*.pid; do
    [ -e "$pidfile" ] || continue
    port=${pidfile##*/redis-}
    stop_pidfile "redis node ${port%.pid}" "$pidfile"
  done
  stop_pidfile mongo "$INFRA_DIR/mongo.pid"
}

cmd_status() {
  local rc=0 port
  if [ "$REDIS_MODE" = cluster ]; then
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      if pid_alive "$INFRA_DIR/redis-$port.pid"; then
        echo "redis $port: running ($(redis_field "$port" role info replication), cluster_state $(redis_field "$port" cluster_state cluster info))"
      else echo "redis $port: stopped"; rc=1
      fi
    done
  elif pid_alive "$INFRA_DIR/redis.pid"; then echo "redis: running on $REDIS_PORT"; else echo "redis: stopped"; rc=1; fi
  if pid_alive "$INFRA_DIR/mongo.pid"; then echo "mongo: running on $MONGO_PORT ($(mongo_kind))"; else echo "mongo: stopped"; rc=1; fi
  echo "data: $INFRA_DIR"
  return $rc
}

cmd_env() {
  echo "export REDIS_URL='$REDIS_URL'"
  echo "export MONGO_URL='$MONGO_URL'"
}

case "${1:-}" in
  deps) cmd_deps ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
