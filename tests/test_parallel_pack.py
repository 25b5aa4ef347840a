"""pack -j N: worker processes pack parts of the tree, and nothing else may change.

- The archive's bytes do not depend on N (1, 2, 3, more workers than cores or than
  parts), through the library and the command line; and the workers really ran: the
  small files are read in processes forked by the pack, the large ones in the pack's own.
- Files that change, vanish or cannot be read while workers pack them: the same archive,
  the same ``changed``/``missing`` lists and the same warnings, once each, as with -j 1.
- A pack killed (SIGKILL), interrupted (SIGINT/SIGTERM to its process group) or failing
  (a full disk, an exception in a worker, a worker killed) leaves no archive, no temp
  file once cleaned up, and no worker process alive.

A tree needs more than two parts of small entries (about 2 MiB of tar stream each) for
workers to be used at all: each test checks it does, through the pack's own plan.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import oxbak
import oxbak.writer
from mounts import tmpfs
from oxbak import format as fmt
from oxbak.scan import Scan, scan_tree
from tools import NOBODY, run_oxbak, sigint_default, wait_until
from treeutil import set_mtimes, snapshot

OXBAK = str(Path(sys.executable).parent / "oxbak")


# --------------------------------------------------------------------------- helpers


def _plan(src: Path) -> list[Any]:
    """The pack's own plan of *src*: its parts of work, in archive order."""
    return oxbak.writer._plan(scan_tree(src))


def _worker_parts(src: Path) -> int:
    return sum(not part.solo for part in _plan(src))


