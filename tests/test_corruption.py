"""Corruption sweeps: a real archive with single bits flipped and its tail cut off.

One archive of a small "mixed" state tree (``benchmarks/make_state.py --profile mixed
--scale 0.002 --extras``: ~60 small JSON files, three files of 200-270 KB, empty
directories, two symlinks, a hardlink) is damaged in every way a disk or a network can
damage a file, and every damaged copy goes through ``verify`` and ``unpack``.

What must hold, for every damaged copy:

- ``verify`` and ``unpack`` raise nothing but :class:`oxbak.OxbakError` subclasses;
- ``verify`` reports the damage (``ok`` is false), **unless the damage does not change a
  single byte of what the archive holds**: an independent zstd decoder (``builders``)
  returns exactly the original tar stream, and the footer and seek table still say the
  same. That happens for the two unused bits of the seek table's descriptor (the zstd
  seekable format reserves them for compatible additions: readers ignore them) and, as
  the sweeps found, for a few bits of frame structure (the unused bit of each frame
  header descriptor, and window descriptor bits whose new window still covers the data)
  and about 1 in 1,000-4,000 random flips inside compressed blocks, which decode to the
  same bytes. Such a flip loses nothing, so accepting it is not a miss; the archive must
  then restore the exact tree. Every other byte of the footer and the seek table (the
  *trailer*, FORMAT.md §1) is checked: a flip there is reported.
- ``unpack`` never commits a damaged tree: it either raises and leaves DEST as it was
  (absent, or byte-for-byte the old tree with ``mode="replace"``) and no ``.oxbak-*``
  directory beside it, or it restores a tree identical to the source.

``make test`` runs ~150 flips, ~1,300 bits of frame structure, 40 cut points and ~40
unpacks; ``make torture`` runs ≥ 1,000 flips and a cut every 0.5 % of the length, each
through ``unpack`` too, plus every bit of the trailer, and prints one summary line.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

import oxbak
from builders import decompress_all, flip, frames_of
from treeutil import Node, build, snapshot

REPO = Path(__file__).resolve().parent.parent
SEED = 0x0BAC
Tree = dict[bytes, tuple[object, ...]]


# --------------------------------------------------------------------------- the sample


@dataclass(frozen=True)
class Sample:
    """The archive under test and everything needed to judge a damaged copy of it."""

    src: Path
    data: bytes
    tar: bytes  # the decompressed tar stream
    tree: Tree  # snapshot of the source tree
    trailer: tuple[int, ...]  # the payloads of the footer and seek-table frames
    unused: frozenset[tuple[int, int]]  # (offset, bit) of the seek table's unused bits
    structure: tuple[int, ...]  # offsets of frame headers, block headers, checksums
    clean_cuts: frozenset[int]  # cut points that leave whole frames holding the whole tar


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    base = tmp_path_factory.mktemp("corruption")
    src = base / "state"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "make_state.py"),
            str(src),
            "--profile",
            "mixed",
            "--scale",
            "0.002",
            "--extras",
        ],
        check=True,
        capture_output=True,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the same bytes every run
        oxbak.pack(src, base / "state.oxbak", threads=1)
    data = (base / "state.oxbak").read_bytes()
    frames = frames_of(data)
    skippables = [f for f in frames if f.skippable]
    assert skippables == frames[-2:], "FORMAT.md §1: the footer and the seek table come last"
    trailer = (
        *range(frames[-2].header_end, frames[-2].end),
        *range(frames[-1].header_end, frames[-1].end),
    )
    descriptor = len(data) - 5  # FORMAT.md §1: count (4), descriptor (1), magic (4)
    unused = frozenset({(descriptor, 0), (descriptor, 1)})
    structure: set[int] = set()
    for f in frames:
        structure.update(range(f.start, f.header_end))
        for start, _ in f.blocks:
            structure.update(range(start, start + 3))
        if f.checksum_start is not None:
            structure.update(range(f.checksum_start, f.end))
    tar = decompress_all(data)
    clean_cuts = frozenset(f.end for f in frames[:-1] if _decode(data[: f.end]) == tar)
    return Sample(
        src=src,
        data=data,
        tar=tar,
        tree=snapshot(src),
        trailer=trailer,
        unused=unused,
        structure=tuple(sorted(structure)),
        clean_cuts=clean_cuts,
    )


def _decode(data: bytes) -> bytes | None:
    """What an independent zstd decoder makes of *data* (None: it cannot)."""
    try:
        return decompress_all(data)
    except zstandard.ZstdError:
        return None


# --------------------------------------------------------------------------- judging


@dataclass
class Tally:
    """What a sweep saw; ``escaped``, ``missed`` and ``damaged`` must stay empty."""

    tried: int = 0
    detected: int = 0
    raised: int = 0  # detected by verify raising an OxbakError instead of reporting
    neutral: list[tuple[int, int]] = field(default_factory=list)  # accepted, content intact
    missed: list[str] = field(default_factory=list)  # accepted although content changed
    escaped: list[str] = field(default_factory=list)  # a non-OxbakError got out
    unpacks: int = 0
    refused: int = 0
    restored: int = 0
    damaged: list[str] = field(default_factory=list)  # DEST wrong after unpack
    bytes_lost: int = 0

    def check(self) -> None:
        problems = self.escaped + self.missed + self.damaged
        assert not problems, f"{len(problems)} failures:\n" + "\n".join(problems[:30])


def judge_verify(data: bytes, sample: Sample, tally: Tally, what: str, *, cut: bool) -> bool:
    """Run verify on *data*; record the outcome. True when the damage was reported."""
    tally.tried += 1
    try:
        result = oxbak.verify(io.BytesIO(data))
    except oxbak.OxbakError:
        tally.detected += 1
        tally.raised += 1
        return True
    except Exception as exc:  # noqa: BLE001 - every other exception is the failure
        tally.escaped.append(f"{what}: verify raised {type(exc).__name__}: {exc}")
        return True
    if not result.ok:
        tally.detected += 1
        return True
    intact = _decode(data) == sample.tar and (not cut or len(data) in sample.clean_cuts)
    if intact and not cut:
        start = sample.trailer[0]
        changed = {
            (start + i, b)
            for i, (x, y) in enumerate(zip(data[start:], sample.data[start:], strict=True))
            for b in range(8)
            if (x ^ y) >> b & 1
        }
        intact = changed <= sample.unused  # anything else in the trailer must be reported
    if not intact:
        tally.missed.append(f"{what}: verify accepted it, but the content changed")
    return False


def judge_unpack(
    data: bytes, sample: Sample, tally: Tally, parent: Path, what: str, *, replace: bool
) -> None:
    """Unpack *data* into ``parent/dest``; DEST must be the old tree or the exact source."""
    dest = parent / "dest"
    old: Tree | None = None
    if replace:
        _old_tree(dest)
        old = snapshot(dest)
    tally.unpacks += 1
    try:
        oxbak.unpack(io.BytesIO(data), dest, mode="replace" if replace else "new")
    except oxbak.OxbakError:
        tally.refused += 1
        if old is None and os.path.lexists(dest):
            tally.damaged.append(f"{what}: unpack failed but left {dest}")
        elif old is not None and snapshot(dest) != old:
            tally.damaged.append(f"{what}: unpack failed and changed the old DEST")
    except Exception as exc:  # noqa: BLE001
        tally.escaped.append(f"{what}: unpack raised {type(exc).__name__}: {exc}")
    else:
        tally.restored += 1
        got = snapshot(dest)
        if got != sample.tree:
            lost = _bytes_lost(sample.tree, got)
            tally.bytes_lost += lost
            tally.damaged.append(f"{what}: unpack committed a damaged tree ({lost} bytes lost)")
    leftovers = sorted(n for n in os.listdir(parent) if n.startswith(".oxbak-"))
    if leftovers:
        tally.damaged.append(f"{what}: left {leftovers} beside DEST")
    for name in os.listdir(parent):
        _rmtree(parent / name)


def _bytes_lost(want: Tree, got: Tree) -> int:
    lost = 0
    for rel, entry in want.items():
        if got.get(rel) != entry and entry[0] == "file":
            size = entry[3]
            lost += size if isinstance(size, int) else 0
    return lost


def _old_tree(dest: Path) -> None:
    """A pre-existing DEST for mode="replace": something the restore must not damage."""
    build(
        os.fsencode(dest),
        {
            b"keep.txt": Node("file", data=b"the old tree\n" * 50),
            b"sub": Node("dir", children={b"deep.bin": Node("file", data=bytes(range(256)))}),
            b"link": Node("symlink", target=b"keep.txt"),
        },
    )


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)
    shutil.rmtree(path)


def _flips(n: int, size: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randrange(size), rng.randrange(8)) for _ in range(n)]


def _cut_points(size: int, steps: int) -> list[int]:
    """Every 1/steps of the length, plus the cuts that hurt most: the last bytes."""
    points = {size * i // steps for i in range(steps)}
    points |= {size - 1, size - 4, size - 5}
    return sorted(p for p in points if p < size)


def _sweep_flips(
    sample: Sample,
    cases: Iterable[tuple[int, int]],
    tally: Tally,
    parent: Path | None = None,
    *,
    unpack_every: int = 0,
) -> None:
    for i, (offset, bit) in enumerate(cases):
        data = flip(sample.data, offset, 1 << bit)
        what = f"bit {bit} of byte {offset}"
        detected = judge_verify(data, sample, tally, what, cut=False)
        if not detected:
            tally.neutral.append((offset, bit))
        if parent is not None and unpack_every and i % unpack_every == 0:
            judge_unpack(data, sample, tally, parent, what, replace=bool(i // unpack_every % 2))


def _sweep_cuts(
    sample: Sample, points: Iterable[int], tally: Tally, parent: Path | None = None
) -> None:
    for n in points:
        what = f"cut at {n} of {len(sample.data)}"
        data = sample.data[:n]
        detected = judge_verify(data, sample, tally, what, cut=True)
        if not detected:
            tally.neutral.append((n, -1))
        if parent is not None:
            judge_unpack(data, sample, tally, parent, what, replace=n % 2 == 1)


def _where(sample: Sample, offset: int) -> str:
    if offset in sample.trailer:
        return "trailer"
    if offset in set(sample.structure):
        return "header"
    return "block"


# --------------------------------------------------------------------------- the layout


def test_the_sample_is_a_real_mixed_tree(sample: Sample) -> None:
    kinds = [entry[0] for entry in sample.tree.values()]
    assert kinds.count("file") >= 50
    assert kinds.count("symlink") >= 2
    big = [e for e in sample.tree.values() if e[0] == "file" and int(e[3]) >= 200_000]  # type: ignore[call-overload]
    assert len(big) >= 3
    assert any(len(e) == 6 for e in sample.tree.values()), "a hardlink group"
    dirs = [rel for rel, e in sample.tree.items() if e[0] == "dir" and rel]
    assert any(not any(k.startswith(d + b"/") for k in sample.tree) for d in dirs), "empty dir"
    assert oxbak.verify(io.BytesIO(sample.data)).ok
    assert len(frames_of(sample.data)) >= 5  # the manifest, the tree, the TOC, the trailer


def test_archive_has_exactly_the_frames_of_format_md(sample: Sample) -> None:
    """Data frames, then the footer and the seek table, which lists every frame before it."""
    frames = frames_of(sample.data)
    assert [f.skippable for f in frames] == [False] * (len(frames) - 2) + [True, True]
    assert frames[-1].end == len(sample.data)
    table = sample.data[frames[-1].header_end : frames[-1].end]
    count = int.from_bytes(table[-9:-5], "little")
    assert count == len(frames) - 1
    sizes = [int.from_bytes(table[8 * i : 8 * i + 4], "little") for i in range(count)]
    assert sizes == [f.end - f.start for f in frames[:-1]]


# --------------------------------------------------------------------------- make test


def test_bit_flips_are_detected(sample: Sample) -> None:
    """~150 flips anywhere: each is reported, or provably changed nothing."""
    tally = Tally()
    _sweep_flips(sample, _flips(150, len(sample.data), SEED), tally)
    tally.check()
    assert tally.tried == 150
    assert tally.detected >= 140, tally  # undetectable bits are rare (~0.3 % of the file)


def test_every_bit_of_the_frame_structure(sample: Sample) -> None:
    """Every bit of every frame header, block header, checksum and the reserve's header."""
    cases = [(offset, bit) for offset in sample.structure for bit in range(8)]
    tally = Tally()
    _sweep_flips(sample, cases, tally)
    tally.check()
    # What a flip here may leave undetected (it changes no byte of content, see above):
    # never a block header or a checksum.
    blocks = {
        start + k
        for f in frames_of(sample.data)
        if not f.skippable and any(b[1] - b[0] > 3 for b in f.blocks)  # frames with data
        for start, _ in f.blocks
        for k in range(3)
    }
    checksums = {
        f.checksum_start + k
        for f in frames_of(sample.data)
        if f.checksum_start is not None
        for k in range(4)
    }
    assert not {off for off, _ in tally.neutral} & (blocks | checksums), tally.neutral


