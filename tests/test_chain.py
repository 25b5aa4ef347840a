"""Chains of incremental archives: random edits over many packs, and chains that lie.

The property tests pack a random tree, edit it at random, pack an incremental on the
archive before, and so on; they check each archive against the tree it was packed from
(its records' digests are that tree's contents), and restore points of the chain.

What decides that a file is unchanged depends on the clock the *base* was packed with
(its ``created_at``, FORMAT.md §11), drawn per archive:

- ``trusting``: ``SOURCE_DATE_EPOCH`` in 2100. No file is recent enough to be racy (but
  those with mtimes after 2100), so the quick check decides by stat alone and an
  unchanged file is never opened. Sound here only because the edits wait for a clock
  tick after each pack (:func:`_tick`): every change they make shows in the ctime.
- ``real``: the real clock. Files changed in the last seconds are racy: read again and
  compared by digest (in a fast test, nearly all of them).
- ``past``: 2023, as the suite pins ``SOURCE_DATE_EPOCH``: every file is racy.

and on ``base_check`` (``metadata`` or ``content``), drawn per pack. A chain may also be
packed on a simulated filesystem whose ctime ticks in whole seconds (:func:`_coarse_ctime`):
there, a file rewritten in place with its size and mtime kept, in the second its last
change was made, has the stat it had when the base read it, and only the racy rule can
tell (never combined with the ``trusting`` clock, which defeats that rule on purpose).

The hostile tests build chains whose fault is in the bytes (tests/toc_builders.py, no
oxbak writer) or in the order given, and check that a restore refuses them in one line
naming the archive at fault, leaving DEST as it was.

What each test exercises:

- ``test_any_point_of_a_chain_restores_its_tree``: all of the above mixed, 5–7 archives;
  the pack side of every archive (:func:`_check_point`), and restore plus verify of a
  drawn point and of the last.
- ``test_the_quick_check_alone_misses_no_change``: every archive trusting and
  ``metadata``: each decision is the quick check's by stat (a change that moves only
  the ctime must be seen).
- ``test_long_chains_restore_every_point`` (torture): up to 12 archives, every point.
- ``test_restore_modes_of_a_chain_are_those_of_a_full_archive``: ``replace``, ``merge``
  and ``only`` from a chain give what they give from a full archive of the same tree.
- ``test_a_rewrite_the_stat_cannot_show_is_read_again``: the racy rule alone (coarse
  ctime), deterministic; and that a trusting base is fooled, so the case is real.
- ``test_a_chain_with_the_real_clock``: production conditions, after a real 3 s wait:
  settled files taken from the base unopened through a chain of 5.
- ``test_an_honest_crafted_chain_restores``: the control for the crafted lies.
- ``test_a_lying_chain_is_refused``, ``test_a_wrong_or_damaged_chain_is_refused``,
  ``test_a_truncated_base_is_called_damaged``: hostile chains (API, CLI, verify).

A failure whose example involves the coarse ctime depends on where second boundaries
fall, so hypothesis may report it as flaky: the first run's traceback is the finding.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3
import pytest
from hypothesis import currently_in_test_context, event, given, note, settings
from hypothesis import strategies as st

import oxbak
from builders import Entry
from oxbak import format as fmt
from oxbak.source import TocSource, open_source, read_info
from oxbak.toc import FROM_BASE, Record
from strategies import (
    contents,
    names,
    owner_dir_modes,
    owner_file_modes,
    owner_trees,
    past_mtimes,
    symlink_targets,
    trees_with_hardlinks,
)
from toc_builders import MISSING, V2, build_v2, missing_record, record_of
from treeutil import Node, build, snapshot

_SECOND = 1_000_000_000
_EPOCHS = {"trusting": "4102444800", "past": "1700000000"}  # 2100-01-01, 2023-11-14
# Drawn with these weights: the quick check by stat alone (trusting, metadata) is where a
# missed change would hide.
CLOCKS = ("trusting", "trusting", "real", "past")
CHECKS = ("metadata", "metadata", "content")


# -- packing under a chosen clock, on a chosen filesystem, watching what is opened.


@dataclass(frozen=True)
class Plan:
    """How one archive of a chain is packed (see the module docstring)."""

    clock: str
    check: str


class _CoarseStat:
    """A stat result whose ctime is cut to the whole second, the rest as it is."""

    __slots__ = ("_st",)

    def __init__(self, st: os.stat_result) -> None:
        self._st = st

    def __getattr__(self, name: str) -> Any:
        return getattr(self._st, name)

    @property
    def st_ctime_ns(self) -> int:
        return self._st.st_ctime_ns // _SECOND * _SECOND

    @property
    def st_ctime(self) -> float:
        return float(self._st.st_ctime_ns // _SECOND)


def _coarse_ctime(mp: pytest.MonkeyPatch) -> None:
    """Make every ``os.stat``/``lstat``/``fstat`` of this process see whole-second ctimes.

    As on a filesystem with one-second timestamps (ext3, HFS+): a change made in the
    second of the previous one leaves the ctime as it was. Only the ctime is cut: the
    edits that mean to hide set the mtime back themselves.
    """
    for name in ("stat", "lstat", "fstat"):
        real = getattr(os, name)

        def coarse(*args: Any, _real: Any = real, **kw: Any) -> _CoarseStat:
            return _CoarseStat(_real(*args, **kw))

        mp.setattr(os, name, coarse)


def _pack(src: Path, out: Path, plan: Plan, base: Path | None, coarse: bool) -> set[bytes]:
    """Pack *src* into *out* as *plan* says; return the paths of the files it opened."""
    opened: set[bytes] = set()
    prefix = os.fsencode(src) + b"/"
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        if isinstance(path, (str, bytes)) and os.fsencode(path).startswith(prefix):
            opened.add(os.fsencode(path)[len(prefix) :])
        return real_open(path, flags, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        if plan.clock in _EPOCHS:
            mp.setenv("SOURCE_DATE_EPOCH", _EPOCHS[plan.clock])
        else:
            mp.delenv("SOURCE_DATE_EPOCH", raising=False)
        mp.setattr(os, "open", spy)
        if coarse:
            _coarse_ctime(mp)
        result = oxbak.pack(src, out, threads=1, base=base, base_check=plan.check)
    assert not result.partial, (result.changed, result.missing)
    return opened


def _tick(probe: Path) -> None:
    """Return once a change made now gets a later ctime than any the last pack saw.

    Timestamps come from a coarse clock (a jiffy) unless the kernel hands out fine ones
    after a stat (multigrain timestamps): either way, once *probe*'s ctime passes the
    time taken here, every later change stamps a later ctime.
    """
    now = time.time_ns()
    for _ in range(1000):
        probe.write_bytes(b"tick")
        if os.stat(probe).st_ctime_ns > now:
            return
        time.sleep(0.001)
    raise AssertionError("the filesystem's ctime does not move")


def _event(what: str) -> None:
    """Count *what* in hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def _records(archive: Path) -> dict[bytes, Record]:
    with open_source(str(archive), whole=False, incremental=True) as source:
        assert isinstance(source, TocSource)
        return {r.path: r for r in source.records()}


