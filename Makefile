# The two commands of the README, plus helpers.
.PHONY: run test deps infra-up infra-down infra-status fmt lint

run:          ## infra + release build + all services + seeded menu; Ctrl-C stops
	scripts/run.sh

test:         ## infra dependencies + fmt + clippy + the whole test suite
	scripts/test.sh

deps:         ## install redis-server; build SecantusDB once (no mongod on PATH)
	scripts/infra.sh deps

infra-up:     ## start Redis and MongoDB only
	scripts/infra.sh up

infra-down:
	scripts/infra.sh down

infra-status:
	scripts/infra.sh status

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
