"""Reading a version-2 archive in part: list, cat and unpack --only read only what they need.

Every archive here is packed by oxbak from a real tree; reads are counted on a file object
that records which bytes were read, so "only the frames it needs" is measured, not assumed.
The hostile side (a TOC that lies) is in test_toc_hostile.py.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import oxbak
from oxbak import format as fmt
from oxbak.compress import SeekTable
from oxbak.locations import open_input
from oxbak.reader import ArchiveReader
from oxbak.source import TocSource, open_source
from pipelike import Unseekable
from treeutil import Node, build, snapshot

OXBAK = str(Path(sys.executable).with_name("oxbak"))
BIG = 9 * 1024 * 1024 + 123  # three frame cuts inside its data

TREE = {
    b"seeds": Node(
        "dir",
        children={
            f"{i:04d}.json".encode(): Node("file", data=b'{"i": %d}\n' % i * 40) for i in range(300)
        },
    ),
    b"memory": Node(
        "dir",
        children={
            b"facts": Node(
                "dir",
                children={
                    b"a.json": Node("file", data=b"fact a\n"),
                    b"b.json": Node("file", data=b"fact b\n" * 1000),
                },
            ),
            b"link": Node("symlink", target=b"facts/a.json"),
        },
    ),
    b"blobs": Node("dir", children={b"big.bin": Node("file", data=os.urandom(BIG))}),
    b"hard.json": Node("hardlink", target=b"memory/facts/b.json"),
    b"noise": Node(
        "dir",
        children={f"{i:04d}.bin".encode(): Node("file", data=os.urandom(3000)) for i in range(600)},
    ),
}


class Counting(io.BytesIO):
    """An archive in memory that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.count = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.count += len(data)
        return data


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("source")
    src = base / "src"
    build(str(src), TREE)
    archive = base / "a.oxbak"
    oxbak.pack(src, archive, threads=2)
    return src, archive


