"""Full disks and I/O errors: oxbak fails cleanly, says what ran out, and harms nothing.

Three kinds of fault:

- **Real full filesystems** (root only: a small ``tmpfs`` mounted for the test; skipped
  with the reason otherwise). ``oxbak pack`` into one that is too small; ``oxbak unpack``
  into one refused up front (not enough bytes, not enough inodes) and into one where the
  up-front check passes but writing fails midway: tmpfs charges a whole 4 KiB page per
  non-empty file, so an archive of many 1-byte files declares far fewer bytes than it
  needs, deterministically. The real CLI runs in a subprocess. Each time: exit status 1,
  ONE line ``oxbak: error: …`` naming what ran out, no archive or temp file left, DEST
  absent or byte-for-byte unchanged (``--replace``, ``--merge``), no staging left, and
  the space given back.
- **A failing output** for the library's stream API: a file object whose Nth ``write``
  (or ``flush``) raises ENOSPC/EIO, or that takes only so many bytes. ``oxbak.pack`` must
  raise an :class:`oxbak.OxbakError` — the library contract — never a raw ``OSError``.
- **A failing input**: a file object whose Nth ``read`` raises EIO, under
  ``read_manifest``, ``list_entries``, ``verify`` and ``unpack``; and a failing DEST: the
  Nth call of one system call (``write``, ``mkdir``, ``link``, ``symlink``, ``rename``,
  ``fsync``, …) made by :mod:`oxbak.staging`, :mod:`oxbak.commit` or :mod:`oxbak._fsutil` fails. DEST must then be exactly the old
  tree or exactly the new one, never a mixture, and nothing may be left beside it.
"""

from __future__ import annotations

import collections
import errno
import io
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import oxbak
import oxbak._fsutil
import oxbak.commit
import oxbak.staging
from mounts import tmpfs
from treeutil import Node, build, snapshot

OXBAK = str(Path(sys.executable).parent / "oxbak")
Tree = dict[bytes, tuple[object, ...]]


# Engine bugs these tests found (each test that shows one is marked xfail with it).
SHORT_WRITE_BUG = (
    "engine bug: pack ignores short writes of its output (a raw file object's write() may "
    "take fewer bytes than given, as write(2) does when the disk fills): the archive is "
    "silently truncated and pack reports success"
)
LOCK_BUG = (
    "engine bug: StagingDir.__init__ does not guard the open() that locks its new staging "
    "dir: the OSError (EMFILE, EIO) escapes raw and the staging dir is left behind"
)
AFTER_COMMIT_BUG = (
    "engine bug: an OSError after the commit point (the fsync of DEST's parent) is reported "
    "as a failed unpack, though DEST already holds the new tree (with --replace the old "
    "tree has been deleted by the abort)"
)
MERGE_BUG = (
    "engine bug (or README): a --merge that fails midway leaves DEST half merged, though "
    "README says a failed unpack leaves DEST as it was"
)


def known_bugs(*reasons: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason="; ".join(reasons))


# --------------------------------------------------------------------------- helpers


