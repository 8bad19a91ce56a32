#!/usr/bin/env bash
# Checks the .deb the way a fresh Debian machine will see it: the package is unpacked into a
# fresh root (with the host's systemd units, as a Debian root has them), its maintainer scripts
# must parse, its files must have the modes the unit relies on, `systemd-analyze verify` must
# pass, and `systemd-analyze security` must rate the unit's exposure at 2.0 or below. Then the
# packaged binary runs the packaged configuration, rehearsed on the sandbox (`recado sandbox
# --config`: every vendor emulated, no accounts), under a notify socket as systemd gives one:
# it must report READY=1 and, on SIGTERM, STOPPING=1 and exit 0.
#
#   bash deploy/check-deb.sh target/debian/recado_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
deb="${1:?usage: check-deb.sh path/to/recado.deb}"
for tool in dpkg-deb systemd-analyze python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "$tool is missing: install dpkg and systemd to check the package" >&2
    exit 1
  fi
done
root="$(mktemp -d)"
scripts="$(mktemp -d)"
work="$(mktemp -d)"
sandbox_pid=""
trap '[ -n "$sandbox_pid" ] && kill "$sandbox_pid" 2>/dev/null; rm -rf "$root" "$scripts" "$work"' EXIT
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
# The man pages and completions the binary generated are in the package, and readable.
zcat "$root/usr/share/man/man1/recado.1.gz" | grep -q '^\.TH recado 1'
zcat "$root/usr/share/man/man1/recado-run.1.gz" | grep -q '^\.TH recado-run 1'
grep -q 'complete -F _recado' "$root/usr/share/bash-completion/completions/recado"
test -s "$root/usr/share/zsh/vendor-completions/_recado"
test -s "$root/usr/share/fish/vendor_completions.d/recado.fish"

systemd-analyze verify --root="$root" recado.service
systemd-analyze security --offline=true --root="$root" --threshold=20 recado.service | tail -n 1

echo "the service starts and reports ready (packaged binary, packaged configuration, rehearsed on the sandbox):"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
sed "s/^  listen: 127.0.0.1:8080$/  listen: 127.0.0.1:$port/" "$root/etc/recado/recado.yaml" > "$work/recado.yaml"
grep -q "^  listen: 127.0.0.1:$port$" "$work/recado.yaml" || { echo "the packaged config's http.listen line changed: update this script" >&2; exit 1; }
"$root/usr/bin/recado" sandbox --listen 127.0.0.1:0 --config "$work/recado.yaml" --out "$work/rehearsal" > "$work/sandbox.log" 2>&1 &
sandbox_pid=$!
for _ in $(seq 300); do
  grep -q "run it:" "$work/sandbox.log" && break
  kill -0 "$sandbox_pid" 2>/dev/null || { cat "$work/sandbox.log" >&2; exit 1; }
  sleep 0.1
done
sed 's/^/  /' "$work/sandbox.log"
python3 - "$root/usr/bin/recado" "$work/rehearsal/recado.yaml" "$work/notify" <<'PY'
import signal, socket, subprocess, sys, time
binary, config, path = sys.argv[1:4]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
listener.bind(path)
listener.settimeout(60)
log = open(path + ".log", "w")
daemon = subprocess.Popen([binary, "run", "--config", config], env={"NOTIFY_SOCKET": path, "PATH": "/usr/bin:/bin"},
                          stderr=log)
def heard(prefix):
    while True:
        message = listener.recv(4096).decode()
        print("  notify: " + message.replace("\n", " | "))
        if message.startswith(prefix):
            return
try:
    heard("READY=1")
    daemon.send_signal(signal.SIGTERM)
    heard("STOPPING=1")
    code = daemon.wait(timeout=60)
except Exception as e:
    daemon.kill()
    log.close()
    sys.stderr.write(open(path + ".log").read())
    sys.exit(f"the daemon did not report ready and stop: {e!r}")
if code != 0:
    log.close()
    sys.stderr.write(open(path + ".log").read())
    sys.exit(f"the daemon exited {code} after SIGTERM")
print("  exited 0 after SIGTERM")
PY
echo "$(basename "$deb"): installs cleanly into a fresh root; the unit verifies with exposure at most 2.0; the service starts and reports ready"
