"""The tree behind the golden archives in tests/testdata/, one per format version.

Each version's archive is written once, when that version is new, and never again:
readers must keep reading it. ``python tests/golden.py`` writes the archive of the
current version (tests/testdata/v2-basic.oxbak and its manifest).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from treeutil import Node, build  # noqa: E402

TESTDATA = Path(__file__).parent / "testdata"
GOLDEN = TESTDATA / "v1-basic.oxbak"
GOLDEN_MANIFEST = TESTDATA / "v1-basic.manifest.json"
GOLDEN_V2 = TESTDATA / "v2-basic.oxbak"
GOLDEN_V2_MANIFEST = TESTDATA / "v2-basic.manifest.json"
#: Every golden archive, oldest first.
GOLDENS = (GOLDEN, GOLDEN_V2)
EPOCH = "1700000000"

TREE: dict[bytes, Node] = {
    b"seeds": Node(
        "dir",
        mtime_ns=1_700_000_001_000_000_001,
        children={
            b"000000.json": Node(
                "file", data=b'{"id": "seed-0", "score": 0.5}\n', mtime_ns=1_700_000_000_111_111_111
            ),
            b"000001.json": Node("file", data=b'{"id": "seed-1", "score": 0.25}\n', mode=0o600),
            b"latest.json": Node(
                "symlink", target=b"000001.json", mtime_ns=1_700_000_002_000_000_000
            ),
        },
    ),
    b"memory": Node(
        "dir",
        mode=0o750,
        children={
            b"facts": Node(
                "dir", children={b"caf\xe9.json": Node("file", data=b"not utf-8 name\n")}
            ),
            b"empty": Node("dir", children={}),
            "日本語.json".encode(): Node("file", data=b"unicode\n"),
        },
    ),
    b"blob.bin": Node("file", data=bytes(range(256)) * 64, mode=0o640),
    b"hard.json": Node("hardlink", target=b"seeds/000000.json"),
    b"manifest.json": Node("file", data=b"a state file that happens to share the name\n"),
}


def make_tree(root: str) -> None:
    """Create the golden tree at *root*."""
    build(root, TREE, mtime_ns=1_699_999_999_000_000_000)


if __name__ == "__main__":
    import tempfile

    import oxbak

    os.environ["SOURCE_DATE_EPOCH"] = EPOCH
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "state")
        make_tree(src)
        oxbak.pack(src, GOLDEN_V2, force=True, threads=1)
    import msgspec

    GOLDEN_V2_MANIFEST.write_bytes(
        msgspec.json.format(msgspec.json.encode(oxbak.read_manifest(GOLDEN_V2))) + b"\n"
    )
    print(f"wrote {GOLDEN_V2} and {GOLDEN_V2_MANIFEST}")
