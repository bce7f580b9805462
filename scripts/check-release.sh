#!/usr/bin/env bash
# Proves that no release binary carries test-only code (failpoints).
#
#   scripts/check-release.sh        (part of `make test`)
#
# Builds the release binaries the way people build them and looks for
# common::failpoint::MARKER (text compiled in only with the `failpoints`
# feature, see common/src/failpoint.rs) in every binary the build produced.
# A plain `cargo build --release` at the root, `make run` (scripts/run.sh)
# and the Dockerfile all run the same command, which builds the workspace's
# default members (the services and dlq); the script checks that they still
# do, builds once, and builds once more with the packages named (the same
# features, so no rebuild).
# The check itself must be able to fail: the end-to-end test binary, which is
# built with failpoints, must contain the marker, or the script stops.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[release-check]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[release-check] %s\033[0m\n' "$*" >&2; exit 1; }

MARKER=$(sed -n 's/^pub const MARKER: &str = "\(.*\)";$/\1/p' common/src/failpoint.rs)
[ -n "$MARKER" ] || die "cannot read failpoint::MARKER from common/src/failpoint.rs"

has_marker() { grep -qaF "$MARKER" "$1"; }

# Control: a binary built with failpoints has the marker.
control=$(cargo test --locked -p foodchain-tests --test it --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m.get("profile", {}).get("test"):
        print(m["executable"])
        break
for line in sys.stdin:
    pass')
[ -n "$control" ] && [ -x "$control" ] || die "could not build the end-to-end test binary (the control)"
has_marker "$control" || die "the control $control has no failpoint marker: this check cannot see failpoints"
say "control: the end-to-end test binary carries failpoints (marker found)"

# check_build <what> <cargo build args...>: builds, then checks each binary produced.
check_build() {
  local what=$1; shift
  local bins
  bins=$(cargo build --release --locked "$@" --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["executable"])') || die "$what: cargo build --release $* failed"
  [ -n "$bins" ] || die "$what: the build produced no binary"
  local n=0 bin
  while read -r bin; do
    has_marker "$bin" && die "$what: $bin carries failpoints (test-only code in a release binary)"
    n=$((n + 1))
  done <<<"$bins"
  say "$what: $n binaries, no failpoints"
}

# 1. Plain, at the root: the workspace's default members (the shipped binaries).
check_build "cargo build --release (workspace root)"
# 2. make run and 3. the Dockerfile build the same way; make sure they still do.
grep -q '^cargo build --release --locked$' scripts/run.sh ||
  die "scripts/run.sh no longer runs a plain cargo build --release: update this check"
grep -q '^    cargo build --release --locked; \\$' Dockerfile ||
  die "the Dockerfile no longer runs a plain cargo build --release: update this check"
# The explicit package list gives the same binaries (same features, no rebuild).
check_build "the shipped packages named explicitly" -p order-svc -p delivery-svc -p notify-svc -p simulator -p dlq
say "no release binary carries failpoints"
