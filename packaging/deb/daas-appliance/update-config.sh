#!/bin/sh
# Remakes packaging/deb/daas-appliance/appliance.toml (the packaged
# /etc/daas/appliance.toml) from configs/appliance.toml: its own header, and
# the portal on every address. Run it after a change of configs/appliance.toml
# (the test packaged_config_matches_configs says when).
set -eu
cd "$(dirname "$0")/../../.."
src=configs/appliance.toml
dst=packaging/deb/daas-appliance/appliance.toml
grep -qx 'listen = "127.0.0.1:8443"' "$src" || {
  echo "update-config: $src has no line listen = \"127.0.0.1:8443\"; edit $dst by hand" >&2
  exit 1
}
{
  cat <<'EOF'
# /etc/daas/appliance.toml — the DaaS appliance's configuration, as the
# daas-appliance package installs it (a conffile: your changes are kept on
# upgrades). It is configs/appliance.toml with one difference: the portal
# listens on every address, with TLS (a self-signed certificate is made on
# the first start unless you configure one), so it is reachable as
# https://<this host>:8443/ at once.
#
# Unknown keys are errors naming the key, the file and the line. After a
# change: daas-appliance check-config && systemctl restart daas-appliance
#
# Every other key below shows its default; see also docs/install.md.

EOF
  # Everything from the first table on, with the listen address changed.
  sed -n '/^\[/,$p' "$src" | sed \
    -e 's|^# HOST:PORT of the portal and API\.$|# HOST:PORT of the portal and API. The built-in default is\n# "127.0.0.1:8443" (this host only); the package listens everywhere.|' \
    -e 's|^listen = "127.0.0.1:8443"$|listen = "0.0.0.0:8443"|'
} >"$dst"
echo "update-config: wrote $dst"
