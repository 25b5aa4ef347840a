"""The hostile-archive corpus, through the real command line, in a sandbox.

``tests/corpus/build.py`` writes one crafted ``.oxbak`` per case and ``expected.json``
(built once per session, deterministically). For every case, ``oxbak unpack FILE DEST``
and ``oxbak verify FILE`` run as child processes whose address space is capped at 1 GiB
(``RLIMIT_AS``) and whose wall time is limited, inside a sandbox directory that also
holds a canary directory beside DEST. Two variants: DEST absent, and DEST holding an old
tree (``--replace``). Each run must give the expected exit code, exactly one clean
``oxbak: error: …`` line naming the expected thing (none on success), no traceback, no
``.oxbak-*`` leftover, and leave everything outside DEST — and DEST itself after a
refusal — exactly as it was (paths, types, modes, owners, mtimes, sizes, inode and link
counts, content hashes, link targets).

``make test`` runs every case with DEST absent and a rotating half of the cases with an
existing DEST; ``make torture`` runs the whole matrix.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corpus import build as corpus_build
from test_hostile import rm_tree, walk

OXBAK = Path(sys.executable).parent / "oxbak"
ADDRESS_SPACE = 1 << 30  # RLIMIT_AS of every child
TIMEOUT = 20.0  # seconds per child
VARIANTS = ("new", "replace")

NAMES = [case.name for case in corpus_build.CASES]

#: Engine bugs the corpus has found and that are not fixed yet: case name -> the bug.
#: Only the *outcome* checks (exit codes, error text) may fail for these; every safety
#: check (nothing outside DEST touched, DEST intact, no leftovers, no traceback, bounded
#: time) still runs and must pass. A listed case that passes fails the test: remove it.
#: (Fixed so far: a 4096-byte symlink target passed verify and failed unpack with
#: "File name too long"; a path too long for the staging directory failed mkdir with
#: "cannot unpack into DEST: File name too long" instead of naming the member.)
KNOWN_BUGS: dict[str, str] = {}


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Corpus:
    files: Path  # the .oxbak files and expected.json
    box: Path  # the sandbox: holds dest/ and canary/; every child runs in it
    out: Path  # the children's stdout/stderr (outside the sandbox)
    expected: dict[str, dict[str, Any]]


@dataclass
class Run:
    """One finished child."""

    args: list[str]
    code: int
    stdout: bytes
    stderr: str
    seconds: float
    max_rss_kib: int
    timed_out: bool


@dataclass
class Stats:
    runs: list[tuple[str, str, str, float, int]] = field(default_factory=list)
    cases: set[str] = field(default_factory=set)


STATS = Stats()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    assert OXBAK.is_file(), f"the console script is not installed at {OXBAK}"
    base = tmp_path_factory.mktemp("corpus")
    files = base / "files"
    box = base / "box"
    out = base / "out"
    out.mkdir()
    corpus_build.build(files, box)
    expected = json.loads((files / "expected.json").read_text())
    return Corpus(files, box, out, expected)


def rotating_half(name: str) -> bool:
    """Which cases the quick run tries with an existing DEST: half of them, the other
    half on the next day."""
    day = datetime.date.today().toordinal()
    return (NAMES.index(name) + day) % 2 == 0


# --------------------------------------------------------------------------- sandbox


OLD_DEST = {
    "keep.txt": b"original content\n",
    "a.txt": b"old a.txt, not the archive's\n",
    "docs/inner.txt": b"inner\n",
    "private/secret.txt": b"private\n",
}


def make_box(box: Path, *, existing_dest: bool) -> Path:
    """A fresh sandbox: ``canary/`` (a file, a read-only file, a dir, a link) and, with
    *existing_dest*, a DEST holding an old tree. Returns DEST."""
    rm_tree(box)
    canary = box / "canary"
    (canary / "sub").mkdir(parents=True)
    (canary / "secret").write_bytes(b"canary\n")
    os.chmod(canary / "secret", 0o600)
    (canary / "sub" / "ro.txt").write_bytes(b"read only\n")
    os.chmod(canary / "sub" / "ro.txt", 0o444)
    os.symlink("secret", canary / "link")
    dest = box / "dest"
    if existing_dest:
        for rel, content in OLD_DEST.items():
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        os.chmod(dest / "private", 0o700)
        os.symlink("keep.txt", dest / "link")
        os.link(dest / "keep.txt", dest / "hard")
    stamp = 1_600_000_000_000_000_000
    for path, _, _st in walk(box):
        os.utime(path, ns=(stamp, stamp), follow_symlinks=False)
    os.utime(box, ns=(stamp, stamp))
    return dest


Snapshot = dict[str, tuple[object, ...]]


def snapshot(box: Path, *, skip: str | None = None) -> Snapshot:
    """Everything under *box* (links not followed), without the subtree *skip*.

    The sandbox root's own mtime is left out: staging directories beside DEST come and go.
    """
    out: Snapshot = {}
    for path, rel, st in walk(box):
        if skip is not None and (rel == skip or rel.startswith(skip + "/")):
            continue
        common = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        times = (st.st_mtime_ns, st.st_ino, st.st_nlink, st.st_size)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = (*common, *times, os.readlink(path))
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out[rel] = (*common, *times, digest)
        else:
            out[rel] = (*common, *times)
    return out


def restored(dest: Path) -> dict[str, list[Any]]:
    """DEST in the form of expected.json's ``restored``."""
    out: dict[str, list[Any]] = {}
    for path, rel, st in walk(dest):
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ["symlink", os.readlink(path)]
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ["dir", stat.S_IMODE(st.st_mode)]
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            out[rel] = ["file", stat.S_IMODE(st.st_mode), digest]
        else:
            out[rel] = ["other", st.st_mode]
    return out


