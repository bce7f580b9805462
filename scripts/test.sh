#!/usr/bin/env bash
# `make test`: install what the tests need, then formatting, lints and every
# test. The tests start their own Redis and MongoDB servers (testkit).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
say() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }

scripts/infra.sh deps
say "rustfmt"
cargo fmt --all --check
say "clippy"
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
say "tests"
cargo test --workspace --locked
say "the suites on a shared Redis, again on a Redis Cluster with 3 stream partitions (FOODCHAIN_TEST_REDIS=cluster FOODCHAIN_TEST_PARTITIONS=3)"
FOODCHAIN_TEST_REDIS=cluster FOODCHAIN_TEST_PARTITIONS=3 cargo test --locked \
  -p common -p dlq -p simulator -p chaos -p order-svc -p foodchain-tests \
  --test it --test timers --test checker
say "release binaries carry no test-only code (failpoints)"
scripts/check-release.sh
say "deployment files (compose, Helm, k8s-jobs), validated offline"
scripts/validate-deploy.sh
say "API documents: generated from the code, valid AsyncAPI and OpenAPI"
scripts/check-docs.sh
say "REST fuzz against the real services, driven by their OpenAPI documents"
scripts/fuzz-api.sh
say "the local Redis Cluster (REDIS_MODE=cluster): forms, fails over, rejoins"
tests/infra/redis-cluster.sh
say "chaos (short run)"
tests/chaos/short.sh
say "chaos on a Redis Cluster, 4 partitions: a primary killed five times under load"
tests/chaos/redis-cluster.sh
say "all green"
