"""pack(): atomic output, special files, excludes, and files that change while read."""

from __future__ import annotations

import errno
import io
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import oxbak
from oxbak import format as fmt
from oxbak.scan import scan_tree
from oxbak.writer import _plan, _write
from pipelike import Unseekable
from treeutil import Node, build, snapshot


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"seeds": Node(
                "dir",
                children={b"a.json": Node("file", data=b"{}"), b"b.tmp": Node("file", data=b"tmp")},
            ),
            b"cache": Node("dir", children={b"x": Node("file", data=b"x")}),
            b"memory": Node(
                "dir",
                children={b"facts": Node("dir", children={b"f.json": Node("file", data=b"f")})},
            ),
        },
    )
    return src


def test_refuses_existing_output(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "out.oxbak"
    out.write_bytes(b"precious")
    with pytest.raises(
        # The library names no command-line option; the CLI adds the --force hint.
        oxbak.OutputExistsError, match=r"out\.oxbak' already exists$"
    ):
        oxbak.pack(src, out)
    assert out.read_bytes() == b"precious"
    oxbak.pack(src, out, force=True)
    assert oxbak.verify(out).ok
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(
        oxbak.SourceError, match=r"^cannot pack '.*nope': No such file or directory$"
    ):
        oxbak.pack(tmp_path / "nope", tmp_path / "o.oxbak")
    (tmp_path / "file").write_text("x")
    with pytest.raises(oxbak.SourceError, match="not a directory$"):
        oxbak.pack(tmp_path / "file", tmp_path / "o.oxbak")
    assert not (tmp_path / "o.oxbak").exists()


def test_excludes(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "o.oxbak"
    oxbak.pack(src, out, excludes=["*.tmp", "cache", "memory/facts"])
    paths = {e.name for e in oxbak.list_entries(out)}
    assert paths == {".", "seeds", "seeds/a.json", "memory"}


def test_special_files_are_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = _tree(tmp_path)
    os.mkfifo(src / "seeds" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    try:
        with caplog.at_level(logging.WARNING, logger="oxbak"):
            result = oxbak.pack(src, tmp_path / "o.oxbak")
    finally:
        sock.close()
    assert result.skipped == ["seeds/fifo", "sock"]
    assert "skipping 'seeds/fifo': not a file, directory or symlink" in caplog.text
    assert oxbak.read_manifest(tmp_path / "o.oxbak").skipped == 2


def test_sections_match_the_old_backup(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = tmp_path / "o.oxbak"
    oxbak.pack(src, out, labels={"oxios_version": "0.4.1"})
    m = oxbak.read_manifest(out)
    assert [(s.name, s.entry_count) for s in m.sections] == [
        ("cache", 1),
        ("memory/facts", 1),
        ("seeds", 2),
    ]
    assert m.labels == {"oxios_version": "0.4.1"}
    assert m.created_at == "2023-11-14T22:13:20Z"
    assert (m.totals.files, m.totals.directories, m.totals.bytes) == (4, 5, 7)
    assert m.partial is None  # version 2: the final status is in the TOC
    toc = oxbak.read_info(out).toc
    assert toc is not None and toc.partial is False and toc.totals == m.totals


def test_vanished_file_makes_the_archive_partial(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    scan = scan_tree(src)
    (src / "seeds" / "a.json").unlink()
    out = io.BytesIO()
    result = _write(scan, out, 3, 1, {}, None)
    assert result.missing == ["seeds/a.json"] and result.partial
    out.seek(0)
    report = oxbak.verify(out)
    assert report.ok and report.partial and report.missing == ["seeds/a.json"]


@pytest.mark.parametrize(
    ("error", "why"),
    [
        (errno.EACCES, "could not be listed (Permission denied)"),
        (errno.EIO, "could not be listed (Input/output error)"),
        (errno.ENOENT, "vanished before it could be listed"),
    ],
    ids=["EACCES", "EIO", "ENOENT"],
)
def test_unreadable_directory_makes_the_archive_partial(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: int,
    why: str,
) -> None:
    """Like an unreadable file: not an exception, but a partial archive naming it."""
    src = _tree(tmp_path)
    real_listdir = os.listdir

    def listdir(path: Any) -> Any:
        if os.fsencode(path).endswith(b"/memory"):
            raise OSError(error, os.strerror(error), path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    out = tmp_path / "o.oxbak"
    with caplog.at_level(logging.WARNING, logger="oxbak"):
        result = oxbak.pack(src, out)
    monkeypatch.undo()
    assert result.partial and result.missing == ["memory/"] and result.changed == []
    assert f"directory 'memory' {why}; archived without what could not be read" in caplog.text
    # memory itself is stored (its lstat is known), memory/facts was never seen.
    assert (result.totals.directories, result.totals.files) == (4, 3)
    toc = oxbak.read_info(out).toc
    assert toc is not None and toc.partial and (toc.changed, toc.missing) == (0, 1)
    assert toc.entries == 7 and toc.totals == result.totals  # every record, memory too
    data = out.read_bytes()
    for archive in (out, Unseekable(data)):  # through the TOC, and as a stream
        report = oxbak.verify(archive)
        assert report.ok and report.partial and report.missing == ["memory/"], report.problems
    listed = [(e.name, e.type) for e in oxbak.list_entries(out)]
    assert ("memory", "dir") in listed and not any(n.startswith("memory/") for n, _ in listed)
    restored = oxbak.unpack(out, tmp_path / "dest")
    assert restored.partial and restored.missing == ["memory/"]
    assert os.listdir(tmp_path / "dest" / "memory") == []
    assert sorted(os.listdir(tmp_path / "dest" / "seeds")) == ["a.json", "b.tmp"]
    oxbak.unpack(out, tmp_path / "only", only=["memory"])  # read through the TOC
    assert os.listdir(tmp_path / "only") == ["memory"]
    assert os.listdir(tmp_path / "only" / "memory") == []


def test_unreadable_entry_makes_its_directory_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry that cannot be stat'ed: its kind is unknown, so its directory is flagged."""
    src = _tree(tmp_path)
    real_lstat = os.lstat

    def lstat(path: Any) -> os.stat_result:
        if os.fsencode(path).endswith(b"/seeds/b.tmp"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), path)
        return real_lstat(path)

    monkeypatch.setattr(os, "lstat", lstat)
    result = oxbak.pack(src, tmp_path / "o.oxbak")
    monkeypatch.undo()
    assert result.missing == ["seeds/"] and result.totals.files == 3
    report = oxbak.verify(tmp_path / "o.oxbak")
    assert report.ok and report.missing == ["seeds/"]
    oxbak.unpack(tmp_path / "o.oxbak", tmp_path / "dest")
    assert os.listdir(tmp_path / "dest" / "seeds") == ["a.json"]  # what could be read


class CountingSink(io.RawIOBase):
    """A write-only stream that counts the bytes written to it (the archive's bytes)."""

    def __init__(self) -> None:
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        self.written += n
        return n


def test_pack_progress_follows_the_compression_not_the_reading(tmp_path: Path) -> None:
    """Progress counts file bytes once their frames are compressed and written.

    With 4 threads, up to 8 frames (32 MiB here) are read but still being compressed; a
    count taken at read time would run that far ahead of the archive's bytes.
    """
    src = tmp_path / "src"
    src.mkdir()
    size = 40 << 20
    (src / "random.bin").write_bytes(os.urandom(size))  # incompressible: out >= in
    (src / "small.txt").write_bytes(b"small\n")
    sink = CountingSink()
    calls: list[tuple[int, int, int]] = []
    oxbak.pack(
        src,
        sink,
        level=1,
        threads=4,
        progress=lambda done, total: calls.append((done, total, sink.written)),
    )
    total = size + 6
    for done, _, written in calls[:-1]:
        assert written >= done, f"progress {done} reported with {written} bytes written"
    assert calls[-1][:2] == (total, total)  # the end is reported, and is 100 %
    assert all(t == total for _, t, _ in calls)
    dones = [d for d, _, _ in calls]
    assert dones == sorted(dones) and len(set(dones)) >= 10  # steps within the large file


@pytest.mark.parametrize("run", ["verify", "unpack"])
def test_progress_goes_through_a_large_file_and_ends_at_its_total(
    tmp_path: Path, run: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(20 << 20))
    (src / "gone.txt").write_bytes(b"x" * 1000)
    scan = scan_tree(src)
    (src / "gone.txt").unlink()  # the manifest counts its bytes; the archive does not hold them
    out = io.BytesIO()
    _write(scan, out, 1, 1, {}, None)
    archive = tmp_path / "a.oxbak"
    archive.write_bytes(out.getvalue())
    calls: list[tuple[int, int]] = []
    if run == "verify":
        assert oxbak.verify(archive, progress=lambda d, t: calls.append((d, t))).ok
    else:
        oxbak.unpack(archive, tmp_path / "dest", progress=lambda d, t: calls.append((d, t)))
    inside = [d for d, t in calls if 0 < d < 20 << 20]
    assert len(inside) >= 10, calls  # reported as the file goes, not only at its end
    assert calls[-1] == (20 << 20, 20 << 20)  # all the work: 100 %, not 20 MiB of 20 MiB + 1000


BIG = fmt.SMALL_FILE_MAX + 4 * 1024 * 1024


def test_large_file_changing_under_the_reader_is_flagged(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    big = src / "memory" / "events.jsonl"
    big.write_bytes(b"x" * BIG)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\n"
                "f = open(sys.argv[1], 'r+b')\n"
                "i = 0\n"
                "while True:\n"
                "    f.seek(i % 1000); f.write(b'y'); f.flush(); i += 1; time.sleep(0.0002)\n"
            ),
            str(big),
        ]
    )
    try:
        time.sleep(0.2)
        out = tmp_path / "live.oxbak"
        result = oxbak.pack(src, out, level=19, threads=1)
    finally:
        writer.kill()
        writer.wait()
    assert result.changed == ["memory/events.jsonl"] and result.partial
    toc = oxbak.read_info(out).toc
    assert toc is not None and toc.partial is True and (toc.changed, toc.missing) == (1, 0)
    report = oxbak.verify(out)
    assert report.ok and report.partial and report.changed == ["memory/events.jsonl"]


@pytest.mark.parametrize("threads", [1, 3])
def test_small_files_rewritten_while_packing_are_never_torn(tmp_path: Path, threads: int) -> None:
    """With -j 3, two workers pack them (4 MB of files: two parts of two frames)."""
    src = tmp_path / "src"
    src.mkdir()
    names = [src / f"{i:03d}.json" for i in range(40)]
    for n in names:
        n.write_bytes(b"A" * 100_000)
    assert sum(not part.solo for part in _plan(scan_tree(src))) == 2
    # Rewrites files in place, alternating whole contents: a torn copy would mix A and B.
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import os, sys\n"
                "names = sys.argv[1:]\n"
                "i = 0\n"
                "while True:\n"
                "    fd = os.open(names[i % len(names)], os.O_WRONLY)\n"
                "    byte = b'AB'[i % 2:i % 2 + 1]\n"
                "    for k in range(10): os.write(fd, byte * 10_000)\n"
                "    os.close(fd); i += 1\n"
            ),
            *map(str, names),
        ]
    )
    try:
        time.sleep(0.1)
        result = oxbak.pack(src, tmp_path / "o.oxbak", threads=threads)
    finally:
        writer.kill()
        writer.wait()
    assert oxbak.verify(tmp_path / "o.oxbak").ok
    dest = tmp_path / "dest"
    oxbak.unpack(tmp_path / "o.oxbak", dest)
    changed = set(result.changed)
    for path in dest.iterdir():
        data = path.read_bytes()
        if path.name not in changed:
            assert data in (b"A" * 100_000, b"B" * 100_000), path.name


