"""Reading archives: golden archives of every version keep reading; info reads little."""

from __future__ import annotations

import io
import os
from pathlib import Path

import msgspec
import pytest
import zstandard

import oxbak
from builders import frames_of
from golden import GOLDEN, GOLDEN_MANIFEST, GOLDEN_V2, GOLDEN_V2_MANIFEST, GOLDENS, make_tree
from pipelike import Unseekable
from treeutil import snapshot


@pytest.mark.parametrize(
    ("golden", "manifest", "version"),
    [(GOLDEN, GOLDEN_MANIFEST, 1), (GOLDEN_V2, GOLDEN_V2_MANIFEST, 2)],
)
def test_golden_manifest(golden: Path, manifest: Path, version: int) -> None:
    expected = msgspec.json.decode(manifest.read_bytes(), type=oxbak.Manifest)
    assert oxbak.read_manifest(golden) == expected
    assert expected.version == version


@pytest.mark.parametrize("golden", GOLDENS)
@pytest.mark.parametrize("stream", [False, True])
def test_golden_verifies_and_restores(golden: Path, stream: bool, tmp_path: Path) -> None:
    def archive() -> object:
        # A file object without seek() is read front to back, as a pipe is.
        return Unseekable(golden.read_bytes()) if stream else golden

    assert oxbak.verify(archive()).ok  # type: ignore[arg-type]
    make_tree(str(tmp_path / "expected"))
    oxbak.unpack(archive(), tmp_path / "restored")  # type: ignore[arg-type]
    assert snapshot(str(tmp_path / "restored")) == snapshot(str(tmp_path / "expected"))



def _tar(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()


def _tree_members(tar: bytes) -> bytes:
    """The tar stream between the manifest member and the TOC member."""
    size = int(tar[124:135], 8)
    start = 512 + size + (-size % 512)
    return tar[start : tar.index(b"toc.msgpack\0")]


def _without_owner_names(tar: bytes) -> bytes:
    """*tar* with every header's uname and gname blanked (and its checksum made right)."""
    out = bytearray(tar)
    pos = 0
    while pos < len(out) and out[pos : pos + 512].strip(b"\0"):
        size = int(bytes(out[pos + 124 : pos + 136]).strip(b"\0 ") or b"0", 8)
        out[pos + 265 : pos + 329] = bytes(64)
        total = sum(out[pos : pos + 148]) + sum(out[pos + 156 : pos + 512]) + 8 * 0x20
        out[pos + 148 : pos + 156] = b"%06o\0 " % total
        pos += 512 + size + -size % 512
    return bytes(out)


def test_writer_still_writes_the_golden_bytes(tmp_path: Path) -> None:
    """The tree members, the frame cuts and the TOC are those of the version-2 golden.

    But for the owner names in the ustar headers, which the golden's writer left empty
    (its TOC had them already): the golden tree is owned by whoever runs the test.
    """
    make_tree(str(tmp_path / "state"))
    oxbak.pack(tmp_path / "state", tmp_path / "fresh.oxbak", threads=1)
    fresh = (tmp_path / "fresh.oxbak").read_bytes()
    golden = GOLDEN_V2.read_bytes()
    members = _tree_members(_tar(fresh))
    assert _without_owner_names(members) == _tree_members(_tar(golden))
    if os.geteuid() == 0:
        assert members.count(b"ustar\x0000root") == 13  # each of the 13 names root:root

    def frames(data: bytes) -> list[int]:
        return [f.end - f.start for f in frames_of(data)]

    assert len(frames(fresh)) == len(frames(golden))

    def records(path: Path) -> list[tuple[object, ...]]:
        # ctime and inode belong to the files on the disk that was packed, not the tree.
        return [
            (e.path, e.type, e.mode, e.size, e.mtime_ns, e.target, e.digest)
            for e in oxbak.list_entries(path)
        ]

    assert records(tmp_path / "fresh.oxbak") == records(GOLDEN_V2)


@pytest.mark.parametrize("golden", GOLDENS)
def test_list_entries_of_golden(golden: Path) -> None:
    entries = list(oxbak.list_entries(golden))
    names = [e.name for e in entries]
    assert names[0] == "." and "memory/facts/caf\\xe9.json" in names
    by_name = {e.name: e for e in entries}
    assert by_name["seeds/latest.json"].target == b"000001.json"
    assert by_name["seeds/000000.json"].type == "hardlink"
    assert by_name["seeds/000000.json"].target == b"hard.json"
    assert by_name["seeds/000001.json"].mode == 0o600


class CountingReader(io.RawIOBase):
    """A file object that counts what is read from it."""

    def __init__(self, data: bytes) -> None:
        self._inner = io.BytesIO(data)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)
        self.count += n
        return n


def test_info_reads_only_the_start(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(os.urandom(20 * 1024 * 1024))
    oxbak.pack(src, tmp_path / "a.oxbak")
    data = (tmp_path / "a.oxbak").read_bytes()
    reader = CountingReader(data)
    manifest = oxbak.read_manifest(reader)  # type: ignore[arg-type]
    assert manifest.totals.bytes == 20 * 1024 * 1024
    assert reader.count <= 512 * 1024 < len(data)
    # Damage far from the start does not matter to info.
    broken = data[: len(data) // 2]
    assert oxbak.read_manifest(io.BytesIO(broken)).totals.files == 1


def test_missing_archive_file(tmp_path: Path) -> None:
    with pytest.raises(
        oxbak.OxbakError, match=r"^cannot open archive '.*nope\.oxbak': No such file or directory$"
    ):
        oxbak.read_manifest(tmp_path / "nope.oxbak")