def test_flips_in_the_trailer_are_reported(sample: Sample, tmp_path: Path) -> None:
    """The footer and seek table are checked: a flip there is damage (two bits aside)."""
    rng = random.Random(SEED + 1)
    offsets = [sample.trailer[0], sample.trailer[-1]]
    offsets += rng.sample(sample.trailer, 38)
    for n, offset in enumerate(offsets):
        bit = rng.randrange(8)
        data = flip(sample.data, offset, 1 << bit)
        assert _decode(data) == sample.tar  # the tar stream is untouched
        assert oxbak.verify(io.BytesIO(data)).ok == ((offset, bit) in sample.unused), offset
        if n < 6:
            tally = Tally()
            judge_unpack(
                data, sample, tally, tmp_path, f"trailer byte {offset}", replace=n % 2 == 1
            )
            tally.check()


def test_flipped_archives_never_commit_damage(sample: Sample, tmp_path: Path) -> None:
    """30 flips through unpack (half into a new DEST, half replacing an old tree)."""
    cases = _flips(30, len(sample.data), SEED + 2)
    tally = Tally()
    _sweep_flips(sample, cases, tally, tmp_path, unpack_every=1)
    tally.check()
    assert tally.unpacks == 30
    assert tally.refused + tally.restored == 30


def test_truncations_are_detected_and_refused(sample: Sample, tmp_path: Path) -> None:
    """A cut every 2.5 % of the length and in the last frame's checksum: never accepted."""
    points = _cut_points(len(sample.data), 40)
    assert len(points) >= 40
    tally = Tally()
    _sweep_cuts(sample, points, tally, tmp_path)
    tally.check()
    assert tally.detected == tally.tried, tally.neutral
    assert tally.refused == tally.unpacks


