"""pack --base: an incremental archive stores what changed and describes the whole tree.

Real trees, real archives and real processes: whether a file was read is shown by
running the pack without root's read override (capsh), where reading an unreadable file
would record it missing, or by its bytes being absent from the archive.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import oxbak
from builders import Entry
from oxbak import format as fmt
from oxbak.chain import check_chain
from oxbak.digest import digest
from oxbak.errors import InputError
from oxbak.manifest import IncrementalManifest
from oxbak.source import TocSource, open_source, read_info
from oxbak.toc import FROM_BASE, IncrementalTocHeader, Record
from toc_builders import V2, build_v2, record_of
from tools import require_tool
from treeutil import snapshot

REPO = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # The racy rule trusts a base's created_at as its clock; a pinned SOURCE_DATE_EPOCH
    # in the past makes every file racy (read again: safe, but nothing is left unread).
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _toc(archive: Path) -> tuple[object, dict[bytes, Record]]:
    with open_source(str(archive), whole=False, incremental=True) as source:
        assert isinstance(source, TocSource)
        return source.header, {r.path: r for r in source.records()}


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.write_bytes(data)
    path.chmod(mode)


def _tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    _write(root / "keep.bin", os.urandom(70_000))
    _write(root / "d" / "edit.txt", b"first version\n")
    _write(root / "d" / "gone.txt", b"to be deleted\n")
    _write(root / "moved.txt", b"renamed later\n")
    _write(root / "mode.txt", b"chmod later\n")
    _write(root / "kind", b"a file, later a directory\n")
    os.symlink("keep.bin", root / "link")


def _settle() -> None:
    # The racy rule rereads files whose times are within RACY_WINDOW_NS of the base's
    # created_at (whole seconds): wait that out so the quick check alone decides.
    time.sleep(fmt.RACY_WINDOW_NS / 1e9 + 1.1)


def _edit(root: Path) -> None:
    (root / "d" / "edit.txt").write_bytes(b"second version\n")
    (root / "d" / "gone.txt").unlink()
    (root / "moved.txt").rename(root / "d" / "moved.txt")
    (root / "mode.txt").chmod(0o600)
    (root / "kind").unlink()
    (root / "kind").mkdir()
    _write(root / "new.txt", b"added\n")


def test_incremental_toc_describes_the_whole_tree(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    _settle()
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    _edit(src)
    result = oxbak.pack(src, tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    oxbak.pack(src, tmp_path / "now.oxbak", threads=1)

    header, inc = _toc(tmp_path / "inc.oxbak")
    _, now = _toc(tmp_path / "now.oxbak")
    # The same entries, kinds, digests and metadata as a full pack of the same tree.
    assert {p: (r.kind, r.size, r.digest, r.mode, r.mtime_ns) for p, r in inc.items()} == {
        p: (r.kind, r.size, r.digest, r.mode, r.mtime_ns) for p, r in now.items()
    }
    # The untouched file, and the one only chmod-ed (read, and its content found the
    # same), come from the base without a member; the chmod-ed one with its new mode.
    assert [p for p, r in inc.items() if r.from_base] == [b"keep.bin", b"mode.txt"]
    assert inc[b"keep.bin"].offset == 0 == inc[b"mode.txt"].offset
    assert inc[b"mode.txt"].mode == 0o600
    assert b"d/gone.txt" not in inc and b"moved.txt" not in inc
    assert isinstance(header, IncrementalTocHeader)
    assert (header.unchanged, header.deleted) == (2, 2)  # gone.txt, moved.txt
    assert header.stored == len(inc) - 2
    assert (result.unchanged, result.deleted, result.stored) == (2, 2, len(inc) - 2)

    manifest = read_info(str(tmp_path / "inc.oxbak")).manifest
    assert isinstance(manifest, IncrementalManifest)
    assert manifest.version == fmt.INCREMENTAL_VERSION
    assert manifest.base.deleted == 2
    assert manifest.base.created_at == read_info(str(tmp_path / "full.oxbak")).manifest.created_at
    # The unchanged file's bytes are not in the incremental.
    inc_size = (tmp_path / "inc.oxbak").stat().st_size
    assert inc_size < 20_000 < (tmp_path / "full.oxbak").stat().st_size


def test_full_archive_still_version_2(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    oxbak.pack(tmp_path / "src", tmp_path / "a.oxbak", threads=1)
    assert read_info(str(tmp_path / "a.oxbak")).manifest.version == 2


def test_same_size_and_mtime_but_new_ctime_is_stored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "f", b"AAAA")
    _settle()
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    st = (src / "f").stat()
    time.sleep(0.05)
    (src / "f").write_bytes(b"BBBB")
    os.utime(src / "f", ns=(st.st_atime_ns, st.st_mtime_ns))  # the ctime still moves
    assert (src / "f").stat().st_mtime_ns == st.st_mtime_ns
    oxbak.pack(src, tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    record = _toc(tmp_path / "inc.oxbak")[1][b"f"]
    assert not record.from_base
    assert record.digest == digest(b"BBBB")


def _capsh(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run *command* as root without the capabilities that let root read any file."""
    if os.geteuid() != 0:
        pytest.skip("needs root to own files another user cannot read")
    require_tool("capsh")
    return subprocess.run(
        [
            str(shutil.which("capsh")),
            "--drop=cap_dac_override,cap_dac_read_search",
            "--",
            "-c",
            shlex.join(command),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def test_unchanged_files_are_not_read_and_racy_ones_are(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    # Owned by another user, mode 0600: without root's read override, reading fails.
    _write(src / "old", b"settled\n", 0o600)
    os.chown(src / "old", 12345, 12345)
    _settle()
    _write(src / "racy", b"just written\n", 0o600)
    os.chown(src / "racy", 12345, 12345)
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)  # right after "racy" changed

    run = _capsh(
        [
            sys.executable,
            "-m",
            "oxbak",
            "pack",
            str(src),
            "--base",
            str(tmp_path / "full.oxbak"),
            "-o",
            str(tmp_path / "inc.oxbak"),
        ]
    )
    # The racy file had to be read again, and could not be: recorded missing (exit 3).
    assert run.returncode == 3, run.stderr
    assert "'racy' could not be read" in run.stderr
    assert "'old'" not in run.stderr
    records = _toc(tmp_path / "inc.oxbak")[1]
    assert records[b"old"].from_base  # never opened
    assert records[b"racy"].missing and not records[b"racy"].from_base


def test_racy_but_unchanged_file_comes_from_the_base(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "racy", b"just written\n")
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    oxbak.pack(src, tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    assert _toc(tmp_path / "inc.oxbak")[1][b"racy"].from_base  # read again, same digest


def test_content_check_compares_digests(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "touched", b"same bytes\n")
    _settle()
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    os.utime(src / "touched", ns=(0, 1_600_000_000_000_000_000))
    oxbak.pack(src, tmp_path / "meta.oxbak", threads=1, base=tmp_path / "full.oxbak")
    oxbak.pack(
        src,
        tmp_path / "content.oxbak",
        threads=1,
        base=tmp_path / "full.oxbak",
        base_check="content",
    )
    assert not _toc(tmp_path / "meta.oxbak")[1][b"touched"].from_base
    record = _toc(tmp_path / "content.oxbak")[1][b"touched"]
    assert record.from_base and record.mtime_ns == 1_600_000_000_000_000_000


def test_hardlinked_files_are_always_stored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "a", b"linked\n")
    os.link(src / "a", src / "b")
    _settle()
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    oxbak.pack(src, tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    records = _toc(tmp_path / "inc.oxbak")[1]
    assert not records[b"a"].from_base and records[b"b"].kind == "hardlink"


def test_chain_of_incrementals_names_each_base(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _write(src / "f", b"1")
    _settle()
    oxbak.pack(src, tmp_path / "0.oxbak", threads=1)
    oxbak.pack(src, tmp_path / "1.oxbak", threads=1, base=tmp_path / "0.oxbak")
    oxbak.pack(src, tmp_path / "2.oxbak", threads=1, base=tmp_path / "1.oxbak")
    with open_source(str(tmp_path / "1.oxbak"), whole=False, incremental=True) as one:
        assert isinstance(one, TocSource)
        one_id = one.toc_id()
    manifest = read_info(str(tmp_path / "2.oxbak")).manifest
    assert isinstance(manifest, IncrementalManifest) and manifest.base.id == one_id
    assert _toc(tmp_path / "2.oxbak")[1][b"f"].from_base


def test_base_from_a_pipe_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    oxbak.pack(src, tmp_path / "full.oxbak", threads=1)
    # A real pipe: stdin redirected from the file itself would be seekable.
    cat = subprocess.Popen(["cat", str(tmp_path / "full.oxbak")], stdout=subprocess.PIPE)
    assert cat.stdout is not None
    with cat.stdout:
        run = subprocess.run(
            [sys.executable, "-m", "oxbak", "pack", str(src), "--base", "-", "-o", "-"],
            stdin=cat.stdout,
            capture_output=True,
            check=False,
        )
    cat.wait()
    assert run.returncode != 0
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "cannot be used" in lines[0], lines


def test_an_incremental_alone_is_refused_saying_how_to_restore_it(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    oxbak.pack(tmp_path / "src", tmp_path / "full.oxbak", threads=1)
    oxbak.pack(tmp_path / "src", tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    with pytest.raises(oxbak.OxbakError, match="give its whole chain, the full archive first"):
        oxbak.unpack(tmp_path / "inc.oxbak", tmp_path / "out")
    assert not (tmp_path / "out").exists()


#: The last commit of oxbak before incremental archives: its reader knows version 2 only.
_VERSION_2_READER = "c28f43329e84624ebe3e6956b86c08c9e078e3e7"


def test_a_version_2_reader_asks_for_an_upgrade(tmp_path: Path) -> None:
    """oxbak as it was before incrementals refuses one before writing."""
    if subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{_VERSION_2_READER}^{{commit}}"],
        capture_output=True,
        check=False,
    ).returncode:
        pytest.skip(f"commit {_VERSION_2_READER} (the version-2 reader) is not in this checkout")
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", _VERSION_2_READER, "src"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    oxbak.pack(tmp_path / "src", tmp_path / "full.oxbak", threads=1)
    oxbak.pack(tmp_path / "src", tmp_path / "inc.oxbak", threads=1, base=tmp_path / "full.oxbak")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "oxbak",
            "unpack",
            str(tmp_path / "inc.oxbak"),
            str(tmp_path / "out"),
        ],
        env={**os.environ, "PYTHONPATH": str(old / "src")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0
    assert "version 3 is newer" in run.stderr and "upgrade oxbak" in run.stderr, run.stderr
    assert not (tmp_path / "out").exists()


# -- verify INC alone: what it stores is checked; its FROM_BASE records for consistency.

_BASE_ID = "ab" * 32


def _crafted(
    tmp_path: Path,
    *,
    records: Callable[[list[dict[str, Any]]], None] | None = None,
    header: Callable[[dict[str, Any]], None] | None = None,
    deleted: int = 0,
    extra: bytes = b"zz",
) -> Path:
    """A version-3 archive built without oxbak's writer: d/, d/f stored, *extra* FROM_BASE.

    Its header counts are true unless *header* changes them; *records* edits the records.
    """
    entries = [Entry.dir(b"d"), Entry.file(b"d/f", b"stored\n")]

    def manifest(m: dict[str, Any], _: V2) -> dict[str, Any]:
        m["version"] = fmt.INCREMENTAL_VERSION
        m["base"] = {"id": _BASE_ID, "created_at": m["created_at"], "deleted": deleted}
        m["totals"]["files"] += 1  # the FROM_BASE file is part of the tree it describes
        m["totals"]["bytes"] += 3
        return m

    def recs(rs: list[dict[str, Any]], _: V2) -> list[dict[str, Any]]:
        unchanged = {**record_of(Entry.file(extra, b"abc"), 0), "flags": FROM_BASE}
        rs = sorted([*rs, unchanged], key=lambda r: r["path"].split(b"/"))
        if records is not None:
            records(rs)
        return rs

    def head(h: dict[str, Any], v2: V2) -> dict[str, Any]:
        rs = v2.records
        h["unchanged"] = sum(1 for r in rs if r["flags"] & FROM_BASE)
        h["stored"] = len(rs) - h["unchanged"]
        h["deleted"] = deleted
        if header is not None:
            header(h)
        return h

    path = tmp_path / "crafted.oxbak"
    path.write_bytes(build_v2(entries, manifest=manifest, records=recs, header=head).data)
    return path


def _verify_cli(archive: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxbak", "verify", *args, str(archive)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_verify_an_incremental_alone(chain: Chain) -> None:
    (full_path, inc_path, _), _ = chain
    _, recs = _toc(inc_path)
    unchanged = sum(1 for r in recs.values() if r.from_base)
    assert unchanged >= 1
    with open_source(str(full_path), whole=False) as full:
        assert isinstance(full, TocSource)
        base_id = full.toc_id()

    report = oxbak.verify(inc_path)
    assert report.ok, report.problems
    assert (report.base, report.unchanged) == (base_id, unchanged)
    assert report.entries == len(recs)  # the whole tree it describes

    run = _verify_cli(inc_path)
    assert run.returncode == 0, run.stderr
    assert "incremental" in run.stderr and base_id in run.stderr, run.stderr
    assert "only with its chain" in run.stderr
    run = _verify_cli(inc_path, "--json")
    shown = json.loads(run.stdout)
    assert (run.returncode, shown["ok"], shown["base"], shown["unchanged"]) == (
        0,
        True,
        base_id,
        unchanged,
    )
    # A full archive's report is as before.
    assert "base" not in json.loads(_verify_cli(full_path, "--json").stdout)


def test_verify_a_crafted_incremental(tmp_path: Path) -> None:
    report = oxbak.verify(_crafted(tmp_path))
    assert report.ok, report.problems
    assert (report.base, report.unchanged, report.entries) == (_BASE_ID, 1, 4)


def _set_header(**fields: int) -> Callable[[dict[str, Any]], None]:
    return lambda h: h.update(fields)


def _dir_from_base(rs: list[dict[str, Any]]) -> None:
    for r in rs:
        if r["path"] == b"d":
            r.update(flags=FROM_BASE, offset=0)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"header": _set_header(unchanged=0)}, "declares 3 stored and 0 unchanged"),
        ({"header": _set_header(stored=4)}, "declares 4 stored and 1 unchanged"),
        ({"header": _set_header(deleted=2)}, "disagree on the files deleted since the base"),
        ({"records": _dir_from_base}, "'d' is a dir from the base"),
        ({"extra": b"nodir/x"}, "the parent of 'nodir/x' is not an earlier directory"),
        ({"extra": b"d/../x"}, "d/../x"),
    ],
)
def test_verify_refuses_a_lying_incremental(
    tmp_path: Path, kw: dict[str, Any], expected: str
) -> None:
    archive = _crafted(tmp_path, **kw)
    report = oxbak.verify(archive)
    assert not report.ok
    assert any(expected in p for p in report.problems), report.problems
    run = _verify_cli(archive)
    assert run.returncode == 1, run.stderr
    assert expected in run.stderr


def test_info_shows_the_base(chain: Chain) -> None:
    (full_path, inc_path, _), _ = chain
    header, recs = _toc(inc_path)
    assert isinstance(header, IncrementalTocHeader)
    base = read_info(str(full_path)).manifest
    with open_source(str(full_path), whole=False) as full:
        assert isinstance(full, TocSource)
        base_id = full.toc_id()
    unchanged = sum(1 for r in recs.values() if r.from_base)
    deleted = 2  # gone.txt, moved.txt (kind changed type: a new record, not a deletion)
    assert (header.unchanged, header.deleted) == (unchanged, deleted) and unchanged >= 1

    def info(*args: str, stdin: bytes | None = None) -> str:
        run = subprocess.run(
            [sys.executable, "-m", "oxbak", "info", *args],
            input=stdin,
            capture_output=True,
            check=True,
        )
        return run.stdout.decode()

    text = info(str(inc_path))
    assert f"base:          {base_id}\n" in text
    assert f"created {base.created_at}; {deleted} of its entries deleted since" in text
    assert f"{header.stored} entries stored here, {unchanged} files unchanged" in text
    doc = json.loads(info("--json", str(inc_path)))
    assert doc["base"] == {"id": base_id, "created_at": base.created_at, "deleted": deleted}
    assert (doc["stored"], doc["unchanged"]) == (header.stored, unchanged)
    # From a pipe only the manifest is read: the base, but no counts from the TOC.
    piped = info("-", stdin=(inc_path).read_bytes())
    assert f"base:          {base_id}\n" in piped and "entries stored here" not in piped
    # A full archive says nothing of a base.
    full_doc = json.loads(info("--json", str(full_path)))
    assert "base" not in full_doc and "stored" not in full_doc
    assert "base:" not in info(str(full_path))


# -- chains: checked before anything is written (oxbak.chain).


def test_check_chain(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    full, inc1, inc2 = (tmp_path / f"{n}.oxbak" for n in ("full", "inc1", "inc2"))
    oxbak.pack(src, full, threads=1)
    _edit(src)
    oxbak.pack(src, inc1, threads=1, base=full)
    _write(src / "newer.txt", b"later\n")
    oxbak.pack(src, inc2, threads=1, base=inc1)
    other = tmp_path / "other.oxbak"
    oxbak.pack(src, other, threads=1)  # a full archive of the same tree: not the base

    ids = check_chain([full, inc1, inc2])
    for path, id_ in zip((full, inc1, inc2), ids, strict=True):
        with open_source(str(path), whole=False, incremental=True) as source:
            assert isinstance(source, TocSource) and source.toc_id() == id_
    assert check_chain([full]) == ids[:1]

    def refused(chain: list[Path], *expected: str) -> None:
        with pytest.raises(InputError) as caught:
            check_chain(chain)
        message = str(caught.value)
        assert "\n" not in message and all(e in message for e in expected), message

    refused([inc1, inc2], str(inc1), "starts with a full archive")
    refused([full, inc2], str(inc2), f"({full})", ids[1][:16], ids[0][:16])
    refused([other, inc1], str(inc1), f"({other})")
    refused([full, inc2, inc1], str(inc2), "not based on the archive before it")
    refused([full, other], str(other), "is a full archive")
    refused([], "at least one archive")


# -- chains restored: unpack FULL INC… DEST.


Chain = tuple[list[Path], list[dict[bytes, tuple[object, ...]]]]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    """A full archive and two incrementals, and the tree's snapshot at each (read only)."""
    tmp_path = tmp_path_factory.mktemp("chain")
    src = tmp_path / "src"
    _tree(src)
    _settle()
    archives = [tmp_path / "full.oxbak", tmp_path / "inc1.oxbak", tmp_path / "inc2.oxbak"]
    with pytest.MonkeyPatch.context() as env:  # module scope: before _real_clock
        env.delenv("SOURCE_DATE_EPOCH", raising=False)
        oxbak.pack(src, archives[0], threads=1)
        snaps = [snapshot(src)]
        _edit(src)
        _settle()
        oxbak.pack(src, archives[1], threads=1, base=archives[0])
        snaps.append(snapshot(src))
        (src / "keep.bin").chmod(0o640)  # content still the full archive's, mode new
        (src / "d" / "edit.txt").write_bytes(b"third version, longer\n")
        shutil.rmtree(src / "kind")
        (src / "kind").symlink_to("new.txt")
        oxbak.pack(src, archives[2], threads=1, base=archives[1])
        snaps.append(snapshot(src))
    return archives, snaps


def test_restore_any_point_of_a_chain(tmp_path: Path, chain: Chain) -> None:
    archives, snaps = chain
    _, toc = _toc(archives[2])
    assert toc[b"keep.bin"].from_base  # two steps back: inc1 has it from the full archive too
    for n in (1, 2, 3):
        out = tmp_path / f"out{n}"
        result = oxbak.unpack(archives[:n], out)
        assert snapshot(out) == snaps[n - 1], n
        assert result.entries == len(snaps[n - 1])


def test_restore_a_chain_in_every_mode(tmp_path: Path, chain: Chain) -> None:
    archives, snaps = chain
    out = tmp_path / "out"
    oxbak.unpack(archives[:1], out)
    oxbak.unpack(archives, out, mode="replace")
    assert snapshot(out) == snaps[2]

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "other.txt").write_bytes(b"stays\n")
    oxbak.unpack(archives, merged, mode="merge")
    got = snapshot(merged)
    assert got.pop(b"other.txt")[0] == "file"
    assert {p: v for p, v in got.items() if p} == {p: v for p, v in snaps[2].items() if p}

    only = tmp_path / "only"
    oxbak.unpack(archives, only, only=["keep.bin", "d"])
    assert set(snapshot(only)) == {b"", b"keep.bin", b"d", b"d/edit.txt", b"d/moved.txt"}
    assert snapshot(only)[b"keep.bin"] == snaps[2][b"keep.bin"]


def test_chain_restore_from_the_command_line(tmp_path: Path, chain: Chain) -> None:
    archives, snaps = chain
    oxbak_cli = [sys.executable, "-m", "oxbak"]
    run = subprocess.run(
        [*oxbak_cli, "unpack", *map(str, archives), str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert snapshot(tmp_path / "out") == snaps[2]
    # A link left out: one line naming it, nothing written.
    run = subprocess.run(
        [*oxbak_cli, "unpack", str(archives[0]), str(archives[2]), str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and f"{archives[2]} is not based on" in run.stderr
    assert not (tmp_path / "bad").exists()
    # Standard input cannot be read at random: usage error, before anything is read.
    run = subprocess.run(
        [*oxbak_cli, "unpack", str(archives[0]), "-", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 2 and "standard input cannot be part of a chain" in run.stderr


def test_a_wrong_chain_leaves_dest_as_it_was(tmp_path: Path, chain: Chain) -> None:
    archives, snaps = chain
    dest = tmp_path / "dest"
    oxbak.unpack(archives[:1], dest)
    before = snapshot(dest)
    for wrong in (
        [archives[0], archives[2]],
        [archives[0], archives[2], archives[1]],
        [archives[1], archives[2]],
        [archives[0], archives[1], archives[1]],
    ):
        for mode in ("replace", "merge"):
            with pytest.raises(InputError):
                oxbak.unpack(wrong, dest, mode=mode)  # type: ignore[arg-type]
            assert snapshot(dest) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".oxbak")] == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oxbak", *args], capture_output=True, text=True, cwd=REPO
    )


def test_verify_a_chain(tmp_path: Path, chain: Chain) -> None:
    archives, _ = chain
    names = list(map(str, archives))
    report = oxbak.verify(archives)  # type: ignore[arg-type]
    assert report.ok and report.archives == 3 and report.base is None, report.problems
    run = _cli("verify", *names)
    assert run.returncode == 0 and "ok: chain of 3 archives" in run.stderr, run.stderr
    assert json.loads(_cli("verify", "--json", *names).stdout)["archives"] == 3
    # Out of order: one line, naming the archive that does not fit.
    run = _cli("verify", names[0], names[2], names[1])
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        run.stderr.strip()
    ] and f"{names[2]} is not based on the archive before it" in run.stderr

    # A damaged middle archive (a byte of its stored data): named, whatever else holds.
    bad = tmp_path / "inc1.oxbak"
    data = bytearray(archives[1].read_bytes())
    data[len(data) // 3] ^= 0xFF
    bad.write_bytes(bytes(data))
    report = oxbak.verify([archives[0], bad, archives[2]])
    assert not report.ok
    assert all(p.startswith(str(bad)) for p in report.problems), report.problems


def test_link_problems_find_a_base_that_does_not_hold_the_content(
    tmp_path: Path, chain: Chain
) -> None:
    """A chain whose links are checked from the TOCs: a base rebuilt with other content
    under the same id cannot be made, so the fault is put in the incremental's TOC."""
    from oxbak.chain import link_problems

    archives, _ = chain
    with contextlib.ExitStack() as stack:
        sources = [
            stack.enter_context(open_source(str(a), whole=False, incremental=True))
            for a in archives
        ]
        assert all(isinstance(s, TocSource) for s in sources)
        tocs = cast(list[TocSource], sources)
        assert link_problems(tocs) == []
        # The full archive in place of inc1: inc2's unchanged files are looked up there.
        problems = link_problems([tocs[0], tocs[2]])
    assert any("is recorded as unchanged since its base" in p for p in problems), problems
    assert any("entries were deleted since" in p for p in problems), problems


def test_list_and_diff_an_incremental_and_its_chain(tmp_path: Path, chain: Chain) -> None:
    archives, snaps = chain
    names = list(map(str, archives))
    alone = {e.path: e for e in oxbak.list_entries(archives[2])}
    assert set(alone) == set(snaps[2])  # the whole tree
    assert alone[b"keep.bin"].archive == "base" and alone[b"d/edit.txt"].archive == ""
    whole = {e.path: e for e in oxbak.list_entries(archives)}  # type: ignore[arg-type]
    assert whole[b"keep.bin"].archive == names[0]  # two links back
    assert whole[b"new.txt"].archive == names[1]  # added in inc1, unchanged since
    assert whole[b"d/edit.txt"].archive == ""  # stored in the last
    run = _cli("list", names[2], "--base", names[0], "--base", names[1])
    assert run.returncode == 0, run.stderr
    assert any(line.endswith(f"{names[0]} keep.bin") for line in run.stdout.splitlines())
    rows = [json.loads(line) for line in _cli("list", "--json", names[2]).stdout.splitlines()]
    assert {r["path"]: r.get("archive") for r in rows}["keep.bin"] == "base"

    # The chain's last tree is the directory as it was packed: no difference.
    out = tmp_path / "out"
    oxbak.unpack(archives, out)
    assert list(oxbak.diff(archives[2], out, content=True)) == []
    assert list(oxbak.diff(archives, out, content=True)) == []  # type: ignore[arg-type]
    (out / "keep.bin").write_bytes(b"changed")
    assert _cli("diff", *names, str(out)).stdout == "M keep.bin (size 70000 -> 7, mtime)\n"
    run = _cli("diff", names[0], names[2], str(out))
    assert run.returncode == 2 and "is not based on" in run.stderr


def test_an_incremental_cannot_be_encrypted(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    oxbak.pack(tmp_path / "src", tmp_path / "full.oxbak", threads=1)
    key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    with pytest.raises(oxbak.OxbakError, match="an incremental archive cannot be encrypted"):
        oxbak.pack(
            tmp_path / "src", tmp_path / "inc.oxbak", base=tmp_path / "full.oxbak", recipients=[key]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.oxbak", "src"]


def test_cat_of_an_incremental_and_its_chain(chain: Chain) -> None:
    archives, _ = chain
    names = list(map(str, archives))
    out = io.BytesIO()
    oxbak.cat(archives[2], "d/edit.txt", out)  # stored in the last: read there alone
    assert out.getvalue() == b"third version, longer\n"
    with pytest.raises(oxbak.OxbakError, match="unchanged since its base"):
        oxbak.cat(archives[2], "keep.bin", io.BytesIO())
    out = io.BytesIO()
    oxbak.cat(archives, "keep.bin", out)  # type: ignore[arg-type]
    assert len(out.getvalue()) == 70_000  # from the full archive, two links back
    run = _cli("cat", names[2], "new.txt", "--base", names[0], "--base", names[1])
    assert (run.returncode, run.stdout) == (0, "added\n"), run.stderr
    run = _cli("cat", names[2], "keep.bin", "--base", names[1])  # a link left out
    assert run.returncode == 1 and "is incremental" in run.stderr, run.stderr