def _text(rng: random.Random, size: int) -> bytes:
    """*size* bytes of hex text: random, yet 2:1 compressible, so zstd has work."""
    return rng.randbytes(size // 2 + 1).hex().encode()[:size]


def _small_files(root: Path, dirs: int, files: int, rng: random.Random) -> None:
    for d in range(dirs):
        sub = root / f"d{d:02}"
        sub.mkdir(parents=True)
        for i in range(files):
            (sub / f"f{i:04}.txt").write_bytes(_text(rng, rng.randint(1024, 2048)))


def _takes_user_xattrs(where: Path) -> bool:
    probe = where / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


LONG_DIR = "L" * 120
LONG_FILE = "n" * 150
HUGE = 9 << 20  # more than SMALL_FILE_MAX: read in pieces, across two FRAME_SPLITs


def make_rich_tree(root: Path) -> bool:
    """~3,600 small files in three groups, with large files (solo parts) between them.

    Also an empty file and directory, symlinks (one with a target of 150 bytes), a
    hardlink whose first path is in another part, names of more than 100 bytes (pax),
    and, where the filesystem takes them, ``user.*`` xattrs. Returns whether it did.
    """
    rng = random.Random(13)
    root.mkdir(parents=True)
    _small_files(root / "a-small", 3, 400, rng)
    (root / "b-big").write_bytes(_text(rng, fmt.FRAME_TARGET))  # exactly: a solo part
    mid = root / "c-mid"
    _small_files(mid, 3, 400, rng)
    (mid / "d00" / "just-under.bin").write_bytes(_text(rng, fmt.FRAME_TARGET - 1))
    (mid / LONG_DIR).mkdir()
    (mid / LONG_DIR / LONG_FILE).write_bytes(b"a long name\n")
    (mid / "empty").write_bytes(b"")
    (mid / "empty-dir").mkdir()
    os.symlink("d00/f0001.txt", mid / "link")
    os.symlink("../" + LONG_DIR + "/" + "t" * 30, mid / "d01" / "long-target")
    xattrs = _takes_user_xattrs(root)
    if xattrs:
        for i in range(0, 400, 40):
            os.setxattr(mid / "d02" / f"f{i:04}.txt", "user.oxbak.test", b"value %d" % i)
        os.setxattr(mid / "empty-dir", "user.oxbak.dir", b"on a directory")
    (root / "d-huge").write_bytes(_text(rng, HUGE))
    _small_files(root / "e-small", 3, 400, rng)
    os.link(root / "a-small" / "d00" / "f0000.txt", root / "e-small" / "z-hardlink")
    (root / "f-last.txt").write_bytes(b"the last entry\n")
    set_mtimes(root, 1_650_000_000_000_000_017, step=1_000_003)
    return xattrs


def make_many_entries(root: Path) -> None:
    """9,000 tiny files under long paths: TOC blocks end (4,096 entries, 1 MiB of names)
    inside the workers' parts."""
    rng = random.Random(7)
    for d in range(30):
        sub = root / ("directory-with-a-rather-long-name-" * 2 + f"{d:02}")
        sub.mkdir(parents=True)
        for i in range(300):
            name = f"file-{i:04}-" + "x" * (i % 60) + ".dat"
            (sub / name).write_bytes(_text(rng, rng.randint(0, 300)))
    set_mtimes(root, 1_650_000_000_000_000_017, step=1_000_003)


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    root = tmp_path_factory.mktemp("rich") / "src"
    return root, make_rich_tree(root)


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many") / "src"
    make_many_entries(root)
    return root


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,600 small files of hex text: a pack at level 19 with -j 2 takes a few seconds."""
    root = tmp_path_factory.mktemp("slow") / "src"
    _small_files(root, 6, 600, random.Random(3))
    return root


def _first_difference(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"{len(a)} vs {len(b)} bytes, first difference at byte {at}"


def children(pid: int) -> set[int]:
    """The processes *pid* has forked and not yet reaped."""
    found: set[int] = set()
    files = glob.glob(f"/proc/{pid}/task/*/children")
    if files:
        for name in files:
            with contextlib.suppress(OSError):
                found |= {int(n) for n in Path(name).read_text().split()}
        return found
    for status in glob.glob("/proc/[0-9]*/status"):  # kernels without the children files
        with contextlib.suppress(OSError):
            for line in Path(status).read_text().splitlines():
                if line.startswith("PPid:") and int(line.split()[1]) == pid:
                    found.add(int(status.split("/")[2]))
    return found


def gone(pid: int) -> bool:
    """Whether *pid* no longer runs (ended: reaped, or a zombie nobody reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def assert_all_gone(pids: set[int], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not all(gone(p) for p in pids):
        alive = sorted(p for p in pids if not gone(p))
        assert time.monotonic() < deadline, f"worker processes {alive} still alive"
        time.sleep(0.01)


@dataclass
class Watched:
    proc: subprocess.Popen[bytes]
    workers: set[int]
    stdout: bytes = b""
    stderr: bytes = b""


@contextlib.contextmanager
def watched(*args: str | os.PathLike[str], group: bool = False) -> Iterator[Watched]:
    """``oxbak ARGS`` running, with the pids of the processes it forks, as they appear.

    With *group*, it leads a process group of its own (signals for the group go there).
    """
    env = {k: v for k, v in os.environ.items() if k != "OXBAK_DEBUG"}
    proc = subprocess.Popen(
        [OXBAK, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=sigint_default(),
        start_new_session=group,
    )
    run = Watched(proc, set())
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set() and proc.poll() is None:
            run.workers |= children(proc.pid)
            time.sleep(0.0005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield run
        run.stdout, run.stderr = proc.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def temps(directory: Path) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".oxbak-tmp"))


def one_error_line(stderr: bytes, *needles: str) -> str:
    err = stderr.decode(errors="replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
    assert any(n in lines[0] for n in needles), f"{lines[0]!r} names none of {needles}"
    return lines[0]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "oxbak"]


# --------------------------------------------------------------------------- the same bytes


def test_the_trees_have_parts_for_workers(rich: tuple[Path, bool], many: Path) -> None:
    """What makes the identity tests below mean something: worker parts, and solo parts
    between them; the hardlink and its file in different parts."""
    src, _ = rich
    plan = _plan(src)
    kinds = "".join("S" if part.solo else "w" for part in plan)
    assert kinds.count("w") >= 4 and kinds.count("S") == 2, kinds
    assert "wSw" in kinds, f"no solo part between worker parts: {kinds}"
    scan = scan_tree(src)
    where = {path: n for n, path in enumerate(scan.paths)}

    def part_of(path: bytes) -> int:
        return next(i for i, p in enumerate(plan) if p.start <= where[path] < p.stop)

    link, target = b"e-small/z-hardlink", b"a-small/d00/f0000.txt"
    assert scan.kinds[where[link]] == 3  # a hardlink in the scan
    assert part_of(link) != part_of(target) and not plan[part_of(link)].solo
    assert not plan[part_of(b"c-mid/" + LONG_DIR.encode() + b"/" + LONG_FILE.encode())].solo
    assert plan[part_of(b"b-big")].solo and plan[part_of(b"d-huge")].solo
    assert not plan[part_of(b"c-mid/d00/just-under.bin")].solo
    assert _worker_parts(many) >= 3 and len(scan_tree(many)) > 2 * fmt.TOC_BLOCK_ENTRIES


@pytest.mark.parametrize("tree", ["rich", "many"])
def test_archive_bytes_do_not_depend_on_the_workers(
    request: pytest.FixtureRequest, tmp_path: Path, tree: str
) -> None:
    src = request.getfixturevalue("rich")[0] if tree == "rich" else request.getfixturevalue(tree)
    first: bytes | None = None
    for threads in (1, 2, 3, 5):  # 5: more workers than cores, and than parts for "many"
        out = tmp_path / f"j{threads}.oxbak"
        result = oxbak.pack(src, out, threads=threads)
        assert not result.partial
        data = out.read_bytes()
        if first is None:
            first = data
        else:
            assert data == first, f"-j {threads} differs from -j 1: {_first_difference(data, first)}"
    report = oxbak.verify(tmp_path / "j5.oxbak")
    assert report.ok and not report.partial, report.problems
    dest = tmp_path / "dest"
    oxbak.unpack(tmp_path / "j5.oxbak", dest)
    assert snapshot(dest) == snapshot(src)


def test_restored_xattrs_and_names_with_workers(rich: tuple[Path, bool], tmp_path: Path) -> None:
    src, xattrs = rich
    out = tmp_path / "a.oxbak"
    oxbak.pack(src, out, threads=3)
    dest = tmp_path / "dest"
    oxbak.unpack(out, dest)
    assert (dest / "c-mid" / LONG_DIR / LONG_FILE).read_bytes() == b"a long name\n"
    assert os.readlink(dest / "c-mid" / "d01" / "long-target") == "../" + LONG_DIR + "/" + "t" * 30
    a, b = dest / "a-small" / "d00" / "f0000.txt", dest / "e-small" / "z-hardlink"
    assert a.stat().st_ino == b.stat().st_ino
    if not xattrs:
        pytest.skip("the temporary directory's filesystem takes no user.* xattrs")
    for i in range(0, 400, 40):
        path = dest / "c-mid" / "d02" / f"f{i:04}.txt"
        assert os.getxattr(path, "user.oxbak.test") == b"value %d" % i
    assert os.getxattr(dest / "c-mid" / "empty-dir", "user.oxbak.dir") == b"on a directory"


def test_cli_archive_bytes_do_not_depend_on_j(rich: tuple[Path, bool], tmp_path: Path) -> None:
    src, _ = rich
    library = tmp_path / "library.oxbak"
    oxbak.pack(src, library, threads=1)
    for j in ("1", "2", "5", "0"):  # 0: one per available CPU
        out = tmp_path / f"cli{j}.oxbak"
        with watched("pack", src, "-o", out, "-j", j, "-q") as run:
            pass
        assert run.proc.returncode == 0, run.stderr
        assert run.stderr == b""
        data = out.read_bytes()
        assert data == library.read_bytes(), f"-j {j}: {_first_difference(data, library.read_bytes())}"


def test_incremental_pack_bytes_do_not_depend_on_threads(
    rich: tuple[Path, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An incremental pack is made in one process (it reads its base's records in order)."""
    src, _ = rich
    base = tmp_path / "base.oxbak"
    oxbak.pack(src, base, threads=3)
    work = tmp_path / "src"
    shutil.copytree(src, work, symlinks=True)
    (work / "c-mid" / "d01" / "f0007.txt").write_bytes(b"changed since the base\n")
    (work / "e-small" / "d02" / "f0100.txt").unlink()
    forks: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    outs = []
    for threads in (1, 3):
        out = tmp_path / f"inc{threads}.oxbak"
        result = oxbak.pack(work, out, threads=threads, base=base)
        assert result.base_id is not None and result.deleted == 1
        outs.append(out.read_bytes())
    assert forks == []
    assert outs[0] == outs[1]


@st.composite
def _sized_trees(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Files in a few directories whose sizes straddle the plan's limits."""
    sizes = st.one_of(
        st.integers(0, 3000),
        st.integers(0, 400_000),
        st.sampled_from(
            [fmt.FRAME_TARGET - 512, fmt.FRAME_TARGET - 1, fmt.FRAME_TARGET, fmt.FRAME_TARGET + 1]
        ),
    )
    files = draw(st.lists(sizes, min_size=2, max_size=40))
    dirs = draw(st.integers(1, 4))
    return [(f"d{n % dirs}/f{n:03}", size) for n, size in enumerate(files)]


@settings(max_examples=max(3, settings.default.max_examples // 4))
@given(_sized_trees(), st.integers(2, 4))
def test_pack_bytes_do_not_depend_on_workers_property(
    files: list[tuple[str, int]], threads: int
) -> None:
    rng = random.Random(len(files))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        for name, size in files:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(_text(rng, size))
        set_mtimes(src, 1_650_000_000_000_000_017)
        one, many = Path(tmp) / "1.oxbak", Path(tmp) / "n.oxbak"
        oxbak.pack(src, one, threads=1)
        oxbak.pack(src, many, threads=threads)
        assert many.read_bytes() == one.read_bytes()


# --------------------------------------------------------------------------- workers ran


def _reads_by_process(
    src: Path, out: Path, threads: int, monkeypatch: pytest.MonkeyPatch, log: Path
) -> dict[str, set[int]]:
    """Pack *src*; the ids of the processes that read each file (os.pread, os.read)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    real_pread, real_read = os.pread, os.read
    prefix = os.fsencode(src) + b"/"

    def note(f: int) -> None:
        with contextlib.suppress(OSError):
            path = os.readlink(f"/proc/self/fd/{f}".encode())
            if path.startswith(prefix):
                # One write(2) of one line on an O_APPEND file: lines never mix.
                os.write(fd, b"%d %d %s\n" % (os.getpid(), os.getppid(), path[len(prefix) :]))

    def pread(f: int, n: int, offset: int) -> bytes:
        note(f)
        return real_pread(f, n, offset)

    def read(f: int, n: int) -> bytes:
        note(f)
        return real_read(f, n)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "read", read)
    try:
        oxbak.pack(src, out, threads=threads)
    finally:
        monkeypatch.undo()
        os.close(fd)
    readers: dict[str, set[int]] = {}
    me = os.getpid()
    for line in log.read_bytes().splitlines():
        pid, ppid, path = line.split(b" ", 2)
        assert int(pid) == me or int(ppid) == me, "a file was read by a process not forked here"
        readers.setdefault(path.decode(), set()).add(int(pid))
    return readers


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_small_files_are_read_in_the_workers(
    rich: tuple[Path, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    src, _ = rich
    readers = _reads_by_process(src, tmp_path / "a.oxbak", threads, monkeypatch, tmp_path / "log")
    me = os.getpid()
    small = {p for p in readers if p not in ("b-big", "d-huge")}
    assert len(small) > 3000
    assert readers["b-big"] == {me} and readers["d-huge"] == {me}  # solo parts: here
    workers = set().union(*(readers[p] for p in small)) - {me}
    if threads == 1:
        assert workers == set()
        return
    # Every small file was read in a worker, and there were as many as asked (at most
    # one per part).
    assert all(me not in readers[p] for p in small)
    assert len(workers) == min(threads, _worker_parts(src))
    assert_all_gone(workers, within=0.5)  # and they were waited for


@pytest.mark.parametrize("threads", [1, 3])
def test_workers_are_live_during_the_pack_and_gone_after(
    rich: tuple[Path, bool], tmp_path: Path, threads: int
) -> None:
    """Seen from the pack's own progress callback: the processes it forked, meanwhile."""
    src, _ = rich
    before = children(os.getpid())
    seen: set[int] = set()

    def progress(done: int, total: int) -> None:
        seen.update(children(os.getpid()) - before)

    oxbak.pack(src, tmp_path / "a.oxbak", threads=threads, progress=progress)
    assert len(seen) == (0 if threads == 1 else 3)
    assert all(gone(pid) for pid in seen)
    assert children(os.getpid()) - before == set(), "workers left unreaped"


# --------------------------------------------------------------------------- changes during the pack


def _mutating_scan(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[Path], None]
) -> None:
    """Make pack's scan run *change* on the tree once it has scanned it (before any read)."""
    real = oxbak.writer.scan_tree

    def scan(source: Any, *args: Any, **kwargs: Any) -> Scan:
        result = real(source, *args, **kwargs)
        change(Path(os.fsdecode(source)))
        return result

    monkeypatch.setattr(oxbak.writer, "scan_tree", scan)


def _change_after_scan(root: Path) -> None:
    """The same changes, to the same times, in every copy of the rich tree."""
    mid = root / "c-mid"
    (mid / "d00" / "f0003.txt").unlink()  # vanished
    (mid / "d00" / "f0010.txt").write_bytes(b"rewritten, shorter\n")  # changed
    (mid / "d00" / "f0020.txt").write_bytes(b"")  # truncated
    # Shrunk above, so this one may grow: the part still holds what its scan found.
    with open(mid / "d00" / "f0030.txt", "ab") as fh:
        fh.write(b"+" * 500)
    (mid / "d01" / "f0040.txt").unlink()
    (mid / "d01" / "f0040.txt").mkdir()  # no longer a regular file
    # Nothing shrank before it in its part: it may not grow beyond its scanned size.
    with open(root / "a-small" / "d00" / "f0000.txt", "ab") as fh:
        fh.write(b"+" * 5000)
    for n, name in enumerate(("d00/f0010.txt", "d00/f0020.txt", "d00/f0030.txt")):
        os.utime(mid / name, ns=(1_700_000_000_000_000_000 + n, 1_700_000_000_000_000_000 + n))


@pytest.fixture
def rich_copy(rich: tuple[Path, bool], tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(rich[0], dest, symlinks=True)
        return dest

    return copy


def _growing_while_read(monkeypatch: pytest.MonkeyPatch, suffix: bytes) -> None:
    """Each read of the file whose path ends with *suffix* is followed by a byte appended
    to it: it changes under every read, in whichever process reads it."""
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}".encode()).endswith(suffix):
                with open(f"/proc/self/fd/{fd}", "ab") as fh:
                    fh.write(b"+")
        return data

    monkeypatch.setattr(os, "pread", pread)


def test_files_changed_during_the_pack_give_the_same_outcome_with_workers(
    rich_copy: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Files changed after the scan (rewritten, truncated, grown, deleted, replaced by a
    directory) and one changing under every read, in the workers' parts: the same
    changed and missing lists, the same warnings once each, the same restored tree."""
    _mutating_scan(monkeypatch, _change_after_scan)
    _growing_while_read(monkeypatch, b"/c-mid/d00/f0040.txt")
    outcomes = []
    for threads in (1, 2, 3):
        src = rich_copy(f"src{threads}")
        out = tmp_path / f"j{threads}.oxbak"
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="oxbak"):
            result = oxbak.pack(src, out, threads=threads)
        assert result.partial
        report = oxbak.verify(out)
        assert report.ok and report.partial, report.problems
        assert (report.changed, report.missing) == (result.changed, result.missing)
        dest = tmp_path / f"dest{threads}"
        oxbak.unpack(out, dest)
        mid = dest / "c-mid"
        # Changed before they were read: stored whole, as they now are, not flagged.
        assert (mid / "d00" / "f0010.txt").read_bytes() == b"rewritten, shorter\n"
        assert (mid / "d00" / "f0020.txt").read_bytes() == b""
        grown = (src / "c-mid" / "d00" / "f0030.txt").read_bytes()
        assert (mid / "d00" / "f0030.txt").read_bytes() == grown and grown.endswith(b"+" * 500)
        assert not (mid / "d00" / "f0003.txt").exists()
        # Changing under every read: as read, its original content and a few bytes more.
        stored = (mid / "d00" / "f0040.txt").read_bytes()
        assert stored.rstrip(b"+") and 0 < len(stored) - len(stored.rstrip(b"+")) <= 2 * fmt.READ_ATTEMPTS
        # Each copy has its own inodes and ctimes (in the TOC), and the changing file its
        # own mtime: the restored trees are compared without that.
        tree = snapshot(dest)
        tree[b"c-mid/d00/f0040.txt"] = tree[b"c-mid/d00/f0040.txt"][3:]
        outcomes.append((result.changed, result.missing, _warnings(caplog), tree))
    changed, missing, warnings, tree = outcomes[0]
    assert changed == ["c-mid/d00/f0040.txt"]
    assert sorted(missing) == [
        "a-small/d00/f0000.txt", "c-mid/d00/f0003.txt", "c-mid/d01/f0040.txt",
    ]  # fmt: skip
    assert len(warnings) == 4 and len(set(warnings)) == 4, warnings
    for threads, (c, m, w, t) in zip((2, 3), outcomes[1:], strict=True):
        assert (c, m) == (changed, missing), f"-j {threads}"
        assert w == warnings, f"-j {threads}: the warnings differ"
        assert t == tree, f"-j {threads}: another tree restored"


def test_an_unreadable_file_in_a_worker_part_is_named_once(
    rich_copy: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """open(2) refused (EACCES) for one file: the workers inherit the refusal (they are
    forked), and the parent logs their warning once, as -j 1 does."""
    real_open = os.open

    def refusing_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fsencode(path).endswith(b"/e-small/d01/f0123.txt"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    src = rich_copy("src")
    monkeypatch.setattr(os, "open", refusing_open)
    seen = []
    for threads in (1, 3):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="oxbak"):
            result = oxbak.pack(src, tmp_path / f"j{threads}.oxbak", threads=threads)
        assert result.missing == ["e-small/d01/f0123.txt"] and result.changed == []
        seen.append(_warnings(caplog))
    assert seen[0] == seen[1] == [
        "file 'e-small/d01/f0123.txt' could not be read (Permission denied); not in the archive"
    ]
    monkeypatch.undo()
    assert (tmp_path / "j1.oxbak").read_bytes() == (tmp_path / "j3.oxbak").read_bytes()


@pytest.mark.tools("setpriv")
def test_cli_unreadable_file_as_another_user_with_workers(shared: Path) -> None:
    """A file of mode 000 read by an unprivileged pack: exit 3, one warning naming it,
    the same whatever -j."""
    if os.geteuid() != 0:
        pytest.skip("needs root to pack as another user")
    src = shared / "src"
    rng = random.Random(5)
    _small_files(src, 4, 700, rng)
    os.chmod(src / "d02" / "f0100.txt", 0o000)
    for dirpath, _, _ in os.walk(src):
        os.chmod(dirpath, 0o755)
    assert _worker_parts(src) >= 2
    out_dir = shared / "out"
    out_dir.mkdir()
    os.chmod(out_dir, 0o777)
    stderrs = []
    for j in ("1", "3"):
        out = out_dir / f"j{j}.oxbak"
        proc = run_oxbak("pack", str(src), "-o", str(out), "-j", j, "-q", user=NOBODY)
        assert proc.returncode == 3, proc.stderr
        stderrs.append(proc.stderr.decode())
        assert oxbak.verify(out).missing == ["d02/f0100.txt"]
    assert stderrs[0] == stderrs[1]
    assert stderrs[0].splitlines() == [
        "oxbak: warning: file 'd02/f0100.txt' could not be read (Permission denied); "
        "not in the archive",
        "oxbak: warning: archive is PARTIAL: 0 file(s) changed and 1 vanished or could not "
        "be read while packing",
    ]
    assert (out_dir / "j1.oxbak").read_bytes() == (out_dir / "j3.oxbak").read_bytes()


# --------------------------------------------------------------------------- errors in workers


class Unpicklable(Exception):
    def __init__(self, message: str, handle: Any) -> None:
        super().__init__(message)
        self.handle = handle


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("kind", ["picklable", "unpicklable"])
def test_an_exception_in_a_worker_is_raised_by_pack(
    rich: tuple[Path, bool],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    kind: str,
) -> None:
    """A bug met while packing one file of a worker's part: raised by pack as -j 1 raises
    it (or as an OxbakError naming it, where it does not pickle); nothing left behind."""
    src, _ = rich
    real_digest = oxbak.writer.digest_of

    def digest_of(data: bytes) -> bytes:
        if data.startswith(b"the last entry") or len(data) == 1999:
            if kind == "picklable":
                raise ValueError("boom in " + ("the pack" if os.getpid() == me else "a worker"))
            raise Unpicklable("boom", threading.Lock())
        return real_digest(data)

    me = os.getpid()
    before = children(me)
    monkeypatch.setattr(oxbak.writer, "digest_of", digest_of)
    out = tmp_path / "out" / "a.oxbak"
    out.parent.mkdir()
    expected: tuple[type[BaseException], str]
    if kind == "picklable":
        expected = (ValueError, f"boom in {'the pack' if threads == 1 else 'a worker'}")
    elif threads == 1:
        expected = (Unpicklable, "boom")
    else:
        expected = (oxbak.OxbakError, "Unpicklable in a worker process: boom")
    with pytest.raises(expected[0]) as raised:
        oxbak.pack(src, out, threads=threads)
    assert str(raised.value) == expected[1]
    assert os.listdir(out.parent) == []
    assert children(me) - before == set()


def _kill_a_worker(me: int, before: set[int], killed: list[int]) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        workers = sorted(children(me) - before)
        if workers and not killed:
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            time.sleep(0.05)

    return progress


def test_library_pack_when_a_worker_is_killed(slow_tree: Path, tmp_path: Path) -> None:
    me = os.getpid()
    before = children(me)
    killed: list[int] = []
    out = tmp_path / "out" / "a.oxbak"
    out.parent.mkdir()
    with pytest.raises(oxbak.OxbakError) as raised:
        oxbak.pack(slow_tree, out, threads=2, level=19, progress=_kill_a_worker(me, before, killed))
    assert killed
    assert os.listdir(out.parent) == []
    assert children(me) - before == set(), "a worker was left unreaped"
    assert str(raised.value) == (
        f"worker process {killed[0]} was killed by signal 9 before finishing its work"
    )


def test_cli_pack_when_a_worker_is_killed(slow_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.oxbak"
    with watched("pack", slow_tree, "-o", out, "-j", "2", "--level", "19") as run:
        wait_until(lambda: len(run.workers) == 2 or run.proc.poll() is not None)
        time.sleep(0.2)
        assert run.proc.poll() is None, "the pack ended before a worker could be killed"
        victim = min(run.workers)
        os.kill(victim, signal.SIGKILL)
    assert_all_gone(run.workers)
    assert not out.exists() and temps(tmp_path) == []
    assert run.proc.returncode == 1
    one_error_line(
        run.stderr, f"worker process {victim} was killed by signal 9 before finishing its work"
    )


# --------------------------------------------------------------------------- kills and signals


@pytest.mark.parametrize("force", [False, True], ids=["new-output", "force-over-old"])
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.0])
def test_killed_pack_leaves_no_worker_behind(
    slow_tree: Path, tmp_path: Path, delay: float, force: bool
) -> None:
    """SIGKILL to the pack: its workers end with it (they never outlive it), OUT is absent
    or the old archive, and the next pack removes the temp file the kill left."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.oxbak"
    old = b""
    if force:
        oxbak.pack(slow_tree / "d00", out)
        old = out.read_bytes()
    extra = ["--force"] if force else []
    with watched("pack", slow_tree, "-o", out, "-j", "2", "--level", "19", *extra) as run:
        wait_until(lambda: len(run.workers) == 2 or run.proc.poll() is not None)
        time.sleep(delay)
        assert run.proc.poll() is None, "the pack ended before the kill"
        workers = set(run.workers)
        run.proc.kill()
        run.proc.wait()
        # At once: a worker busy with a part (at level 19, most of a second) is killed
        # with the pack, it does not finish the part first. (Checked before reading the
        # pack's output to its end: the workers hold its pipes open too.)
        assert_all_gone(workers, within=0.3)
    assert run.proc.returncode == -signal.SIGKILL
    if force:
        assert out.read_bytes() == old, "the archive --force would replace was damaged"
    else:
        assert not out.exists()
    assert len(temps(out_dir)) == 1  # a kill -9 cannot be cleaned up after...
    oxbak.pack(slow_tree / "d01", out, force=True)  # ...the next pack does it
    assert os.listdir(out_dir) == ["out.oxbak"]


@pytest.mark.torture
def test_kill_sweep_with_workers(slow_tree: Path, tmp_path: Path) -> None:
    """SIGKILL at moments spread over a whole pack -j 3: OUT absent or complete, never
    partial; no worker alive afterwards."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.oxbak"
    started = time.monotonic()
    oxbak.pack(slow_tree, out, threads=3, level=19)
    duration = time.monotonic() - started
    reference = out.read_bytes()
    out.unlink()
    states = {"absent": 0, "complete": 0}
    for i in range(20):
        with watched("pack", slow_tree, "-o", out, "-j", "3", "--level", "19") as run:
            time.sleep(1.1 * duration * i / 19)
            workers = set(run.workers)
            run.proc.kill()
            run.proc.wait()
            assert_all_gone(workers, within=0.3)
        if out.exists():
            assert out.read_bytes() == reference, f"a partial archive after a kill at {i}"
            states["complete"] += 1
            out.unlink()
        else:
            states["absent"] += 1
        for name in temps(out_dir):
            os.unlink(out_dir / name)
    assert states["absent"] >= 10, states


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("delay", [0.2, 1.0])
def test_signal_to_the_process_group_while_workers_pack(
    slow_tree: Path, tmp_path: Path, sig: signal.Signals, delay: float
) -> None:
    """Ctrl-C (or a service manager's SIGTERM) reaches the pack and its workers at once:
    "interrupted", 130 or 143, nothing left, no worker alive, promptly."""
    out = tmp_path / "out.oxbak"
    with watched("pack", slow_tree, "-o", out, "-j", "2", "--level", "19", group=True) as run:
        wait_until(lambda: len(run.workers) == 2 or run.proc.poll() is not None)
        time.sleep(delay)
        assert run.proc.poll() is None, "the pack ended before the signal"
        os.killpg(run.proc.pid, sig)
        sent = time.monotonic()
        run.proc.wait(timeout=10)
        assert time.monotonic() - sent < 2.0, "the pack took more than 2 s to stop"
    assert run.proc.returncode == (130 if sig == signal.SIGINT else 143)
    one_error_line(run.stderr, "interrupted")
    assert_all_gone(run.workers)
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_the_workers_start(slow_tree: Path, tmp_path: Path) -> None:
    """SIGINT to the group as soon as the first worker exists (the pack is forking the
    others). Some tries in a row; the first one that goes wrong is reported."""
    for attempt in range(12):
        out = tmp_path / f"out{attempt}.oxbak"
        with watched("pack", slow_tree, "-o", out, "-j", "4", "--level", "19", group=True) as run:
            while not children(run.proc.pid) and run.proc.poll() is None:
                pass
            os.killpg(run.proc.pid, signal.SIGINT)
            run.proc.wait(timeout=30)
        assert run.proc.returncode == 130, (attempt, run.proc.returncode, run.stderr.decode())
        one_error_line(run.stderr, "interrupted")
        assert_all_gone(run.workers)
        assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- full disk


@pytest.fixture(scope="module")
def incompressible(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB in 3,072 files of 4 KiB that do not compress: too much for 8 MiB."""
    root = tmp_path_factory.mktemp("incompressible") / "src"
    rng = random.Random(11)
    for d in range(4):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(768):
            (root / f"d{d}" / f"f{i:03}.bin").write_bytes(rng.randbytes(4096))
    return root


@pytest.mark.parametrize("force", [False, True], ids=["new-output", "force-over-old"])
def test_cli_pack_with_workers_onto_a_full_disk(
    incompressible: Path, tmp_path: Path, force: bool
) -> None:
    assert _worker_parts(incompressible) >= 4
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        out = mnt / "out.oxbak"
        old = b""
        if force:
            oxbak.pack(incompressible / "d0" , out, threads=1, level=1)
            old = out.read_bytes()
            assert len(old) < 4 << 20
        extra = ["--force"] if force else []
        with watched("pack", incompressible, "-o", out, "-j", "3", *extra) as run:
            pass
        assert run.proc.returncode == 1
        assert len(run.workers) == 3, "the disk filled before the workers started"
        one_error_line(run.stderr, "No space left on device")
        assert_all_gone(run.workers)
        assert os.listdir(mnt) == (["out.oxbak"] if force else [])
        if force:
            assert out.read_bytes() == old


def test_library_pack_with_workers_onto_a_full_disk(incompressible: Path, tmp_path: Path) -> None:
    before = children(os.getpid())
    with tmpfs(tmp_path / "mnt", "size=8m") as mnt:
        with pytest.raises(oxbak.OxbakError, match="No space left on device"):
            oxbak.pack(incompressible, mnt / "out.oxbak", threads=3)
        assert os.listdir(mnt) == []
    assert children(os.getpid()) - before == set()


class FillingSink(io.RawIOBase):
    """A stream that takes *room* bytes, then fails every write with ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.taken = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.taken + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.taken += len(data)
        return len(data)


@pytest.mark.parametrize("share", [0.02, 0.3, 0.6, 0.999])
def test_pack_to_a_stream_that_fills_up_with_workers(
    rich: tuple[Path, bool], share: float
) -> None:
    """The output fails in a worker's part, a solo part, or the TOC at the end (by the
    share of the whole archive written first): an OxbakError, and the workers are gone."""
    src, _ = rich
    whole = FillingSink(1 << 40)
    oxbak.pack(src, whole, threads=3)  # type: ignore[arg-type]
    before = children(os.getpid())
    sink = FillingSink(int(whole.taken * share))
    with pytest.raises(oxbak.OxbakError, match="No space left on device"):
        oxbak.pack(src, sink, threads=3)  # type: ignore[arg-type]
    assert children(os.getpid()) - before == set()