def leftovers(box: Path) -> list[str]:
    return sorted(n for n in os.listdir(box) if n.startswith(".oxbak-"))


# --------------------------------------------------------------------------- children


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


LAUNCHER = Path(corpus_build.__file__).with_name("launch.py")


def run_oxbak(args: list[str], *, cwd: Path, out: Path) -> Run:
    """Run ``oxbak *args`` under RLIMIT_AS (set in ``preexec_fn``) and TIMEOUT.

    The child is started through ``corpus/launch.py``, a tiny process that reports the
    command's own peak RSS from ``os.wait4`` (a child forked from pytest itself would
    report pytest's size); the launcher's own ``wait4`` rusage is the fallback.
    """
    env = dict(os.environ)
    env.pop("OXBAK_DEBUG", None)
    stdout_path, stderr_path, usage_path = out / "stdout", out / "stderr", out / "usage"
    usage_path.unlink(missing_ok=True)
    command = [sys.executable, "-I", "-S", str(LAUNCHER), str(usage_path), str(OXBAK), *args]
    started = time.monotonic()
    with open(stdout_path, "wb") as so, open(stderr_path, "wb") as se:
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=so,
            stderr=se,
            env=env,
            preexec_fn=_limit_address_space,
            start_new_session=True,  # one process group: a timeout kills both
        )
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > TIMEOUT:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    max_rss = usage.ru_maxrss  # KiB on Linux
    if usage_path.exists():
        code_text, rss_text = usage_path.read_text().split()
        assert int(code_text) == proc.returncode
        max_rss = int(rss_text)
    return Run(
        args,
        proc.returncode,
        stdout_path.read_bytes(),
        stderr_path.read_bytes().decode("utf-8", "replace"),
        seconds,
        max_rss,
        timed_out,
    )


