#!/usr/bin/env bash
# `make run`: infrastructure + release build + every service + a seeded menu.
# Prints the URLs; Ctrl-C stops the services, then the infrastructure this run
# started (its data stays in .infra/ for the next run).
#
# Ports (env): ORDER_PORT=8001 DELIVERY_PORT=8002 NOTIFY_PORT=8003 SIMULATOR_PORT=8004,
# plus everything scripts/infra.sh reads. Service logs (JSON): .infra/logs/<service>.log
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ORDER_PORT=${ORDER_PORT:-8001}
DELIVERY_PORT=${DELIVERY_PORT:-8002}
NOTIFY_PORT=${NOTIFY_PORT:-8003}
SIMULATOR_PORT=${SIMULATOR_PORT:-8004}
LOGS=${INFRA_DIR:-$ROOT/.infra}/logs

say() { printf '\033[1m[run]\033[0m %s\n' "$*" >&2; }

started_infra=0
scripts/infra.sh status >/dev/null 2>&1 || started_infra=1
scripts/infra.sh up >/dev/null
eval "$(scripts/infra.sh env)"
export REDIS_URL MONGO_URL

say "building the services (release; the first build takes a few minutes)"
cargo build --release --locked
BIN=$ROOT/target/release
mkdir -p "$LOGS"

pids=()
cleanup() {
  trap - INT TERM EXIT
  say "stopping services"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ $started_infra = 1 ]; then scripts/infra.sh down; fi
  say "stopped"
}
trap cleanup INT TERM EXIT

if "$BIN/order-svc" --help 2>/dev/null | grep -q seed-menu; then
  "$BIN/order-svc" seed-menu
fi

# The web app and the operator console (served by notify-svc) call
# order-svc, on another port here: order-svc allows the pages' origin (CORS,
# that origin only), and tracking links point to the app.
export ORDER_API_URL=${ORDER_API_URL:-http://127.0.0.1:$ORDER_PORT}
PAGE_ORIGINS="http://127.0.0.1:$NOTIFY_PORT,http://localhost:$NOTIFY_PORT"
export CORS_ALLOWED_ORIGINS=${CORS_ALLOWED_ORIGINS:-$PAGE_ORIGINS}
export TRACKER_BASE_URL=${TRACKER_BASE_URL:-http://127.0.0.1:$NOTIFY_PORT}
# The admin API's token: generated once, kept in .infra/ (git-ignored),
# passed as a file (never on a command line, never printed).
ADMIN_TOKEN_FILE=${ADMIN_TOKEN_FILE:-${INFRA_DIR:-$ROOT/.infra}/admin-token}
if [ ! -s "$ADMIN_TOKEN_FILE" ]; then
  mkdir -p "$(dirname "$ADMIN_TOKEN_FILE")"
  (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ADMIN_TOKEN_FILE")
fi
export ADMIN_TOKEN_FILE
start() { # <binary> <port>
  PORT=$2 "$BIN/$1" >>"$LOGS/$1.log" 2>&1 &
  pids+=($!)
}
start order-svc "$ORDER_PORT"
start delivery-svc "$DELIVERY_PORT"
start notify-svc "$NOTIFY_PORT"
start simulator "$SIMULATOR_PORT"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$ORDER_PORT" "$DELIVERY_PORT" "$NOTIFY_PORT" "$SIMULATOR_PORT"; do
  for _ in $(seq 100); do port_open "$port" && break; sleep 0.1; done
done

# Every binary defaults to the Redis that infra.sh starts on its default port.
DLQ_CMD="target/release/dlq list"
[ "$REDIS_URL" = redis://127.0.0.1:16379 ] || DLQ_CMD="REDIS_URL=$REDIS_URL $DLQ_CMD"
cat >&2 <<MSG

  foodchain is running.
    web app            http://127.0.0.1:$NOTIFY_PORT/          (menu, cart, checkout, live tracker, my orders)
    operator console   http://127.0.0.1:$NOTIFY_PORT/ops       (asks for the admin token below)
    REST API           http://127.0.0.1:$ORDER_PORT/api/v1/menu
    WebSocket tracker  ws://127.0.0.1:$NOTIFY_PORT/ws/orders/<order-id>
    health             http://127.0.0.1:{$ORDER_PORT,$DELIVERY_PORT,$NOTIFY_PORT,$SIMULATOR_PORT}/healthz
    Redis / MongoDB    $REDIS_URL  $MONGO_URL
    logs               $LOGS/
    dead letters       $DLQ_CMD
    admin API token    in $ADMIN_TOKEN_FILE  (curl -H "Authorization: Bearer \$(cat $ADMIN_TOKEN_FILE)" http://127.0.0.1:$ORDER_PORT/api/v1/admin/overview)
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
# On Ctrl-C the terminal signals every service at once and they drain
# gracefully, which takes a moment; one still running after that means one
# died alone, which is worth a word.
alive() { for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
for _ in $(seq 50); do alive || break; sleep 0.1; done
if alive; then say "a service exited unexpectedly; see $LOGS"; fi
