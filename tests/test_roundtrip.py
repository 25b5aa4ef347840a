"""Properties: unpack(pack(t)) == t; pack is deterministic; verify(pack(t)) passes."""

from __future__ import annotations

import io
import os
import tempfile

import pytest
from hypothesis import given

import oxbak
from oxbak._fsutil import WRITEBACK_STEP
from strategies import trees_with_hardlinks
from treeutil import Node, build, snapshot


@given(trees_with_hardlinks())
def test_unpack_of_pack_is_identity(tree: dict[bytes, Node]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        build(src, tree)
        archive = os.path.join(tmp, "a.oxbak")
        result = oxbak.pack(src, archive, threads=1)
        assert not result.partial
        report = oxbak.verify(archive)
        assert report.ok, report.problems
        dest = os.path.join(tmp, "dest")
        oxbak.unpack(archive, dest, allow_external_symlinks=True)
        assert snapshot(dest) == snapshot(src)


@given(trees_with_hardlinks())
def test_pack_is_deterministic(tree: dict[bytes, Node]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "src")
        build(src, tree)
        first = os.path.join(tmp, "1.oxbak")
        oxbak.pack(src, first, threads=1)
        stream = io.BytesIO()
        oxbak.pack(src, os.path.join(tmp, "2.oxbak"), threads=2)
        with open(first, "rb") as a, open(os.path.join(tmp, "2.oxbak"), "rb") as b:
            assert a.read() == b.read()
        # A streamed archive differs only in its manifest's "partial": null.
        oxbak.pack(src, stream, threads=1)
        stream.seek(0)
        assert [e.path for e in oxbak.list_entries(stream)] == [
            e.path for e in oxbak.list_entries(first)
        ]


def test_streamed_archive_roundtrips(tmp_path: os.PathLike[str]) -> None:
    src = os.path.join(tmp_path, "src")
    build(
        src,
        {
            b"a": Node("file", data=b"x" * 5000),
            b"d": Node("dir", children={b"e": Node("file", data=b"e")}),
        },
    )
    stream = io.BytesIO()
    oxbak.pack(src, stream)
    stream.seek(0)
    assert oxbak.read_manifest(stream).partial is None
    stream.seek(0)
    assert oxbak.verify(stream).ok
    stream.seek(0)
    oxbak.unpack(stream, os.path.join(tmp_path, "dest"))
    assert snapshot(os.path.join(tmp_path, "dest")) == snapshot(src)


def test_large_incompressible_files_roundtrip_across_writeback_steps(
    tmp_path: os.PathLike[str],
) -> None:
    # Both the archive (pack) and the restored file (unpack) grow past several
    # WRITEBACK_STEPs, so the early-writeback hints run on both sides.
    step = WRITEBACK_STEP
    src = os.path.join(tmp_path, "src")
    build(
        src,
        {
            b"big.bin": Node("file", data=os.urandom(2 * step + 12345)),
            b"small.json": Node("file", data=b"{}"),
        },
    )
    archive = os.path.join(tmp_path, "a.oxbak")
    oxbak.pack(src, archive, threads=2)
    assert os.path.getsize(archive) > 2 * step
    dest = os.path.join(tmp_path, "dest")
    oxbak.unpack(archive, dest)
    assert snapshot(dest) == snapshot(src)


def test_times_beyond_2262_roundtrip(tmp_path: os.PathLike[str]) -> None:
    # ext4 keeps times up to 2446; in nanoseconds, anything after 2262 is past 2**63.
    far = 13_569_465_600_123_456_789  # 2400-01-01T00:00:00.123456789Z
    assert far > 2**63
    src = os.path.join(tmp_path, "src")
    build(
        src,
        {
            b"a": Node("file", data=b"a"),
            b"d": Node("dir", mtime_ns=far, children={b"f": Node("file", mtime_ns=far)}),
            b"z": Node("file", data=b"z"),
        },
    )
    if os.stat(os.path.join(src, "d", "f")).st_mtime_ns != far:
        pytest.skip("this filesystem clamps times after 2262")
    archive = os.path.join(tmp_path, "a.oxbak")
    oxbak.pack(src, archive)
    assert oxbak.verify(archive).ok
    dest = os.path.join(tmp_path, "dest")
    oxbak.unpack(archive, dest)
    assert snapshot(dest) == snapshot(src)