def check_run(run: Run, expect: dict[str, Any], *, verify: bool) -> list[str]:
    """The outcome problems of *run* (wrong exit code or message); empty if as expected.

    Hard failures (traceback, timeout, output on stdout) are asserted here directly.
    """
    what = " ".join(run.args[:1])
    assert not run.timed_out, f"{what} still running after {TIMEOUT} s"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stdout == b"", f"{what} wrote to stdout: {run.stdout[:200]!r}"
    problems: list[str] = []
    if run.code != expect["exit"]:
        problems.append(f"{what} exited {run.code}, expected {expect['exit']}: {run.stderr!r}")
    lines = run.stderr.splitlines()
    errors = [ln for ln in lines if ln.startswith("oxbak: error:")]
    if expect["exit"] == 0:
        bad = [ln for ln in lines if ln.startswith(("oxbak: error", "oxbak: problem"))]
        if bad:
            problems.append(f"{what} succeeded with error lines: {bad}")
        return problems
    if verify:
        # verify lists each problem on its own line, then one summary error line.
        shape_ok = (
            len(errors) == 1
            and lines[-1] == errors[0]
            and all(ln.startswith("oxbak: problem: ") for ln in lines[:-1])
        )
        text = run.stderr
    else:
        shape_ok = len(lines) == 1 and len(errors) == 1
        text = errors[0] if errors else ""
    if not shape_ok:
        problems.append(f"{what}: stderr is not one clean error line: {run.stderr!r}")
    elif expect["error"] not in text:
        problems.append(f"{what}: error does not mention {expect['error']!r}: {run.stderr!r}")
    return problems


def record(case: str, variant: str, run: Run) -> None:
    STATS.runs.append((case, variant, run.args[0], run.seconds, run.max_rss_kib))
    STATS.cases.add(case)


# --------------------------------------------------------------------------- tests


def _params() -> Iterator[Any]:
    """The quick matrix (every case with DEST absent, a rotating half with DEST present),
    then the full one under `make torture` (every case both ways, verify both times)."""
    for name in NAMES:
        for variant in VARIANTS:
            if variant == "new" or rotating_half(name):
                yield pytest.param(name, variant, False, id=f"{name}-{variant}")
    for name in NAMES:
        for variant in VARIANTS:
            yield pytest.param(
                name, variant, True, id=f"full-{name}-{variant}", marks=pytest.mark.torture
            )


@pytest.mark.parametrize(("name", "variant", "full"), list(_params()))
def test_corpus_case(corpus: Corpus, name: str, variant: str, full: bool) -> None:
    expected = corpus.expected[f"{name}.oxbak"]
    archive = corpus.files / f"{name}.oxbak"
    box = corpus.box
    dest = make_box(box, existing_dest=variant == "replace")
    before = snapshot(box)
    succeeds = expected["unpack"]["exit"] == 0

    flags = ["--replace"] if variant == "replace" else []
    unpack = run_oxbak(
        ["unpack", *flags, *expected["args"], str(archive), str(dest)], cwd=box, out=corpus.out
    )
    record(name, variant, unpack)
    outcome = check_run(unpack, expected["unpack"], verify=False)

    # Safety, whatever the outcome: nothing outside DEST changed, no staging left, and
    # DEST exactly as before unless a successful restore was expected.
    assert leftovers(box) == [], f"left behind: {leftovers(box)}"
    if succeeds:
        assert snapshot(box, skip="dest") == snapshot_without(before, "dest")
        if unpack.code == 0:
            got = restored(dest)
            if got != expected["restored"]:
                outcome.append(f"restored tree differs: {got} != {expected['restored']}")
    else:
        assert snapshot(box) == before, "a refused unpack changed the sandbox"
        if variant == "new":
            assert not os.path.lexists(dest)
    after_unpack = snapshot(box)

    # verify writes nothing anywhere; its result does not depend on DEST, so the quick
    # run checks it once per case.
    if variant == "new" or full:
        verify = run_oxbak(["verify", str(archive)], cwd=box, out=corpus.out)
        record(name, variant, verify)
        outcome += check_run(verify, expected["verify"], verify=True)
        assert snapshot(box) == after_unpack, "verify changed the sandbox"

    if name in KNOWN_BUGS:
        if outcome:
            pytest.xfail(f"known engine bug: {KNOWN_BUGS[name]} | {outcome}")
        pytest.fail(f"{name} now behaves as expected: remove it from KNOWN_BUGS")
    assert not outcome, outcome


def snapshot_without(snap: Snapshot, skip: str) -> Snapshot:
    return {k: v for k, v in snap.items() if k != skip and not k.startswith(skip + "/")}


