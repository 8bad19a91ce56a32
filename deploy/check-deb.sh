#!/usr/bin/env bash
# Checks the .deb the way a fresh Debian machine will see it: the package is unpacked into a
# fresh root (with the host's systemd units, as a Debian root has them), its maintainer scripts
# must parse, its files must have the modes the unit relies on, `systemd-analyze verify` must
# pass, and `systemd-analyze security` must rate the unit's exposure at 2.0 or below.
#
#   bash deploy/check-deb.sh target/debian/recado_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
deb="${1:?usage: check-deb.sh path/to/recado.deb}"
for tool in dpkg-deb systemd-analyze; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool is missing: install dpkg and systemd to check the package" >&2
    exit 1
  fi
done
root="$(mktemp -d)"
scripts="$(mktemp -d)"
trap 'rm -rf "$root" "$scripts"' EXIT
dpkg-deb --extract "$deb" "$root"
dpkg-deb --control "$deb" "$scripts"
mkdir -p "$root/usr/lib/systemd"
cp -rn /usr/lib/systemd/system "$root/usr/lib/systemd/"

echo "contents of $(basename "$deb"):"
dpkg-deb --contents "$deb" | awk '{print "  " $1, $6}' | grep -v '/$'
for script in postinst postrm prerm; do
  [ -f "$scripts/$script" ] && sh -n "$scripts/$script"
done
grep -qx /etc/recado/recado.yaml "$scripts/conffiles"
test "$(stat -c %a "$root/etc/recado/recado.yaml")" = 640
test -x "$root/usr/bin/recado"
"$root/usr/bin/recado" --version
grep -q '^ExecStart=/usr/bin/recado run --config /etc/recado/recado.yaml$' "$root/usr/lib/systemd/system/recado.service"

systemd-analyze verify --root="$root" recado.service
systemd-analyze security --offline=true --root="$root" --threshold=20 recado.service | tail -n 1
echo "$(basename "$deb"): installs cleanly into a fresh root; the unit verifies with exposure at most 2.0"
