#!/usr/bin/env bash
# Property-based fuzz of every service's REST surface, driven by the OpenAPI
# document the service serves (schemathesis), against the real services on
# real Redis and MongoDB. Part of `make test`, with a bounded budget.
#
#   scripts/fuzz-api.sh                     FUZZ_EXAMPLES=200 per operation, SEED=1
#   FUZZ_EXAMPLES=500 SEED=7 scripts/fuzz-api.sh
#
# It passes only if no answer is a 5xx and every answer matches the document:
# a status it lists, its content type, its headers and its body schema
# (checks not_a_server_error, status_code_conformance,
# content_type_conformance, response_headers_conformance,
# response_schema_conformance), for schema-valid and schema-invalid requests
# alike (random bodies, headers, ids, methods, sizes and encodings).
#
# `chaos up` starts Redis, MongoDB and one replica of each service with a
# seeded menu; schemathesis (PyPI, pinned) is installed on first use into the
# tools venv that scripts/validate-deploy.sh also uses. Reports go to
# target/fuzz/<service>/.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31m[fuzz] %s\033[0m\n' "$*" >&2; exit 1; }

SCHEMATHESIS_VERSION=4.32.5
TOOLS=${FOODCHAIN_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/foodchain/tools}
VENV=$TOOLS/venv
EXAMPLES=${FUZZ_EXAMPLES:-200}
SEED=${SEED:-1}
OUT=$ROOT/target/fuzz

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  [ -x "$VENV/bin/pip" ] || { mkdir -p "$TOOLS"; python3 -m venv "$VENV" || die "python3 -m venv failed (apt-get install python3-venv)"; }
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" >&2
fi

scripts/infra.sh deps >&2
cargo build --locked --quiet -p chaos -p order-svc -p delivery-svc -p notify-svc -p simulator

rm -rf "$OUT" && mkdir -p "$OUT"
ready=$OUT/urls.json
# The admin API is fuzzed with its token (every other route ignores it or
# answers its documented 404); order creation keeps its default rate limit,
# so 429s are part of what is checked.
ADMIN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
target/debug/chaos up --ready-file "$ready" --out "$OUT/system" \
  --env "ADMIN_TOKEN=$ADMIN" --env ORDER_RATE_PER_SEC=2 >"$OUT/up.log" 2>&1 &
up_pid=$!
trap 'kill -TERM $up_pid 2>/dev/null; wait $up_pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  [ -s "$ready" ] && break
  kill -0 $up_pid 2>/dev/null || { cat "$OUT/up.log" >&2; die "chaos up exited"; }
  sleep 0.2
done
[ -s "$ready" ] || die "the system did not come up in 120 s (see $OUT/up.log)"

failed=()
for svc in order-svc delivery-svc notify-svc simulator; do
  url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$ready" "$svc")
  say "$svc at $url: $EXAMPLES examples per operation, seed $SEED"
  auth=()
  [ "$svc" = order-svc ] && auth=(-H "Authorization: Bearer $ADMIN")
  # (run from $OUT: schemathesis keeps a cache in its working directory)
  if ! (cd "$OUT" && "$VENV/bin/st" run "$url/api/v1/openapi.json" --url "$url" "${auth[@]}" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
      --mode all --phases examples,coverage,fuzzing \
      --max-examples "$EXAMPLES" --seed "$SEED" --workers 1 --request-timeout 10 \
      --suppress-health-check all --generation-database none --no-color \
      --report junit --report-dir "$OUT/$svc" >"$OUT/$svc.log" 2>&1); then
    tail -n 60 "$OUT/$svc.log" >&2
    failed+=("$svc")
  else
    tail -n 4 "$OUT/$svc.log" >&2
  fi
done
[ ${#failed[@]} -eq 0 ] || die "the fuzz found answers that break the contract: ${failed[*]} (logs in $OUT)"
say "no 5xx, every answer as documented (order-svc, delivery-svc, notify-svc, simulator)"