def _toc_id(archive: Path) -> str:
    with open_source(str(archive), whole=False, incremental=True) as source:
        assert isinstance(source, TocSource)
        return source.toc_id()


def _created_ns(archive: Path) -> int:
    created = read_info(str(archive)).manifest.created_at
    return int(dt.datetime.fromisoformat(created).timestamp()) * _SECOND


def _digests(root: Path) -> dict[bytes, bytes]:
    """BLAKE3-256 of every regular file under *root*, by relative path."""
    out: dict[bytes, bytes] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as fh:
                    out[os.path.relpath(path, base)] = blake3.blake3(fh.read()).digest()
    return out


# -- the edits: each draws its target among the entries on disk now, in sorted order.


def _walk(root: bytes) -> dict[bytes, os.stat_result]:
    out: dict[bytes, os.stat_result] = {}

    def visit(rel: bytes) -> None:
        st_ = os.lstat(root + b"/" + rel if rel else root)
        out[rel] = st_
        if stat.S_ISDIR(st_.st_mode):
            for name in sorted(os.listdir(root + b"/" + rel if rel else root)):
                visit(rel + b"/" + name if rel else name)

    visit(b"")
    return out


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _under(path: bytes, top: bytes) -> bool:
    return path == top or path.startswith(top + b"/")


EDITS = (
    "add file",
    "add dir",
    "add symlink",
    "rewrite",  # new content (in place, or a new file renamed over it), maybe a drawn mtime
    "rewrite keeping size and mtime",  # the ctime moves (unless within its tick: coarse)
    "rewrite keeping size and mtime",  # (twice as likely: the quick check's hardest case)
    "touch",  # a new mtime, the same content
    "same bytes",  # rewritten with the content it had: new mtime and ctime
    "delete",
    "rename",  # a file or a directory, maybe over an existing file
    "chmod",
    "hardlink",
    "break hardlink",  # one name unlinked, or replaced by a copy (same bytes, mode, mtime)
    "file to dir",
    "dir to file",
    "file to symlink",
    "symlink to file",
)


