#!/usr/bin/env bash
# Builds the reference desktop image of the Docker backend from a local
# rootfs (no registry is pulled from): a minimal Debian 12 with TigerVNC's
# Xvnc, xterm and a font, and the unprivileged user `daas` (uid 1000,
# home /home/daas), imported with `docker import`.
#
#   sudo image/docker-desktop/build.sh        # prints the image's tag
#
# Cached: the rootfs tarball under $DAAS_IMAGE_CACHE (default
# /var/cache/daas-test) and the image in Docker, both keyed by this file's
# hash, so a rerun costs one `docker image inspect`. Concurrent runs wait
# for each other (flock). Needs root, debootstrap and a Debian mirror.
set -euo pipefail

repo=${DAAS_IMAGE_REPO:-daas-ref/desktop}
cache=${DAAS_IMAGE_CACHE:-/var/cache/daas-test}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=tigervnc-standalone-server,xterm,fonts-dejavu-core

hash=$(sha256sum "$0" | cut -c1-16)
tag="$repo:$hash"
mkdir -p "$cache/debootstrap-debs"
exec 9>"$cache/docker-desktop.lock"
flock 9

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi

tarball="$cache/docker-desktop-$hash.tar"
if [ ! -s "$tarball" ]; then
  root=$(mktemp -d /var/tmp/daas-desktop-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "building the desktop rootfs in $root (debootstrap, a few minutes)" >&2
  debootstrap --variant=minbase --include="$packages" \
    --cache-dir="$cache/debootstrap-debs" bookworm "$root" "$mirror" >&2
  chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/sh daas
  # What a desktop container never needs.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/tmp/* "$root"/etc/machine-id
  tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'WORKDIR /home/daas' \
  --change 'LABEL org.daas.reference=desktop' \
  "$tarball" "$tag" >&2
echo "$tag"