def run_cli(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OXBAK_DEBUG"}
    return subprocess.run(
        [OXBAK, *args], stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, timeout=120
    )


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The single ``oxbak: error: …`` line of a failed command; it must contain a needle."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {lines}"
    assert lines[0].startswith("oxbak: error: "), lines[0]
    assert any(n in lines[0] for n in needles), f"{lines[0]!r} names none of {needles}"
    return lines[0]


def leftovers(directory: Path) -> list[str]:
    return sorted(
        n for n in os.listdir(directory) if n.startswith(".oxbak-") or n.endswith(".oxbak-tmp")
    )


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def random_tree(root: Path, files: int, size: int, seed: int = 1) -> None:
    """*files* incompressible files of *size* bytes (deterministic)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"blob{i}.bin").write_bytes(rng.randbytes(size))


def tiny_files_tree(root: Path, files: int) -> None:
    """Many 1-byte files in a few directories: few bytes declared, many pages needed."""
    root.mkdir(parents=True)
    for d in range(4):
        sub = root / f"d{d}"
        sub.mkdir()
        for i in range(files // 4):
            (sub / f"f{i:05d}").write_bytes(b"x")


def assert_nothing_changed(mnt: Path, dest: Path, old: Tree | None, used: int) -> None:
    """After a refused unpack: DEST as before (or still absent), no leftovers, no space used."""
    if old is None:
        assert not os.path.lexists(dest)
    else:
        assert snapshot(dest) == old
    assert leftovers(mnt) == []
    assert used_bytes(mnt) == used, "the staged files were not all removed"


def old_dest(dest: Path) -> Tree:
    """A pre-existing DEST that a failed restore must leave exactly as it is."""
    build(
        os.fsencode(dest),
        {
            b"keep.txt": Node("file", data=b"precious\n" * 100),
            b"d0": Node("dir", children={b"own.txt": Node("file", data=b"mine\n")}),
            b"link": Node("symlink", target=b"keep.txt"),
        },
    )
    return snapshot(dest)


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB of incompressible content: does not fit an 8 MiB filesystem in any form."""
    base = tmp_path_factory.mktemp("big")
    random_tree(base / "src", 6, 2 << 20)
    out = base / "big.oxbak"
    oxbak.pack(base / "src", out)
    return out


@pytest.fixture(scope="module")
def tiny_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 files of 1 byte: declares 600 bytes, needs 600 pages (2.4 MiB) on a tmpfs."""
    base = tmp_path_factory.mktemp("tiny")
    tiny_files_tree(base / "src", 600)
    out = base / "tiny.oxbak"
    oxbak.pack(base / "src", out)
    return out


# --------------------------------------------------------------------------- pack, real disk


def test_cli_pack_onto_a_full_disk(big_archive: Path, tmp_path: Path) -> None:
    src = big_archive.parent / "src"
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        proc = run_cli("pack", str(src), "-o", str(mnt / "out.oxbak"))
        one_error_line(proc, "No space left on device")
        assert os.listdir(mnt) == [], "a partial archive or temp file was left"
        assert used_bytes(mnt) == 0, "space was not given back"


def test_cli_pack_force_onto_a_full_disk_keeps_the_old_archive(
    big_archive: Path, tiny_archive: Path, tmp_path: Path
) -> None:
    src = big_archive.parent / "src"
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        out = mnt / "out.oxbak"
        shutil.copyfile(tiny_archive, out)
        before = out.read_bytes()
        proc = run_cli("pack", str(src), "-o", str(out), "--force")
        one_error_line(proc, "No space left on device")
        assert out.read_bytes() == before
        assert os.listdir(mnt) == ["out.oxbak"]


def test_cli_pack_to_stdout_on_a_full_disk(big_archive: Path, tmp_path: Path) -> None:
    """``-o -`` redirected to a full disk: one line, status 1 (the partial file is the
    shell's redirect, which oxbak cannot remove)."""
    src = big_archive.parent / "src"
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt, open(mnt / "out.oxbak", "wb") as sink:
        proc = run_cli("pack", str(src), "-o", "-", stdout=sink)
        one_error_line(proc, "No space left on device")


def test_library_pack_onto_a_full_disk(big_archive: Path, tmp_path: Path) -> None:
    src = big_archive.parent / "src"
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        with pytest.raises(oxbak.OxbakError, match="No space left on device"):
            oxbak.pack(src, mnt / "out.oxbak")
        assert os.listdir(mnt) == []


def test_library_pack_to_an_unbuffered_file_on_a_full_disk(tmp_path: Path) -> None:
    """A raw file (``buffering=0``) on a disk that fills up during pack's last data write.

    write(2) then writes what fits and returns a short count, with no error; only a further
    write would fail. Either pack raises, or what it wrote is the whole archive.
    """
    src = tmp_path / "src"
    random_tree(src, 1, 300_000, seed=5)

    class Recorder(io.RawIOBase):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.sizes.append(len(data))
            return len(data)

    rec = Recorder()
    oxbak.pack(src, rec)  # type: ignore[arg-type]
    total = sum(rec.sizes)
    # The disk ends inside the last page of the last large write (the last frame of
    # data; only the small footer and seek table come after it).
    last = max(i for i, n in enumerate(rec.sizes) if n > 4096)
    end = sum(rec.sizes[: last + 1])
    size = (end - 1) // 4096 * 4096
    assert size > end - rec.sizes[last], "the disk must fill inside that write"
    with tmpfs(tmp_path / "mnt", f"size={size}") as mnt:
        out = mnt / "out.oxbak"
        with open(out, "wb", buffering=0) as fh:
            try:
                oxbak.pack(src, fh)
            except oxbak.OxbakError as exc:
                assert "No space left on device" in str(exc)
                return
        written = out.stat().st_size
        assert written == total, f"pack reported success, but wrote {written} of {total} bytes"


# --------------------------------------------------------------------------- unpack, real disk


@pytest.mark.parametrize("mode", ["new", "replace"])
def test_cli_unpack_refused_up_front_when_bytes_do_not_fit(
    big_archive: Path, tmp_path: Path, mode: str
) -> None:
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        dest = mnt / "dest"
        old = old_dest(dest) if mode == "replace" else None
        used = used_bytes(mnt)
        args = ["--replace"] if mode == "replace" else []
        proc = run_cli("unpack", str(big_archive), str(dest), *args)
        one_error_line(proc, "not enough space")
        assert_nothing_changed(mnt, dest, old, used)


def test_cli_unpack_refused_up_front_when_inodes_do_not_fit(
    tiny_archive: Path, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "mnt", "size=64m,nr_inodes=200") as mnt:
        proc = run_cli("unpack", str(tiny_archive), str(mnt / "dest"))
        one_error_line(proc, "not enough inodes")
        assert os.listdir(mnt) == []


@pytest.mark.parametrize("mode", ["new", "replace", "merge"])
def test_cli_unpack_runs_out_of_space_midway(tiny_archive: Path, tmp_path: Path, mode: str) -> None:
    """The up-front check passes (600 bytes declared, 1 MiB free), the 200-odd-th file fails."""
    manifest = oxbak.read_manifest(tiny_archive)
    with tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        dest = mnt / "dest"
        old = old_dest(dest) if mode != "new" else None
        st = os.statvfs(mnt)
        assert manifest.totals.bytes < st.f_bavail * st.f_frsize, "must pass the bytes check"
        assert manifest.totals.entries < st.f_favail, "must pass the inodes check"
        used = used_bytes(mnt)
        args = {"new": [], "replace": ["--replace"], "merge": ["--merge"]}[mode]
        proc = run_cli("unpack", str(tiny_archive), str(dest), *args)
        one_error_line(proc, "No space left on device")
        assert_nothing_changed(mnt, dest, old, used)


def test_library_unpack_runs_out_of_space_midway(tiny_archive: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    with tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        with pytest.raises(oxbak.DestinationError, match="No space left on device"):
            oxbak.unpack(tiny_archive, mnt / "dest", progress=lambda done, total: seen.append(done))
        assert os.listdir(mnt) == []
    assert seen, "extraction had started before the disk filled"


# --------------------------------------------------------------------------- failing output


class FailingWriter(io.RawIOBase):
    """A write-only file object that fails on the Nth call of *op*, or past *budget* bytes."""

    def __init__(
        self,
        *,
        op: str = "write",
        at: int = 0,
        budget: int | None = None,
        err: int = errno.ENOSPC,
    ) -> None:
        self.sink = io.BytesIO()
        self.calls: collections.Counter[str] = collections.Counter()
        self.op, self.at, self.budget, self.err = op, at, budget, err

    def _maybe_fail(self, op: str) -> None:
        self.calls[op] += 1
        if op == self.op and self.calls[op] == self.at:
            raise OSError(self.err, os.strerror(self.err))

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._maybe_fail("write")
        data = bytes(data)
        if self.budget is not None and self.sink.tell() + len(data) > self.budget:
            room = self.budget - self.sink.tell()
            if room <= 0:
                raise OSError(self.err, os.strerror(self.err))
            self.sink.write(data[:room])  # a short write, as a nearly full disk gives
            return room
        return self.sink.write(data)

    def flush(self) -> None:
        self._maybe_fail("flush")


@pytest.fixture(scope="module")
def pack_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~3 MiB: some incompressible blobs and many small files, so several writes happen."""
    base = tmp_path_factory.mktemp("packsrc")
    random_tree(base / "src", 3, 1 << 20, seed=7)
    for i in range(200):
        (base / "src" / f"small{i:03d}.json").write_text(f'{{"n": {i}}}\n')
    return base / "src"


def _pack_expecting_failure(src: Path, out: FailingWriter, what: str) -> None:
    try:
        oxbak.pack(src, out)  # type: ignore[arg-type]
    except oxbak.OxbakError as exc:
        assert os.strerror(out.err) in str(exc), f"{what}: message {exc!r} names no fault"
        return
    except OSError as exc:
        pytest.fail(f"{what}: raw {type(exc).__name__} escaped the library: {exc}")
    if out.at and out.calls[out.op] < out.at:
        # zstd's workers decide how output is split into writes, so a run may make fewer
        # calls than the clean run counted: the planned fault never happened.
        return
    pytest.fail(f"{what}: pack succeeded although its output failed")


def test_pack_to_a_failing_writer_every_write(pack_src: Path) -> None:
    clean = FailingWriter()
    oxbak.pack(pack_src, clean)  # type: ignore[arg-type]
    writes, flushes = clean.calls["write"], clean.calls["flush"]
    assert writes >= 3
    for n in range(1, writes + 1):
        for err in (errno.ENOSPC, errno.EIO):
            _pack_expecting_failure(
                pack_src, FailingWriter(op="write", at=n, err=err), f"write #{n}/{writes}"
            )
    for n in range(1, flushes + 1):
        _pack_expecting_failure(pack_src, FailingWriter(op="flush", at=n), f"flush #{n}")


def _fill_up_sweep(src: Path, steps: int) -> int:
    clean = FailingWriter()
    oxbak.pack(src, clean)  # type: ignore[arg-type]
    total = clean.sink.tell()
    budgets = sorted({0, 1, total - 1, *(total * i // steps for i in range(steps))})
    for budget in budgets:
        _pack_expecting_failure(src, FailingWriter(budget=budget), f"{budget}/{total} bytes")
    return len(budgets)


def test_pack_to_a_writer_that_fills_up(pack_src: Path) -> None:
    """The output takes only so many bytes (the last write short), then fails: 22 points."""
    _fill_up_sweep(pack_src, 20)


@pytest.mark.torture
def test_torture_pack_to_a_writer_that_fills_up(pack_src: Path) -> None:
    """The same every 0.25 % of the archive's length."""
    assert _fill_up_sweep(pack_src, 400) >= 400


# --------------------------------------------------------------------------- failing input


class FailingReader(io.RawIOBase):
    """A file object over *data* giving at most *chunk* bytes per read; read #N fails."""

    def __init__(self, data: bytes, *, at: int = 0, chunk: int = 4096, err: int = errno.EIO):
        self.data, self.pos, self.at, self.chunk, self.err = data, 0, at, chunk, err
        self.calls = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == self.at:
            raise OSError(self.err, os.strerror(self.err))
        n = self.chunk if size is None or size < 0 else min(size, self.chunk)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@pytest.fixture(scope="module")
def archive_bytes(pack_src: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("arch") / "a.oxbak"
    oxbak.pack(pack_src, out)
    return out.read_bytes()


def _reads_of(call: Callable[[FailingReader], Any], data: bytes) -> int:
    reader = FailingReader(data)
    call(reader)
    return reader.calls


def _read_points(total: int, every: bool = False) -> list[int]:
    if every:
        return list(range(1, total + 1))
    # (read_manifest may need a single read: the manifest's frame is read alone.)
    return sorted({1, 2, 3, total - 1, total, *range(1, total, max(1, total // 15))} - {0})


@pytest.mark.parametrize("target", ["read_manifest", "list_entries", "verify"])
def test_readers_on_a_failing_input(archive_bytes: bytes, target: str) -> None:
    """Read #N raises EIO, for ~20 N spread over the ~770 reads of a 3 MiB archive."""
    _failing_reads(archive_bytes, target, every=False)


@pytest.mark.torture
@pytest.mark.parametrize("target", ["read_manifest", "list_entries", "verify"])
def test_torture_readers_on_a_failing_input(archive_bytes: bytes, target: str) -> None:
    """Every read fails in turn."""
    _failing_reads(archive_bytes, target, every=True)


def _failing_reads(archive_bytes: bytes, target: str, *, every: bool) -> None:
    calls: dict[str, Callable[[Any], Any]] = {
        "read_manifest": oxbak.read_manifest,
        "list_entries": lambda f: list(oxbak.list_entries(f)),
        "verify": oxbak.verify,
    }
    call = calls[target]
    total = _reads_of(call, archive_bytes)
    failures = 0
    for n in _read_points(total, every):
        reader = FailingReader(archive_bytes, at=n)
        try:
            result = call(reader)
        except oxbak.OxbakError as exc:
            failures += 1
            assert "Input/output error" in str(exc), exc
            continue
        except OSError as exc:
            pytest.fail(f"read #{n}/{total}: raw {type(exc).__name__} escaped: {exc}")
        # Only reads past what the call needs may go unnoticed.
        assert n > reader.calls or (target == "verify" and not result.ok), f"read #{n} lost"
    assert failures >= 1


@pytest.mark.parametrize("mode", ["new", "replace"])
def test_unpack_from_a_failing_input(archive_bytes: bytes, tmp_path: Path, mode: str) -> None:
    """Read #N raises EIO during unpack: DEST absent or unchanged, nothing left beside it."""
    _failing_unpacks(archive_bytes, tmp_path, mode, every=False)


@pytest.mark.torture
@pytest.mark.parametrize("mode", ["new", "replace"])
def test_torture_unpack_from_a_failing_input(
    archive_bytes: bytes, tmp_path: Path, mode: str
) -> None:
    """Every read fails in turn."""
    _failing_unpacks(archive_bytes, tmp_path, mode, every=True)


def _failing_unpacks(archive_bytes: bytes, tmp_path: Path, mode: str, *, every: bool) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    dest = parent / "dest"
    total = _reads_of(lambda f: oxbak.verify(f), archive_bytes)
    for n in _read_points(total, every):
        old = old_dest(dest) if mode == "replace" else None
        with pytest.raises(oxbak.OxbakError, match="Input/output error"):
            oxbak.unpack(
                FailingReader(archive_bytes, at=n),  # type: ignore[arg-type]
                dest,
                mode=mode,  # type: ignore[arg-type]
            )
        if old is None:
            assert not os.path.lexists(dest), f"read #{n}"
        else:
            assert snapshot(dest) == old, f"read #{n}"
            shutil.rmtree(dest)
        assert os.listdir(parent) == [], f"read #{n}: {os.listdir(parent)}"


# --------------------------------------------------------------------------- failing DEST

_FAULTABLE = (
    "open",
    "write",
    "mkdir",
    "link",
    "symlink",
    "utime",
    "chmod",
    "fchmod",
    "fsync",
    "rename",
)


# Where unpack's file system calls are made: the staging sink, the commit and their helpers.
_DESTINATION_MODULES = (oxbak.staging, oxbak.commit, oxbak._fsutil)


class FaultyOs:
    """Stands in for :mod:`os` inside the destination modules: call #N of *op* fails."""

    def __init__(self, op: str = "", at: int = 0, err: int = errno.EIO) -> None:
        self.op, self.at, self.err = op, at, err
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in _FAULTABLE:
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == self.op and self.calls[name] == self.at:
                raise OSError(self.err, os.strerror(self.err))
            return real(*args, **kwargs)

        return call


@pytest.fixture(scope="module")
def varied(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tree]:
    """An archive with every kind of entry, and the tree it restores."""
    base = tmp_path_factory.mktemp("varied")
    src = base / "src"
    build(
        os.fsencode(src),
        {
            b"a.txt": Node("file", data=b"a" * 5000),
            b"dir": Node(
                "dir",
                mode=0o750,
                children={
                    b"b.bin": Node("file", data=bytes(range(256)) * 40, mode=0o600),
                    b"empty": Node("dir"),
                    b"up": Node("symlink", target=b"../a.txt"),
                },
            ),
            b"hard": Node("hardlink", target=b"a.txt"),
            b"z": Node("file", data=b""),
            b"group-writable": Node("file", data=b"g\n", mode=0o664),  # needs an fchmod
        },
    )
    out = base / "varied.oxbak"
    oxbak.pack(src, out)
    return out, snapshot(src)


def _unpack_with_fault(
    archive: Path, dest: Path, mode: str, fault: FaultyOs, monkeypatch: pytest.MonkeyPatch
) -> BaseException | None:
    """Unpack with *fault* in place; the exception raised (None: success)."""
    for module in _DESTINATION_MODULES:
        monkeypatch.setattr(module, "os", fault)
    try:
        oxbak.unpack(archive, dest, mode=mode)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - judged by the caller
        return exc
    finally:
        monkeypatch.undo()
    return None


def _entrywise(now: Tree, old: Tree, new: Tree) -> list[bytes]:
    """Paths of *now* that are neither their old nor their new version (torn or foreign).

    Directories are compared by type only (a half-merged directory has a mode and mtime of
    its own), files without their hardlink group (the group may be half moved).
    """
    wrong = []
    for rel, entry in now.items():
        if entry[0] == "dir" and "dir" in (old.get(rel, ("",))[0], new.get(rel, ("",))[0]):
            continue
        if entry[:5] not in (old.get(rel, ())[:5], new.get(rel, ())[:5]):  # not the link group
            wrong.append(rel)
    return wrong


_SYSCALL_BUGS: dict[tuple[str, str], tuple[str, ...]] = {
    ("new", "open"): (LOCK_BUG, AFTER_COMMIT_BUG),
    ("replace", "open"): (LOCK_BUG, AFTER_COMMIT_BUG),
    ("merge", "open"): (LOCK_BUG, AFTER_COMMIT_BUG, MERGE_BUG),
    ("new", "fsync"): (AFTER_COMMIT_BUG,),
    ("replace", "fsync"): (AFTER_COMMIT_BUG,),
    ("merge", "fsync"): (AFTER_COMMIT_BUG,),
    ("merge", "rename"): (MERGE_BUG,),
    ("merge", "chmod"): (MERGE_BUG,),
    ("merge", "utime"): (MERGE_BUG,),
}


@pytest.mark.parametrize(
    ("mode", "op"),
    [
        pytest.param(
            mode,
            op,
        )
        for mode in ("new", "replace", "merge")
        for op in _FAULTABLE
    ],
)
def test_unpack_with_failing_system_calls(
    varied: tuple[Path, Tree], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, op: str
) -> None:
    """Call #N of one system call of the destination fails, for N over all its calls.

    The contract (README): a failed unpack leaves DEST as it was — absent, or the old tree
    byte for byte — and nothing beside it; a successful one leaves exactly the archive's
    tree (merged into the old one with --merge). In addition, a merge never tears an entry:
    each is its old or its new version.
    """
    archive, _ = varied
    parent = tmp_path / "parent"
    parent.mkdir()
    dest = parent / "dest"

    def fresh() -> Tree | None:
        if os.path.lexists(dest):
            shutil.rmtree(dest)
        return old_dest(dest) if mode != "new" else None

    fresh()
    probe = FaultyOs()
    assert _unpack_with_fault(archive, dest, mode, probe, monkeypatch) is None
    merged = snapshot(dest)
    total = probe.calls[op]
    if not total:
        pytest.skip(f"unpack --{mode} never calls os.{op} in the destination modules")
    bad: list[str] = []
    for n in range(1, total + 1):  # the archive is small: every call, 1-8 per op
        old = fresh()
        what = f"{mode}: os.{op} call #{n}/{total} fails (EIO)"
        raised = _unpack_with_fault(archive, dest, mode, FaultyOs(op, n), monkeypatch)
        now = snapshot(dest) if os.path.lexists(dest) else None
        if raised is not None and not isinstance(raised, oxbak.OxbakError):
            bad.append(f"{what}: raw {type(raised).__name__} escaped: {raised}")
        elif raised is not None and "Input/output error" not in str(raised):
            bad.append(f"{what}: the message does not name the fault: {raised}")
        if raised is None:
            if now != merged:
                bad.append(f"{what}: unpack succeeded but DEST is not the archive's tree")
        elif now != old:
            state = "the new tree" if now == merged else "a mixture"
            bad.append(f"{what}: {type(raised).__name__} raised, but DEST is now {state}")
            if mode == "merge" and now is not None and old is not None:
                torn = _entrywise(now, old, merged)
                if torn:
                    bad.append(f"{what}: torn or foreign entries in DEST: {torn}")
        left = leftovers(parent)
        if left:
            bad.append(f"{what}: left {left} beside DEST")
            for name in left:
                shutil.rmtree(parent / name, ignore_errors=True)
    assert not bad, "\n".join(bad)


def test_staging_lock_failure_is_a_destination_error(
    varied: tuple[Path, Tree], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first open() of an unpack locks the new staging dir; EMFILE there is realistic."""
    archive, _ = varied
    raised = _unpack_with_fault(
        archive, tmp_path / "dest", "new", FaultyOs("open", 1, errno.EMFILE), monkeypatch
    )
    assert isinstance(raised, oxbak.DestinationError), repr(raised)
    assert os.listdir(tmp_path) == [], "the staging directory was left behind"


def test_merge_failing_midway_leaves_dest_as_it_was(
    varied: tuple[Path, Tree], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "A failed unpack leaves DEST as it was" — also with --merge."""
    archive, _ = varied
    dest = tmp_path / "dest"
    old = old_dest(dest)
    raised = _unpack_with_fault(archive, dest, "merge", FaultyOs("rename", 2), monkeypatch)
    assert isinstance(raised, oxbak.OxbakError), repr(raised)
    assert snapshot(dest) == old
    assert leftovers(tmp_path) == []


def _fill_in_place(dest: Path, mode: str) -> Tree:
    """Make the existing directory *dest* hold the old tree (nothing, for *mode* new)."""
    for name in os.listdir(dest):
        path = dest / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if mode != "new":
        staged = dest / "old.tmp"
        old_dest(staged)
        for name in os.listdir(staged):
            os.rename(staged / name, dest / name)
        os.rmdir(staged)
    os.chmod(dest, 0o755)
    os.utime(dest, ns=(1_600_000_000_000_000_001, 1_600_000_000_000_000_001))
    return snapshot(dest)


@pytest.mark.parametrize(
    ("mode", "op"), [(mode, op) for mode in ("new", "replace", "merge") for op in _FAULTABLE]
)
def test_unpack_into_a_mount_point_with_failing_system_calls(
    varied: tuple[Path, Tree],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    op: str,
) -> None:
    """As above, into a mount point (a real tmpfs): the box is inside DEST and the commit
    exchanges DEST's contents. A failure leaves DEST exactly as it was, its own time
    included, or, once the journal is written, a state `recover` completes. A failure
    in the clean-up after the commit is a warning, and `recover` finishes the clean-up:
    only a failure of the very last call, which gives DEST its time back once the box is
    gone, leaves that time wrong (and says so)."""
    archive, _ = varied
    with tmpfs(tmp_path / "m", "size=64m") as dest:
        _fill_in_place(dest, mode)
        probe = FaultyOs()
        assert _unpack_with_fault(archive, dest, mode, probe, monkeypatch) is None
        merged = snapshot(dest)
        total = probe.calls[op]
        if not total:
            pytest.skip(f"unpack --{mode} never calls os.{op} in the destination modules")
        bad: list[str] = []
        for n in range(1, total + 1):
            old = _fill_in_place(dest, mode)
            what = f"{mode}: os.{op} call #{n}/{total} fails (EIO)"
            raised = _unpack_with_fault(archive, dest, mode, FaultyOs(op, n), monkeypatch)
            if raised is not None and not isinstance(raised, oxbak.OxbakError):
                bad.append(f"{what}: raw {type(raised).__name__} escaped: {raised}")
            elif raised is not None and "Input/output error" not in str(raised):
                bad.append(f"{what}: the message does not name the fault: {raised}")
            if raised is not None and "oxbak recover" in str(raised):
                oxbak.recover(dest)  # the exchange was decided: recover completes it
                if snapshot(dest) != merged:
                    bad.append(f"{what}: recover did not complete the exchange")
            elif raised is None:
                warned = "cleaning up failed" in caplog.text
                caplog.clear()
                if warned:
                    oxbak.recover(dest)
                now = snapshot(dest)
                if warned and {k: v[:2] if not k else v for k, v in now.items()} == {
                    k: v[:2] if not k else v for k, v in merged.items()
                }:
                    pass  # DEST's own time, set last, could not be set: the warning says so
                elif now != merged:
                    bad.append(f"{what}: unpack succeeded but DEST is not the archive's tree")
            elif snapshot(dest) != old:
                now = snapshot(dest)
                state = "the new tree" if now == merged else "a mixture"
                bad.append(f"{what}: {type(raised).__name__} raised, but DEST is now {state}")
            left = leftovers(dest) + leftovers(tmp_path)
            if left:
                bad.append(f"{what}: left {left}")
                oxbak.recover(dest)
        assert not bad, "\n".join(bad)
