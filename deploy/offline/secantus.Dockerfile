# Local stand-in for mongo:7 in scripts/compose-smoke.sh: SecantusDB's
# secantusd-rs (a MongoDB-wire server, born a one-node replica set named
# `secantus`), the binary `cargo install secantus-mdb` built on the host from
# crates.io, plus mongo-check (Python stdlib) for the healthcheck and the
# mongo-init one-shot, since there is no mongosh.
# Build context: secantusd-rs and mongo-check.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-minimal >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -r -g 999 mongodb && useradd -r -u 999 -g mongodb -d /data/db mongodb \
 && mkdir -p /data/db /data/configdb && chown -R mongodb:mongodb /data
COPY secantusd-rs mongo-check /usr/local/bin/
USER 999:999
VOLUME ["/data/db"]
EXPOSE 27017
CMD ["secantusd-rs", "--host", "0.0.0.0", "--port", "27017", "--storage-path", "/data/db", \
     "--cache-size", "256M", "--log-file-max", "16MB"]