def test_cut_at_every_frame_boundary(sample: Sample, tmp_path: Path) -> None:
    """Cuts exactly between frames end the zstd stream cleanly: only the tar can tell."""
    ends = [f.end for f in frames_of(sample.data)][:-1]
    tally = Tally()
    _sweep_cuts(sample, [0, *ends], tally, tmp_path)
    tally.check()
    # Even a cut that keeps every byte of the tar stream (before the footer, before the
    # seek table) is reported: a version-2 archive must end with both.
    assert sample.clean_cuts
    assert tally.detected == tally.tried, tally.neutral


# --------------------------------------------------------------------------- torture


@pytest.mark.torture
def test_torture_corruption_sweep(
    sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """≥ 1,000 flips and a cut every 0.5 %, each through verify and unpack; one summary."""
    started = time.monotonic()
    flips = Tally()
    _sweep_flips(sample, _flips(1200, len(sample.data), SEED + 3), flips, tmp_path, unpack_every=1)
    cuts = Tally()
    _sweep_cuts(sample, _cut_points(len(sample.data), 200), cuts, tmp_path)
    wall = time.monotonic() - started
    where: dict[str, int] = {"trailer": 0, "header": 0, "block": 0}
    for offset, _ in flips.neutral:
        where[_where(sample, offset)] += 1
    line = (
        f"corruption sweep: archive {len(sample.data)} B; "
        f"flips tried={flips.tried} detected={flips.detected} "
        f"(by exception {flips.raised}) accepted-content-intact={len(flips.neutral)} "
        f"(trailer {where['trailer']}, frame header {where['header']}, block {where['block']}) "
        f"missed={len(flips.missed)}; "
        f"cuts tried={cuts.tried} detected={cuts.detected} missed={len(cuts.missed)}; "
        f"unpacks={flips.unpacks + cuts.unpacks} refused={flips.refused + cuts.refused} "
        f"restored-exact={flips.restored + cuts.restored - len(flips.damaged + cuts.damaged)} "
        f"damaged-commits={len(flips.damaged) + len(cuts.damaged)} "
        f"bytes-lost={flips.bytes_lost + cuts.bytes_lost}; "
        f"escaped-exceptions={len(flips.escaped) + len(cuts.escaped)}; wall {wall:.1f} s"
    )
    with capsys.disabled():
        print("\n" + line)
    flips.check()
    cuts.check()
    assert flips.tried >= 1000 and cuts.tried >= 200
    assert cuts.detected == cuts.tried


@pytest.mark.torture
def test_torture_every_bit_of_the_trailer(
    sample: Sample, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every bit of the footer and seek table: reported, but the two unused bits."""
    started = time.monotonic()
    accepted = set()
    for offset in sample.trailer:
        for bit in range(8):
            data = flip(sample.data, offset, 1 << bit)
            if oxbak.verify(io.BytesIO(data)).ok:
                accepted.add((offset, bit))
    with capsys.disabled():
        print(
            f"\ntrailer sweep: bytes {sample.trailer[0]}..{sample.trailer[-1]} "
            f"({len(sample.trailer)} B), {8 * len(sample.trailer)} bits flipped, "
            f"{len(accepted)} accepted; wall {time.monotonic() - started:.1f} s"
        )
    assert accepted == sample.unused
