#!/usr/bin/env bash
# Builds the DaaS appliance image: Debian 12 with daas-appliance and
# daas-agent (and dnsmasq, the agent's bridge daas0, SSH), bootable by BIOS
# (syslinux) and UEFI (systemd-boot, Secure Boot off), as raw and qcow2.
#
#   sudo image/build-appliance-image.sh [--debs DIR] [--out DIR] [--format F] [--overlay DIR]
#
#   --debs DIR     the daas-*.deb packages to install (default: build them
#                  with packaging/build-debs.sh)
#   --out DIR      where the images go (default: image/out)
#   --format F     both (default), raw or qcow2
#   --overlay DIR  more files to copy into the root file system (tests)
#
# Environment: DAAS_MIRROR (http://deb.debian.org/debian), KERNEL
# (linux-image-cloud-amd64; linux-image-amd64 for bare metal),
# DAAS_IMAGE_CACHE (/var/cache/daas-image).
#
# Output: OUT/daas-appliance-VERSION.raw, .qcow2, .packages (the Debian
# packages inside), .sha256; the last line printed is the path of the
# qcow2 (or of the raw with --format raw). Boot: docs/install.md.
#
# Caching: debootstrap and the Debian packages (the "base" root file system)
# are cached in DAAS_IMAGE_CACHE as a tarball keyed by the SHA-256 of their
# inputs (suite, mirror, kernel, appliance/packages.list, the Depends of the
# .debs, this script's base recipe version); the finished images are cached
# by the SHA-256 of everything that goes into them (the base key, the .debs,
# image/appliance/, the overlay, this script), so a second build with the
# same inputs takes seconds (the cache keeps the qcow2; the raw is made
# from it). Needs root (chroot, owners in the image) and
# Debian's mirror for the first base build.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SUITE=bookworm
MIRROR=${DAAS_MIRROR:-http://deb.debian.org/debian}
KERNEL=${KERNEL:-linux-image-cloud-amd64}
CACHE=${DAAS_IMAGE_CACHE:-/var/cache/daas-image}
# Bump when the base recipe below changes in a way its inputs do not show.
BASE_RECIPE=base-v1
ESP_MIB=256
FREE_MIB=512           # free space in the root file system of the image

DEBS=
OUT=$HERE/out
OVERLAY=
FORMAT=both
while [ $# -gt 0 ]; do
  case "$1" in
    --debs) DEBS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --overlay) OVERLAY=$(cd "$2" && pwd); shift 2 ;;
    --format) FORMAT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-appliance-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '[image] %s\n' "$*" >&2; }
trap 'echo "[image] error: line $LINENO: $BASH_COMMAND" >&2' ERR
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }
case "$FORMAT" in both|raw|qcow2) ;; *) die "--format: both, raw or qcow2, not $FORMAT" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, file owners in the image)"

