#!/usr/bin/env bash
# Installs the .deb packages into a fresh Debian 12 chroot and checks them:
# dependencies, files, user, conffiles, `systemd-analyze verify` of the
# units, `check-config` and `--version`, remove (state kept), then purge
# (nothing left: the file tree, owners, modes and the contents of /etc are
# compared with the tree before the install).
#
#   tests/packaging/chroot-test.sh DEB_DIR [FIRSTBOOT]
#
# With FIRSTBOOT (image/appliance/rootfs/usr/lib/daas-image/firstboot), it
# also runs the appliance image's first-boot script against the installed
# packages: with a seed file, and without (random passwords).
#
# Run as root (tests/packaging/main.rs does). The debootstrap result is
# cached in $DAAS_TEST_CACHE (default /var/cache/daas-test) keyed by its
# inputs, and so are the downloaded packages; a first run needs Debian's
# mirror ($DAAS_MIRROR) and takes a few minutes, later runs under a minute.
set -euo pipefail

DEBS=$(cd "${1:?usage: chroot-test.sh DEB_DIR [FIRSTBOOT]}" && pwd)
FIRSTBOOT=${2:-}
CACHE=${DAAS_TEST_CACHE:-/var/cache/daas-test}
MIRROR=${DAAS_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# A fresh Debian as an installer has it: minbase plus systemd (the init).
BASE_INCLUDE=systemd,systemd-sysv,ca-certificates

log() { printf '[chroot-test] %s\n' "$*" >&2; }
fail() { printf '[chroot-test] FAIL: %s\n' "$*" >&2; exit 1; }

mkdir -p "$CACHE/debs"
# The cache key: what the base is made of (bump the tag to remake it).
key=$(printf '%s\n' "$SUITE" "$MIRROR" "$BASE_INCLUDE" base-v1 | sha256sum | cut -c1-16)
base=$CACHE/chroot-base-$key.tar
if [ ! -s "$base" ]; then
  log "making the base chroot (cached as $base)"
  tmp=$(mktemp -d /var/tmp/daas-debootstrap.XXXXXX)
  trap 'for m in proc sys dev; do umount -l "$tmp/root/$m" 2>/dev/null; done; rm -rf --one-file-system "$tmp"' EXIT
  # debootstrap's result is shared with image/build-appliance-image.sh
  # (same cache directory, same name).
  mkey=$(printf '%s\n' "$SUITE" "$MIRROR" minbase-v1 | sha256sum | cut -c1-16)
  minbase=$CACHE/minbase-$SUITE-$mkey.tar
  (
    flock 9
    if [ ! -s "$minbase" ]; then
      log "debootstrap --variant=minbase $SUITE $MIRROR"
      debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$tmp/mb" "$MIRROR" >"$tmp/debootstrap.log" 2>&1 ||
        { tail -n 30 "$tmp/debootstrap.log" >&2; fail "debootstrap failed"; }
      tar -C "$tmp/mb" --xattrs --xattrs-include='*' --numeric-owner -cf "$minbase.tmp" .
      mv "$minbase.tmp" "$minbase"
      rm -rf --one-file-system "$tmp/mb"
    fi
  ) 9>"$CACHE/minbase.lock"
  mkdir -p "$tmp/root"
  tar -C "$tmp/root" --xattrs --xattrs-include='*' --numeric-owner -xf "$minbase"
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$tmp/root/etc/apt/sources.list"
  cp /etc/resolv.conf "$tmp/root/etc/resolv.conf"
  for m in proc sys dev; do mount --bind "/$m" "$tmp/root/$m"; done
  chroot "$tmp/root" apt-get update -qq >/dev/null &&
    DEBIAN_FRONTEND=noninteractive chroot "$tmp/root" apt-get install -y -qq --no-install-recommends \
      $(echo "$BASE_INCLUDE" | tr ',' ' ') >"$tmp/apt.log" 2>&1 ||
    { for m in proc sys dev; do umount -l "$tmp/root/$m"; done; tail -n 30 "$tmp/apt.log" >&2; fail "apt-get install $BASE_INCLUDE"; }
  for m in proc sys dev; do umount -l "$tmp/root/$m"; done
  chroot "$tmp/root" apt-get clean
  : >"$tmp/root/etc/machine-id"
  tar -C "$tmp/root" --xattrs --xattrs-include='*' --numeric-owner -cf "$base.tmp" .
  mv "$base.tmp" "$base"
  rm -rf --one-file-system "$tmp"
  trap - EXIT
fi

ROOT=$(mktemp -d /var/tmp/daas-chroot.XXXXXX)
BEFORE=$ROOT.before
cleanup() {
  for m in dev/pts dev proc sys var/cache/apt/archives; do
    mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"
  done
  rm -rf --one-file-system "$ROOT"
  rm -f "$BEFORE" "$BEFORE.after"
}
trap cleanup EXIT
tar -C "$ROOT" --xattrs --xattrs-include='*' --numeric-owner -xf "$base"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"
mkdir -p "$CACHE/apt-archives/partial"
mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
export DEBIAN_FRONTEND=noninteractive
in_root() { chroot "$ROOT" "$@"; }

apt_install() {
  # The package lists in the base may be older than the mirror: update once on failure.
  in_root apt-get install -y -qq --no-install-recommends "$@" >"$ROOT/tmp/apt.log" 2>&1 || {
    in_root apt-get update -qq >/dev/null
    in_root apt-get install -y -qq --no-install-recommends "$@" >"$ROOT/tmp/apt.log" 2>&1
  } || { tail -n 30 "$ROOT/tmp/apt.log" >&2; fail "apt-get install $*"; }
}

# The state of the tree: every path with type, mode and owner, and the
# checksum of regular files in /etc and of the account databases.
# Ignored: dpkg's and apt's own databases and caches, logs, and the
# backups (passwd- ...) that the shadow tools write on every change.
snapshot() {
  (cd "$ROOT" && find . -xdev \
    \( -path ./proc -o -path ./sys -o -path ./dev -o -path ./tmp -o -path ./run \
       -o -path ./var/lib/dpkg -o -path ./var/lib/apt -o -path ./var/cache/apt \
       -o -path ./var/cache/debconf -o -path ./var/log -o -path ./var/cache/ldconfig \
       -o -path ./etc/ld.so.cache -o -path ./etc/passwd- -o -path ./etc/group- \
       -o -path ./etc/shadow- -o -path ./etc/gshadow- -o -path ./etc/subuid- -o -path ./etc/subgid- \
       -o -path ./root/.cache \) -prune -o \
    -printf '%p %y %m %u:%g\n' | sort
  ) >"$1"
  (cd "$ROOT" && find ./etc -xdev -type f ! -name '*-' -print0 | sort -z | xargs -0 sha256sum) >>"$1"
}

# 1. The dependencies first (what apt would pull for our packages), so that
#    the tree before and after our packages differ only by what they did.
deps=$(for d in "$DEBS"/*.deb; do dpkg-deb -f "$d" Depends; done |
  tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/^ *//; s/ *$//' | grep -v '^$' | sort -u | tr '\n' ' ')
log "dependencies: $deps"
# shellcheck disable=SC2086
apt_install $deps
snapshot "$BEFORE"

# 2. Install our packages the way docs/install.md says (apt, local files).
mkdir -p "$ROOT/tmp/debs"
cp "$DEBS"/*.deb "$ROOT/tmp/debs/"
in_root sh -c 'apt-get install -y --no-install-recommends /tmp/debs/*.deb' >"$ROOT/tmp/install.log" 2>&1 ||
  { cat "$ROOT/tmp/install.log" >&2; fail "apt-get install of our packages"; }
grep -q 'Portal: *https://[^ ]*:8443/' "$ROOT/tmp/install.log" ||
  { cat "$ROOT/tmp/install.log" >&2; fail "postinst did not say where the portal is"; }
newly=$(sed -n 's/^The following NEW packages will be installed:$/x/p' "$ROOT/tmp/install.log")
[ -n "$newly" ] || fail "apt-get printed no NEW packages"
extra=$(sed -n '/^The following NEW packages/,/^[0-9]* upgraded/p' "$ROOT/tmp/install.log" |
  sed '1d;$d' | tr ' ' '\n' | grep -v -e '^$' -e '^daas-appliance$' -e '^daas-agent$' -e '^daas-guest-proxy$' || true)
[ -z "$extra" ] || fail "installing our packages pulled more than their Depends: $extra"
log "installed: $(in_root dpkg-query -W -f '${Package} ${Version}; ' daas-appliance daas-agent daas-guest-proxy)"

# 3. What they installed.
for f in /usr/bin/daas-appliance /usr/bin/daas-agent /usr/bin/daas-guest-proxy \
  /etc/daas/appliance.toml /etc/daas/agent.toml /etc/default/daas-appliance \
  /lib/systemd/system/daas-appliance.service /lib/systemd/system/daas-agent.service \
  /usr/share/doc/daas-appliance/install.md /usr/share/doc/daas-agent/agent.md \
  /usr/share/doc/daas-guest-proxy/guest-proxy.md /usr/share/doc/daas-appliance/copyright; do
  [ -e "$ROOT$f" ] || fail "missing $f"
done
for f in /etc/daas/appliance.toml /etc/default/daas-appliance; do
  grep -qx "$f" "$ROOT/var/lib/dpkg/info/daas-appliance.conffiles" || fail "$f is not a conffile"
done
grep -qx /etc/daas/agent.toml "$ROOT/var/lib/dpkg/info/daas-agent.conffiles" || fail "agent.toml is not a conffile"
for u in daas-appliance daas-agent; do
  [ -L "$ROOT/etc/systemd/system/multi-user.target.wants/$u.service" ] || fail "$u.service is not enabled"
done
for b in Xvnc bwrap xterm dnsmasq ip adduser; do
  in_root sh -c "command -v $b" >/dev/null || fail "$b is not installed by the Depends"
done
pw=$(in_root getent passwd daas) || fail "no user daas"
IFS=: read -r _ _ uid _ _ home shell <<<"$pw"
[ "$uid" -lt 1000 ] || fail "daas is not a system user (uid $uid)"
[ "$home" = /var/lib/daas ] || fail "daas's home is $home"
[ "$shell" = /usr/sbin/nologin ] || fail "daas's shell is $shell"
st=$(in_root stat -c '%U:%G %a' /var/lib/daas)
[ "$st" = "daas:daas 750" ] || fail "/var/lib/daas is $st"

# 4. The units.
in_root systemd-analyze verify daas-appliance.service daas-agent.service >"$ROOT/tmp/verify.log" 2>&1 ||
  { cat "$ROOT/tmp/verify.log" >&2; fail "systemd-analyze verify"; }
if grep -i 'daas' "$ROOT/tmp/verify.log"; then fail "systemd-analyze verify warns about our units"; fi
for u in daas-appliance daas-agent; do
  in_root systemd-analyze security --offline=yes "$u.service" 2>/dev/null | tail -n 1 | sed "s/^/[chroot-test] $u: /" >&2 || true
done

# 5. The binaries and the installed configuration.
v=$(in_root dpkg-query -W -f '${Version}' daas-appliance)
v=${v%-*}
for b in daas-appliance daas-agent daas-guest-proxy; do
  out=$(in_root "$b" --version) || fail "$b --version"
  case "$out" in *"$v"*) ;; *) fail "$b --version says \"$out\", not $v" ;; esac
done
in_root runuser -u daas -- daas-appliance check-config >"$ROOT/tmp/cc.log" 2>&1 ||
  { cat "$ROOT/tmp/cc.log" >&2; fail "daas-appliance check-config of the installed config"; }
in_root daas-agent check-config >"$ROOT/tmp/cc.log" 2>&1 ||
  { cat "$ROOT/tmp/cc.log" >&2; fail "daas-agent check-config of the installed config"; }
# The first admin, as docs/install.md says.
printf 'correct horse battery staple\n' |
  in_root runuser -u daas -- daas-appliance user add admin --role admin --password-stdin >/dev/null ||
  fail "daas-appliance user add admin"
in_root runuser -u daas -- daas-appliance user list | grep -q '^admin' || fail "user list has no admin"
[ "$(in_root stat -c %U /var/lib/daas/daas.db)" = daas ] || fail "the store is not owned by daas"

# 5b. The appliance image's first boot, on these packages.
if [ -n "$FIRSTBOOT" ]; then
  for f in etc/shadow etc/hostname etc/hosts root/.ssh; do
    if [ -e "$ROOT/$f" ]; then mkdir -p "$ROOT/tmp/saved/${f%/*}" && cp -a "$ROOT/$f" "$ROOT/tmp/saved/$f"; fi
  done
  reset_store() { rm -f "$ROOT"/var/lib/daas/daas.db* "$ROOT/var/lib/daas-image/firstboot.done"; }
  reset_store
  printf '%s\n' 'hostname = "daas-seeded"' 'admin_password = "seeded admin passphrase"' \
    "root_password = 'seeded-root-pw'" \
    'root_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDaasTestKeyOnly test@seed"]' \
    'demo = true' 'colour = "blue"' >"$ROOT/tmp/seed.toml"
  bash "$FIRSTBOOT" --root "$ROOT" --seed "$ROOT/tmp/seed.toml" --console "$ROOT/tmp/console" 2>"$ROOT/tmp/fb.log" ||
    { cat "$ROOT/tmp/fb.log" "$ROOT/tmp/console" >&2; fail "firstboot with a seed"; }
  grep -q 'Portal login:  user admin, password seeded admin passphrase  (as given in the seed)' "$ROOT/tmp/console" ||
    { cat "$ROOT/tmp/console" >&2; fail "firstboot did not print the seeded admin login"; }
  grep -q 'seed.toml:6: unknown key colour' "$ROOT/tmp/console" || fail "firstboot did not report the unknown seed key"
  [ "$(cat "$ROOT/etc/hostname")" = daas-seeded ] || fail "firstboot did not set the host name"
  grep -q 'DaasTestKeyOnly' "$ROOT/root/.ssh/authorized_keys" || fail "firstboot did not install root's key"
  grep -q '^DAAS_APPLIANCE_ARGS="--demo"' "$ROOT/etc/default/daas-appliance" || fail "firstboot did not turn on the demo"
  in_root runuser -u daas -- daas-appliance user list | grep -q '^admin' || fail "firstboot made no admin"
  [ -f "$ROOT/var/lib/daas-image/firstboot.done" ] || fail "firstboot did not record that it ran"
  bash "$FIRSTBOOT" --root "$ROOT" --seed /nonexistent --console "$ROOT/tmp/console2" 2>/dev/null
  [ ! -s "$ROOT/tmp/console2" ] || fail "firstboot ran twice"
  # No seed: random passwords, printed once; root must change its own.
  reset_store
  bash "$FIRSTBOOT" --root "$ROOT" --seed /nonexistent --console "$ROOT/tmp/console3" 2>"$ROOT/tmp/fb.log" ||
    { cat "$ROOT/tmp/fb.log" >&2; fail "firstboot without a seed"; }
  grep -Eq 'Portal login:  user admin, password [A-Za-z0-9]{20}  \(change it in the portal\)' "$ROOT/tmp/console3" ||
    { cat "$ROOT/tmp/console3" >&2; fail "firstboot did not print a random admin password"; }
  grep -Eq 'Console login: user root, password [A-Za-z0-9]{20}  \(change it at the first login\)' "$ROOT/tmp/console3" ||
    fail "firstboot did not print a random root password"
  [ "$(in_root getent shadow root | cut -d: -f3)" = 0 ] || fail "root is not made to change its password"
  if grep -Eq 'password [A-Za-z0-9]{20}' "$ROOT/tmp/fb.log"; then fail "firstboot logged a password"; fi
  # Back to the packages' own state.
  for f in etc/shadow etc/hostname etc/hosts root/.ssh; do
    rm -rf "${ROOT:?}/$f"
    if [ -e "$ROOT/tmp/saved/$f" ]; then cp -a "$ROOT/tmp/saved/$f" "$ROOT/$f"; fi
  done
  rm -rf "${ROOT:?}/var/lib/daas-image" "${ROOT:?}/tmp/saved"
  reset_store
  printf 'correct horse battery staple\n' |
    in_root runuser -u daas -- daas-appliance user add admin --role admin --password-stdin >/dev/null
  log "firstboot: seed, no seed, once"
fi

# 6. Remove keeps state, the user and the conffiles; purge removes them.
in_root dpkg --remove daas-appliance daas-agent daas-guest-proxy >/dev/null 2>"$ROOT/tmp/remove.log" ||
  { cat "$ROOT/tmp/remove.log" >&2; fail "dpkg --remove"; }
[ -f "$ROOT/var/lib/daas/daas.db" ] || fail "remove deleted the state"
in_root getent passwd daas >/dev/null || fail "remove deleted the user"
[ -f "$ROOT/etc/daas/appliance.toml" ] || fail "remove deleted the conffile"
[ ! -e "$ROOT/usr/bin/daas-appliance" ] || fail "remove left the binary"
in_root dpkg --purge daas-appliance daas-agent daas-guest-proxy >/dev/null 2>"$ROOT/tmp/purge.log" ||
  { cat "$ROOT/tmp/purge.log" >&2; fail "dpkg --purge"; }
rm -rf "$ROOT/tmp/debs" "$ROOT"/tmp/*.log
snapshot "$BEFORE.after"
if ! diff -u "$BEFORE" "$BEFORE.after" >"$ROOT/tmp/diff" ; then
  cat "$ROOT/tmp/diff" >&2
  fail "purge left something behind (or changed something): the diff above"
fi
log "OK: install, units, configs, versions, remove, purge"
