# Local stand-in for redis:7 in scripts/compose-smoke.sh: Debian's
# redis-server (7.0) and redis-cli. Like the official image it runs as the
# user redis in /data and turns protected mode off (compose's network is the
# only way in), so compose.yaml's command and healthcheck work unchanged.
ARG BASE
FROM ${BASE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint /usr/local/bin/
USER redis
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/redis-entrypoint"]
CMD ["redis-server"]