# ---- host tools -----------------------------------------------------------
need=()
for t in debootstrap:debootstrap mke2fs:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools \
  syslinux:syslinux /usr/lib/SYSLINUX/gptmbr.bin:syslinux-common sfdisk:fdisk \
  qemu-img:qemu-utils zstd:zstd; do
  cmd=${t%%:*}
  if [ "${cmd#/}" != "$cmd" ]; then [ -e "$cmd" ] || need+=("${t#*:}")
  else command -v "$cmd" >/dev/null || need+=("${t#*:}"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing build tools: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

# ---- the packages -----------------------------------------------------------
if [ -z "$DEBS" ]; then
  log "building the packages (packaging/build-debs.sh)"
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
  "$REPO/packaging/build-debs.sh" "$CARGO_TARGET_DIR/debian" >&2
  DEBS=$CARGO_TARGET_DIR/debian
fi
DEBS=$(cd "$DEBS" && pwd)
debs=()
for p in daas-appliance daas-agent; do
  f=$(ls -t "$DEBS"/${p}_*_amd64.deb 2>/dev/null | head -n 1)
  [ -n "$f" ] || die "no ${p}_*_amd64.deb in $DEBS"
  debs+=("$f")
done
VERSION=$(dpkg-deb -f "${debs[0]}" Version)
VERSION=${VERSION%-*}
deps=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Depends; done |
  tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/^ *//; s/ *$//' | grep -v '^$' | sort -u | tr '\n' ' ')
pkgs=$(sed 's/#.*//' "$HERE/appliance/packages.list" | tr -s ' \n' '\n' | grep -v '^$' | sort -u | tr '\n' ' ')

mkdir -p "$CACHE/debs" "$OUT"
WORK=$(mktemp -d /var/tmp/daas-image.XXXXXX)
ROOT=$WORK/root
unmount_all() {
  for m in dev/pts dev proc sys; do
    mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"
  done
  return 0
}
trap 'unmount_all; rm -rf --one-file-system "$WORK"' EXIT
mount_all() {
  mount -t proc proc "$ROOT/proc"
  mount -t sysfs sysfs "$ROOT/sys"
  mount --bind /dev "$ROOT/dev"
  mount --bind /dev/pts "$ROOT/dev/pts"
}
in_root() { chroot "$ROOT" "$@"; }
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

# debootstrap --variant=minbase, itself cached as a tarball (shared with
# tests/packaging/chroot-test.sh when both use one cache directory).
minbase() {
  local key tarball
  key=$(printf '%s\n' "$SUITE" "$MIRROR" minbase-v1 | sha256sum | cut -c1-16)
  tarball=$CACHE/minbase-$SUITE-$key.tar
  (
    flock 9
    if [ ! -s "$tarball" ]; then
      log "debootstrap --variant=minbase $SUITE $MIRROR"
      local tmp
      tmp=$(mktemp -d "$CACHE/minbase.XXXXXX")
      debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$tmp/root" "$MIRROR" >"$tmp/log" 2>&1 ||
        { tail -n 30 "$tmp/log" >&2; rm -rf "$tmp"; die "debootstrap failed"; }
      tar -C "$tmp/root" --xattrs --xattrs-include='*' --numeric-owner -cf "$tarball.tmp" .
      mv "$tarball.tmp" "$tarball"
      rm -rf "$tmp"
    fi
  ) 9>"$CACHE/minbase.lock"
  mkdir -p "$1"
  tar -C "$1" --xattrs --xattrs-include='*' --numeric-owner -xf "$tarball"
}

# ---- the base root file system (cached) ---------------------------------------
base_key=$(printf '%s\n' "$SUITE" "$MIRROR" "$KERNEL" "$pkgs" "$deps" "$BASE_RECIPE" \
  "$(cat "$HERE/appliance/rootfs/etc/dpkg/dpkg.cfg.d/01-daas-image")" | sha256sum | cut -c1-16)
BASE=$CACHE/rootfs-$base_key.tar
if [ ! -s "$BASE" ]; then
  log "making the base root file system (cached as $BASE); this takes a few minutes"
  minbase "$ROOT"
  printf 'deb %s %s main\ndeb http://security.debian.org/debian-security %s-security main\ndeb %s %s-updates main\n' \
    "$MIRROR" "$SUITE" "$SUITE" "$MIRROR" "$SUITE" >"$ROOT/etc/apt/sources.list"
  install -m 0644 "$HERE/appliance/rootfs/etc/dpkg/dpkg.cfg.d/01-daas-image" "$ROOT/etc/dpkg/dpkg.cfg.d/"
  # What debootstrap installed before the filter above.
  find "$ROOT/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/*/
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  mkdir -p "$ROOT/etc/initramfs-tools/conf.d"
  printf '# The appliance image: a smaller initramfs.\nCOMPRESS=zstd\n' >"$ROOT/etc/initramfs-tools/conf.d/daas-image.conf"
  rm -f "$ROOT/etc/resolv.conf"; cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mount_all
  in_root apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  in_root apt-get install -y -qq --no-install-recommends "$KERNEL" $pkgs $deps >"$WORK/apt.log" 2>&1 ||
    { tail -n 40 "$WORK/apt.log" >&2; die "apt-get install in the image failed"; }
  in_root apt-get clean
  unmount_all
  rm -f "$ROOT/usr/sbin/policy-rc.d"
  tar -C "$ROOT" --xattrs --xattrs-include='*' --numeric-owner -cf "$BASE.tmp" .
  mv "$BASE.tmp" "$BASE"
  rm -rf --one-file-system "$ROOT"
  # Older bases are of no more use.
  find "$CACHE" -maxdepth 1 -name 'rootfs-*.tar' ! -name "rootfs-$base_key.tar" -delete
fi

# ---- the image (cached by all its inputs) --------------------------------------
image_key=$( {
  echo "$base_key"
  sha256sum "${debs[@]}" | cut -d' ' -f1
  (cd "$HERE/appliance" && find . -type f ! -name README.md -print0 | sort -z | xargs -0 sha256sum)
  [ -z "$OVERLAY" ] || (cd "$OVERLAY" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
  sha256sum "$0" | cut -d' ' -f1
  echo "$ESP_MIB $FREE_MIB"
} | sha256sum | cut -c1-16)
NAME=daas-appliance-$VERSION
cached=$CACHE/image-$image_key
if [ -s "$cached/$NAME.qcow2" ]; then
  log "unchanged inputs: the cached image $cached"
else
  log "assembling the image"
  mkdir -p "$ROOT"
  tar -C "$ROOT" --xattrs --xattrs-include='*' --numeric-owner -xf "$BASE"
  printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"; chmod 755 "$ROOT/usr/sbin/policy-rc.d"
  rm -f "$ROOT/etc/resolv.conf"; cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  mount_all
  mkdir -p "$ROOT/tmp/debs"
  cp "${debs[@]}" "$ROOT/tmp/debs/"
  in_root sh -c 'dpkg -i /tmp/debs/*.deb' >"$WORK/dpkg.log" 2>&1 ||
    { cat "$WORK/dpkg.log" >&2; die "dpkg -i of the daas packages failed"; }
  rm -rf "$ROOT/tmp/debs"

  # The image's own files (first boot, banner, network, boot hooks).
  tar -C "$HERE/appliance/rootfs" --owner=0 --group=0 -cf - . | tar -C "$ROOT" -xf -
  [ -z "$OVERLAY" ] || tar -C "$OVERLAY" --owner=0 --group=0 -cf - . | tar -C "$ROOT" -xf -

  # The agent: its API socket for the appliance (group daas), and dnsmasq
  # run by the agent on the instances' bridge daas0 (10.77.0.1/24).
  sed -i -e 's/^# *socket_group = .*/socket_group = "daas"/' \
    -e '/^\[dnsmasq\]/,/^\[/{s/^manage = false/manage = true/; s/^# *interface = .*/interface = "daas0"/}' \
    "$ROOT/etc/daas/agent.toml"
  grep -q '^socket_group = "daas"' "$ROOT/etc/daas/agent.toml" &&
    grep -q '^manage = true' "$ROOT/etc/daas/agent.toml" &&
    grep -q '^interface = "daas0"' "$ROOT/etc/daas/agent.toml" ||
    die "configs/agent.toml changed: update the agent settings of build-appliance-image.sh"
  # The appliance uses that agent for the instances' leases.
  sed -i '/^\[agent\]/,/^\[/{s|^# *socket = "/run/daas-agent/agent.sock"|socket = "/run/daas-agent/agent.sock"|}' \
    "$ROOT/etc/daas/appliance.toml"
  grep -q '^socket = "/run/daas-agent/agent.sock"' "$ROOT/etc/daas/appliance.toml" ||
    die "the packaged appliance.toml has no [agent] socket line: update build-appliance-image.sh"
  in_root daas-agent --config /etc/daas/agent.toml check-config >&2
  in_root runuser -u daas -- daas-appliance --config /etc/daas/appliance.toml check-config >&2

  echo daas >"$ROOT/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tdaas\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$ROOT/etc/hosts"
  ROOT_UUID=$(cat /proc/sys/kernel/random/uuid)
  ESP_ID=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ' | tr a-f A-F)
  ESP_UUID="${ESP_ID:0:4}-${ESP_ID:4:4}"
  cat >"$ROOT/etc/fstab" <<EOF
# The appliance image. / grows with its partition at boot (x-systemd.growfs).
UUID=$ROOT_UUID  /          ext4  defaults,errors=remount-ro,x-systemd.growfs  0 1
UUID=$ESP_UUID   /boot/efi  vfat  umask=0077,shortname=winnt,nofail           0 2
EOF
  mkdir -p "$ROOT/boot/efi"
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
  in_root systemctl enable daas-firstboot.service daas-banner.service systemd-networkd.service \
    systemd-resolved.service systemd-timesyncd.service ssh.service daas-appliance.service \
    daas-agent.service >/dev/null 2>&1
  # An empty machine-id makes the first boot a "first boot": no wizard
  # asking on the console for a locale or a root password (ours is firstboot).
  in_root systemctl mask systemd-firstboot.service >/dev/null 2>&1
  [ -e "$ROOT/etc/localtime" ] || ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"
  # Unique per machine: made at first boot.
  rm -f "$ROOT"/etc/ssh/ssh_host_*
  : >"$ROOT/etc/machine-id"
  rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT/var/lib/systemd/random-seed"
  # root is locked until the first boot sets its password.
  in_root usermod -p '*' root
  in_root dpkg-query -W -f '${Package}\t${Version}\n' >"$WORK/$NAME.packages"
  unmount_all
  rm -f "$ROOT/usr/sbin/policy-rc.d"
  rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/cache/debconf/*-old \
    "$ROOT"/var/log/*.log "$ROOT"/var/log/apt/* "$ROOT"/tmp/* "$ROOT"/root/.bash_history
  [ ! -e "$ROOT/var/lib/daas-image/firstboot.done" ] || die "firstboot.done is in the image"

  # The EFI system partition: kernel, initramfs, syslinux (BIOS), systemd-boot (UEFI).
  kver=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)
  kver=${kver##*/vmlinuz-}
  cmdline="root=UUID=$ROOT_UUID ro console=tty0 console=ttyS0,115200n8"
  ESP_IMG=$WORK/esp.img
  truncate -s "${ESP_MIB}M" "$ESP_IMG"
  mkfs.vfat -F 32 -n DAAS-BOOT -i "$ESP_ID" -h 2048 "$ESP_IMG" >/dev/null
  export MTOOLS_SKIP_CHECK=1
  mmd -i "$ESP_IMG" ::/syslinux ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries
  syslinux --install --directory /syslinux "$ESP_IMG"
  cat >"$WORK/syslinux.cfg" <<EOF
SERIAL 0 115200
# The appliance image, BIOS boot (syslinux). UEFI: /loader (systemd-boot).
DEFAULT daas
PROMPT 0
TIMEOUT 10
LABEL daas
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND $cmdline
LABEL daas-old
  LINUX /vmlinuz.old
  INITRD /initrd.img.old
  APPEND $cmdline
EOF
  printf 'timeout 1\ndefault daas.conf\nconsole-mode keep\n' >"$WORK/loader.conf"
  printf 'title DaaS appliance\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" >"$WORK/daas.conf"
  printf 'title DaaS appliance (previous kernel)\nlinux /vmlinuz.old\ninitrd /initrd.img.old\noptions %s\n' "$cmdline" >"$WORK/daas-old.conf"
  mcopy -i "$ESP_IMG" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
  mcopy -i "$ESP_IMG" "$ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
  mcopy -i "$ESP_IMG" "$WORK/loader.conf" ::/loader/loader.conf
  mcopy -i "$ESP_IMG" "$WORK/daas.conf" "$WORK/daas-old.conf" ::/loader/entries/
  mcopy -i "$ESP_IMG" "$ROOT/boot/vmlinuz-$kver" ::/vmlinuz
  mcopy -i "$ESP_IMG" "$ROOT/boot/initrd.img-$kver" ::/initrd.img

  # The root file system, made from the directory (no loop device).
  used_mib=$(du -sxm "$ROOT" | cut -f1)
  ROOT_MIB=$(( (used_mib * 115 / 100 + FREE_MIB + 63) / 64 * 64 ))
  ROOT_IMG=$WORK/root.img
  truncate -s "${ROOT_MIB}M" "$ROOT_IMG"
  mke2fs -q -t ext4 -L daas-root -U "$ROOT_UUID" -d "$ROOT" "$ROOT_IMG"
  rm -rf --one-file-system "$ROOT"

  # The disk: GPT, the ESP (also the BIOS boot partition), root.
  RAW=$WORK/$NAME.raw
  total_mib=$((1 + ESP_MIB + ROOT_MIB + 1))
  truncate -s "${total_mib}M" "$RAW"
  sfdisk --quiet "$RAW" <<EOF
label: gpt
unit: sectors
first-lba: 2048
start=2048, size=$((ESP_MIB * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp", attrs="LegacyBIOSBootable"
start=$(((1 + ESP_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="daas-root"
EOF
  dd if="$ESP_IMG" of="$RAW" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$ROOT_IMG" of="$RAW" bs=1M seek=$((1 + ESP_MIB)) conv=notrunc,sparse status=none
  dd if=/usr/lib/SYSLINUX/gptmbr.bin of="$RAW" bs=440 count=1 conv=notrunc status=none
  rm -f "$ESP_IMG" "$ROOT_IMG"
  qemu-img convert -f raw -O qcow2 -c "$RAW" "$WORK/$NAME.qcow2"

  rm -f "$RAW"
  # Keep the newest other image besides this one.
  { ls -dt "$CACHE"/image-* 2>/dev/null || true; } | tail -n +2 | xargs -r rm -rf
  mkdir -p "$cached"
  mv "$WORK/$NAME.qcow2" "$WORK/$NAME.packages" "$cached/"
  echo "$image_key" >"$cached/key"
fi

rm -f "$OUT/$NAME.raw" "$OUT/$NAME.qcow2" "$OUT/$NAME.sha256"
cp "$cached/$NAME.packages" "$OUT/"
made=()
if [ "$FORMAT" != raw ]; then
  cp "$cached/$NAME.qcow2" "$OUT/"
  made+=("$NAME.qcow2")
fi
if [ "$FORMAT" != qcow2 ]; then
  qemu-img convert -f qcow2 -O raw "$cached/$NAME.qcow2" "$OUT/$NAME.raw"
  made+=("$NAME.raw")
fi
touch "$cached"
(cd "$OUT" && sha256sum "${made[@]}" >"$NAME.sha256")
for f in "${made[@]}"; do
  log "done: $OUT/$f ($(du -m --apparent-size "$OUT/$f" | cut -f1) MiB, $(du -m "$OUT/$f" | cut -f1) MiB on disk)"
done
echo "$OUT/${made[0]}"