def test_output_inside_source_is_not_packed_into_itself(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    out = src / "self.oxbak"
    oxbak.pack(src, out)
    assert "self.oxbak" not in {e.name for e in oxbak.list_entries(out)}
    dest = tmp_path / "d"
    oxbak.unpack(out, dest)
    expected = snapshot(str(src))
    del expected[b"self.oxbak"]
    got = snapshot(str(dest))
    assert {k: v for k, v in got.items() if k} == {k: v for k, v in expected.items() if k}


def test_hardlink_first_path_is_first_in_archive_order(tmp_path: Path) -> None:
    """The inode's first path in *archive* order is the file, even when a later-listed
    directory holds it (here ``a/x`` comes before ``z`` although the root is listed first).
    """
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"a": Node("dir", children={b"x": Node("file", data=b"shared")}),
            b"z": Node("hardlink", target=b"a/x"),
            b"b": Node("hardlink", target=b"a/x"),
        },
    )
    out = tmp_path / "o.oxbak"
    oxbak.pack(src, out)
    kinds = {e.name: (e.type, e.target) for e in oxbak.list_entries(out)}
    assert kinds["a/x"] == ("file", b"")
    assert kinds["b"] == ("hardlink", b"a/x") and kinds["z"] == ("hardlink", b"a/x")
    assert oxbak.verify(out).ok
    oxbak.unpack(out, tmp_path / "dest")
    assert snapshot(str(tmp_path / "dest")) == snapshot(str(src))


