# The two commands of the README, plus helpers.
.PHONY: run test deps infra-up infra-down infra-status fmt lint compose-smoke check-chart

run:          ## infra + release build + all services + seeded menu; Ctrl-C stops
	scripts/run.sh

test:         ## infra dependencies + fmt + clippy + the whole test suite
	scripts/test.sh

# Not part of `make test`: it starts dockerd (changing the host network until
# it stops it again) and takes minutes cold. Run it before every change to the
# Dockerfile, compose.yaml, deploy/ or the services' settings. Needs root.
compose-smoke: ## build the images from the Dockerfile, docker compose up offline, check a flow end to end
	scripts/compose-smoke.sh

check-chart:  ## the Helm chart against the real binaries (env names, probes, ports, Ingress routes)
	scripts/check-chart.sh

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
