# One image per service, from one Dockerfile:
#
#   docker build --build-arg SERVICE=order-svc    -t foodchain/order-svc .
#   docker build --build-arg SERVICE=delivery-svc -t foodchain/delivery-svc .
#   docker build --build-arg SERVICE=notify-svc   -t foodchain/notify-svc .
#   docker build --build-arg SERVICE=simulator    -t foodchain/simulator .
#
# Needs BuildKit (the default builder of Docker 23+; DOCKER_BUILDKIT=1 on
# Docker 20.10): the cache mounts keep cargo's registry and target/ between
# builds, and only the stages the chosen SERVICE needs are built. There is
# deliberately no `# syntax=` line: everything used here (RUN --mount, ARG
# before FROM, FROM ${SERVICE}) is in the Dockerfile frontend built into every
# BuildKit since Docker 20.10, and a syntax line would make each build pull
# docker/dockerfile from Docker Hub, which an offline builder cannot
# (scripts/compose-smoke.sh builds these images with no registry at all).
#
# Base images (build args): RUST_IMAGE, the builder (Rust >= 1.88 with
# CARGO_HOME=/usr/local/cargo, as the official rust image), and RUNTIME_IMAGE,
# the runtime (glibc + libgcc). scripts/compose-smoke.sh passes local ones.
#
# The order-svc image also carries the `dlq` operator CLI (inspect, replay and
# purge dead letters):  kubectl exec deploy/foodchain-order-svc -- dlq --help
# and the `order-svc seed-menu` subcommand used by the seeding jobs.
#
# Runtime: distroless cc (glibc + libgcc, no shell, no package manager), as the
# numeric non-root user 65532. Configuration comes only from environment
# variables at run time; nothing secret is baked in (.dockerignore keeps local
# state, deployment files and .env files out of the build context).
#
# Probes: every service answers GET /healthz (liveness: 200 while the process
# serves) and GET /readyz (readiness: 200 only while Redis and MongoDB answer
# and the consumer loops run, else 503) on $PORT. The image has no curl, so
# compose orders start-up with depends_on and Kubernetes uses httpGet probes.

# The service to build: order-svc | delivery-svc | notify-svc | simulator.
ARG SERVICE=order-svc
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

############################ build ############################
FROM ${RUST_IMAGE} AS builder
ARG SERVICE
WORKDIR /src
# Whole workspace: cargo needs every member's manifest to resolve the
# workspace, and seed/ and notify-svc/static/ are compiled into the binaries.
COPY . .
# Every image builds the workspace's default members (every shipped binary),
# as `make run` and a plain `cargo build --release` build them: one feature
# resolution, so the four images share one compiled cache (and
# scripts/check-release.sh proves these binaries carry no test code).
RUN --mount=type=cache,id=foodchain-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=foodchain-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=foodchain-target,target=/src/target,sharing=locked \
    set -eu; \
    case "$SERVICE" in \
      order-svc) bins="order-svc dlq" ;; \
      delivery-svc|notify-svc|simulator) bins="$SERVICE" ;; \
      *) echo "SERVICE must be order-svc, delivery-svc, notify-svc or simulator (got '$SERVICE')" >&2; exit 1 ;; \
    esac; \
    cargo build --release --locked; \
    mkdir -p /out; \
    for b in $bins; do cp "target/release/$b" /out/; done

############################ runtime ############################
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=builder /out/ /usr/local/bin/
ENV LOG_FORMAT=json \
    RUST_LOG=info
# distroless "nonroot" user, numeric so runAsNonRoot can verify it.
USER 65532:65532

FROM runtime AS order-svc
ENV PORT=8001
EXPOSE 8001
CMD ["order-svc"]

FROM runtime AS delivery-svc
ENV PORT=8002
EXPOSE 8002
CMD ["delivery-svc"]

FROM runtime AS notify-svc
ENV PORT=8003
EXPOSE 8003
CMD ["notify-svc"]

FROM runtime AS simulator
ENV PORT=8004
EXPOSE 8004
CMD ["simulator"]

# The final image is the stage named after SERVICE (BuildKit builds only it
# and what it needs). CMD is the service binary resolved through PATH, so a
# command override such as ["order-svc", "seed-menu"] or ["dlq", "list"] works
# without a shell.
FROM ${SERVICE}
ARG SERVICE
LABEL org.opencontainers.image.title="foodchain-${SERVICE}" \
      org.opencontainers.image.description="foodchain ${SERVICE} (Rust, distroless, non-root)" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
