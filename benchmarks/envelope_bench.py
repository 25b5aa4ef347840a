"""The age envelope's cost: throughput and peak memory of encrypting and decrypting.

    .venv/bin/python benchmarks/envelope_bench.py [--gib 1] [--tree-mib 256] [--work DIR]

Each measurement runs in a child process of its own, so its peak RSS is its own:

- stream: N GiB through oxbak.envelope alone (pyrage in a thread, bounded pieces), to a
  file and back, against the ``age`` tool on the same bytes when it is installed;
- pyrage's passphrase mode, which takes and returns whole byte strings (not streaming);
- chacha: the payload cipher alone, 64 KiB chunks through ChaCha20-Poly1305 from the
  ``cryptography`` package when it is installed (what an own STREAM would cost);
- pack and unpack of a tree of incompressible files, with and without --recipient.

The figures are copied into benchmarks/NOTES.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OXBAK = Path(sys.executable).parent / "oxbak"
MIB = 1 << 20


def _child(code: str, *args: str) -> dict[str, float]:
    """Run *code* in a fresh interpreter; it prints a JSON object; add its peak RSS."""
    wrapper = (
        "import json, resource, sys\n"
        + code
        + "\nresult['rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "print(json.dumps(result))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *args], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


_STREAM = """
import os, time, pyrage
from oxbak.envelope import Decrypted, EnvelopeInfo, encrypting
size, path, ident_line = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ident = pyrage.x25519.Identity.from_str(ident_line)
piece = os.urandom(1 << 20)
result = {}
with open(path, "wb") as fh:
    started = time.monotonic()
    with encrypting(fh, [ident.to_public()]) as sealed:
        for _ in range(size >> 20):
            sealed.write(piece)
    fh.flush()
    result["encrypt_s"] = time.monotonic() - started
with open(path, "rb") as fh:
    started = time.monotonic()
    plain = Decrypted(fh, b"", [ident], path, EnvelopeInfo(False, ("X25519",)))
    got = 0
    while True:
        data = plain.read(1 << 20)
        if not data:
            break
        got += len(data)
    assert got == size, got
    result["decrypt_s"] = time.monotonic() - started
"""

_PASSPHRASE = """
import os, time, pyrage
size = int(sys.argv[1])
data = os.urandom(size)
started = time.monotonic()
sealed = pyrage.passphrase.encrypt(data, "a passphrase")
result = {"encrypt_s": time.monotonic() - started}
del data
started = time.monotonic()
assert len(pyrage.passphrase.decrypt(sealed, "a passphrase")) == size
result["decrypt_s"] = time.monotonic() - started
"""

_CHACHA = """
import os, time
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
size = int(sys.argv[1])
aead = ChaCha20Poly1305(os.urandom(32))
chunk = os.urandom(65536)
started = time.monotonic()
for i in range(size >> 16):
    sealed = aead.encrypt(i.to_bytes(11, "big") + b"\\0", chunk, None)
result = {"encrypt_s": time.monotonic() - started}
started = time.monotonic()
nonce = ((size >> 16) - 1).to_bytes(11, "big") + b"\\0"
for _ in range(size >> 16):
    aead.decrypt(nonce, sealed, None)
result["decrypt_s"] = time.monotonic() - started
"""


def _timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one oxbak command."""
    started = time.monotonic()
    proc = subprocess.Popen([str(OXBAK), *args], stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, args
    return time.monotonic() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--tree-mib", type=int, default=256)
    parser.add_argument("--work", default=None)
    opts = parser.parse_args()
    import pyrage

    work = Path(tempfile.mkdtemp(dir=opts.work, prefix="envelope-bench-"))
    try:
        ident = pyrage.x25519.Identity.generate()
        key = work / "key.txt"
        key.write_text(f"{ident}\n")
        size = int(opts.gib * 1024) * MIB
        rows = []

        r = _child(_STREAM, str(size), str(work / "stream.age"), str(ident))
        rows.append(("oxbak.envelope (pyrage, thread)", size, r))
        if shutil.which("age"):
            started = time.monotonic()
            subprocess.run(
                ["age", "-d", "-i", str(key), "-o", os.devnull, str(work / "stream.age")],
                check=True,
            )
            rows.append(("age -d (the Go tool), same file", size,
                         {"decrypt_s": time.monotonic() - started}))  # fmt: skip
        (work / "stream.age").unlink()
        small = min(size, 256 * MIB)
        rows.append(("pyrage.passphrase (whole bytes)", small, _child(_PASSPHRASE, str(small))))
        try:
            rows.append(("ChaCha20-Poly1305 64 KiB chunks", size, _child(_CHACHA, str(size))))
        except subprocess.CalledProcessError:
            print("(cryptography is not installed: no ChaCha20-Poly1305 row)")
        print(f"\n{'what':36} {'MiB':>6} {'enc MB/s':>9} {'dec MB/s':>9} {'peak RSS MiB':>13}")
        for what, n, r in rows:
            enc = f"{n / r['encrypt_s'] / 1e6:.0f}" if "encrypt_s" in r else "-"
            dec = f"{n / r['decrypt_s'] / 1e6:.0f}" if "decrypt_s" in r else "-"
            rss = f"{r['rss_mib']:.1f}" if "rss_mib" in r else "-"
            print(f"{what:36} {n >> 20:6} {enc:>9} {dec:>9} {rss:>13}")

        tree = work / "tree"
        tree.mkdir()
        for i in range(opts.tree_mib // 16):
            (tree / f"f{i:03}.bin").write_bytes(os.urandom(16 * MIB))
        public = str(ident.to_public())
        print(f"\npack/unpack of {opts.tree_mib} MiB of incompressible files")
        for label, pack_extra, read_extra, name in (
            ("plain", [], [], "t.oxbak"),
            ("encrypted", ["-r", public], ["-i", str(key)], "t.oxbak.age"),
        ):
            out = work / name
            pack = _timed(["pack", str(tree), "-o", str(out), "-q", *pack_extra])
            verify = _timed(["verify", str(out), "-q", *read_extra])
            unpack = _timed(["unpack", str(out), str(work / f"r-{label}"), "-q", *read_extra])
            print(f"{label:10} pack {pack[0]:6.2f} s {pack[1]:6.1f} MiB | "
                  f"verify {verify[0]:6.2f} s {verify[1]:6.1f} MiB | "
                  f"unpack {unpack[0]:6.2f} s {unpack[1]:6.1f} MiB")  # fmt: skip
            shutil.rmtree(work / f"r-{label}")
            out.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of this driver: {driver:.1f} MiB")


if __name__ == "__main__":
    main()