def test_frames_are_cut_where_the_format_says(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    with open_input(archive) as inp:
        assert inp.random is not None
        table = SeekTable.read(inp.random)
    assert table is not None
    starts = {start for start, size in zip(table.d_starts, table.d_sizes, strict=True) if size}
    with open_source(archive, whole=False) as source:
        assert isinstance(source, TocSource)
        records = list(source.records())
        toc_at = source.toc_offset
    offsets = {r.offset for r in records if r.offset}
    big = next(r for r in records if r.path == b"blobs/big.bin")
    with open_source(archive, whole=False) as source:
        assert isinstance(source, TocSource)
        cursor = ArchiveReader(source.frames.stream(big.offset), offset=big.offset)
        assert cursor.next_header() is not None
        big_data = cursor.data_offset
    splits = {big_data + k * fmt.FRAME_SPLIT for k in range(1, BIG // fmt.FRAME_SPLIT + 1)}
    # Frame 1 is the manifest; every other frame starts at a member, at a split inside the
    # big file's data, at the TOC, or at one of its blocks.
    others = starts - offsets - splits - {0, toc_at, big_data + BIG + (-BIG % 512)}
    assert len(others) == len(source.header.blocks)
    assert splits <= starts
    # A large member has frames of its own: one starts at it, one right after its data.
    assert big.offset in starts
    assert big_data + BIG + (-BIG % 512) in starts
    # Any other member starts a frame only once the frame before holds FRAME_TARGET bytes.
    ordered = sorted(starts)
    large = {big.offset, *splits}
    for before, start in zip(ordered, ordered[1:], strict=False):
        if start in offsets and before not in large and start not in large and before != 0:
            assert start - before >= fmt.FRAME_TARGET, (before, start)


def test_same_bytes_whatever_the_threads_and_the_output(
    packed: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = packed
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    outputs = []
    for threads in (1, 2, 3):
        out = tmp_path / f"t{threads}.oxbak"
        oxbak.pack(src, out, threads=threads)
        outputs.append(out.read_bytes())
    piped = io.BytesIO()
    oxbak.pack(src, piped, threads=2)
    outputs.append(piped.getvalue())
    assert all(data == outputs[0] for data in outputs)


def test_list_reads_only_the_toc(packed: tuple[Path, Path]) -> None:
    src, archive = packed
    data = archive.read_bytes()
    counting = Counting(data)
    names = [e.path for e in oxbak.list_entries(counting)]
    assert len(names) == len(snapshot(str(src)))
    assert counting.count < len(data) // 10, (counting.count, len(data))


def test_list_paths_selects_subtrees(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    got = [e.path for e in oxbak.list_entries(archive, ["memory/facts", "hard.json"])]
    assert got == [b"hard.json", b"memory/facts", b"memory/facts/a.json", b"memory/facts/b.json"]
    with pytest.raises(oxbak.OxbakError, match="not in the archive: 'nope'"):
        list(oxbak.list_entries(archive, ["nope"]))


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("memory/facts/a.json", "memory/facts/a.json"),
        # "hard.json" sorts first: it holds the data, and b.json is the hardlink to it.
        ("memory/facts/b.json", "hard.json"),
        ("blobs/big.bin", "blobs/big.bin"),
    ],
)
def test_cat_reads_only_its_frames(packed: tuple[Path, Path], path: str, source: str) -> None:
    src, archive = packed
    data = archive.read_bytes()
    counting = Counting(data)
    out = io.BytesIO()
    size = oxbak.cat(counting, path, out)
    expected = (src / source).read_bytes()
    assert out.getvalue() == expected and size == len(expected)
    # The TOC, and the frames of the file (and of the link's own member, whose header is
    # checked): never the rest of the archive. A frame holds about FRAME_TARGET bytes.
    assert counting.count < len(expected) + 2 * fmt.FRAME_TARGET + len(data) // 20


class Ranges(io.BytesIO):
    """An archive in memory that records where each read started and how long it was."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, size: int | None = -1, /) -> bytes:
        at = self.tell()
        data = super().read(size)
        self.reads.append((at, len(data)))
        return data


def test_cat_of_a_large_file_reads_no_frame_after_it(packed: tuple[Path, Path]) -> None:
    """Its frames are decompressed ahead, and only they: not the next member's."""
    _, archive = packed
    data = archive.read_bytes()
    with open_source(archive, whole=False) as source:
        assert isinstance(source, TocSource)
        table = source.frames.table
        big = source.find(b"blobs/big.bin")
        assert big is not None
        cursor = ArchiveReader(source.frames.stream(big.offset), offset=big.offset)
        assert cursor.next_header() is not None
        after = cursor.data_offset + BIG + (-BIG % fmt.BLOCK_SIZE)
    following = table.frame_at(after)
    assert table.d_starts[following] == after  # a large member's frames end with it
    start, size = table.c_starts[following], table.c_sizes[following]
    ranges = Ranges(data)
    oxbak.cat(ranges, "blobs/big.bin", io.BytesIO())
    touched = [(at, n) for at, n in ranges.reads if at < start + size and start < at + n]
    assert touched == [], f"read the frame after the file: {touched}"


class Trickle(io.RawIOBase):
    """A pipe that hands out at most *chunk* bytes a read, and counts them."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self._data = data
        self._chunk = chunk
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        out = self._data[self.count : self.count + min(len(buf), self._chunk)]
        buf[: len(out)] = out
        self.count += len(out)
        return len(out)


def test_the_manifest_is_read_from_its_frame_alone(packed: tuple[Path, Path]) -> None:
    """read_manifest decompresses frame 1 and stops: nothing of frame 2 (whose first block
    alone may need 128 KiB of input, another request from object storage)."""
    _, archive = packed
    data = archive.read_bytes()
    with open_input(archive) as inp:
        assert inp.random is not None
        table = SeekTable.read(inp.random)
    assert table is not None
    trickle = Trickle(data, 4096)
    manifest = oxbak.read_manifest(trickle)
    assert manifest.totals.files > 0
    assert trickle.count <= table.c_sizes[0] + 4096, (trickle.count, table.c_sizes[0])


def test_cat_from_a_pipe(packed: tuple[Path, Path]) -> None:
    src, archive = packed
    proc = subprocess.run(
        [OXBAK, "cat", "-", "memory/facts/a.json"],
        input=archive.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (src / "memory/facts/a.json").read_bytes()
    # A hardlink's data went by before the link itself: a stream cannot go back for it.
    proc = subprocess.run(
        [OXBAK, "cat", "-", "memory/facts/b.json"],
        input=archive.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1 and proc.stdout == b""
    assert "is a hardlink" in proc.stderr.decode()


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nope.json", "not in the archive: 'nope.json'"),
        ("memory", "'memory' is a directory, not a file"),
        ("memory/link", "'memory/link' is a symlink, not a file"),
        ("../etc/passwd", "refusing member"),
    ],
)
def test_cat_refuses_what_is_not_a_file(packed: tuple[Path, Path], path: str, message: str) -> None:
    _, archive = packed
    with pytest.raises(oxbak.OxbakError, match=message):
        oxbak.cat(archive, path, io.BytesIO())
    proc = subprocess.run([OXBAK, "cat", str(archive), path], capture_output=True, check=False)
    assert proc.returncode == 1 and proc.stdout == b""
    assert proc.stderr.decode().count("\n") == 1 and "Traceback" not in proc.stderr.decode()


def _expected_subset(src: Path, keep: set[bytes]) -> dict[bytes, tuple[object, ...]]:
    return {rel: entry for rel, entry in snapshot(str(src)).items() if rel in keep}


def test_unpack_only_reads_only_its_frames(packed: tuple[Path, Path], tmp_path: Path) -> None:
    src, archive = packed
    data = archive.read_bytes()
    counting = Counting(data)
    dest = tmp_path / "dest"
    result = oxbak.unpack(counting, dest, only=["memory/facts"])
    got = snapshot(str(dest))
    # b.json is a hardlink to hard.json, which comes along.
    keep = {b"", b"hard.json", b"memory", b"memory/facts", b"memory/facts/a.json"}
    keep.add(b"memory/facts/b.json")
    assert set(got) == keep
    # Directories on the way are created; their times and modes are the archive's.
    assert got == _expected_subset(src, keep)
    assert result.entries == len(keep)
    assert counting.count < len(data) // 10


def test_unpack_only_pulls_in_a_hardlinks_target(packed: tuple[Path, Path], tmp_path: Path) -> None:
    src, archive = packed
    dest = tmp_path / "dest"
    oxbak.unpack(archive, dest, only=["memory/facts/b.json"])
    assert (dest / "memory/facts/b.json").read_bytes() == (src / "hard.json").read_bytes()
    assert os.path.samefile(dest / "hard.json", dest / "memory/facts/b.json")
    assert not (dest / "memory/facts/a.json").exists()


def test_unpack_only_from_a_pipe_checks_everything(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    src, archive = packed
    data = bytearray(archive.read_bytes())
    dest = tmp_path / "dest"
    proc = subprocess.run(
        [OXBAK, "unpack", "-", str(dest), "--only", "seeds/0001.json", "--exclude", "*.bin"],
        input=bytes(data),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(dest)) == ["seeds"] and os.listdir(dest / "seeds") == ["0001.json"]
    # Damage far from the selection: a stream is read and checked whole, so it is refused.
    noise = snapshot(str(src))
    assert noise
    with open_source(archive, whole=False) as source:
        assert isinstance(source, TocSource)
        far = next(r for r in source.records() if r.path == b"noise/0300.bin")
    damaged = tmp_path / "damaged"
    data[far.offset // 4] ^= 0xFF  # compressed bytes around a quarter of the archive
    proc = subprocess.run(
        [OXBAK, "unpack", "-", str(damaged), "--only", "seeds/0001.json"],
        input=bytes(data),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1 and not damaged.exists()


def test_unpack_only_hardlink_from_a_pipe_names_the_target(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, archive = packed
    proc = subprocess.run(
        [OXBAK, "unpack", "-", str(tmp_path / "d"), "--only", "memory/facts/b.json"],
        input=archive.read_bytes(),
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "'hard.json'" in proc.stderr.decode()
    assert not (tmp_path / "d").exists()


def test_unpack_only_a_missing_path_changes_nothing(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, archive = packed
    dest = tmp_path / "dest"
    build(str(dest), {b"keep": Node("file", data=b"old\n")})
    before = snapshot(str(dest))
    with pytest.raises(oxbak.OxbakError, match="not in the archive: 'nope'"):
        oxbak.unpack(archive, dest, mode="replace", only=["seeds/0001.json", "nope"])
    assert snapshot(str(dest)) == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".oxbak-")] == []


@pytest.mark.parametrize("mode", ["replace", "merge"])
def test_unpack_only_with_replace_and_merge(
    packed: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    src, archive = packed
    dest = tmp_path / "dest"
    build(str(dest), {b"keep": Node("file", data=b"old\n"), b"seeds": Node("dir", children={})})
    oxbak.unpack(archive, dest, mode=mode, only=["seeds/0002.json"])  # type: ignore[arg-type]
    names = sorted(os.listdir(dest))
    # replace: DEST becomes the subset; merge: the subset is laid over DEST.
    assert names == (["keep", "seeds"] if mode == "merge" else ["seeds"])
    assert os.listdir(dest / "seeds") == ["0002.json"]
    assert (dest / "seeds/0002.json").read_bytes() == (src / "seeds/0002.json").read_bytes()


def test_exclude_leaves_out_subtrees(packed: tuple[Path, Path], tmp_path: Path) -> None:
    src, archive = packed
    dest = tmp_path / "dest"
    oxbak.unpack(archive, dest, excludes=["noise", "*.json"])
    got = snapshot(str(dest))
    assert not any(rel.startswith(b"noise") or rel.endswith(b".json") for rel in got)
    assert b"blobs/big.bin" in got and b"memory/link" in got


def test_info_status_comes_from_the_toc(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    data = archive.read_bytes()
    counting = Counting(data)
    info = oxbak.read_info(counting)
    assert info.toc is not None and info.toc.partial is False
    assert info.toc.totals == info.manifest.totals
    assert counting.count < 64 * 1024 + len(data) // 20
    piped = oxbak.read_info(io.BufferedReader(Unseekable(data)))
    assert piped.toc is None and piped.manifest == info.manifest
