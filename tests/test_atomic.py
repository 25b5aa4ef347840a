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
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def _default_sigint() -> None:
    # A shell may start the test run with SIGINT ignored (background job); exec keeps an
    # ignored signal ignored, and Python then installs no KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
        preexec_fn=_default_sigint if signal.getsignal(signal.SIGINT) == signal.SIG_IGN else None,
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


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, poll: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(poll)


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


def set_mtimes(root: Path, base_ns: int) -> None:
    """Distinct nanosecond mtimes for everything, directories last and deepest first."""
    root_b = os.fsencode(root)
    dirs: list[bytes] = [root_b]
    others: list[bytes] = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            (others if os.path.islink(p) else dirs).append(p)
        others += [os.path.join(dirpath, name) for name in filenames]
    for i, p in enumerate(sorted(others)):
        os.utime(p, ns=(base_ns + i * 1_000_003, base_ns + i * 1_000_003), follow_symlinks=False)
    base_ns += len(others) * 1_000_003
    for i, p in enumerate(sorted(dirs, key=lambda d: -d.count(b"/"))):
        os.utime(p, ns=(base_ns + i * 7 + 1, base_ns + i * 7 + 1), follow_symlinks=False)


def oxbak_leftovers(directory: Path) -> list[str]:
    """Staging and moved-aside directories of unpack (``.oxbak-stage-…``, ``.oxbak-old-…``)."""
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
    set_mtimes(root, 1_650_000_000_000_000_017 if flavour == "old" else 1_700_000_000_123_456_789)


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
    try:
        # Once the temp file exists the pack is writing (and its handlers are installed).
        wait_until(lambda: bool(pack_temps(out_dir)) or proc.poll() is not None)
        time.sleep(0.3)
        assert proc.poll() is None, "pack ended before the signal: BIG tree too small?"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
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
    """A copy of *archive* with one byte flipped in its last 1 %: extraction gets through
    (almost) the whole tree before the damage is found."""
    data = bytearray(archive.read_bytes())
    data[len(data) - max(2, len(data) // 200)] ^= 0xFF
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
    try:
        # Interrupt while the staging directory is being filled.
        wait_until(lambda: bool(oxbak_leftovers(area)) or proc.poll() is not None)
        time.sleep(0.1)
        assert proc.poll() is None, "unpack ended before it could be interrupted"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
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