REQUIRED = [
    # every kind of hostile archive the corpus promises (see build.py)
    "traversal-dotdot",
    "traversal-pax-path",
    "absolute-name",
    "nul-in-pax-path",
    "empty-name",
    "symlink-write-through",
    "symlink-write-through-chain",
    "symlink-dot-write-through",
    "symlink-dotdot-write-through",
    "symlink-target-4096",
    "hardlink-absolute",
    "hardlink-to-later",
    "hardlink-to-symlink",
    "hardlink-to-self",
    "duplicate-file-then-dir",
    "dir-then-file-same-name",
    "char-device",
    "block-device",
    "fifo",
    "modes-setuid-setgid-sticky-world-writable",
    "duplicate-file",
    "manifest-json-in-tree",
    "nesting-10000",
    "name-1MB-pax",
    "manifest-100MB-claimed",
    "manifest-100MB-real",
    "not-json",
    "not-object",
    "totals-string-count",
    "version-zero",
    "version-negative",
    "version-2pow64",
    "version-string",
    "window-2GiB-frame3",
    "zstd-bomb-1GiB-member",
    "huge-size-1TB-pax",
    "huge-pax-header",
    "gnu-sparse",
    "gnu-longname",
    "frames-garbage-between",
    "skippable-reserve-64KiB",
    "empty-file",
    "not-zstd-bare-tar",
]


def test_corpus_is_complete(corpus: Corpus) -> None:
    names = sorted(p.name for p in corpus.files.glob("*.oxbak"))
    assert names == sorted(corpus.expected), "expected.json and the files disagree"
    assert len(names) >= 40
    assert set(REQUIRED) <= set(NAMES), set(REQUIRED) - set(NAMES)
    for record_ in corpus.expected.values():
        for command in ("unpack", "verify"):
            expect = record_[command]
            assert expect["exit"] in (0, 1)
            assert (expect["error"] is None) == (expect["exit"] == 0), record_
        assert (record_["restored"] is not None) == (record_["unpack"]["exit"] == 0)


@pytest.mark.parametrize(
    "full", [False, pytest.param(True, marks=pytest.mark.torture)], ids=["quick", "full"]
)
def test_corpus_is_deterministic(corpus: Corpus, tmp_path: Path, full: bool) -> None:
    """Rebuilding gives the same bytes (the big cases only under `make torture`)."""
    names = [c.name for c in corpus_build.CASES if full or not c.big]
    again = corpus_build.build(tmp_path, corpus.box, names)
    for name in names:
        file_name = f"{name}.oxbak"
        assert (tmp_path / file_name).read_bytes() == (corpus.files / file_name).read_bytes()
        assert json.loads(json.dumps(again[file_name])) == corpus.expected[file_name]


@pytest.mark.parametrize(
    "full", [False, pytest.param(True, marks=pytest.mark.torture)], ids=["quick", "full"]
)
def test_corpus_figures(capsys: pytest.CaptureFixture[str], full: bool) -> None:
    """Runs last in this file: the count of cases and children, the peak RSS and time."""
    if not STATS.runs:
        pytest.skip("no corpus case ran")
    slowest = max(STATS.runs, key=lambda r: r[3])
    biggest = max(STATS.runs, key=lambda r: r[4])
    total = sum(r[3] for r in STATS.runs)
    line = (
        f"corpus: {len(STATS.cases)} cases, {len(STATS.runs)} oxbak runs "
        f"({total:.1f} s in children); max RSS {biggest[4] / 1024:.1f} MiB "
        f"({biggest[0]} {biggest[2]} {biggest[1]}); max time {slowest[3]:.2f} s "
        f"({slowest[0]} {slowest[2]} {slowest[1]})"
    )
    with capsys.disabled():
        print("\n" + line)
    figures = os.environ.get("OXBAK_CORPUS_FIGURES")
    if figures:
        with open(figures, "a") as fh:
            fh.write(line + "\n")
    assert slowest[3] < TIMEOUT
    assert biggest[4] * 1024 < ADDRESS_SPACE
