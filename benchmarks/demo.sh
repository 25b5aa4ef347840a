#!/usr/bin/env bash
# The main job on a generated sample state: pack -> info -> verify -> unpack -> compare.
# Run by `make demo`; expects the oxbak venv at .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
out=demo-out
rm -rf "$out"
mkdir -p "$out"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "benchmarks/make_state.py $out/state --profile mixed --scale 0.1"
"$bin/python" benchmarks/make_state.py "$out/state" --profile mixed --scale 0.1

step "oxbak pack $out/state -o $out/state.oxbak --label oxios_version=0.4.1"
"$bin/oxbak" pack "$out/state" -o "$out/state.oxbak" --label oxios_version=0.4.1

step "oxbak info $out/state.oxbak"
"$bin/oxbak" info "$out/state.oxbak" | sed -n '1,14p'

step "oxbak verify $out/state.oxbak"
"$bin/oxbak" verify "$out/state.oxbak"

step "oxbak unpack $out/state.oxbak $out/restored"
"$bin/oxbak" unpack "$out/state.oxbak" "$out/restored"

# Compare everything GNU find can see: type, mode, size, link count, mtime to the
# nanosecond, symlink target, and name; then every file's bytes.
listing() { (cd "$1" && find . -printf '%y %m %s %n %T@ %p -> %l\n' | LC_ALL=C sort); }
step "compare $out/state and $out/restored (types, modes, sizes, links, ns mtimes, contents)"
if diff <(listing "$out/state") <(listing "$out/restored") >/dev/null \
   && diff -r --no-dereference "$out/state" "$out/restored" >/dev/null; then
  echo "identical: $(listing "$out/state" | wc -l) entries"
else
  echo "the restored tree differs from the original" >&2
  exit 1
fi

step "tar --zstd -tf $out/state.oxbak | sed -n 1,3p   # standard tools read it too"
tar --zstd -tf "$out/state.oxbak" | sed -n '1,3p'
