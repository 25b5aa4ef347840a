"""All-or-nothing, with real processes and real signals.

- An interrupted ``pack`` (SIGINT, SIGTERM, SIGKILL) never leaves a half-written archive
  under the output name, and never damages the archive it would have replaced.
- An ``unpack`` that fails half-way leaves DEST exactly as it was.
- An ``unpack --replace`` killed with SIGKILL at any moment leaves DEST exactly the old
  tree or exactly the new one; ``recover`` (or the next unpack) cleans up after it.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mounts import tmpfs
from oxbak.commit import is_mount_point
from oxbak.compress import FrameReader, SeekTable
from oxbak.source import read_footer
from tools import require_tool, sigint_default, wait_until
from treeutil import set_mtimes

OXBAK = Path(sys.executable).parent / "oxbak"

Snapshot = dict[bytes, tuple[object, ...]]

#: Size of the pack tree: 4 files of hex text, 2:1 compressible, so zstd works for it.
BIG_FILES = 4
BIG_FILE_BYTES = 16 << 20
#: zstd level for the interrupted packs: slow enough to take > 1 s on BIG_FILES, yet zstd's
#: jobs stay small enough that a signal is acted on within a fraction of a second.
SLOW_LEVEL = "7"


# --------------------------------------------------------------------------- helpers


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OXBAK_DEBUG", None)
    env.update(extra or {})
    return env


def oxbak(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(OXBAK), *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        timeout=120,
    )


def spawn(*args: str | os.PathLike[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(OXBAK), *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        preexec_fn=sigint_default(),
    )


def assert_ok(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, (result.returncode, result.stderr.decode(errors="replace"))


def assert_one_error(result: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
    assert result.stdout == b""
    return lines[0]


def snapshot(root: Path) -> Snapshot:
    """Per relative path: type, mode, mtime (ns) and content or link target; for files
    also the paths sharing the inode. The root itself is ``b"."``."""
    root_b = os.fsencode(root)
    raw: dict[bytes, os.stat_result] = {b".": os.lstat(root_b)}
    by_inode: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = raw[rel] = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                by_inode.setdefault(st.st_ino, []).append(rel)
    snap: Snapshot = {}
    for rel, st in raw.items():
        full = os.path.join(root_b, rel)
        if stat.S_ISLNK(st.st_mode):
            snap[rel] = ("symlink", os.readlink(full), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            snap[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
        elif stat.S_ISREG(st.st_mode):
            with open(full, "rb") as fh:
                content = fh.read()
            links = tuple(sorted(by_inode[st.st_ino]))
            snap[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, content, links)
        else:
            snap[rel] = ("other", stat.S_IFMT(st.st_mode))
    return snap


def interrupt(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    delay: float,
    sig: signal.Signals,
    too_soon: str,
) -> tuple[bytes, bytes]:
    """Send *sig* to *proc* *delay* seconds after *ready*; return its stdout and stderr."""
    try:
        wait_until(lambda: ready() or proc.poll() is not None)
        time.sleep(delay)
        assert proc.poll() is None, too_soon
        proc.send_signal(sig)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def oxbak_leftovers(directory: Path) -> list[str]:
    """Staging and moved-aside directories of unpack (``.oxbak-stage-…``, ``.oxbak-old-…``, ``.oxbak-merge-…``)."""
    return sorted(n for n in os.listdir(directory) if n.startswith(".oxbak-"))


def pack_temps(directory: Path, out_name: str = "out.oxbak") -> list[str]:
    return sorted(
        os.path.basename(p)
        for p in glob.glob(os.path.join(glob.escape(str(directory)), f".{out_name}.*.oxbak-tmp"))
    )


def run_watching_staging(
    area: Path, *args: str | os.PathLike[str]
) -> tuple[subprocess.CompletedProcess[bytes], int]:
    """Run oxbak to the end; also return the most files seen in a staging dir under *area*
    meanwhile (evidence of how far extraction got before a failure)."""
    proc = spawn(*args)
    most = 0
    while proc.poll() is None:
        for name in oxbak_leftovers(area):
            count = sum(len(files) for _, _, files in os.walk(area / name))
            most = max(most, count)
        time.sleep(0.01)
    stdout, stderr = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), most


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def command() -> Path:
    assert OXBAK.is_file(), f"the console script is not installed at {OXBAK}"
    return OXBAK


@pytest.fixture(scope="session")
def big_tree(tmp_path_factory: pytest.TempPathFactory, command: Path) -> Path:
    """~64 MB of hex text in a few files: packing it at SLOW_LEVEL takes about a second."""
    root = tmp_path_factory.mktemp("big") / "tree"
    (root / "data").mkdir(parents=True)
    for i in range(BIG_FILES):
        with open(root / "data" / f"blob{i}.txt", "wb") as fh:
            for _ in range(BIG_FILE_BYTES >> 21):
                fh.write(os.urandom(1 << 20).hex().encode())
    (root / "small.txt").write_bytes(b"small\n")
    return root


@pytest.fixture(scope="session")
def tiny_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny") / "tree"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_bytes(b"tiny\n")
    return root


def _many_files(root: Path, flavour: str, seed: int) -> None:
    """Thousands of small files, plus a symlink, a hardlink and an empty directory."""
    for d in range(30):
        sub = root / f"dir{d:02}"
        sub.mkdir(parents=True)
        for i in range(100):
            if flavour == "new" and i % 10 == 9:
                continue  # gone in the new tree
            body = f"{flavour} tree, file {d}/{i}, seed {seed}\n".encode() * (1 + i % 7)
            (sub / f"file{i:03}.txt").write_bytes(body)
        if flavour == "new":
            (sub / "added.txt").write_bytes(f"new in {d}\n".encode())
    (root / f"only-{flavour}").mkdir()
    os.symlink(f"dir00/file00{0 if flavour == 'old' else 1}.txt", root / "link")
    os.link(root / "dir01" / "file001.txt", root / "hardlink")
    os.chmod(root / "dir02" / "file002.txt", 0o600 if flavour == "old" else 0o640)
    set_mtimes(
        root,
        1_650_000_000_000_000_017 if flavour == "old" else 1_700_000_000_123_456_789,
        step=1_000_003,
    )


@dataclass(frozen=True)
class Trees:
    """Two different trees of ~3,000 files, their archives and their snapshots."""

    old_archive: Path
    new_archive: Path
    old: Snapshot
    new: Snapshot


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory, command: Path) -> Trees:
    base = tmp_path_factory.mktemp("trees")
    archives = {}
    snaps = {}
    for flavour, seed in (("old", 1), ("new", 2)):
        root = base / flavour
        _many_files(root, flavour, seed)
        archives[flavour] = base / f"{flavour}.oxbak"
        assert_ok(oxbak("pack", root, "-o", archives[flavour]))
        snaps[flavour] = snapshot(root)
    assert snaps["old"] != snaps["new"]
    return Trees(archives["old"], archives["new"], snaps["old"], snaps["new"])


@pytest.fixture
def area(tmp_path: Path) -> Path:
    """A directory that holds DEST and nothing else, so leftovers are easy to see."""
    path = tmp_path / "area"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- pack


SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]


@pytest.mark.parametrize("force", [False, True], ids=["new-output", "force-over-old"])
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_interrupted_pack_leaves_no_archive(
    big_tree: Path, tiny_tree: Path, tmp_path: Path, sig: signal.Signals, force: bool
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.oxbak"
    old: bytes | None = None
    if force:
        assert_ok(oxbak("pack", tiny_tree, "-o", out))
        old = out.read_bytes()
    extra = ["--force"] if force else []

    proc = spawn("pack", big_tree, "-o", out, "--level", SLOW_LEVEL, *extra)
    # Once the temp file exists the pack is writing (and its handlers are installed).
    stdout, stderr = interrupt(
        proc, lambda: bool(pack_temps(out_dir)), 0.3, sig, "pack ended before the signal"
    )
    err = stderr.decode()

    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode in (130, 128 + sig), (proc.returncode, err)
        assert stdout == b""
        assert "Traceback" not in err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("oxbak: error: "), err
        assert "interrupt" in lines[0]

    if force:
        assert out.read_bytes() == old, "the archive --force would replace was damaged"
    else:
        assert not out.exists(), "an interrupted pack left an archive under the output name"

    if sig != signal.SIGKILL:
        assert pack_temps(out_dir) == []
        assert sorted(os.listdir(out_dir)) == (["out.oxbak"] if force else [])
        return

    # SIGKILL cannot be cleaned up after: the temp file stays until the next pack.
    assert len(pack_temps(out_dir)) == 1
    again = oxbak("pack", tiny_tree, "-o", out, *extra)
    assert_ok(again)
    assert pack_temps(out_dir) == []
    assert os.listdir(out_dir) == ["out.oxbak"]
    assert_ok(oxbak("verify", out))


def test_killed_encrypted_pack_leaves_no_archive_and_only_ciphertext(
    big_tree: Path, tiny_tree: Path, tmp_path: Path
) -> None:
    import pyrage

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "out.oxbak.age"
    proc = spawn("pack", big_tree, "-o", out, "--level", SLOW_LEVEL, "-r", recipient)

    def written() -> bool:  # the envelope goes out in whole chunks: wait for the first
        return any((out_dir / t).stat().st_size for t in pack_temps(out_dir, out.name))

    interrupt(proc, written, 0.1, signal.SIGKILL, "pack ended before the signal")
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (temp,) = pack_temps(out_dir, out.name)
    # What reached the disk is the envelope: the age header, then ciphertext.
    assert (out_dir / temp).read_bytes().startswith(b"age-encryption.org/v1\n")
    assert sorted(os.listdir(out_dir)) == [temp]
    assert_ok(oxbak("pack", tiny_tree, "-o", out, "-r", recipient))
    assert os.listdir(out_dir) == [out.name]


def test_interrupted_pack_exits_promptly_at_high_level(big_tree: Path, tmp_path: Path) -> None:
    sig = signal.SIGTERM  # SIGINT takes the same path (both become KeyboardInterrupt)
    out = tmp_path / "out.oxbak"
    proc = spawn("pack", big_tree, "-o", out, "--level", "19")
    try:
        wait_until(lambda: bool(pack_temps(tmp_path)) or proc.poll() is not None)
        time.sleep(0.3)
        assert proc.poll() is None
        proc.send_signal(sig)
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pack still running 2 s after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not out.exists() and pack_temps(tmp_path) == []


# --------------------------------------------------------------------------- unpack fails


def _corrupt_near_end(archive: Path, into: Path) -> Path:
    """A copy of *archive* with one byte flipped in the last frame of its tree: extraction
    gets through (almost) the whole tree before the damage is found, whether the archive
    is read front to back or its parts by workers (which read the TOC first)."""
    data = bytearray(archive.read_bytes())

    class Memory:
        size = len(data)

        def pread(self, size: int, offset: int) -> bytes:
            return bytes(data[offset : offset + size])

    table = SeekTable.read(Memory())
    assert table is not None
    last = table.frame_at(read_footer(FrameReader(Memory(), table)).toc_offset) - 1
    data[table.c_starts[last] + table.c_sizes[last] // 2] ^= 0xFF
    into.write_bytes(bytes(data))
    return into


@pytest.mark.parametrize("mode", ["replace", "merge", "new"])
def test_unpack_failing_late_leaves_dest_unchanged(
    trees: Trees, area: Path, tmp_path: Path, mode: str
) -> None:
    bad = _corrupt_near_end(trees.new_archive, tmp_path / "bad.oxbak")
    dest = area / "dest"
    if mode != "new":
        assert_ok(oxbak("unpack", trees.old_archive, dest))
        assert snapshot(dest) == trees.old
    before = snapshot(dest) if mode != "new" else None
    parent_before = sorted(os.listdir(area))

    flags = [] if mode == "new" else [f"--{mode}"]
    result, staged = run_watching_staging(area, "unpack", *flags, bad, dest)
    line = assert_one_error(result)
    assert "manifest" not in line, f"failed too early to test anything: {line}"
    assert staged > 1000, f"only {staged} files were staged before the failure"

    if mode == "new":
        assert not os.path.lexists(dest)
    else:
        assert snapshot(dest) == before
    assert oxbak_leftovers(area) == []
    assert sorted(os.listdir(area)) == parent_before

    # The intact archive still goes in afterwards.
    assert_ok(oxbak("unpack", *flags, trees.new_archive, dest))
    if mode != "merge":
        assert snapshot(dest) == trees.new


def test_corruption_near_end_is_detected(trees: Trees, tmp_path: Path) -> None:
    bad = _corrupt_near_end(trees.new_archive, tmp_path / "bad.oxbak")
    result = oxbak("verify", bad)
    assert result.returncode == 1


# --------------------------------------------------------------------------- unpack killed


def _which(snap: Snapshot, trees: Trees) -> str:
    if snap == trees.old:
        return "old"
    if snap == trees.new:
        return "new"
    only_old = len(set(snap.items()) - set(trees.new.items()))
    only_new = len(set(snap.items()) - set(trees.old.items()))
    raise AssertionError(
        f"DEST is neither tree: {len(snap)} entries, {only_old} not in the new tree, "
        f"{only_new} not in the old one"
    )


def _inode(path: Path) -> int:
    try:
        return os.stat(path).st_ino
    except OSError:
        return -1


def _moved(dest: Path, before: int, proc: subprocess.Popen[bytes]) -> bool:
    """Whether DEST is another directory than *before* (the swap happened), or *proc* ended."""
    return _inode(dest) != before or proc.poll() is not None


def test_unpack_replace_killed_at_any_moment(trees: Trees, area: Path) -> None:
    dest = area / "dest"
    archive = {"old": trees.old_archive, "new": trees.new_archive}
    assert_ok(oxbak("unpack", trees.old_archive, dest))

    # How long an uninterrupted --replace takes, each way (the shorter, so that the kill
    # moments below fall inside the runs rather than after them).
    durations = []
    for flavour in ("new", "old"):
        started = time.monotonic()
        assert_ok(oxbak("unpack", "--replace", archive[flavour], dest))
        durations.append(time.monotonic() - started)
        assert snapshot(dest) == getattr(trees, flavour)
    duration = min(durations)
    assert duration >= 0.25, f"unpack took only {duration:.2f} s: too fast to kill half-way"

    # Ten moments spread over the run, then one right after the swap (DEST's inode
    # changes), when the old tree is being deleted from the staging name.
    moments: list[float | None] = [duration * (i + 0.5) / 10 for i in range(10)]
    moments.append(None)
    state = "old"
    outcomes: list[tuple[str, str, bool]] = []
    for i, at in enumerate(moments):
        target = "new" if state == "old" else "old"
        before = _inode(dest)
        proc = spawn("unpack", "--replace", archive[target], dest)
        try:
            if at is None:
                wait_until(functools.partial(_moved, dest, before, proc), poll=0.0005)
            else:
                time.sleep(at)
        finally:
            alive = proc.poll() is None
            proc.kill()
            proc.communicate()
        assert os.path.isdir(dest) and not os.path.islink(dest), f"DEST missing after kill {i}"
        now = _which(snapshot(dest), trees)
        assert now in (state, target)
        if at is None:
            assert now == target
        outcomes.append(("swap" if at is None else f"{at:.3f}s", now, alive))
        state = now
        if i % 2 == 0 or at is None:
            result = oxbak("recover", dest)
            assert_ok(result)
            assert result.stdout == b""
            assert oxbak_leftovers(area) == []
            assert _which(snapshot(dest), trees) == state, "recover changed DEST"
        # After the other moments the leftovers are left to the next unpack, which
        # recovers before it starts.

    killed_alive = sum(alive for _, _, alive in outcomes[:10])
    assert killed_alive >= 5, f"most kills came after the unpack had ended: {outcomes}"

    final = "new" if state == "old" else "old"
    assert_ok(oxbak("unpack", "--replace", archive[final], dest))
    assert snapshot(dest) == getattr(trees, final)
    assert oxbak_leftovers(area) == []
    assert os.listdir(area) == ["dest"]
    print("kill moments, DEST afterwards, killed while running:", outcomes)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_unpack_interrupted_cleans_up_by_itself(
    trees: Trees, area: Path, sig: signal.Signals
) -> None:
    dest = area / "dest"
    assert_ok(oxbak("unpack", trees.old_archive, dest))
    proc = spawn("unpack", "--replace", trees.new_archive, dest)
    # Interrupt while the staging directory is being filled.
    stdout, stderr = interrupt(
        proc, lambda: bool(oxbak_leftovers(area)), 0.1, sig, "unpack ended before the signal"
    )
    err = stderr.decode()
    assert stdout == b"" and "Traceback" not in err
    if proc.returncode == 0:
        # On a loaded machine the signal can land after the commit point: the restore is
        # then complete, and only its clean-up was cut short (and said so).
        assert snapshot(dest) == trees.new
        assert "interrupted after" in err
        assert_ok(oxbak("recover", dest))
    else:
        assert proc.returncode in (130, 128 + sig), (proc.returncode, err)
        assert err.splitlines() == ["oxbak: error: interrupted"]
        assert snapshot(dest) == trees.old
    assert oxbak_leftovers(area) == []  # no `recover` needed after a catchable signal


def test_recover_removes_a_killed_unpack_staging_dir(trees: Trees, area: Path) -> None:
    dest = area / "dest"
    assert_ok(oxbak("unpack", trees.old_archive, dest))
    proc = spawn("unpack", "--replace", trees.new_archive, dest)
    try:
        wait_until(lambda: bool(oxbak_leftovers(area)) or proc.poll() is not None)
        time.sleep(0.05)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "unpack ended before it could be killed"
    assert snapshot(dest) == trees.old
    assert len(oxbak_leftovers(area)) == 1
    result = oxbak("recover", dest)
    assert_ok(result)
    assert "removed" in result.stderr.decode()
    assert oxbak_leftovers(area) == []
    assert snapshot(dest) == trees.old
    shutil.rmtree(dest)


# --------------------------------------------------------------------------- kill sweeps
#
# SIGKILL at many moments of one command, spread uniformly from its start to 110 % of an
# uninterrupted run, plus kills triggered by what can be seen happening (the staged tree
# finished, DEST swapped, the merge's first rename). After each kill the state must be
# one of the two allowed ones, and the next command must clean up and succeed. The
# `torture` tests run the full sweeps and print their figures (also appended to the file
# named by $OXBAK_FIGURES); a small slice of each runs in `make test`.


@dataclass(frozen=True)
class Moment:
    """When to kill: *at* seconds after the start, or *delay* seconds after *event*."""

    label: str
    at: float | None = None
    event: str | None = None
    delay: float = 0.0


def _uniform(count: int, duration: float) -> list[Moment]:
    """*count* moments from 0 to 110 % of *duration*, both ends included."""
    span = 1.1 * duration
    return [
        Moment(f"{110 * i / (count - 1):.0f}%", at=span * i / (count - 1)) for i in range(count)
    ]


def _kill_at(
    proc: subprocess.Popen[bytes],
    started: float,
    moment: Moment,
    ready: Callable[[], bool] | None = None,
) -> tuple[bool, float]:
    """SIGKILL *proc* at *moment*; return whether it was still running, and when (s)."""
    try:
        if moment.at is not None:
            time.sleep(max(0.0, started + moment.at - time.monotonic()))
        else:
            assert ready is not None
            wait_until(lambda: ready() or proc.poll() is not None, poll=0.0002)
            if moment.delay:
                time.sleep(moment.delay)
    finally:
        alive = proc.poll() is None
        when = time.monotonic() - started
        proc.kill()
        proc.communicate()
    return alive, when


def _figures(line: str) -> None:
    print(line)
    path = os.environ.get("OXBAK_FIGURES")
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def _lost_bytes(snap: Snapshot, reference: Snapshot) -> int:
    """Bytes of *reference*'s files that *snap* does not hold exactly."""
    return sum(
        len(v[3])  # type: ignore[arg-type]  # files: (type, mode, mtime, content, links)
        for p, v in reference.items()
        if v[0] == "file" and snap.get(p, (None,))[:4] != v[:4]
    )


