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
MONGO_CACHE_SIZE=${MONGO_CACHE_SIZE:-256M}
SECANTUS_VERSION=0.5.3-beta.196
SECANTUS_ROOT=${SECANTUS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/secantus}
SECANTUS_BIN=$SECANTUS_ROOT/bin/secantusd-rs
TOOLS_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools

REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"

say() { printf '\033[1m[infra]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[infra] %s\033[0m\n' "$*" >&2; exit 1; }

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

redis_ping() { [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

start_redis() {
  local pidfile=$INFRA_DIR/redis.pid
  if pid_alive "$pidfile" && redis_ping; then say "redis already running on $REDIS_PORT"; return; fi
  port_open "$REDIS_PORT" && die "port $REDIS_PORT is taken by another program: set REDIS_PORT"
  mkdir -p "$INFRA_DIR/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$INFRA_DIR/redis" \
    --appendonly yes --appendfsync "$REDIS_APPENDFSYNC" --save "" \
    --maxmemory-policy noeviction --maxmemory "$REDIS_MAXMEMORY" \
    --daemonize yes --pidfile "$pidfile" --logfile "$INFRA_DIR/redis.log"
  wait_until "redis" 10 redis_ping
  say "redis up on $REDIS_PORT (AOF, appendfsync $REDIS_APPENDFSYNC)"
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
  start_redis
  start_mongo
  cmd_env
}

cmd_down() {
  stop_pidfile redis "$INFRA_DIR/redis.pid"
  stop_pidfile mongo "$INFRA_DIR/mongo.pid"
}

cmd_status() {
  local rc=0
  if pid_alive "$INFRA_DIR/redis.pid"; then echo "redis: running on $REDIS_PORT"; else echo "redis: stopped"; rc=1; fi
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
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
