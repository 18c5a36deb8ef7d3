#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine with
# dpkg -i, and checks what it installed: the binary, the unit (verified with
# systemd-analyze), the commented configuration, the example subscriber file
# and the system user.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked --quiet cargo-deb --no-default-features
deb_dir="${CARGO_TARGET_DIR:-target}/debian"
rm -f "$deb_dir"/paperpost_*.deb
cargo deb --locked --quiet
deb=$(ls "$deb_dir"/paperpost_*.deb)
echo "built $deb"
export DEBIAN_FRONTEND=noninteractive
dpkg -i "$deb" >/dev/null
fail() { echo "deb check failed: $*" >&2; exit 1; }
version=$(/usr/bin/paperpost --version)
[ "$version" = "paperpost $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)" ] || fail "version: $version"
unit=$(dpkg -L paperpost | grep '/systemd/system/paperpost.service$') || fail "no unit in the package"
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
for f in /etc/paperpost/paperpost.toml /etc/paperpost/subscribers.toml \
         /usr/share/doc/paperpost/subscribers.example.toml /usr/share/doc/paperpost/README.md; do
  [ -f "$f" ] || fail "missing $f"
done
getent passwd paperpost >/dev/null || fail "no paperpost user"
[ "$(stat -c %U /var/lib/paperpost)" = paperpost ] || fail "/var/lib/paperpost not owned by paperpost"
# The installed configuration is valid as the service reads it.
runuser -u paperpost -- env PAPERPOST_CONFIG=/etc/paperpost/paperpost.toml \
  PAPERPOST__DATABASE__PATH=/var/lib/paperpost/paperpost.db \
  /usr/bin/paperpost config >/dev/null || fail "paperpost config as the service user"
echo "installed $version: binary, unit, configuration, user ok"
