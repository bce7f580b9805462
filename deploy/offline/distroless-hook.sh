#!/bin/sh
# mmdebstrap --customize-hook for the local distroless-like runtime image
# (scripts/compose-smoke.sh): turns an `--variant=extract` tree of libc6,
# libgcc-s1, base-files and netbase into what gcr.io/distroless/cc-debian12
# provides: glibc, libgcc, /etc/passwd with root, nobody and nonroot (65532),
# /tmp, the CA bundle; no shell, no package manager, no docs.
#   $1 = the root directory being built
#   $2 = a directory holding ca-certificates_*.deb (the Debian package)
set -eu
root=$1 debs=$2

# Users and groups (numeric nonroot, as distroless' :nonroot tag).
cat >"$root/etc/passwd" <<'P'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
P
cat >"$root/etc/group" <<'G'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
G
mkdir -p "$root/home/nonroot" "$root/tmp"
chown 65532:65532 "$root/home/nonroot"
chmod 0700 "$root/home/nonroot"
chmod 1777 "$root/tmp"

# CA bundle: the certificates of Debian's ca-certificates package, concatenated
# as update-ca-certificates would (the package itself needs a shell and openssl).
tmp=$(mktemp -d)
dpkg-deb -x "$debs"/ca-certificates_*.deb "$tmp"
mkdir -p "$root/etc/ssl/certs"
cat "$tmp"/usr/share/ca-certificates/mozilla/*.crt >"$root/etc/ssl/certs/ca-certificates.crt"
tmp_copyright=$(mktemp)
cp "$tmp/usr/share/doc/ca-certificates/copyright" "$tmp_copyright"
rm -rf "$tmp"

# Nothing executable but the dynamic loader (base-files pulls in mawk); no
# package manager, no docs but the packages' copyright files (as distroless).
rm -f "$root/usr/bin/mawk" "$root/usr/bin/awk" "$root/etc/alternatives/awk"
rm -rf "$root/etc/apt" "$root/var/lib/apt" "$root/var/cache/apt" "$root/var/cache/debconf" \
  "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/lintian" \
  "$root/usr/share/locale" "$root/usr/share/base-files" \
  "$root/usr/lib/x86_64-linux-gnu/gconv" "$root/etc/update-motd.d"
find "$root/usr/share/doc" -type f ! -name copyright -delete 2>/dev/null || :
find "$root/usr/share/doc" -type l -delete 2>/dev/null || :
mkdir -p "$root/usr/share/doc/ca-certificates"
cp "$tmp_copyright" "$root/usr/share/doc/ca-certificates/copyright"
rm -f "$tmp_copyright"
: >"$root/etc/resolv.conf"
echo localhost >"$root/etc/hostname"
