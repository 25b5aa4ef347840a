#!/usr/bin/env bash
# The main job on a generated sample state: pack -> info -> verify -> unpack -> compare,
# then reading part of the archive: list, cat, unpack --only, diff.
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

# Encrypted to an age key: a key made here (age-keygen makes the same kind).
step "oxbak pack $out/state -o $out/state.oxbak.age --recipient \$(public key of $out/key.txt)"
"$bin/python" -c 'import pyrage, sys
key = pyrage.x25519.Identity.generate()
open(sys.argv[1], "w").write(f"# public key: {key.to_public()}\n{key}\n")
print(key.to_public())' "$out/key.txt" > "$out/key.pub"
"$bin/oxbak" pack "$out/state" -o "$out/state.oxbak.age" --recipient "$(cat "$out/key.pub")"

step "oxbak info $out/state.oxbak.age   # without the key: only what the envelope says"
"$bin/oxbak" info "$out/state.oxbak.age"

step "oxbak unpack $out/state.oxbak.age $out/restored-age --identity $out/key.txt"
"$bin/oxbak" unpack "$out/state.oxbak.age" "$out/restored-age" --identity "$out/key.txt"
diff -r --no-dereference "$out/state" "$out/restored-age" >/dev/null && echo "identical"

# Reading part of the archive: the table of contents at its end says where each entry is.
# (sed, not head, reads all it is given: oxbak is not cut off by a closed pipe)
step "oxbak list $out/state.oxbak memory/facts -h | sed -n 1,4p"
"$bin/oxbak" list "$out/state.oxbak" memory/facts -h | sed -n '1,4p'

step "oxbak cat $out/state.oxbak seeds/000001.json | sed -n 1,6p"
"$bin/oxbak" cat "$out/state.oxbak" seeds/000001.json | sed -n '1,6p'

step "oxbak unpack $out/state.oxbak $out/facts --only memory/facts"
"$bin/oxbak" unpack "$out/state.oxbak" "$out/facts" --only memory/facts
find "$out/facts" -maxdepth 2 | LC_ALL=C sort | sed -n '1,4p'

step "(add seeds/new.json, remove seeds/000002.json) oxbak diff $out/state.oxbak $out/state"
echo '{}' > "$out/state/seeds/new.json"
rm "$out/state/seeds/000002.json"
status=0
"$bin/oxbak" diff "$out/state.oxbak" "$out/state" || status=$?
echo "exit status $status (0 same, 1 different)"
[ "$status" -eq 1 ]

if command -v tar >/dev/null && tar --zstd --version >/dev/null 2>&1; then
  step "tar --zstd -tf $out/state.oxbak | sed -n 1,3p   # standard tools read it too"
  tar --zstd -tf "$out/state.oxbak" | sed -n '1,3p'
fi