def _other(flavour: str) -> str:
    return "new" if flavour == "old" else "old"


def _staged(area: Path, name: str) -> Callable[[], bool]:
    """True once a staging directory under *area* holds *name* (symlinks are created last,
    in finish(), just before the commit)."""
    pattern = os.path.join(glob.escape(str(area)), ".oxbak-stage-*", "tree", name)
    return lambda: bool(glob.glob(pattern))


def replace_kill_sweep(
    trees: Trees,
    area: Path,
    *,
    uniform: int,
    around_swap_ms: tuple[float, ...],
    after_staged_ms: tuple[float, ...],
    after_swap_ms: tuple[float, ...],
    calibrations: int = 3,
) -> dict[str, Any]:
    """Kill ``unpack --replace`` at many moments; DEST must always be exactly one tree."""
    wall = time.monotonic()
    dest = area / "dest"
    archive = {"old": trees.old_archive, "new": trees.new_archive}
    snaps = {"old": trees.old, "new": trees.new}
    assert_ok(oxbak("unpack", trees.old_archive, dest))
    state = "old"

    # Uninterrupted runs, each way: how long they take and when DEST's inode changes.
    # Each follows a run killed once its whole tree was staged, and its clean-up: as after
    # the sweep's late kills, the syncfs before the swap then has the most to flush. The
    # slowest run sets the span of the sweep.
    durations, swaps = [], []
    for _ in range(calibrations):
        target = _other(state)
        proc = spawn("unpack", "--replace", archive[target], dest)
        _kill_at(
            proc, time.monotonic(), Moment("calibration", event="staged"), _staged(area, "link")
        )
        assert_ok(oxbak("recover", dest))
        state = _which(snapshot(dest), trees)
        target = _other(state)
        before = _inode(dest)
        proc = spawn("unpack", "--replace", archive[target], dest)
        started = time.monotonic()
        wait_until(functools.partial(_moved, dest, before, proc), poll=0.0002)
        swaps.append(time.monotonic() - started)
        proc.communicate()
        durations.append(time.monotonic() - started)
        assert proc.returncode == 0
        state = target
        assert snapshot(dest) == snaps[state]
    duration, swap = max(durations), sorted(swaps)[len(swaps) // 2]
    assert min(durations) >= 0.25, f"unpack took {min(durations):.2f} s: too fast to kill"

    # Kills triggered by events first: once the tree is staged (just before the syncfs
    # and the swap) and once DEST's inode has changed (while the old tree is deleted).
    # The swaps they see date the swap under the sweep's own conditions; then kills at
    # fixed offsets around that date, then the uniform spread.
    event_moments = [
        Moment(f"staged+{ms:g}ms", event="staged", delay=ms / 1000) for ms in after_staged_ms
    ] + [Moment(f"swapped+{ms:g}ms", event="swapped", delay=ms / 1000) for ms in after_swap_ms]

    outcomes: list[tuple[str, str, float, bool, str]] = []
    seen_swaps: list[float] = []
    full_runs: list[float] = []  # the uninterrupted unpacks after odd kills, as they go
    leftovers_seen = cleaned = lost = 0

    def attempt(kind: str, moment: Moment) -> None:
        nonlocal state, leftovers_seen, cleaned, lost
        target = _other(state)
        before = _inode(dest)
        proc = spawn("unpack", "--replace", archive[target], dest)
        started = time.monotonic()
        ready = {
            "staged": _staged(area, "link"),
            "swapped": lambda: _inode(dest) != before,
            None: None,
        }[moment.event]
        alive, when = _kill_at(proc, started, moment, ready)

        assert os.path.isdir(dest) and not os.path.islink(dest), f"DEST missing at {moment}"
        snap = snapshot(dest)
        now = _which(snap, trees)  # exactly the old or the new tree, never a mix
        assert now in (state, target)
        if moment.event == "swapped":
            assert now == target, f"DEST's inode changed but it is not the new tree: {moment}"
            if alive:
                seen_swaps.append(when - moment.delay)
        lost += _lost_bytes(snap, snaps[now])
        outcomes.append((kind, moment.label, when, alive, "kept" if now == state else "reached"))
        left = oxbak_leftovers(area)
        assert all(
            n.startswith((".oxbak-stage-dest.", ".oxbak-old-dest.", ".oxbak-merge-dest."))
            for n in left
        ), left
        leftovers_seen += len(left)

        if len(outcomes) % 2:
            # `oxbak recover DEST` cleans up and leaves DEST as it is.
            result = oxbak("recover", dest)
            assert_ok(result)
            assert result.stdout == b""
            assert _which(snapshot(dest), trees) == now, "recover changed DEST"
        else:
            # The next unpack recovers first, then succeeds.
            now = _other(now)
            run_started = time.monotonic()
            assert_ok(oxbak("unpack", "--replace", archive[now], dest))
            full_runs.append(time.monotonic() - run_started)
            assert snapshot(dest) == snaps[now]
        assert oxbak_leftovers(area) == []
        assert os.listdir(area) == ["dest"]
        cleaned += len(left)
        state = now

    for moment in event_moments:
        attempt("event", moment)
    if seen_swaps:
        swap = sorted(seen_swaps)[len(seen_swaps) // 2]
    for ms in around_swap_ms:
        attempt("around-swap", Moment(f"swap{ms:+g}ms", at=max(0.0, swap + ms / 1000)))
    # Runs in the sweep follow kills and clean-ups: the uninterrupted ones seen so far
    # time a run under the sweep's own conditions, and the spread covers theirs. (The
    # calibration's slowest run follows a kill with the whole tree staged, whose deletion
    # slows the next creations: with workers, it took twice a sweep's run.)
    if full_runs:
        duration = sorted(full_runs)[3 * len(full_runs) // 4]
    for moment in _uniform(uniform, duration):
        attempt("uniform", moment)

    assert lost == 0
    return {
        "moments": len(outcomes),
        "uniform": uniform,
        "duration": duration,
        "swap_at": swap,
        "killed_running": sum(o[3] for o in outcomes),
        "uniform_killed_running": sum(o[3] for o in outcomes if o[0] == "uniform"),
        "kept_old_tree": sum(o[4] == "kept" for o in outcomes),
        "reached_new_tree": sum(o[4] == "reached" for o in outcomes),
        "around_swap": {
            which: sum(1 for o in outcomes if o[0] == "around-swap" and o[4] == which)
            for which in ("kept", "reached")
        },
        "leftovers_seen": leftovers_seen,
        "leftovers_cleaned": cleaned,
        "bytes_lost": lost,
        "wall": time.monotonic() - wall,
        "outcomes": outcomes,
    }


def _replace_line(f: dict[str, Any]) -> str:
    return (
        f"unpack --replace kill sweep: moments={f['moments']} "
        f"(uniform {f['uniform']} over 0-110% of {f['duration']:.2f} s, swap seen at "
        f"{f['swap_at']:.3f} s: {f['around_swap']['kept']} kills around it kept the old tree, "
        f"{f['around_swap']['reached']} found the new) killed-while-running="
        f"{f['killed_running']} "
        f"states: old-tree-kept={f['kept_old_tree']} new-tree-reached={f['reached_new_tree']} "
        f"mixed=0 missing=0; leftovers cleaned={f['leftovers_cleaned']} "
        f"bytes lost={f['bytes_lost']}; wall {f['wall']:.1f} s"
    )


@pytest.mark.torture
def test_unpack_replace_kill_sweep(trees: Trees, area: Path) -> None:
    figures = replace_kill_sweep(
        trees,
        area,
        uniform=50,
        around_swap_ms=(-150, -100, -60, -30, -15, 0, 15, 30, 60, 100, 150),
        after_staged_ms=(0, 1, 3, 6),
        after_swap_ms=(0, 1, 2, 5, 10, 20),
    )
    _figures(_replace_line(figures))
    print(*figures["outcomes"], sep="\n")
    assert figures["uniform_killed_running"] >= 25, figures["outcomes"]
    assert figures["kept_old_tree"] >= 10 and figures["reached_new_tree"] >= 10, figures


def test_unpack_replace_kill_slice(trees: Trees, area: Path) -> None:
    """The quick slice of the sweep above: a few moments, one on each side of the swap."""
    figures = replace_kill_sweep(
        trees,
        area,
        uniform=3,
        around_swap_ms=(),
        after_staged_ms=(0,),
        after_swap_ms=(0,),
        calibrations=1,
    )
    assert figures["reached_new_tree"] >= 1, figures["outcomes"]


def pack_kill_sweep(
    big_tree: Path, tiny_tree: Path, out_dir: Path, *, count: int, calibrations: int = 2
) -> dict[str, Any]:
    """Kill ``pack`` at *count* moments, alternately with no OUT and over an old OUT
    (``--force``): OUT must be absent, the old archive, or the complete new one."""
    wall = time.monotonic()
    out_dir.mkdir()
    out = out_dir / "out.oxbak"
    durations = []
    for _ in range(calibrations):
        started = time.monotonic()
        assert_ok(oxbak("pack", big_tree, "-o", out, "--level", SLOW_LEVEL, "--force"))
        durations.append(time.monotonic() - started)
    duration = max(durations)
    reference = out.read_bytes()  # packs are reproducible (SOURCE_DATE_EPOCH is pinned)
    assert_ok(oxbak("verify", out))
    assert_ok(oxbak("pack", tiny_tree, "-o", out, "--force"))
    old = out.read_bytes()
    out.unlink()

    states: dict[str, int] = {"absent": 0, "old": 0, "complete": 0}
    alive_count = temps_seen = cleaned = lost = 0
    for i, moment in enumerate(_uniform(count, duration)):
        force = i % 2 == 1
        if force:
            out.write_bytes(old)
        proc = spawn("pack", big_tree, "-o", out, "--level", SLOW_LEVEL, *(["--force"] * force))
        alive, _ = _kill_at(proc, time.monotonic(), moment)
        alive_count += alive
        temps = pack_temps(out_dir)
        assert len(temps) <= 1
        assert sorted(os.listdir(out_dir)) == sorted(temps + (["out.oxbak"] * out.exists()))
        if not out.exists():
            assert not force, "pack --force lost the archive it was replacing"
            state = "absent"
        elif force and out.read_bytes() == old:
            state = "old"
        else:
            data = out.read_bytes()
            lost += 0 if data == reference else len(reference)
            assert data == reference, f"OUT holds a partial archive after a kill at {moment}"
            assert_ok(oxbak("verify", out))
            state = "complete"
        states[state] += 1
        temps_seen += len(temps)
        # The next pack to the same OUT removes the temp file a kill -9 left.
        assert_ok(oxbak("pack", tiny_tree, "-o", out, "--force"))
        assert os.listdir(out_dir) == ["out.oxbak"] and out.read_bytes() == old
        cleaned += len(temps)
        out.unlink()
    assert lost == 0
    return {
        "moments": count,
        "duration": duration,
        "killed_running": alive_count,
        "states": states,
        "temps_seen": temps_seen,
        "temps_cleaned": cleaned,
        "bytes_lost": lost,
        "wall": time.monotonic() - wall,
    }


def _pack_line(f: dict[str, Any]) -> str:
    s = f["states"]
    return (
        f"pack kill sweep: moments={f['moments']} (uniform over 0-110% of "
        f"{f['duration']:.2f} s, half over an old OUT with --force) "
        f"killed-while-running={f['killed_running']} states: no-OUT={s['absent']} "
        f"old-OUT-intact={s['old']} complete-and-verified={s['complete']} partial=0; "
        f"temp files left by kill -9={f['temps_seen']} cleaned by the next pack="
        f"{f['temps_cleaned']}; bytes lost={f['bytes_lost']}; wall {f['wall']:.1f} s"
    )


@pytest.mark.torture
def test_pack_kill_sweep(big_tree: Path, tiny_tree: Path, tmp_path: Path) -> None:
    figures = pack_kill_sweep(big_tree, tiny_tree, tmp_path / "out", count=24)
    _figures(_pack_line(figures))
    assert figures["killed_running"] >= 15
    assert figures["states"]["complete"] >= 1


def test_pack_kill_slice(big_tree: Path, tiny_tree: Path, tmp_path: Path) -> None:
    figures = pack_kill_sweep(big_tree, tiny_tree, tmp_path / "out", count=3, calibrations=1)
    assert figures["killed_running"] >= 1


# --------------------------------------------------------------------------- kills aimed at system calls
#
# The file system changes only in system calls. A kill on entering the Nth call of one
# kind (strace delivers SIGKILL there: ``-e inject=NAME:signal=KILL:when=N``) therefore
# reaches the states a kill at any moment can leave, and it is aimed by a measured run's
# own calls, not by the clock: every kill hits the running command however loaded the
# machine is. The measured run lists the calls that change files, in order; each sweep
# spreads its moments over the phases it finds in that list (extraction, commit, clean-up).

_CHANGING = (
    "rename,renameat,renameat2,mkdir,mkdirat,unlink,unlinkat,rmdir,openat,write,fsync,"
    "fdatasync,syncfs,chmod,fchmod,fchmodat,chown,fchown,fchownat,lchown,utimensat,"
    "link,linkat,symlink,symlinkat"
)
_CALL = re.compile(rb"^(\d+)\s+(\w+)\(")
_BOX_RENAMED = re.compile(rb'rename\w*\((?:AT_FDCWD, )?"[^"]*/\.oxbak-stage-[^/"]*", ')


@functools.cache
def _tracing_refused() -> str:
    """Why strace cannot trace here (ptrace forbidden, e.g. in some containers), or ""."""
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=none", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return "" if probe.returncode == 0 else probe.stderr.strip() or f"exit {probe.returncode}"


def require_strace() -> None:
    """Skip unless strace is installed (a failure under OXBAK_REQUIRE_TOOLS) and may trace."""
    require_tool("strace")
    refused = _tracing_refused()
    if refused:
        pytest.skip(f"strace cannot trace processes here: {refused}")


@dataclass(frozen=True)
class Call:
    """The *nth* call named *name* of a measured run's main process (its ``strace`` line).

    strace counts an injection's calls per process: a kill aimed at the main process's
    Nth call of a name hits it there only if no worker process makes calls of that name
    (workers create and write files; the main process makes directories, links, syncs
    and renames). Only such calls are *aimable*.
    """

    name: str
    nth: int
    line: bytes
    aimable: bool = True


def measured_calls(tmp: Path, *args: str | os.PathLike[str]) -> list[Call]:
    """Run oxbak with *args* to the end under strace; its file-changing calls, in order."""
    log = tmp / "strace.log"
    result = subprocess.run(
        ["strace", "-f", "-qq", "--seccomp-bpf", "-o", str(log), "-e", f"trace={_CHANGING}"]
        + [str(OXBAK)]
        + [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    assert_ok(result)
    counts: dict[str, int] = {}
    mine: list[tuple[str, int, bytes]] = []
    theirs: set[str] = set()  # names of the calls worker processes make
    main = None
    for line in log.read_bytes().splitlines():
        match = _CALL.match(line)
        if match:
            pid, name = match.group(1), match.group(2).decode()
            main = main or pid  # the first process to change a file is the command's
            if pid != main:
                theirs.add(name)
                continue
            counts[name] = counts.get(name, 0) + 1
            mine.append((name, counts[name], line))
    log.unlink()
    return [Call(name, nth, line, name not in theirs) for name, nth, line in mine]


def kill_at_call(call: Call, *args: str | os.PathLike[str]) -> bool:
    """Run oxbak with *args*, SIGKILLed on entering *call*; whether the kill happened."""
    result = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", f"trace={call.name}"]
        + ["-e", f"inject={call.name}:signal=KILL:when={call.nth}", str(OXBAK)]
        + [str(a) for a in args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    return result.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)


def spread(calls: list[Call], count: int) -> list[Call]:
    """*count* of the aimable *calls*, evenly spaced, first and last included."""
    calls = [c for c in calls if c.aimable]
    if count <= 0 or not calls:
        return []
    if count == 1 or len(calls) <= count:
        return calls[:: max(1, len(calls) // max(1, count))][:count]
    return [calls[round(i * (len(calls) - 1) / (count - 1))] for i in range(count)]


def _merge_expected(trees: Trees) -> Snapshot:
    """DEST after merging the new tree into the old one: the new tree, plus the old
    tree's entries the new one does not have."""
    kept = {p: v for p, v in trees.old.items() if p not in trees.new}
    return {**kept, **trees.new}


def _merge_check(snap: Snapshot, trees: Trees) -> dict[str, int]:
    """Classify DEST after a killed merge; fail on any torn, unexpected or missing entry."""
    counts = {"old": 0, "new": 0, "added": 0, "kept": 0}
    torn: list[bytes] = []
    for path, value in snap.items():
        old, new = trees.old.get(path), trees.new.get(path)
        assert old is not None or new is not None, f"unexpected entry {path!r} in DEST"
        if value[0] == "dir":
            # Directories are merged, not replaced; their modes and times are set last.
            assert (old or new or ("",))[0] == "dir" or (new or ("",))[0] == "dir", path
            continue
        # Files: (type, mode, mtime, content) — the inode's other names may differ while
        # the hard link and its target are renamed one after the other.
        is_old = old is not None and value[:4] == old[:4]
        is_new = new is not None and value[:4] == new[:4]
        if not (is_old or is_new):
            torn.append(path)
        elif new is None:
            counts["kept"] += 1
        elif old is None:
            counts["added"] += 1
        else:
            counts["new" if is_new else "old"] += 1
    missing = [p for p in trees.old if p not in snap]
    assert not torn, f"torn or foreign entries in DEST: {torn[:5]}"
    assert not missing, f"a killed merge removed {missing[:5]}"
    return counts


def merge_kill_sweep(
    trees: Trees, area: Path, *, staging: int, in_commit: int, cleanup: int
) -> dict[str, Any]:
    """Kill ``unpack --merge`` (the new tree into the old one) at file-changing system
    calls of a measured run: *staging* spread over the extraction, *in_commit* over the
    merge's renames, *cleanup* over the removal of its box (see above: every kill hits
    the running command, however loaded the machine)."""
    wall = time.monotonic()
    dest = area / "dest"
    expected = _merge_expected(trees)
    shared = sum(1 for p, v in trees.new.items() if v[0] != "dir" and p in trees.old)
    added = sum(1 for p, v in trees.new.items() if v[0] != "dir" and p not in trees.old)

    def reset() -> None:
        assert_ok(oxbak("unpack", "--replace", trees.old_archive, dest))
        assert snapshot(dest) == trees.old
        assert oxbak_leftovers(area) == []

    assert_ok(oxbak("unpack", trees.old_archive, dest))
    calls = measured_calls(area, "unpack", "--merge", trees.new_archive, dest)
    assert snapshot(dest) == expected
    reset()
    box = os.fsencode(str(area / ".oxbak-stage-"))
    begun = next(i for i, c in enumerate(calls) if box in c.line)
    # The merge's renames move entries from the box's tree into DEST.
    merging = [
        i
        for i, c in enumerate(calls)
        if c.name.startswith("rename") and b"/tree/" in c.line and box in c.line
    ]
    first, last = merging[0], merging[-1]
    moments = (
        [("staging", c) for c in spread(calls[begun:first], staging)]
        + [("commit", c) for c in spread(calls[first : last + 1], in_commit)]
        + [("clean-up", c) for c in spread(calls[last + 1 :], cleanup)]
    )

    phases = {"untouched": 0, "mixed": 0, "complete": 0}
    killed = leftovers_seen = cleaned = lost = 0
    mixed_new: list[int] = []
    for _, call in moments:
        killed += kill_at_call(call, "unpack", "--merge", trees.new_archive, dest)
        snap = snapshot(dest)
        counts = _merge_check(snap, trees)
        lost += _lost_bytes(snap, {p: v for p, v in trees.old.items() if p not in trees.new})
        if counts["new"] == 0 and counts["added"] == 0:
            phases["untouched"] += 1
        elif counts["old"] == 0 and counts["added"] == added:
            phases["complete"] += 1
        else:
            phases["mixed"] += 1
            mixed_new.append(counts["new"])
        left = oxbak_leftovers(area)
        leftovers_seen += len(left)
        # The next merge cleans up, then brings in the full new version of every file and
        # leaves DEST's other files alone.
        assert_ok(oxbak("unpack", "--merge", trees.new_archive, dest))
        assert snapshot(dest) == expected
        assert oxbak_leftovers(area) == []
        cleaned += len(left)
        reset()
    assert lost == 0
    return {
        "moments": len(moments),
        "renames": len(merging),
        "killed": killed,
        "phases": phases,
        "shared_files": shared,
        "mixed_new": sorted(mixed_new),
        "leftovers_seen": leftovers_seen,
        "leftovers_cleaned": cleaned,
        "bytes_lost": lost,
        "wall": time.monotonic() - wall,
    }


def _span(values: list[int]) -> str:
    return f"{values[0]}-{values[-1]}" if values else "-"


def _merge_line(f: dict[str, Any]) -> str:
    p = f["phases"]
    return (
        f"unpack --merge kill sweep at system calls: moments={f['moments']} (spread over "
        f"the extraction, the {f['renames']} renames of the commit and the clean-up) "
        f"killed={f['killed']} states: all-old={p['untouched']} "
        f"mixed-old/new-files={p['mixed']} all-new={p['complete']} torn=0 unexpected=0 "
        f"(mixed states held {_span(f['mixed_new'])} new versions of the "
        f"{f['shared_files']} files in both trees); leftovers cleaned="
        f"{f['leftovers_cleaned']}; bytes lost={f['bytes_lost']}; wall {f['wall']:.1f} s"
    )


@pytest.mark.torture
def test_unpack_merge_kill_sweep(trees: Trees, area: Path) -> None:
    require_strace()
    figures = merge_kill_sweep(trees, area, staging=6, in_commit=16, cleanup=2)
    _figures(_merge_line(figures))
    assert figures["killed"] == figures["moments"], figures
    assert figures["phases"]["mixed"] >= 14, figures


def test_unpack_merge_kill_slice(trees: Trees, area: Path) -> None:
    require_strace()
    figures = merge_kill_sweep(trees, area, staging=0, in_commit=2, cleanup=0)
    assert figures["killed"] == figures["moments"] == 2, figures
    assert figures["phases"] == {"untouched": 1, "mixed": 1, "complete": 0}, figures


def mount_kill_sweep(
    trees: Trees, area: Path, mode: str, *, staging: int, commit: int | None, cleanup: int
) -> dict[str, Any]:
    """Kill ``unpack`` (``--replace``, or into an empty DEST) into a tmpfs mount point at
    file-changing system calls; DEST must be left exactly as it was or exactly the new
    tree once ``recover`` (or the next unpack) has run, and keep its inode throughout.

    Per direction (old tree to new, and back), *staging* and *cleanup* kills are spread
    over the calls before the commit's journal and after its box is renamed, and
    *commit* over those between (None: every one of them).
    """
    wall = time.monotonic()
    with tmpfs(area / "mnt") as dest:
        inode = _inode(dest)
        archive = {"old": trees.old_archive, "new": trees.new_archive}
        snaps = {"old": trees.old, "new": trees.new}
        flags = ["--replace"] if mode == "replace" else []

        def prepare(start: str) -> Snapshot:
            """DEST holds the *start* tree (or nothing, for a plain unpack)."""
            if mode == "replace":
                assert_ok(oxbak("unpack", "--replace", archive[start], dest))
            else:
                for name in os.listdir(dest):
                    if (dest / name).is_dir() and not (dest / name).is_symlink():
                        shutil.rmtree(dest / name)
                    else:
                        (dest / name).unlink()
            return snapshot(dest)

        moments: list[tuple[str, str, str, Call]] = []
        for start, target in (("old", "new"), ("new", "old")):
            prepare(start)
            calls = measured_calls(area, "unpack", *flags, archive[target], dest)
            assert snapshot(dest) == snaps[target]
            begun = next(i for i, c in enumerate(calls) if b"/.oxbak-stage-" in c.line)
            journal = next(i for i, c in enumerate(calls) if b"/journal.tmp" in c.line)
            boxed = next(i for i, c in enumerate(calls) if _BOX_RENAMED.search(c.line))
            window = calls[journal : boxed + 1]
            moments += [
                (start, target, "staging", c) for c in spread(calls[begun:journal], staging)
            ]
            moments += [
                (start, target, "commit", c)
                for c in (
                    [c for c in window if c.aimable] if commit is None else spread(window, commit)
                )
            ]
            moments += [(start, target, "clean-up", c) for c in spread(calls[boxed + 1 :], cleanup)]

        tally: dict[str, dict[str, int]] = {}
        killed = journaled_count = 0
        for number, (start, target, phase, call) in enumerate(moments):
            before = prepare(start)
            killed += kill_at_call(call, "unpack", *flags, archive[target], dest)
            # Still the mount point, the same directory: its users keep it.
            assert is_mount_point(str(dest)) and _inode(dest) == inode, (phase, call)
            journaled = bool(
                glob.glob(os.path.join(glob.escape(str(dest)), ".oxbak-stage-*", "journal"))
            )
            journaled_count += journaled
            if number % 2 or mode != "replace":
                assert_ok(oxbak("recover", dest))
                after = snapshot(dest)
                if journaled or phase == "clean-up":
                    assert after == snaps[target], f"recover did not complete it: {call}"
                else:
                    assert after == before, f"recover did not give back the old DEST: {call}"
            else:
                # The next unpack recovers first, then restores its own tree.
                assert_ok(oxbak("unpack", "--replace", archive[start], dest))
                after = snapshot(dest)
                assert after == snaps[start], call
            assert oxbak_leftovers(dest) == [] and oxbak_leftovers(area) == []
            if number % 2 or mode != "replace":
                outcome = "new" if after == snaps[target] else "old"
            else:
                outcome = "unpacked"
            counts = tally.setdefault(phase, {"old": 0, "new": 0, "unpacked": 0})
            counts[outcome] += 1
    return {
        "mode": mode,
        "moments": len(moments),
        "killed": killed,
        "journaled": journaled_count,
        "phases": tally,
        "wall": time.monotonic() - wall,
    }


def _mount_line(f: dict[str, Any]) -> str:
    phases = " ".join(
        f"{phase} {c['old']} old, {c['new']} new, {c['unpacked']} by the next unpack;"
        for phase, c in f["phases"].items()
    )
    return (
        f"unpack{' --replace' if f['mode'] == 'replace' else ''} into a mount point, kill "
        f"sweep at system calls: moments={f['moments']} killed={f['killed']} "
        f"journaled={f['journaled']} states after `oxbak recover`: "
        f"{phases} mixed=0; wall {f['wall']:.1f} s"
    )


@pytest.mark.torture
@pytest.mark.parametrize("mode", ["replace", "new"])
def test_unpack_into_mount_point_kill_sweep(trees: Trees, area: Path, mode: str) -> None:
    require_strace()
    if mode == "replace":
        figures = mount_kill_sweep(trees, area, mode, staging=6, commit=30, cleanup=4)
    else:
        figures = mount_kill_sweep(trees, area, mode, staging=3, commit=10, cleanup=2)
    _figures(_mount_line(figures))
    assert figures["killed"] == figures["moments"], figures
    assert figures["moments"] >= (50 if mode == "replace" else 20), figures


def test_unpack_into_mount_point_kill_slice(trees: Trees, area: Path) -> None:
    require_strace()
    figures = mount_kill_sweep(trees, area, "replace", staging=1, commit=3, cleanup=1)
    assert figures["killed"] == figures["moments"] == 10, figures
    assert figures["journaled"] >= 4, figures


# --------------------------------------------------------------------------- chains


def _chain_of_old(trees: Trees, work: Path) -> tuple[list[Path], Snapshot]:
    """The old tree's archive and an incremental on it: a tenth of the files rewritten,
    a directory gone, one added; and the snapshot of the incremental's tree."""
    root = work / "edited"
    old_root = trees.old_archive.parent / "old"
    subprocess.run(["cp", "-a", str(old_root), str(root)], check=True)
    for d in range(0, 30, 3):
        (root / f"dir{d:02}" / "file005.txt").write_bytes(b"rewritten after the full pack\n")
    shutil.rmtree(root / "dir29")
    (root / "later").mkdir()
    (root / "later" / "note.txt").write_bytes(b"added after the full pack\n")
    inc = work / "inc.oxbak"
    assert_ok(oxbak("pack", root, "-o", inc, "--base", trees.old_archive))
    return [trees.old_archive, inc], snapshot(root)


def chain_kill_sweep(trees: Trees, area: Path, count: int) -> dict[str, int]:
    """Kill ``unpack --replace FULL INC DEST`` (DEST the old tree) at *count* of its
    file-changing system calls; after ``recover`` DEST must be exactly the old tree or
    exactly the chain's, and nothing may be left beside it."""
    chain, edited = _chain_of_old(trees, area.parent)
    dest = area / "dest"
    assert_ok(oxbak("unpack", trees.old_archive, dest))
    calls = measured_calls(area, "unpack", "--replace", *chain, dest)
    assert snapshot(dest) == edited
    tally = {"moments": 0, "killed": 0, "old": 0, "chain": 0}
    for call in spread(calls, count):
        assert_ok(oxbak("unpack", "--replace", trees.old_archive, dest))
        tally["moments"] += 1
        tally["killed"] += kill_at_call(call, "unpack", "--replace", *chain, dest)
        assert_ok(oxbak("recover", dest))
        after = snapshot(dest)
        assert after in (trees.old, edited), call
        tally["old" if after == trees.old else "chain"] += 1
        assert oxbak_leftovers(area) == []
    return tally


@pytest.mark.torture
def test_unpack_chain_kill_sweep(trees: Trees, area: Path) -> None:
    require_strace()
    tally = chain_kill_sweep(trees, area, 40)
    _figures(f"chain --replace: {tally}")
    assert tally["killed"] == tally["moments"] == 40, tally
    assert tally["old"] and tally["chain"], tally


def test_unpack_chain_kill_slice(trees: Trees, area: Path) -> None:
    require_strace()
    tally = chain_kill_sweep(trees, area, 4)
    assert tally["killed"] == tally["moments"] == 4, tally
    assert tally["old"] and tally["chain"], tally


@pytest.mark.parametrize("mode", ["new", "replace"])
def test_unpack_with_a_worker_killed_leaves_dest_as_it_was(
    trees: Trees, area: Path, mode: str
) -> None:
    """A worker process killed while it writes files: one error line, DEST untouched.

    The kill is aimed at a call only workers make (the main process never fchmods), on
    entering the 200th of one worker, so the other worker and the main process are still
    at work when it dies.
    """
    require_strace()
    dest = area / "dest"
    flags = ["--replace"] if mode == "replace" else []
    if mode == "replace":
        assert_ok(oxbak("unpack", trees.old_archive, dest))
    before = snapshot(dest) if mode == "replace" else None
    calls = measured_calls(area, "unpack", *flags, trees.new_archive, area / "probe")
    assert not any(c.name == "fchmod" for c in calls), "the main process fchmods"
    shutil.rmtree(area / "probe")
    result = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fchmod"]
        + ["-e", "inject=fchmod:signal=KILL:when=200", str(OXBAK), "unpack", *flags]
        + [str(trees.new_archive), str(dest)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    assert result.returncode == 1, result
    (line,) = result.stderr.decode().strip().splitlines()
    assert re.fullmatch(
        r"oxbak: error: worker process \d+ was killed by signal 9 before finishing its work",
        line,
    ), line
    if mode == "new":
        assert not dest.exists()
    else:
        assert snapshot(dest) == before
    assert oxbak_leftovers(area) == []
