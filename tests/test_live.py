"""pack while another process keeps changing the tree: never torn, always verifiable, honest.

With -j 1 and with worker processes (-j 3): the tree has thousands of settled files
around the live ones, so that the live files are in a part of work a worker packs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import oxbak
import oxbak.writer
from oxbak.scan import scan_tree

OXBAK = str(Path(sys.executable).parent / "oxbak")

# The writer's records are self-checking: a file is a sequence of whole records, each
# "<generation>:<payload of that generation>\n", so a torn copy (parts of two writes, or a
# cut record) fails `_valid`.
WRITER = r"""
import os, random, sys
root = sys.argv[1]
rng = random.Random(int(sys.argv[2]))
def record(gen):
    return b"%d:%s\n" % (gen, (b"%d" % gen) * rng.randint(20, 400))
def content(gen):
    return b"".join(record(gen) for _ in range(rng.randint(1, 8)))
# Each change is one write(2) of whole records: what the application itself makes visible
# at once. A backup can only promise not to mix moments, not to fix an application's own
# half-written file.
gen = 0
while True:
    gen += 1
    op = rng.randrange(5)
    name = os.path.join(root, "f%03d" % rng.randrange(120))
    try:
        if op == 0:  # rewrite in place
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.write(fd, content(gen))
            os.close(fd)
        elif op == 1:  # rewrite by rename
            tmp = name + ".tmp%d" % gen
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, content(gen))
            os.close(fd)
            os.rename(tmp, name)
        elif op == 2:  # append
            fd = os.open(name, os.O_WRONLY | os.O_APPEND)
            os.write(fd, record(gen))
            os.close(fd)
        elif op == 3:  # delete
            os.unlink(name)
        else:  # create a new file
            fd = os.open(os.path.join(root, "new%06d" % gen), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.write(fd, record(gen))
            os.close(fd)
    except FileNotFoundError:
        pass
"""


def _valid(data: bytes) -> bool:
    if not data:
        return True
    if not data.endswith(b"\n"):
        return False
    for line in data.split(b"\n")[:-1]:
        gen, sep, payload = line.partition(b":")
        if (
            not sep
            or not gen.isdigit()
            or payload != gen * (len(payload) // len(gen))
            or len(payload) % len(gen)
        ):
            return False
    return True


def _settled(root: Path) -> None:
    """Files nobody changes, before and after the live ones in archive order (3,000 of
    about 1.5 KiB: parts of work for several workers)."""
    for group in ("a-settled", "z-settled"):
        for d in range(3):
            sub = root / group / f"d{d}"
            sub.mkdir(parents=True)
            for i in range(500):
                (sub / f"s{i:03d}").write_bytes(b"%d:" % i + b"s" * (1000 + i) + b"\n")


@pytest.fixture
def live_tree(tmp_path: Path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    _settled(src)
    for i in range(120):
        (src / f"f{i:03d}").write_bytes(b"0:" + b"0" * 1000 + b"\n")
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(src), str(seed)]) for seed in (1, 2)
    ]
    time.sleep(0.3)
    try:
        yield src
    finally:
        for w in writers:
            w.kill()
            w.wait()


@pytest.mark.parametrize("threads", ["1", "3"], ids=["j1", "j3"])
@pytest.mark.parametrize("round_", range(3))
def test_pack_under_live_writers(live_tree: Path, tmp_path: Path, round_: int, threads: str) -> None:
    if threads != "1":
        # The live files are packed by a worker: some part before them, and theirs.
        parts = oxbak.writer._plan(scan_tree(live_tree))
        assert sum(not part.solo for part in parts) >= 3
    out = tmp_path / f"live{round_}.oxbak"
    proc = subprocess.run(
        [OXBAK, "pack", str(live_tree), "-o", str(out), "--threads", threads],
        capture_output=True,
        text=True,
    )
    assert proc.returncode in (0, 3), proc.stderr
    assert "Traceback" not in proc.stderr
    if proc.returncode == 3:
        assert "archive is PARTIAL" in proc.stderr
    else:
        assert "PARTIAL" not in proc.stderr
    report = oxbak.verify(out)
    assert report.ok, report.problems
    assert report.partial == (proc.returncode == 3)
    toc = oxbak.read_info(out).toc
    assert toc is not None and toc.partial == (proc.returncode == 3)
    for name in report.changed + report.missing:
        assert name in proc.stderr  # pack named every file it could not capture
    dest = tmp_path / f"dest{round_}"
    oxbak.unpack(out, dest)
    changed = set(report.changed)
    for path in dest.iterdir():
        if path.is_file() and path.name not in changed:
            assert _valid(path.read_bytes()), f"{path.name} was archived torn"
    for group in ("a-settled", "z-settled"):
        assert len(list((dest / group).glob("d*/s*"))) == 1500
