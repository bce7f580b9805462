#!/usr/bin/env bash
# The generated API documents are what the code says, and valid:
#
#   scripts/check-docs.sh        (part of `make test`)
#
#   drift     `cargo run -p apidocs -- --check`: docs/asyncapi.yaml and
#             docs/openapi/*.json equal what the code generates
#   asyncapi  docs/asyncapi.yaml parsed by the official AsyncAPI parser
#             (@asyncapi/parser, npm, pinned): no error-level diagnostic
#   openapi   each docs/openapi/*.json checked by openapi-spec-validator
#             (PyPI, pinned) against the OpenAPI 3.1 specification
#
# Tools are installed on first use into the same cache as
# scripts/validate-deploy.sh's (${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[docs]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[docs] %s\033[0m\n' "$*" >&2; exit 1; }

PARSER_VERSION=3.6.6
VALIDATOR_VERSION=0.9.0
TOOLS=${FOODCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools}
NPM_DIR=$TOOLS/asyncapi
VENV=$TOOLS/venv

cargo run -q --locked -p apidocs -- --check || die "the API documents are stale: run cargo run -p apidocs and commit"

if [ "$(node -e "try{console.log(require('$NPM_DIR/node_modules/@asyncapi/parser/package.json').version)}catch(e){}" 2>/dev/null)" != "$PARSER_VERSION" ]; then
  command -v npm >/dev/null || die "npm is needed (apt-get install npm)"
  say "installing @asyncapi/parser $PARSER_VERSION into $NPM_DIR"
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save --loglevel=error "@asyncapi/parser@$PARSER_VERSION" >&2
fi
cp scripts/lib/check-asyncapi.mjs "$NPM_DIR/check-asyncapi.mjs"
node "$NPM_DIR/check-asyncapi.mjs" "$ROOT/docs/asyncapi.yaml" || die "docs/asyncapi.yaml is not valid AsyncAPI"

if ! "$VENV/bin/pip" show openapi-spec-validator 2>/dev/null | grep -q "^Version: $VALIDATOR_VERSION$"; then
  [ -x "$VENV/bin/pip" ] || { mkdir -p "$TOOLS"; python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"; }
  say "installing openapi-spec-validator $VALIDATOR_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==$VALIDATOR_VERSION" >&2
fi
for f in docs/openapi/*.json; do
  "$VENV/bin/openapi-spec-validator" "$f" >&2 || die "$f is not valid OpenAPI"
done
say "API documents up to date and valid"