class Editor:
    """Draws and applies edits to the tree at *root* (a path of bytes)."""

    def __init__(self, data: st.DataObject, root: bytes) -> None:
        self.data = data
        self.root = root

    def draw(self, strategy: st.SearchStrategy[Any], label: str) -> Any:
        return self.data.draw(strategy, label=label)

    def pick(self, choices: Sequence[bytes], label: str) -> bytes:
        return self.draw(st.sampled_from(sorted(choices)), label)

    def abs(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def fresh(self, parent: bytes) -> bytes:
        """A new path in *parent*: a drawn name, or a plain one if that is taken."""
        rel = _join(parent, self.draw(names, "name"))
        n = 0
        while os.path.lexists(self.abs(rel)):
            rel, n = _join(parent, b"new-%d" % n), n + 1
        return rel

    def stamp(self, rel: bytes) -> None:
        """Maybe give *rel* a drawn mtime (else it keeps the one the edit gave it)."""
        t = self.draw(st.one_of(st.none(), past_mtimes), "mtime")
        if t is not None:
            os.utime(self.abs(rel), ns=(t, t), follow_symlinks=False)

    def write_file(self, rel: bytes) -> None:
        with open(self.abs(rel), "wb") as fh:
            fh.write(self.draw(contents, "content"))
        os.chmod(self.abs(rel), self.draw(owner_file_modes, "mode"))
        self.stamp(rel)

    def make_dir(self, rel: bytes) -> None:
        os.mkdir(self.abs(rel))
        if self.draw(st.booleans(), "with a file"):
            self.write_file(_join(rel, self.draw(names, "name")))
        os.chmod(self.abs(rel), self.draw(owner_dir_modes, "mode"))
        self.stamp(rel)

    def make_symlink(self, rel: bytes) -> None:
        os.symlink(self.draw(symlink_targets, "target"), self.abs(rel))
        self.stamp(rel)

    def remove(self, rel: bytes) -> None:
        if os.path.isdir(self.abs(rel)) and not os.path.islink(self.abs(rel)):
            shutil.rmtree(self.abs(rel))
        else:
            os.unlink(self.abs(rel))

    def replace_by_copy(self, rel: bytes, data: bytes) -> None:
        """Write *data* to a new file and rename it over *rel*: a new inode, same name."""
        old = os.lstat(self.abs(rel))
        # No drawn name is this one (names are at most 24 characters).
        tmp = self.abs(rel.rpartition(b"/")[0]) + b"/" + b"\x01" * 25 + b"copy"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.utime(tmp, ns=(old.st_atime_ns, old.st_mtime_ns))
        os.rename(tmp, self.abs(rel))

    def edit(self) -> str:
        """Apply one drawn edit; return what it did."""
        entries = _walk(self.root)
        kind = {rel: stat.S_IFMT(s.st_mode) for rel, s in entries.items()}
        files = [r for r, k in kind.items() if k == stat.S_IFREG]
        dirs = [r for r, k in kind.items() if k == stat.S_IFDIR]  # the root included
        links = [r for r, k in kind.items() if k == stat.S_IFLNK]
        others = [r for r in entries if r]
        what = self.draw(st.sampled_from(EDITS), "edit")
        needs = {
            "rewrite": files,
            "rewrite keeping size and mtime": [f for f in files if entries[f].st_size],
            "touch": others,
            "same bytes": files,
            "delete": others,
            "rename": others,
            "hardlink": files,
            "break hardlink": [f for f in files if entries[f].st_nlink > 1],
            "file to dir": files,
            "dir to file": [d for d in dirs if d],
            "file to symlink": files,
            "symlink to file": links,
        }
        if what in needs and not needs[what]:
            what = "add file"
        if what == "add file":
            rel = self.fresh(self.pick(dirs, "parent"))
            self.write_file(rel)
        elif what == "add dir":
            rel = self.fresh(self.pick(dirs, "parent"))
            self.make_dir(rel)
        elif what == "add symlink":
            rel = self.fresh(self.pick(dirs, "parent"))
            self.make_symlink(rel)
        elif what == "rewrite":
            rel = self.pick(files, "file")
            data = self.draw(contents, "content")
            if self.draw(st.booleans(), "in place"):
                with open(self.abs(rel), "wb") as fh:
                    fh.write(data)
            else:
                self.replace_by_copy(rel, data)
            self.stamp(rel)
        elif what == "rewrite keeping size and mtime":
            rel = self.pick(needs[what], "file")
            before = os.lstat(self.abs(rel))
            with open(self.abs(rel), "r+b") as fh:
                data = fh.read()
                fh.seek(0)
                fh.write(bytes(b ^ 0xA5 for b in data))
            os.utime(self.abs(rel), ns=(before.st_atime_ns, before.st_mtime_ns))
            after = os.lstat(self.abs(rel))
            assert (after.st_size, after.st_mtime_ns, after.st_ino, after.st_mode) == (
                before.st_size,
                before.st_mtime_ns,
                before.st_ino,
                before.st_mode,
            )
        elif what == "touch":
            rel = self.pick(others, "entry")
            t = self.draw(past_mtimes, "mtime")
            os.utime(self.abs(rel), ns=(t, t), follow_symlinks=False)
        elif what == "same bytes":
            rel = self.pick(files, "file")
            with open(self.abs(rel), "rb") as fh:
                data = fh.read()
            with open(self.abs(rel), "wb") as fh:
                fh.write(data)
        elif what == "delete":
            rel = self.pick(others, "entry")
            self.remove(rel)
        elif what == "rename":
            rel = self.pick(others, "entry")
            over = [
                f
                for f in files
                if f != rel and entries[f].st_ino != entries[rel].st_ino  # not a no-op
            ]
            if kind[rel] == stat.S_IFREG and over and self.draw(st.booleans(), "over a file"):
                to = self.pick(over, "over")
            else:
                to = self.fresh(self.pick([d for d in dirs if not _under(d, rel)], "into"))
            os.rename(self.abs(rel), self.abs(to))
            rel = rel + b" -> " + to
        elif what == "chmod":
            rel = self.pick([r for r in entries if r not in links], "entry")
            modes = owner_file_modes if kind[rel] == stat.S_IFREG else owner_dir_modes
            os.chmod(self.abs(rel), self.draw(modes, "mode"))
        elif what == "hardlink":
            rel = self.pick(files, "file")
            to = self.fresh(self.pick(dirs, "parent"))
            os.link(self.abs(rel), self.abs(to))
            rel = rel + b" <- " + to
        elif what == "break hardlink":
            rel = self.pick(needs[what], "file")
            if self.draw(st.booleans(), "unlink it"):
                os.unlink(self.abs(rel))
            else:
                with open(self.abs(rel), "rb") as fh:
                    self.replace_by_copy(rel, fh.read())
        elif what == "file to dir":
            rel = self.pick(files, "file")
            os.unlink(self.abs(rel))
            self.make_dir(rel)
        elif what == "dir to file":
            rel = self.pick(needs[what], "dir")
            shutil.rmtree(self.abs(rel))
            self.write_file(rel)
        elif what == "file to symlink":
            rel = self.pick(files, "file")
            os.unlink(self.abs(rel))
            self.make_symlink(rel)
        else:
            rel = self.pick(links, "symlink")
            os.unlink(self.abs(rel))
            self.write_file(rel)
        _event(f"edit: {what}")
        return f"{what}: {rel!r}"


# -- a chain, packed and checked point by point.


@dataclass
class Point:
    """One archive of a chain and the tree it was packed from (taken right after)."""

    archive: Path
    plan: Plan
    tree: dict[bytes, tuple[object, ...]]
    digests: dict[bytes, bytes]
    records: dict[bytes, Record]
    created_ns: int
    opened: set[bytes]


def _check_point(points: list[Point]) -> None:
    """The last archive of *points* against its tree, and against its base.

    Its records describe the whole tree, and each file's digest is the file's content
    then: for a FROM_BASE record, this is the quick check's (or the racy reread's)
    verdict, checked against the truth. A FROM_BASE record has a base record of the same
    path that FORMAT.md §11 allows (a file, neither changed nor missing, same size and
    digest). A file whose stat and content equal the base's is FROM_BASE (not stored
    again), and only the files the quick check could not clear were opened.
    """
    point = points[-1]
    records = point.records
    assert sorted(records) == sorted(point.tree)
    for path, r in records.items():
        truth = point.tree[path][0]
        assert (r.kind if r.kind != "hardlink" else "file") == truth, (path, r.kind, truth)
        assert not (r.changed or r.missing), path
        if r.kind == "file":
            assert r.digest == point.digests[path], f"{path!r}: the record is not its content"
        if len(points) == 1:
            assert not r.from_base, path
    if len(points) == 1:
        return
    base = points[-2]
    check = point.plan.check
    linked = {r.target for r in records.values() if r.kind == "hardlink"}
    trusted_before = base.created_ns - fmt.RACY_WINDOW_NS
    for path, r in records.items():
        if r.kind != "file":
            continue
        b = base.records.get(path)
        candidate = (
            b is not None
            and b.kind == "file"
            and not (b.changed or b.missing)
            and b.size == r.size
            and path not in linked
        )
        same_stat = (
            candidate
            and b is not None
            and (b.mode, b.mtime_ns, b.ctime_ns, b.ino) == (r.mode, r.mtime_ns, r.ctime_ns, r.ino)
        )
        opened = path in point.opened
        if r.from_base:
            assert candidate and b is not None, f"{path!r}: FROM_BASE without a base file"
            assert (b.digest, b.size) == (r.digest, r.size), path
            racy = r.mtime_ns >= trusted_before or r.ctime_ns >= trusted_before
            if check == "metadata":
                # Cleared by its stat: never opened. Racy, or only its mode, ctime or
                # inode moved: read and compared by content.
                assert opened == (racy or not same_stat), (path, opened, racy, same_stat)
                if not same_stat:
                    _event("FROM_BASE, its metadata changed (compared by content)")
                elif racy:
                    _event("FROM_BASE, read again (racy)")
                else:
                    _event("FROM_BASE by its stat alone")
            else:
                assert opened, path
        else:
            assert opened, f"{path!r} stored without being read"
            same = candidate and b is not None and b.digest == r.digest
            if same_stat and not same:
                _event("stored: a change the stat does not show (coarse ctime)")
            # With the same mtime, the quick check either clears it or compares contents.
            assert not (same and (check == "content" or b.mtime_ns == r.mtime_ns)), (
                f"{path!r}: unchanged, yet stored again"
            )


def _build_chain(
    data: st.DataObject,
    tmp: Path,
    length: int,
    *,
    also_full: int | None = None,
    on_built: Callable[[Path], None] | None = None,
    plan: Plan | None = None,
) -> tuple[list[Point], Path | None]:
    """A random tree and a chain of *length* archives, with random edits between them.

    Each archive is packed as a drawn plan, or as *plan*. With *also_full*, a full
    archive of that point is packed too (returned second). *on_built* sees the source
    tree as first built.
    """
    tree = data.draw(trees_with_hardlinks(owner_trees), label="tree")
    coarse = plan is None and data.draw(st.sampled_from([False, False, True]), label="coarse")
    clocks = [c for c in CLOCKS if not (coarse and c == "trusting")]
    plans = st.builds(Plan, st.sampled_from(clocks), st.sampled_from(CHECKS))
    if plan is not None:
        plans = st.just(plan)
    src = tmp / "src"
    build(src, tree)
    if on_built is not None:
        on_built(src)
    editor = Editor(data, os.fsencode(src))
    points: list[Point] = []
    full = None
    for k in range(length):
        if k:
            for _ in range(data.draw(st.integers(0, 4), label="edits")):
                note(f"before archive {k}: {editor.edit()}")
        plan = data.draw(plans, label=f"archive {k}")
        archive = tmp / f"{k}.oxbak"
        base = points[-1].archive if points else None
        opened = _pack(src, archive, plan, base, coarse)
        points.append(
            Point(
                archive,
                plan,
                snapshot(src),
                _digests(src),
                _records(archive),
                _created_ns(archive),
                opened,
            )
        )
        _check_point(points)
        if k == also_full:
            full = tmp / f"full-{k}.oxbak"
            oxbak.pack(src, full, threads=1)
        _tick(tmp / "probe")
    return points, full


def _unpack(chain: Sequence[Path], dest: Path, **kw: Any) -> oxbak.UnpackResult:
    return oxbak.unpack(
        [str(a) for a in chain], dest, allow_external_symlinks=True, threads=1, **kw
    )


def _restores(points: list[Point], p: int, dest: Path) -> None:
    """Archive *p* restores, with its chain, to its tree; a verify of that chain passes."""
    chain = [pt.archive for pt in points[: p + 1]]
    _unpack(chain, dest)
    assert snapshot(dest) == points[p].tree, f"restore of archive {p} of {len(points)}"
    report = oxbak.verify([str(a) for a in chain], threads=1)
    assert report.ok and report.archives == len(chain), report.problems


def _chain_property(data: st.DataObject, lengths: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        length = data.draw(st.integers(*lengths), label="archives")
        points, _ = _build_chain(data, tmp, length)
        p = data.draw(st.integers(0, length - 1), label="point restored")
        _restores(points, p, tmp / "dest")
        if p != length - 1:
            _restores(points, length - 1, tmp / "dest-last")


# An example costs ~75 ms (2 cores): three times the profile's count, ~9 s under `ci`.
@settings(max_examples=3 * settings.default.max_examples)
@given(data=st.data())
def test_any_point_of_a_chain_restores_its_tree(data: st.DataObject) -> None:
    """Random tree, 5–7 archives with random edits between them, restore of any point.

    Each archive is checked against its tree as packed (_check_point); the drawn point
    and the last are restored and compared, bytes and metadata, with the tree of their
    time.
    """
    _chain_property(data, (5, 7))


@settings(max_examples=2 * settings.default.max_examples)
@given(data=st.data())
def test_the_quick_check_alone_misses_no_change(data: st.DataObject) -> None:
    """Every archive packed with the trusting clock and ``base_check="metadata"``.

    Every file the stat clears is taken from the base unopened, so each edit that keeps
    size, mode, mtime and inode (and moves only the ctime) must be seen by the quick check
    itself. A restore of the last point closes the loop.
    """
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        points, _ = _build_chain(data, tmp, 5, plan=Plan("trusting", "metadata"))
        _restores(points, len(points) - 1, tmp / "dest")


@pytest.mark.torture
@given(data=st.data())
def test_long_chains_restore_every_point(data: st.DataObject) -> None:
    """The same, with up to 12 archives, every point restored."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        length = data.draw(st.integers(5, 12), label="archives")
        points, _ = _build_chain(data, tmp, length)
        for p in range(length):
            _restores(points, p, tmp / f"dest-{p}")


# -- restore modes: a chain restores what a full archive of the same point restores.


def _outcome(restore: Callable[[], object], dest: Path) -> tuple[object, ...]:
    try:
        restore()
    except oxbak.OxbakError as exc:
        return ("refused", type(exc).__name__, snapshot(dest) if dest.exists() else None)
    return ("done", snapshot(dest))


@given(data=st.data())
def test_restore_modes_of_a_chain_are_those_of_a_full_archive(data: st.DataObject) -> None:
    """``replace``, ``merge`` and ``only`` from a chain equal the same from a full archive.

    DEST, for replace and merge, is the first tree with a file of its own: the chain's
    trees overlap it in names, kinds and contents.
    """
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        length = data.draw(st.integers(2, 4), label="archives")
        point = data.draw(st.integers(0, length - 1), label="point restored")
        old = tmp / "old"

        def keep_first(src: Path) -> None:
            shutil.copytree(src, old, symlinks=True)
            (old / "only-in-dest").write_bytes(b"kept by merge, gone with replace\n")

        points, full = _build_chain(data, tmp, length, also_full=point, on_built=keep_first)
        assert full is not None
        chain = [pt.archive for pt in points[: point + 1]]

        for mode in ("replace", "merge"):
            a, b = tmp / f"{mode}-chain", tmp / f"{mode}-full"
            shutil.copytree(old, a, symlinks=True)
            shutil.copytree(old, b, symlinks=True)
            got = _outcome(lambda a=a, m=mode: _unpack(chain, a, mode=m), a)
            want = _outcome(lambda b=b, m=mode: _unpack([full], b, mode=m), b)
            assert got == want, mode
            if mode == "replace":
                assert got == ("done", points[point].tree)

        paths = sorted(p for p in points[point].tree if p)
        if paths:
            only = data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3, unique=True))
            a, b = tmp / "only-chain", tmp / "only-full"
            got = _outcome(lambda: _unpack(chain, a, only=only), a)
            want = _outcome(lambda: _unpack([full], b, only=only), b)
            assert got == want, only


# -- the racy rule, on a filesystem with coarse ctimes, and with the real clock.


def test_a_rewrite_the_stat_cannot_show_is_read_again(tmp_path: Path) -> None:
    """Whole-second ctimes: rewritten in its second, size and mtime kept, a file has the
    stat the base saw. The racy rule reads it again and stores it; a base whose clock
    says 2100 (trusting) takes it for unchanged, which shows the stat really hides it."""
    for attempt in range(5):
        work = tmp_path / str(attempt)
        src = work / "src"
        src.mkdir(parents=True)
        (src / "f").write_bytes(b"AAAA")
        os.utime(src / "f", ns=(_SECOND, 1_000_000_000 * _SECOND))  # 2001: only the ctime
        (src / "keep").write_bytes(b"untouched\n")  # is recent (the rule must look at it)
        real = Plan("real", "metadata")
        _pack(src, work / "full.oxbak", real, None, coarse=True)
        _pack(src, work / "trusting.oxbak", Plan("trusting", "metadata"), None, coarse=True)
        before = os.lstat(src / "f")
        with open(src / "f", "r+b") as fh:
            fh.write(b"BBBB")
        os.utime(src / "f", ns=(before.st_atime_ns, before.st_mtime_ns))
        if os.lstat(src / "f").st_ctime_ns // _SECOND == before.st_ctime_ns // _SECOND:
            break  # the same second: the stat does not show it
    else:
        pytest.fail("five rewrites in a row crossed a second boundary")
    opened = _pack(src, work / "inc.oxbak", real, work / "full.oxbak", coarse=True)
    fooled = _pack(src, work / "fooled.oxbak", real, work / "trusting.oxbak", coarse=True)
    base = _records(work / "full.oxbak")[b"f"]
    inc = _records(work / "inc.oxbak")[b"f"]
    assert (inc.size, inc.mode, inc.mtime_ns, inc.ctime_ns, inc.ino) == (
        base.size,
        base.mode,
        base.mtime_ns,
        base.ctime_ns,
        base.ino,
    )
    assert not inc.from_base and inc.digest == blake3.blake3(b"BBBB").digest()
    assert b"f" in opened
    assert _records(work / "fooled.oxbak")[b"f"].from_base and b"f" not in fooled
    _unpack([work / "full.oxbak", work / "inc.oxbak"], work / "dest")
    assert (work / "dest" / "f").read_bytes() == b"BBBB"


def test_a_chain_with_the_real_clock(tmp_path: Path) -> None:
    """The quick check as it runs in production: the real clock, settled files (sleeps 3 s).

    Files untouched since before the settle are taken from the base without being
    opened, however long the chain; what each step changes is stored; every point
    restores its tree.
    """
    src = tmp_path / "src"
    build(
        src,
        {
            b"settled.bin": Node("file", data=os.urandom(50_000), mtime_ns=1_500_000_000 * _SECOND),
            b"d": Node(
                "dir",
                children={
                    b"a": Node("file", data=b"a\n"),
                    b"b": Node("file", data=b"bbbb"),
                    b"sub": Node("dir", children={b"c": Node("file", data=b"c\n")}),
                },
            ),
            b"kind": Node("file", data=b"a file, later a directory\n"),
            b"ln": Node("symlink", target=b"settled.bin"),
        },
    )
    time.sleep(fmt.RACY_WINDOW_NS / _SECOND + 1.1)  # created_at is cut to the second

    def step_1() -> None:
        (src / "d" / "a").write_bytes(b"a, second version\n")
        os.chmod(src / "d" / "b", 0o600)

    def step_2() -> None:
        st_ = os.lstat(src / "d" / "b")
        (src / "d" / "b").write_bytes(b"BBBB")
        os.utime(src / "d" / "b", ns=(st_.st_atime_ns, st_.st_mtime_ns))
        (src / "d" / "sub").rename(src / "moved")
        os.link(src / "d" / "a", src / "a-link")

    def step_3() -> None:
        (src / "kind").unlink()
        (src / "kind").mkdir()
        (src / "a-link").unlink()
        (src / "ln").unlink()
        os.symlink("d/a", src / "ln")

    def step_4() -> None:
        shutil.rmtree(src / "moved")
        (src / "moved").write_bytes(b"a directory, now a file\n")

    points: list[Point] = []
    real = Plan("real", "metadata")
    for k, step in enumerate([None, step_1, step_2, step_3, step_4]):
        if step is not None:
            _tick(tmp_path / "probe")
            step()
        archive = tmp_path / f"{k}.oxbak"
        base = points[-1].archive if points else None
        opened = _pack(src, archive, real, base, coarse=False)
        records = _records(archive)
        point = Point(
            archive,
            real,
            snapshot(src),
            _digests(src),
            records,
            _created_ns(archive),
            opened,
        )
        points.append(point)
        _check_point(points)
        if k:
            assert records[b"settled.bin"].from_base and b"settled.bin" not in opened
    assert not points[2].records[b"d/b"].from_base  # same size and mtime, new ctime
    assert points[4].records[b"d/b"].from_base and b"d/b" in points[4].opened  # racy
    for p in range(len(points)):
        _restores(points, p, tmp_path / f"dest-{p}")


# -- hostile chains: refused in one line naming the archive at fault, DEST as it was.

_GAMMA = b"gamma " * 200


def _fb(path: bytes, content: bytes, **lie: Any) -> dict[str, Any]:
    """A FROM_BASE record of *path* claiming *content* (its size and digest), with *lie*."""
    return {**record_of(Entry.file(path, content), 0), "flags": FROM_BASE, **lie}


def _id(v2: V2) -> str:
    return blake3.blake3(v2.toc_data).hexdigest()


def _craft_full(entries: Sequence[Entry] | None = None, **hooks: Any) -> V2:
    """A full archive (version 2) built byte by byte: d/, d/a.txt, d/b.txt, g.bin, s."""
    if entries is None:
        entries = [
            Entry.dir(b"d"),
            Entry.file(b"d/a.txt", b"alpha\n"),
            Entry.file(b"d/b.txt", b"beta\n"),
            Entry.file(b"g.bin", _GAMMA),
            Entry.symlink(b"s", b"g.bin"),
        ]
    return build_v2(entries, **hooks)


def _craft_inc(
    base: V2,
    stored: Sequence[Entry],
    from_base: Sequence[dict[str, Any]],
    *,
    deleted: int,
    records: Callable[[list[dict[str, Any]]], None] | None = None,
) -> V2:
    """An incremental on *base* built byte by byte: *stored* members, *from_base* records.

    Its manifest, counts and totals are true to its records, lies included, so that only
    the lie is wrong; *records* edits the sorted records last.
    """

    def manifest(m: dict[str, Any], _: V2) -> dict[str, Any]:
        m["version"] = fmt.INCREMENTAL_VERSION
        m["base"] = {"id": _id(base), "created_at": m["created_at"], "deleted": deleted}
        m["totals"]["files"] += len(from_base)  # the whole tree it describes
        m["totals"]["bytes"] += sum(r["size"] for r in from_base)
        return m

    def recs(rs: list[dict[str, Any]], _: V2) -> list[dict[str, Any]]:
        rs = sorted([*rs, *from_base], key=lambda r: r["path"].split(b"/"))
        if records is not None:
            records(rs)
        return rs

    def head(h: dict[str, Any], v2: V2) -> dict[str, Any]:
        h["unchanged"] = sum(1 for r in v2.records if r["flags"] & FROM_BASE)
        h["stored"] = len(v2.records) - h["unchanged"]
        h["deleted"] = deleted
        return h

    return build_v2(stored, manifest=manifest, records=recs, header=head)


def _inc1(full: V2, *, lies: Sequence[dict[str, Any]] = (), **kw: Any) -> V2:
    """The honest first incremental on *full* (d/b.txt rewritten), or with *lies* added.

    A lie for a path it takes from the base replaces that record.
    """
    claims = {r["path"]: r for r in (_fb(b"d/a.txt", b"alpha\n"), _fb(b"g.bin", _GAMMA))}
    claims.update((r["path"], r) for r in lies)
    stored = [Entry.dir(b"d"), Entry.file(b"d/b.txt", b"beta 2\n"), Entry.symlink(b"s", b"g.bin")]
    stored = [e for e in stored if e.path not in claims]
    return _craft_inc(full, stored, list(claims.values()), deleted=0, **kw)


def _inc2(inc1: V2, *, a_txt: dict[str, Any] | None = None, deleted: int = 1) -> V2:
    """The honest second incremental (g.bin rewritten, new.txt added, s deleted)."""
    claims = [a_txt or _fb(b"d/a.txt", b"alpha\n"), _fb(b"d/b.txt", b"beta 2\n")]
    stored = [Entry.dir(b"d"), Entry.file(b"g.bin", b"gamma 2\n"), Entry.file(b"new.txt", b"new\n")]
    return _craft_inc(inc1, stored, claims, deleted=deleted)


def _tree_of(dest: Path) -> dict[bytes, object]:
    """Kinds and contents under *dest* (what the crafted archives say; no metadata)."""
    out: dict[bytes, object] = {}
    for rel, shot in snapshot(dest).items():
        path = os.path.join(os.fsencode(dest), rel) if rel else os.fsencode(dest)
        if shot[0] == "file":
            with open(path, "rb") as fh:
                out[rel] = fh.read()
        elif shot[0] == "symlink":
            out[rel] = ("symlink", shot[1])
        else:
            out[rel] = shot[0]
    return out


def _write_all(directory: Path, **archives: V2) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, v2 in archives.items():
        out[name] = directory / f"{name}.oxbak"
        out[name].write_bytes(v2.data)
    return out


def test_an_honest_crafted_chain_restores(tmp_path: Path) -> None:
    """The control for the crafted lies below: without one, every point restores."""
    full = _craft_full()
    inc1 = _inc1(full)
    inc2 = _inc2(inc1)
    a = _write_all(tmp_path / "archives", FULL=full, INC1=inc1, INC2=inc2)
    common = {b"": "dir", b"d": "dir", b"d/a.txt": b"alpha\n"}
    want = [
        {**common, b"d/b.txt": b"beta\n", b"g.bin": _GAMMA, b"s": ("symlink", b"g.bin")},
        {**common, b"d/b.txt": b"beta 2\n", b"g.bin": _GAMMA, b"s": ("symlink", b"g.bin")},
        {**common, b"d/b.txt": b"beta 2\n", b"g.bin": b"gamma 2\n", b"new.txt": b"new\n"},
    ]
    chain = [a["FULL"], a["INC1"], a["INC2"]]
    for n in range(3):
        _unpack(chain[: n + 1], tmp_path / f"dest-{n}")
        assert _tree_of(tmp_path / f"dest-{n}") == want[n], n


#: A DEST that exists: it must be exactly this after a refused --replace or --merge.
_EXISTING = {
    b"keep.txt": Node("file", data=b"precious\n"),
    b"d": Node("dir", children={b"a.txt": Node("file", data=b"old a\n")}),
}
_MODE_FLAGS = {"new": [], "replace": ["--replace"], "merge": ["--merge"]}


def _cli(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(oxbak.__file__).parent.parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "oxbak", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _assert_refused(chain: Sequence[Path], culprit: Path, work: Path, reason: str) -> None:
    """Every restore of *chain* (API and CLI; DEST absent, --replace, --merge) is refused.

    The error is one line naming *culprit* and saying *reason*; DEST is not created, or
    is left exactly as it was, and nothing is left beside it. A verify of the chain
    finds the same problem.
    """
    outs = {}
    for mode in ("new", "replace", "merge"):
        for via in ("api", "cli"):
            out = work / f"out-{mode}-{via}"  # DEST's parent, to see what is left beside it
            out.mkdir(parents=True)
            if mode != "new":
                build(out / "dest", _EXISTING)
            outs[mode, via] = (out, {k: v for k, v in snapshot(out).items() if k})
    for mode in ("new", "replace", "merge"):
        out, before = outs[mode, "api"]
        with pytest.raises(oxbak.OxbakError) as caught:
            _unpack(chain, out / "dest", mode=mode)
        message = str(caught.value)
        assert "\n" not in message and str(culprit) in message, (mode, message)
        assert reason in message, (mode, message)
        assert {k: v for k, v in snapshot(out).items() if k} == before, mode
    runs = {
        mode: _cli("unpack", *map(str, chain), str(outs[mode, "cli"][0] / "dest"), *flags)
        for mode, flags in _MODE_FLAGS.items()
    }
    for mode, run in runs.items():
        _, err_bytes = run.communicate(timeout=120)
        err = err_bytes.decode(errors="replace")
        assert run.returncode not in (0, None), (mode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (mode, err)
        assert str(culprit) in err and reason in err, (mode, err)
        out, before = outs[mode, "cli"]
        assert {k: v for k, v in snapshot(out).items() if k} == before, mode
    try:
        problems = oxbak.verify([str(a) for a in chain], threads=1).problems
    except oxbak.OxbakError as exc:  # the chain cannot be opened as one
        problems = [str(exc)]
    assert any(str(culprit) in p and reason in p for p in problems), problems


def _chain_of(tmp: Path, *archives: tuple[str, V2]) -> list[Path]:
    paths = _write_all(tmp / "archives", **dict(archives))
    return [paths[name] for name, _ in archives]


CraftedCase = Callable[[Path], tuple[list[Path], int]]


def _one_lie(lie: dict[str, Any]) -> CraftedCase:
    """FULL INC1 where INC1 adds or replaces one FROM_BASE record with *lie*."""

    def case(tmp: Path) -> tuple[list[Path], int]:
        full = _craft_full()
        return _chain_of(tmp, ("FULL", full), ("INC1", _inc1(full, lies=[lie]))), 1

    return case


def _from_base_missing(tmp: Path) -> tuple[list[Path], int]:
    """FULL recorded m as missing (no member); INC1 claims m's content from it."""

    def scanned(m: dict[str, Any], _: V2) -> dict[str, Any]:
        m["totals"]["files"] += 1  # the scan saw m; it vanished before it was read
        return m

    full = _craft_full(
        manifest=scanned,
        records=lambda rs, _: sorted(
            [*rs, missing_record(b"m")], key=lambda r: r["path"].split(b"/")
        ),
    )
    lie = {**missing_record(b"m"), "flags": FROM_BASE}
    assert full.record(b"m")["flags"] == MISSING
    return _chain_of(tmp, ("FULL", full), ("INC1", _inc1(full, lies=[lie]))), 1


def _dir_from_base(tmp: Path) -> tuple[list[Path], int]:
    """INC1's directory d is flagged FROM_BASE (only files can be)."""
    full = _craft_full()

    def lie(rs: list[dict[str, Any]]) -> None:
        for r in rs:
            if r["path"] == b"d":
                r.update(flags=FROM_BASE, offset=0)

    return _chain_of(tmp, ("FULL", full), ("INC1", _inc1(full, records=lie))), 1


def _lie_in_the_middle(tmp: Path) -> tuple[list[Path], int]:
    """INC2 and INC1 agree on d/a.txt's digest; FULL, which holds it, does not."""
    other = b"ALPHA\n"
    full = _craft_full()
    inc1 = _inc1(full, lies=[_fb(b"d/a.txt", other)])
    inc2 = _inc2(inc1, a_txt=_fb(b"d/a.txt", other))
    return _chain_of(tmp, ("FULL", full), ("INC1", inc1), ("INC2", inc2)), 1


def _skips_a_link(tmp: Path) -> tuple[list[Path], int]:
    """INC1 deleted d/a.txt; INC2 claims it from its base anyway (FULL still has it)."""
    full = _craft_full()

    def drop(rs: list[dict[str, Any]]) -> None:
        rs[:] = [r for r in rs if r["path"] != b"d/a.txt"]

    inc1 = _craft_inc(
        full,
        [Entry.dir(b"d"), Entry.file(b"d/b.txt", b"beta 2\n"), Entry.symlink(b"s", b"g.bin")],
        [_fb(b"g.bin", _GAMMA)],
        deleted=1,
        records=drop,
    )
    inc2 = _inc2(inc1, deleted=1)
    return _chain_of(tmp, ("FULL", full), ("INC1", inc1), ("INC2", inc2)), 2


def _claims_the_grand_base(tmp: Path) -> tuple[list[Path], int]:
    """INC1 stores a new d/a.txt (same size); INC2 claims FULL's content for it."""
    full = _craft_full()
    inc1 = _craft_inc(
        full,
        [
            Entry.dir(b"d"),
            Entry.file(b"d/a.txt", b"ALPHA\n"),
            Entry.file(b"d/b.txt", b"beta 2\n"),
            Entry.symlink(b"s", b"g.bin"),
        ],
        [_fb(b"g.bin", _GAMMA)],
        deleted=0,
    )
    inc2 = _inc2(inc1)  # d/a.txt: FROM_BASE with alpha's digest, FULL's content
    return _chain_of(tmp, ("FULL", full), ("INC1", inc1), ("INC2", inc2)), 2


def _its_own_base(tmp: Path) -> tuple[list[Path], int]:
    """A cycle: INC1's base id is its own (the id covers its TOC, not its manifest)."""
    full = _craft_full()
    honest = _inc1(full)

    def itself(m: dict[str, Any], _: V2) -> dict[str, Any]:
        m["version"] = fmt.INCREMENTAL_VERSION
        m["base"] = {"id": _id(honest), "created_at": m["created_at"], "deleted": 0}
        m["totals"]["files"] += 2
        m["totals"]["bytes"] += len(b"alpha\n") + len(_GAMMA)
        return m

    cycle = build_v2(
        [e for e in honest.stream[1:] if isinstance(e, Entry)],
        manifest=itself,
        records=lambda rs, _: honest.records,
        header=lambda h, _: honest.header,
    )
    assert _id(cycle) == _id(honest)  # the same TOC: its own base
    return _chain_of(tmp, ("FULL", full), ("INC1", cycle), ("INC1b", cycle)), 1


def _holder_lies(tmp: Path) -> tuple[list[Path], int]:
    """FULL's g.bin member is not the content its record (and INC1's claim) says."""
    entries = [
        Entry.dir(b"d"),
        Entry.file(b"d/a.txt", b"alpha\n"),
        Entry.file(b"d/b.txt", b"beta\n"),
        Entry.file(b"g.bin", _GAMMA.upper(), index={"digest": blake3.blake3(_GAMMA).digest()}),
        Entry.symlink(b"s", b"g.bin"),
    ]
    full = _craft_full(entries)
    return _chain_of(tmp, ("FULL", full), ("INC1", _inc1(full))), 0


_DIFFERS = "where its size or digest is not the same"
CRAFTED: dict[str, tuple[CraftedCase, str]] = {
    # name: (the chain, what the refusal must say)
    # the base holds g.bin, with another digest (same size)
    "other-digest": (_one_lie(_fb(b"g.bin", _GAMMA.upper())), _DIFFERS),
    # the right digest, another size
    "other-size": (_one_lie(_fb(b"g.bin", _GAMMA, size=len(_GAMMA) + 1)), _DIFFERS),
    # a path the base does not hold: the content would come from outside the chain
    "outside-the-chain": (_one_lie(_fb(b"nothere.txt", b"from nowhere\n")), "does not hold"),
    # the base's s is a symlink to g.bin: a file of 5 bytes with that digest
    "base-is-a-symlink": (_one_lie(_fb(b"s", b"g.bin")), "where it is a symlink"),
    "base-is-missing": (_from_base_missing, "not captured whole"),
    "dir-from-base": (_dir_from_base, "'d' is a dir from the base"),
    "lie-two-hops-back": (_lie_in_the_middle, _DIFFERS),
    "skips-a-link": (_skips_a_link, "does not hold"),
    "claims-the-grand-base": (_claims_the_grand_base, _DIFFERS),
    "holder-member-lies": (_holder_lies, "digest mismatch for 'g.bin'"),
    "its-own-base": (_its_own_base, "is not based on the archive before it"),
}


@pytest.mark.parametrize("case", CRAFTED, ids=str)
def test_a_lying_chain_is_refused(tmp_path: Path, case: str) -> None:
    build_case, reason = CRAFTED[case]
    chain, culprit = build_case(tmp_path)
    _assert_refused(chain, chain[culprit], tmp_path, reason)


# Real archives (oxbak's writer), put in the wrong order or damaged.


def _frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """Each frame's (file offset, compressed size, tar offset, content size), from the
    seek table (FORMAT.md §1), the footer's skippable frame last."""
    count = struct.unpack_from("<I", data, len(data) - 9)[0]
    table = len(data) - 9 - 8 * count
    out = []
    at = tar = 0
    for n in range(count):
        size, content = struct.unpack_from("<II", data, table + 8 * n)
        out.append((at, size, tar, content))
        at += size
        tar += content
    return out


def _flip_at_tar(path: Path, tar_offset: int) -> None:
    """Flip a byte in the middle of the compressed frame that holds *tar_offset*."""
    data = bytearray(path.read_bytes())
    at, size, _, _ = next(f for f in _frames(bytes(data)) if f[2] <= tar_offset < f[2] + f[3])
    data[at + size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def real_chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FULL INC1 INC2 of one tree, and OTHER, INCX: a full archive and an incremental of
    another. big.bin (own frames) and keep.txt come from FULL in INC1 and INC2; q.txt,
    rewritten before INC1, comes from INC1 in INC2."""
    work = tmp_path_factory.mktemp("real-chain")
    src, other = work / "src", work / "other"
    build(
        src,
        {
            b"big.bin": Node("file", data=os.urandom(fmt.FRAME_TARGET + 4096)),
            b"keep.txt": Node("file", data=b"kept\n"),
            b"q.txt": Node("file", data=b"q, first\n"),
        },
    )
    build(other, {b"x": Node("file", data=b"another tree\n")})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOURCE_DATE_EPOCH", _EPOCHS["past"])  # every file read again: exact
        oxbak.pack(src, work / "FULL.oxbak", threads=1)
        (src / "q.txt").write_bytes(b"q, second version\n")
        oxbak.pack(src, work / "INC1.oxbak", threads=1, base=work / "FULL.oxbak")
        (src / "r.txt").write_bytes(b"added\n")
        oxbak.pack(src, work / "INC2.oxbak", threads=1, base=work / "INC1.oxbak")
        oxbak.pack(other, work / "OTHER.oxbak", threads=1)
        (other / "y").write_bytes(b"more\n")
        oxbak.pack(other, work / "INCX.oxbak", threads=1, base=work / "OTHER.oxbak")
    inc1, inc2 = _records(work / "INC1.oxbak"), _records(work / "INC2.oxbak")
    assert inc1[b"big.bin"].from_base and inc2[b"big.bin"].from_base
    assert inc2[b"keep.txt"].from_base
    assert not inc1[b"q.txt"].from_base and inc2[b"q.txt"].from_base
    return work


def _copies(real_chain: Path, tmp: Path, *names_: str) -> dict[str, Path]:
    (tmp / "archives").mkdir()
    out = {}
    for name in names_:
        out[name] = tmp / "archives" / f"{name}.oxbak"
        shutil.copyfile(real_chain / f"{name}.oxbak", out[name])
    return out


def _damage_big_in_full(a: dict[str, Path]) -> None:
    big = _records(a["FULL"])[b"big.bin"]
    _flip_at_tar(a["FULL"], big.offset + 1024 + big.size // 2)


def _damage_q_in_inc1(a: dict[str, Path]) -> None:
    _flip_at_tar(a["INC1"], _records(a["INC1"])[b"q.txt"].offset + 512)


def _truncate_inc1(a: dict[str, Path]) -> None:
    data = a["INC1"].read_bytes()
    a["INC1"].write_bytes(data[: len(data) - 100])


def _damage_last_toc(a: dict[str, Path]) -> None:
    last = _frames(a["INC2"].read_bytes())[-2]  # the last data frame: the TOC's last block
    _flip_at_tar(a["INC2"], last[2])


def _damage_full_toc(a: dict[str, Path]) -> None:
    data = a["FULL"].read_bytes()
    _flip_at_tar(a["FULL"], _frames(data)[-2][2])


_NOT_BASED = "is not based on the archive before it"
_ALL = ("FULL", "INC1", "INC2")
Damage = Callable[[dict[str, Path]], None]
ORDERED: dict[str, tuple[tuple[str, ...], str, Damage | None, str]] = {
    # name: (the chain given, the archive at fault, damage done first, what is said)
    "wrong-order": (("FULL", "INC2", "INC1"), "INC2", None, _NOT_BASED),
    "repeated": (("FULL", "INC1", "INC1"), "INC1", None, _NOT_BASED),
    "incremental-first": (("INC1", "FULL"), "INC1", None, "starts with a full archive"),
    "missing-link": (("FULL", "INC2"), "INC2", None, _NOT_BASED),
    "foreign-base": (("FULL", "INCX"), "INCX", None, _NOT_BASED),
    "two-fulls": (("FULL", "OTHER"), "OTHER", None, "is a full archive"),
    "full-frame-of-a-from-base-file": (_ALL, "FULL", _damage_big_in_full, "is corrupt"),
    "middle-frame-of-a-from-base-file": (_ALL, "INC1", _damage_q_in_inc1, "is corrupt"),
    "middle-truncated": (_ALL, "INC1", _truncate_inc1, "truncated"),
    "last-toc": (_ALL, "INC2", _damage_last_toc, "is corrupt"),
    "full-toc": (_ALL, "FULL", _damage_full_toc, "is corrupt"),
}


@pytest.mark.parametrize("case", ORDERED, ids=str)
def test_a_wrong_or_damaged_chain_is_refused(real_chain: Path, tmp_path: Path, case: str) -> None:
    given_, culprit, damage, reason = ORDERED[case]
    a = _copies(real_chain, tmp_path, *sorted(set(given_)))
    if damage is not None:
        damage(a)
    _assert_refused([a[n] for n in given_], a[culprit], tmp_path, reason)


def test_a_truncated_base_is_called_damaged(real_chain: Path, tmp_path: Path) -> None:
    """pack --base of an archive cut short: refused as damaged, in one line."""
    a = _copies(real_chain, tmp_path, "INC1")
    _truncate_inc1(a)
    (tmp_path / "src").mkdir()
    run = _cli(
        "pack", str(tmp_path / "src"), "-o", str(tmp_path / "x.oxbak"), "--base", str(a["INC1"])
    )
    _, err = run.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert run.returncode != 0 and len(lines) == 1, lines
    assert str(a["INC1"]) in lines[0] and "truncated" in lines[0], lines
    assert not (tmp_path / "x.oxbak").exists()
