#!/usr/bin/env bash
# Checks deploy/recado.service the way systemd will see it on a Debian machine: the files are
# installed into a fresh root (with the host's systemd units, as a Debian root has them), then
# `systemd-analyze verify` must pass and `systemd-analyze security` must rate the unit's
# exposure at 2.0 or below.
#
#   bash deploy/check-unit.sh [path/to/recado]     (default: target/debug/recado)
set -euo pipefail
cd "$(dirname "$0")/.."
binary="${1:-target/debug/recado}"
if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze is missing: install systemd to check the unit" >&2
  exit 1
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
install -D -m 0755 "$binary" "$root/usr/local/bin/recado"
install -D -m 0644 deploy/recado.service "$root/etc/systemd/system/recado.service"
install -D -m 0640 config/sheets-meta.example.yaml "$root/etc/recado/recado.yaml"
systemd-analyze verify --root="$root" recado.service
systemd-analyze security --offline=true --root="$root" --threshold=20 recado.service | tail -n 1
echo "deploy/recado.service: verified, exposure at most 2.0"
