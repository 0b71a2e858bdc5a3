#!/usr/bin/env bash
# Builds the three Debian packages with cargo-deb:
#
#   packaging/build-debs.sh [--profile PROFILE] [OUT_DIR]
#
# PROFILE: release (default; the guest-proxy uses release-small), or dev for
# the tests: packages of the binaries `cargo build`/`nextest` made already
# (stripped, quickly compressed), so a test run needs no release build.
# OUT_DIR defaults to $CARGO_TARGET_DIR/debian (or target/debian). The
# version is the workspace's ([workspace.package] version in Cargo.toml),
# the Debian revision 1. daas-guest-proxy is built static
# (target-feature=+crt-static, profile release-small), as guests need it.
# Needs: cargo-deb (`cargo install cargo-deb`), dpkg-dev (dpkg-shlibdeps).
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=release
if [ "${1:-}" = --profile ]; then
  PROFILE=${2:?--profile needs a name}
  shift 2
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${1:-$CARGO_TARGET_DIR/debian}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! cargo deb --version >/dev/null 2>&1; then
  echo "build-debs: cargo-deb is missing: cargo install cargo-deb" >&2
  exit 2
fi
if ! command -v dpkg-shlibdeps >/dev/null; then
  echo "build-debs: dpkg-shlibdeps is missing: apt-get install dpkg-dev" >&2
  exit 2
fi

# The changelog's newest entry must be this version.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
top=$(sed -n '1s/^[a-z0-9.+-]* (\([^)]*\)).*/\1/p' packaging/deb/changelog)
if [ "$top" != "$version-1" ]; then
  echo "build-debs: packaging/deb/changelog starts with $top, but the workspace version is $version: add an entry for $version-1" >&2
  exit 2
fi

# The appliance and the agent in one cargo build, so that their shared
# dependencies are built once (one feature set), then packaged as built.
case "$PROFILE" in
  release)
    cargo build --release -p daas-appliance -p daas-agent
    opts=(--no-build)
    gp_opts=()
    ;;
  dev)
    # What the test run built (cargo nextest --workspace builds every
    # binary): packaged as is, never rebuilt, since other tests run them.
    # Built only when missing or older than a source (a run of one test).
    stale=
    for b in daas-appliance daas-agent; do
      bin=$CARGO_TARGET_DIR/debug/$b
      if [ ! -x "$bin" ] || [ -n "$(find appliance agent configs Cargo.lock \( -name '*.rs' -o -name '*.toml' \
        -o -name '*.lock' -o -name '*.json' -o -name '*.js' -o -name '*.jsx' -o -name '*.css' \) \
        -newer "$bin" -not -path '*/node_modules/*' -print -quit)" ]; then
        stale=1
      fi
    done
    [ -z "$stale" ] || cargo build -p daas-appliance -p daas-agent
    opts=(--no-build --profile dev --strip --fast)
    gp_opts=(--profile dev --strip --fast)
    ;;
  *)
    cargo build --profile "$PROFILE" -p daas-appliance -p daas-agent
    opts=(--no-build --profile "$PROFILE")
    gp_opts=(--profile "$PROFILE")
    ;;
esac
cargo deb -p daas-appliance "${opts[@]}" -o "$OUT"
cargo deb -p daas-agent "${opts[@]}" -o "$OUT"
# Static: only the target's code (build scripts and proc macros, built for
# the host, are not), in target/x86_64-unknown-linux-gnu/.
RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-feature=+crt-static" \
  cargo deb -p daas-guest-proxy --target x86_64-unknown-linux-gnu "${gp_opts[@]}" -o "$OUT"

ls -l "$OUT"/daas-appliance_"$version"-1_*.deb "$OUT"/daas-agent_"$version"-1_*.deb \
  "$OUT"/daas-guest-proxy_"$version"-1_*.deb