class _FailingOs:
    """The os module as oxbak.locations sees it, with one function failing (EIO)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> object:
        if attr == self._name:

            def fail(*args: object, **kwargs: object) -> None:
                raise OSError(5, "Input/output error")

            return fail
        return getattr(os, attr)


@pytest.mark.parametrize("call", ["fsync", "link", "replace", "fchmod", "unlink"])
@pytest.mark.parametrize("force", [False, True])
def test_pack_output_syscall_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, force: bool
) -> None:
    """fsync, the no-clobber link, the replacing rename…: a failure is an OutputError, OUT is
    absent (or the old archive, byte for byte, with --force) and no temp file is left."""
    import oxbak.locations as locations_module

    src = _tree(tmp_path)
    out = tmp_path / "out.oxbak"
    if force:
        out.write_bytes(b"old archive")
    monkeypatch.setattr(locations_module, "os", _FailingOs(call))
    try:
        oxbak.pack(src, out, force=force)
    except oxbak.OutputError as exc:
        assert "Input/output error" in str(exc)
    else:
        # Calls pack does not make in this mode, and the clean-up after the archive is in
        # place (which only warns), leave a complete archive.
        assert (call, force) in {
            ("link", True),
            ("replace", False),
            ("unlink", True),
            ("unlink", False),
        }
        assert oxbak.verify(out).ok
        return
    finally:
        monkeypatch.undo()
    if force:
        assert out.read_bytes() == b"old archive"
    else:
        assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".oxbak-tmp")] == []


def test_the_archive_is_never_packed_into_itself(tmp_path: Path) -> None:
    """OUT inside SRC: neither the temp file of the first pack nor, with --force, the
    archive being replaced ends up in the archive (tar: "file is the archive; not
    dumped"); the second leaves a warning naming it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_bytes(b"state\n")
    out = src / "self.oxbak"
    oxbak.pack(src, out)
    assert [e.path for e in oxbak.list_entries(out)] == [b"", b"f.txt"]
    oxbak.pack(src, out, force=True)
    assert [e.path for e in oxbak.list_entries(out)] == [b"", b"f.txt"]
