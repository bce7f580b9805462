#!/bin/sh
# mmdebstrap --customize-hook for local/debian (scripts/compose-smoke.sh), the
# base of the builder and the stand-in images: what Debian's official images
# set up for builds in containers.
#   $1 = the root directory being built
set -eu
root=$1
# Packages installed later (redis-server, prometheus) start no service.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
# apt keeps no downloaded .deb files nor package caches in image layers.
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'C'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
C
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
: >"$root/etc/resolv.conf"
