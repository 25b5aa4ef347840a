#!/usr/bin/env bash
# The main job on a generated sample state: pack -> info -> verify -> unpack -> compare,
# then reading part of the archive: list, cat, unpack --only, diff; an incremental
# archive and its chain; encrypted and object-storage round trips.
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
same_as_state() {
  if diff <(listing "$out/state") <(listing "$1") >/dev/null \
     && diff -r --no-dereference "$out/state" "$1" >/dev/null; then
    echo "identical: $(listing "$out/state" | wc -l) entries"
  else
    echo "$1 differs from $out/state" >&2
    exit 1
  fi
}
step "compare $out/state and $out/restored (types, modes, sizes, links, ns mtimes, contents)"
same_as_state "$out/restored"

# -j: pack and unpack use every core by default; -j 1 is one process. The bytes are the same.
step "SOURCE_DATE_EPOCH=1764460800 oxbak pack $out/state -o $out/j1.oxbak -j 1   # and with every core"
SOURCE_DATE_EPOCH=1764460800 "$bin/oxbak" pack "$out/state" -o "$out/j1.oxbak" -j 1 -q
SOURCE_DATE_EPOCH=1764460800 "$bin/oxbak" pack "$out/state" -o "$out/jall.oxbak" -q
cmp "$out/j1.oxbak" "$out/jall.oxbak" && echo "the same bytes with -j 1 and with $(nproc) cores"
step "oxbak unpack $out/jall.oxbak $out/restored-j1 -j 1"
"$bin/oxbak" unpack "$out/jall.oxbak" "$out/restored-j1" -j 1
same_as_state "$out/restored-j1"

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
same_as_state "$out/restored-age"

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

# Incremental: only what changed since the archive before; restored with its chain.
step "oxbak pack $out/state -o $out/state-01.oxbak --base $out/state.oxbak"
"$bin/oxbak" pack "$out/state" -o "$out/state-01.oxbak" --base "$out/state.oxbak"

step "oxbak list $out/state-01.oxbak --base $out/state.oxbak seeds | sed -n 1,4p"
"$bin/oxbak" list "$out/state-01.oxbak" --base "$out/state.oxbak" seeds | sed -n '1,4p'

step "oxbak unpack $out/state.oxbak $out/state-01.oxbak $out/restored-01"
"$bin/oxbak" unpack "$out/state.oxbak" "$out/state-01.oxbak" "$out/restored-01"
same_as_state "$out/restored-01"

if command -v tar >/dev/null && tar --zstd --version >/dev/null 2>&1; then
  step "tar --zstd -tf $out/state.oxbak | sed -n 1,3p   # standard tools read it too"
  tar --zstd -tf "$out/state.oxbak" | sed -n '1,3p'
fi

# Object storage: the same archive through a local S3-compatible server (SeaweedFS, from the
# test extra), bound to loopback, with credentials made up for this run.
if [ -x "$bin/weed" ]; then
  read -r -a ports < <("$bin/python" -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
  key_id="demo$RANDOM"
  secret=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
  mkdir -p "$out/s3"
  printf '{"identities": [{"name": "demo", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List"]}]}\n' \
    "$key_id" "$secret" > "$out/s3.json"
  # (TMPDIR: its gRPC sockets and logs stay in $out/s3, not the machine's /tmp.)
  TMPDIR="$PWD/$out/s3" "$bin/weed" mini -dir="$out/s3" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket=demo \
    -s3.config="$out/s3.json" -s3.localSocket="$out/s3/s3.sock" \
    -filer.localSocket="$out/s3/filer.sock" \
    -master.port="${ports[0]}" -master.port.grpc="${ports[1]}" -volume.port="${ports[2]}" \
    -volume.port.grpc="${ports[3]}" -filer.port="${ports[4]}" -filer.port.grpc="${ports[5]}" \
    -s3.port="${ports[6]}" -s3.port.grpc="${ports[7]}" -admin.port="${ports[8]}" \
    -admin.port.grpc="${ports[9]}" >"$out/weed.log" 2>&1 &
  weed=$!
  trap 'kill "$weed" 2>/dev/null; wait "$weed" 2>/dev/null || true' EXIT
  export AWS_ACCESS_KEY_ID="$key_id" AWS_SECRET_ACCESS_KEY="$secret" AWS_REGION=us-east-1
  export AWS_ENDPOINT_URL="http://127.0.0.1:${ports[6]}"
  for _ in $(seq 100); do
    "$bin/oxbak" abort-uploads s3://demo -q 2>/dev/null && break
    sleep 0.2
  done

  step "(a local S3 service at $AWS_ENDPOINT_URL) oxbak pack $out/state -o s3://demo/state.oxbak"
  "$bin/oxbak" pack "$out/state" -o s3://demo/state.oxbak

  step "oxbak info s3://demo/state.oxbak | sed -n 5,6p   # a few ranged reads of 64 KiB"
  "$bin/oxbak" info s3://demo/state.oxbak | sed -n '5,6p'

  step "oxbak pack $out/state -o s3://demo/state.oxbak   # again: no clobber"
  "$bin/oxbak" pack "$out/state" -o s3://demo/state.oxbak || echo "exit status $?"

  step "oxbak unpack s3://demo/state.oxbak $out/from-s3"
  "$bin/oxbak" unpack s3://demo/state.oxbak "$out/from-s3"
  same_as_state "$out/from-s3"
fi
