#!/usr/bin/env bash
# Writes what the .deb ships beside the binary and cannot be a file in the repository because
# the binary generates it from its own command-line definition: the man pages (recado(1) and
# one per command, gzipped as Debian wants) and the bash, zsh and fish completions. Run it
# before `cargo deb`, with the binary that goes in the package:
#
#   cargo build --release && bash deploy/package-assets.sh target/release/recado && cargo deb --no-build
set -euo pipefail
cd "$(dirname "$0")/.."
recado="${1:?usage: package-assets.sh path/to/recado}"
out=target/assets
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$recado" man | gzip -9n > "$out/man/recado.1.gz"
# Every command the binary has (its help lists them), so a new one gets its page.
for command in $("$recado" --help | awk '/^Commands:/ {listed = 1; next} /^$/ {listed = 0} listed && $1 != "help" {print $1}'); do
  "$recado" man "$command" | gzip -9n > "$out/man/recado-$command.1.gz"
done
"$recado" completions bash > "$out/completions/recado"
"$recado" completions zsh > "$out/completions/_recado"
"$recado" completions fish > "$out/completions/recado.fish"
echo "package assets in $out: $(ls "$out/man" | wc -l) man pages, 3 completion scripts"
