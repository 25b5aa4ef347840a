"""Reading archives: golden v1 archives keep reading; info reads only the start."""

from __future__ import annotations

import io
import os
from pathlib import Path

import msgspec
import pytest
import zstandard

import oxbak
from golden import GOLDEN, GOLDEN_MANIFEST, make_tree
from treeutil import snapshot


def test_golden_manifest() -> None:
    expected = msgspec.json.decode(GOLDEN_MANIFEST.read_bytes(), type=oxbak.Manifest)
    assert oxbak.read_manifest(GOLDEN) == expected
    assert expected.version == 1


def test_golden_verifies_and_restores(tmp_path: Path) -> None:
    assert oxbak.verify(GOLDEN).ok
    make_tree(str(tmp_path / "expected"))
    oxbak.unpack(GOLDEN, tmp_path / "restored")
    assert snapshot(str(tmp_path / "restored")) == snapshot(str(tmp_path / "expected"))


def _tar_after_manifest(data: bytes) -> bytes:
    tar = (
        zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    )
    size = int(tar[124:135], 8)
    return tar[512 + size + (-size % 512) :]


def test_writer_still_writes_the_golden_bytes(tmp_path: Path) -> None:
    """Everything after the manifest (headers, order, index) is byte-identical to v1."""
    make_tree(str(tmp_path / "state"))
    oxbak.pack(tmp_path / "state", tmp_path / "fresh.oxbak", threads=1)
    fresh = (tmp_path / "fresh.oxbak").read_bytes()
    assert _tar_after_manifest(fresh) == _tar_after_manifest(GOLDEN.read_bytes())


def test_list_entries_of_golden() -> None:
    entries = list(oxbak.list_entries(GOLDEN))
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
