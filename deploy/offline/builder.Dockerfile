# Local stand-in for rust:1-bookworm (the Dockerfile's RUST_IMAGE), built by
# scripts/compose-smoke.sh FROM the mmdebstrap base: Debian's C toolchain
# (ring's build script needs cc) plus the host's own Rust toolchain, copied
# into the official image's layout so the Dockerfile's cache mounts
# (/usr/local/cargo/registry, /usr/local/cargo/git) are cargo's own dirs.
# Build context: a directory holding toolchain/ (the host toolchain without
# its docs) and cargo-home/ (the host's cargo configuration, possibly empty).
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev pkg-config ca-certificates curl >/dev/null \
 && rm -rf /var/lib/apt/lists/*
ARG TOOLCHAIN
COPY toolchain/ /usr/local/rustup/toolchains/${TOOLCHAIN}/
COPY cargo-home/ /usr/local/cargo/
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchains/${TOOLCHAIN}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin /usr/local/cargo/registry /usr/local/cargo/git \
 && rustc --version && cargo --version
