"""oxbak.diff and `oxbak diff` (oxbak.compare): real trees, real archives packed with oxbak.pack.

Each kind of change is made on a copy of a packed tree, with the times of what it did not
mean to change put back, so that each test sees exactly the change it made. A property
checks the merge-join against the slow way: both trees read into dicts and compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import oxbak
from golden import GOLDEN, make_tree
from oxbak.cli import cli
from oxbak.compare import Change, Stat, diff
from oxbak.errors import ArchiveError, SourceError
from oxbak.paths import sort_key
from oxbak.scan import scan_tree
from oxbak.writer import _write
from strategies import leaf, names, trees_with_hardlinks
from treeutil import Node, build

OXBAK = Path(sys.executable).parent / "oxbak"
NON_UTF8 = b"caf\xe9.json"

TREE: dict[bytes, Node] = {
    b"a.txt": Node("file", data=b"alpha\n"),
    b"docs": Node(
        "dir",
        mode=0o755,
        children={
            b"readme": Node("file", data=b"read me\n", mode=0o600),
            b"sub": Node(
                "dir", mode=0o750, children={b"deep.bin": Node("file", data=bytes(range(256)))}
            ),
        },
    ),
    b"link": Node("symlink", target=b"a.txt"),
    b"hard": Node("hardlink", target=b"a.txt"),
    b"empty": Node("dir", mode=0o755),
    NON_UTF8: Node("file", data=b"not utf-8\n"),
    b"z": Node("file", data=b"zulu\n"),
}


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, Path]:
    """An archive of TREE and a fresh copy of the tree to change."""
    src = tmp_path / "src"
    build(str(src), TREE)
    archive = tmp_path / "t.oxbak"
    oxbak.pack(src, archive, threads=1)
    copy = tmp_path / "copy"
    build(str(copy), TREE)
    return archive, copy


def found(
    archive: object, directory: Path, **kw: object
) -> list[tuple[str, bytes, tuple[str, ...]]]:
    return [(c.status, c.path, c.fields) for c in diff(archive, directory, **kw)]  # type: ignore[arg-type]


@contextlib.contextmanager
def times_kept(*paths: Path) -> Iterator[None]:
    """Put back the atime and mtime of *paths* after the block (as lstat saw them before)."""
    before = [(p, os.lstat(p)) for p in paths]
    yield
    for p, was in before:
        os.utime(p, ns=(was.st_atime_ns, was.st_mtime_ns), follow_symlinks=False)


# --------------------------------------------------------------------------- the library


def test_identical_tree_has_no_changes(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    assert found(archive, copy) == []
    assert found(archive, copy, content=True) == []


def test_added_file(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy / "docs"):
        (copy / "docs" / "new").write_bytes(b"new\n")
    assert found(archive, copy) == [("added", b"docs/new", ())]
    (change,) = diff(archive, copy)
    assert change.archive is None and change.disk is not None
    assert change.disk.type == "file" and change.disk.size == 4 and change.type == "file"
    assert not change.missing


def test_added_entries_after_the_archives_last(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy):
        (copy / "zz").mkdir()
        (copy / "zz" / "f").write_bytes(b"")
    assert found(archive, copy) == [("added", b"zz", ()), ("added", b"zz/f", ())]


def test_removed_directory_subtree(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy):
        shutil.rmtree(copy / "docs")
    assert found(archive, copy) == [
        ("removed", b"docs", ()),
        ("removed", b"docs/readme", ()),
        ("removed", b"docs/sub", ()),
        ("removed", b"docs/sub/deep.bin", ()),
    ]
    change = next(diff(archive, copy))
    assert change.disk is None and change.archive == Stat("dir", 0o755, 0, TREE[b"docs"].mtime_ns)


def test_mode_change(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    os.chmod(copy / "docs" / "readme", 0o640)
    os.chmod(copy / "empty", 0o700)
    assert found(archive, copy) == [
        ("modified", b"docs/readme", ("mode",)),
        ("modified", b"empty", ("mode",)),
    ]


def test_size_change(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy / "z"):
        (copy / "z").write_bytes(b"zulu, longer\n")
    assert found(archive, copy) == [("modified", b"z", ("size",))]
    # Of another size the content differs: said without reading the file.
    assert found(archive, copy, content=True) == [("modified", b"z", ("size", "content"))]
    (change,) = diff(archive, copy)
    assert change.archive is not None and change.disk is not None
    assert (change.archive.size, change.disk.size) == (5, 13)


def test_mtime_change(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    os.utime(copy / "docs" / "sub" / "deep.bin", ns=(1, 1_800_000_000_000_000_001))
    os.utime(copy / "link", ns=(1, 5), follow_symlinks=False)
    assert found(archive, copy) == [
        ("modified", b"docs/sub/deep.bin", ("mtime",)),
        ("modified", b"link", ("mtime",)),
    ]


def test_symlink_retarget(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy, copy / "link"):
        (copy / "link").unlink()
        os.symlink(b"z", copy / "link")
    assert found(archive, copy) == [("modified", b"link", ("target",))]
    (change,) = diff(archive, copy)
    assert change.archive is not None and change.disk is not None
    assert (change.archive.target, change.disk.target) == (b"a.txt", b"z")


def test_type_change_file_to_dir_and_dir_to_file(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    with times_kept(copy):
        (copy / "z").unlink()
        (copy / "z").mkdir()
        (copy / "z" / "inside").write_bytes(b"x")
        shutil.rmtree(copy / "docs")
        (copy / "docs").write_bytes(b"now a file")
    assert found(archive, copy) == [
        ("modified", b"docs", ("type",)),
        ("removed", b"docs/readme", ()),
        ("removed", b"docs/sub", ()),
        ("removed", b"docs/sub/deep.bin", ()),
        ("modified", b"z", ("type",)),
        ("added", b"z/inside", ()),
    ]
    # A type change is only that: the other fields of different types are not compared.
    assert found(archive, copy, content=True)[0] == ("modified", b"docs", ("type",))


def test_same_size_same_mtime_content_change_only_with_content(
    packed: tuple[Path, Path],
) -> None:
    archive, copy = packed
    target = copy / "docs" / "sub" / "deep.bin"
    with times_kept(target):
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF  # one flipped byte: bit rot
        target.write_bytes(bytes(data))
    assert found(archive, copy) == []
    assert found(archive, copy, content=True) == [("modified", b"docs/sub/deep.bin", ("content",))]


def test_content_of_a_large_file_is_hashed_in_chunks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big"
    big.write_bytes(bytes(range(256)) * (3 * 4096 + 7))  # ~3 MiB: several chunks
    archive = tmp_path / "big.oxbak"
    oxbak.pack(src, archive, threads=1)
    assert found(archive, src, content=True) == []
    with times_kept(big, src), open(big, "r+b") as fh:
        fh.seek(2 * 1024 * 1024 + 3)  # in the third chunk
        fh.write(b"\0")
    assert found(archive, src, content=True) == [("modified", b"big", ("content",))]


def test_hardlinks_differ_by_their_target(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    # The link becomes a file of its own: a type change; its content is the same.
    with times_kept(copy, copy / "a.txt"):
        (copy / "hard").unlink()
        shutil.copy2(copy / "a.txt", copy / "hard")
    assert found(archive, copy, content=True) == [("modified", b"hard", ("type",))]
    # Linked to another file (one that comes first: the first path of an inode is the
    # file): a target change; the inode's own metadata is compared at that file.
    with times_kept(copy, copy / "docs" / "readme"):
        (copy / "hard").unlink()
        os.link(copy / "docs" / "readme", copy / "hard")
    assert found(archive, copy) == [("modified", b"hard", ("target",))]
    (change,) = diff(archive, copy)
    assert change.archive == Stat("hardlink", 0, 0, 0, b"a.txt")
    assert change.disk == Stat("hardlink", 0, 0, 0, b"docs/readme")


def test_non_utf8_names(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    raw = os.fsencode(copy) + b"/"
    with times_kept(copy):
        os.chmod(raw + NON_UTF8, 0o600)
        with open(raw + b"\xff\xfe", "wb") as fh:
            fh.write(b"x")
    changes = list(diff(archive, copy))
    assert [(c.status, c.path, c.fields) for c in changes] == [
        ("modified", NON_UTF8, ("mode",)),
        ("added", b"\xff\xfe", ()),
    ]
    assert [c.name for c in changes] == ["caf\\xe9.json", "\\xff\\xfe"]


def test_root_is_named_dot(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    os.chmod(copy, 0o700)
    (change,) = diff(archive, copy)
    assert (change.path, change.name, change.fields) == (b"", ".", ("mode",))


def test_excludes_apply_to_both_sides(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(str(src), TREE)
    archive = tmp_path / "x.oxbak"
    oxbak.pack(src, archive, threads=1, excludes=["sub", "/z"])
    assert found(archive, src, excludes=["sub", "/z"]) == []
    assert found(archive, src) == [
        ("added", b"docs/sub", ()),
        ("added", b"docs/sub/deep.bin", ()),
        ("added", b"z", ()),
    ]
    # Excluding what the archive holds hides it on both sides.
    assert found(archive, src, excludes=["sub", "z", "docs"]) == []


def test_a_file_object_is_read_from_where_it_stands(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    (copy / "z").chmod(0o600)
    fh = io.BytesIO(b"junk before" + archive.read_bytes())
    fh.seek(len(b"junk before"))
    assert found(fh, copy) == [("modified", b"z", ("mode",))]


def _pipe(data: bytes) -> io.BufferedReader:
    """A real pipe carrying *data*, fed by a thread."""
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as out, contextlib.suppress(BrokenPipeError):
            out.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return open(r, "rb")


def test_archive_from_a_pipe(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    target = copy / "docs" / "sub" / "deep.bin"
    with times_kept(target, copy):
        target.write_bytes(bytes(reversed(range(256))))  # same size, same mtime
        (copy / "link").unlink()
    data = archive.read_bytes()
    with _pipe(data) as fh:
        quick = found(fh, copy)
    with _pipe(data) as fh:
        full = found(fh, copy, content=True)
    assert quick == found(archive, copy) == [("removed", b"link", ())]
    assert (
        full
        == found(archive, copy, content=True)
        == [
            ("modified", b"docs/sub/deep.bin", ("content",)),
            ("removed", b"link", ()),
        ]
    )


def test_damaged_archive_from_a_pipe_gives_an_error_not_a_diff(
    packed: tuple[Path, Path],
) -> None:
    archive, copy = packed
    (copy / "new").write_bytes(b"x")
    with _pipe(archive.read_bytes()[:-200]) as fh, pytest.raises(ArchiveError):
        list(diff(fh, copy))


def test_version_1_golden_archive(tmp_path: Path) -> None:
    tree = tmp_path / "golden"
    make_tree(str(tree))
    assert found(GOLDEN, tree) == []
    assert found(GOLDEN, tree, content=True) == []  # digests from its index.jsonl, at the end
    target = tree / "blob.bin"
    with times_kept(target):
        target.write_bytes(bytes(reversed(range(256))) * 64)
    assert found(GOLDEN, tree) == []
    assert found(GOLDEN, tree, content=True) == [("modified", b"blob.bin", ("content",))]
    os.chmod(os.fsencode(tree) + b"/memory/facts/" + NON_UTF8, 0o600)
    assert found(GOLDEN, tree) == [("modified", b"memory/facts/" + NON_UTF8, ("mode",))]


def _archive_with_a_vanished_file(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    build(str(src), TREE)
    scan = scan_tree(src)
    gone = src / "docs" / "readme"
    with times_kept(gone.parent):
        gone.unlink()  # after the scan, before the read: recorded as missing
    out = io.BytesIO()
    result = _write(scan, out, 3, 1, {}, None)
    assert result.missing == ["docs/readme"]
    archive = tmp_path / "partial.oxbak"
    archive.write_bytes(out.getvalue())
    return archive, src


@pytest.mark.parametrize("piped", [False, True])
def test_missing_file_in_the_archive(tmp_path: Path, piped: bool) -> None:
    archive, src = _archive_with_a_vanished_file(tmp_path)

    def changes() -> list[Change]:
        if not piped:
            return list(diff(archive, src))
        with _pipe(archive.read_bytes()) as fh:
            return list(diff(fh, src))

    # Gone from the directory too: the archive and the directory agree.
    assert changes() == []
    # Back in the directory: not in the archive, which could not read it.
    with times_kept(src / "docs"):
        (src / "docs" / "readme").write_bytes(b"read me\n")
    (change,) = changes()
    assert (change.status, change.path, change.missing) == ("added", b"docs/readme", True)


@pytest.mark.parametrize("piped", [False, True])
def test_directory_the_archive_could_not_read(
    tmp_path: Path, piped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    build(str(src), TREE)
    real_listdir = os.listdir

    def listdir(path: Any) -> Any:
        if os.fsencode(path).endswith(b"/docs/sub"):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    archive = tmp_path / "partial.oxbak"
    assert oxbak.pack(src, archive).missing == ["docs/sub/"]
    monkeypatch.undo()
    if piped:
        with _pipe(archive.read_bytes()) as fh:
            changes = list(diff(fh, src))
    else:
        changes = list(diff(archive, src))
    # docs/sub is in both; what it holds only in the directory, which pack could not read.
    assert [(c.status, c.path, c.missing) for c in changes] == [
        ("added", b"docs/sub/deep.bin", True)
    ]


def test_missing_directory_is_a_source_error(packed: tuple[Path, Path], tmp_path: Path) -> None:
    archive, _ = packed
    nowhere = tmp_path / "nowhere"
    message = f"cannot diff against {str(nowhere)!r}: No such file or directory"
    with pytest.raises(SourceError, match=f"^{re.escape(message)}$"):
        list(diff(archive, nowhere))
    with pytest.raises(SourceError, match=r"^cannot diff against .*: not a directory$"):
        list(diff(archive, archive))


def test_unreadable_file_is_a_source_error(
    packed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, copy = packed
    real_open = os.open

    def deny(path: bytes, flags: int, *args: int) -> int:
        if os.fsencode(path).endswith(b"/docs/readme"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    assert found(archive, copy) == []  # metadata only: nothing is opened
    with pytest.raises(SourceError, match=r"^cannot read 'docs/readme': Permission denied$"):
        list(diff(archive, copy, content=True))


def test_changes_come_as_they_are_found(packed: tuple[Path, Path]) -> None:
    # From a file, the first change is handed out before the scan's last entry is joined.
    archive, copy = packed
    os.chmod(copy / "a.txt", 0o600)
    changes = diff(archive, copy)
    first = next(changes)
    assert first.path == b"a.txt"
    changes.close()


# --------------------------------------------------------------------------- the command


def oxbak_cmd(
    *args: str | os.PathLike[str], input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("OXBAK_DEBUG", None)
    return subprocess.run(
        [str(OXBAK), *map(str, args)],
        input=input,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_cli_same_is_exit_0_and_silent(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    for extra in ([], ["--content"], ["--json"]):
        result = oxbak_cmd("diff", archive, copy, *extra)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def _change_everything(copy: Path) -> None:
    with times_kept(copy, copy / "docs", copy / "z", copy / "link"):
        (copy / "docs" / "new").write_bytes(b"n")
        shutil.rmtree(copy / "docs" / "sub")
        os.chmod(copy / "a.txt", 0o600)
        (copy / "z").write_bytes(b"zulu!!\n")
        (copy / "link").unlink()
        os.symlink(b"z", copy / "link")
    os.utime(copy / "empty", ns=(1, 2_000_000_000))
    target = copy / NON_UTF8.decode("utf-8", "surrogateescape")
    with times_kept(target):
        target.write_bytes(b"not utf-9\n")


def test_cli_human_output_and_exit_1(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    _change_everything(copy)
    result = oxbak_cmd("diff", archive, copy)
    assert (result.returncode, result.stderr) == (1, b"")
    assert result.stdout.decode().splitlines() == [
        "M a.txt (mode 0644 -> 0600)",
        "+ docs/new",
        "- docs/sub",
        "- docs/sub/deep.bin",
        "M empty (mtime)",
        "M link (target a.txt -> z)",
        "M z (size 5 -> 7)",
    ]
    result = oxbak_cmd("diff", archive, copy, "--content")
    assert result.returncode == 1
    lines = result.stdout.decode().splitlines()
    assert "M caf\\xe9.json (content)" in lines
    assert "M z (size 5 -> 7, content)" in lines


def test_cli_json_lines(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    _change_everything(copy)
    result = oxbak_cmd("diff", archive, copy, "--json", "--content")
    assert (result.returncode, result.stderr) == (1, b"")
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    by_path = {row["path"]: row for row in rows}
    assert [row["path"] for row in rows] == [
        "a.txt",
        "caf\\xe9.json",
        "docs/new",
        "docs/sub",
        "docs/sub/deep.bin",
        "empty",
        "link",
        "z",
    ]
    assert by_path["a.txt"]["status"] == "modified" and by_path["a.txt"]["fields"] == ["mode"]
    assert by_path["a.txt"]["archive"]["mode"] == "0644"
    assert by_path["a.txt"]["disk"]["mode"] == "0600"
    assert by_path["docs/new"] == {
        "status": "added",
        "path": "docs/new",
        "type": "file",
        "disk": by_path["docs/new"]["disk"],
    }
    assert by_path["docs/new"]["disk"]["size"] == 1
    assert by_path["docs/sub"]["status"] == "removed" and "disk" not in by_path["docs/sub"]
    assert by_path["link"]["archive"]["target"] == "a.txt"
    assert by_path["link"]["disk"]["target"] == "z"
    assert by_path["z"]["fields"] == ["size", "content"]
    assert by_path["empty"]["disk"]["mtime_ns"] == 2_000_000_000


def test_cli_from_stdin_pipe(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    _change_everything(copy)
    direct = oxbak_cmd("diff", archive, copy, "--content")
    piped = oxbak_cmd("diff", "-", copy, "--content", input=archive.read_bytes())
    assert (piped.returncode, piped.stderr) == (1, b"")
    assert piped.stdout == direct.stdout


def test_cli_errors_are_one_line_and_exit_2(packed: tuple[Path, Path], tmp_path: Path) -> None:
    archive, copy = packed
    nowhere = tmp_path / "nowhere"
    result = oxbak_cmd("diff", archive, nowhere)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode() == (
        f"oxbak: error: cannot diff against {str(nowhere)!r}: No such file or directory\n"
    )
    result = oxbak_cmd("diff", tmp_path / "none.oxbak", copy)
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr.decode().startswith("oxbak: error: cannot open archive ")
    assert result.stderr.count(b"\n") == 1
    result = oxbak_cmd("diff", "-", copy, input=archive.read_bytes()[:-100])
    assert result.returncode == 2 and result.stderr.startswith(b"oxbak: error: ")
    assert result.stderr.count(b"\n") == 1
    result = oxbak_cmd("diff", archive)
    assert result.returncode == 2 and b"Missing argument 'DIR'" in result.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_cli_unreadable_file(packed: tuple[Path, Path]) -> None:
    archive, copy = packed
    os.chmod(copy / "z", 0)
    try:
        result = oxbak_cmd("diff", archive, copy, "--content")
    finally:
        os.chmod(copy / "z", 0o644)
    assert result.returncode == 2
    assert result.stderr.decode().endswith("oxbak: error: cannot read 'z': Permission denied\n")


def test_cli_unreadable_file_in_process(
    packed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, copy = packed
    real_open = os.open

    def deny(path: bytes, flags: int, *args: int) -> int:
        if os.fsencode(path).endswith(b"/z"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    result = CliRunner().invoke(cli, ["diff", str(archive), str(copy), "--content"])
    assert result.exit_code == 2
    assert result.stderr == "oxbak: error: cannot read 'z': Permission denied\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_cli_help_has_an_example_and_the_exit_statuses(flag: str) -> None:
    assert "  diff " in oxbak_cmd("--help").stdout.decode()
    result = oxbak_cmd("diff", flag)
    assert result.returncode == 0
    out = result.stdout.decode()
    assert "Example" in out and "oxbak diff state.oxbak" in out
    assert "0 if they are the same, 1 if they differ, 2 on trouble" in out


# --------------------------------------------------------------------------- the property

_ACTIONS = ["keep"] * 6 + ["drop", "mode", "mtime", "data", "flip", "kind", "target"]


@st.composite
def _mutated(draw: st.DrawFn, tree: dict[bytes, Node]) -> dict[bytes, Node]:
    """*tree* with some entries dropped, changed or added."""
    out: dict[bytes, Node] = {}
    for name, node in tree.items():
        action = draw(st.sampled_from(_ACTIONS))
        if action == "drop":
            continue
        new = Node(node.kind, node.data, node.mode, node.mtime_ns, node.target, node.children)
        if node.kind == "dir":
            new.children = draw(_mutated(node.children))
        if action == "mode" and node.kind in ("file", "dir"):
            new.mode = node.mode ^ 0o010
        elif action == "mtime" and node.kind != "hardlink":
            new.mtime_ns = node.mtime_ns + draw(st.sampled_from([1, 10**9, -1]))
        elif action == "data" and node.kind == "file":
            new.data = node.data + b"+"
        elif action == "flip" and node.kind == "file" and node.data:
            data = bytearray(node.data)
            data[draw(st.integers(0, len(data) - 1))] ^= 0x01
            new.data = bytes(data)  # same size, same mtime: only --content sees it
        elif action == "kind":
            new = (
                Node("file", data=b"was a " + node.kind.encode())
                if node.kind != "file"
                else Node("dir")
            )
        elif action == "target" and node.kind == "symlink":
            new.target = node.target + b"x"
        out[name] = new
    for name in draw(st.lists(names, max_size=2)):
        if name not in out:
            out[name] = draw(leaf)
    # A hardlink needs its target to still be a file.
    for name, node in list(out.items()):
        if node.kind == "hardlink" and (node.target not in out or out[node.target].kind != "file"):
            out[name] = Node("file", data=b"was a hardlink")
    return out


def _slow(root: str) -> dict[bytes, tuple[str, int, int, int, bytes, bytes]]:
    """Every entry of the tree at *root*: type, mode, size, mtime, target, sha256 of content.

    A hardlink is a path whose inode was seen at an earlier path (pre-order, names sorted).
    """
    out: dict[bytes, tuple[str, int, int, int, bytes, bytes]] = {}
    first: dict[int, bytes] = {}
    base = os.fsencode(root)

    def visit(rel: bytes) -> None:
        path = base + b"/" + rel if rel else base
        st_ = os.lstat(path)
        perm = stat.S_IMODE(st_.st_mode)
        if stat.S_ISDIR(st_.st_mode):
            out[rel] = ("dir", perm, 0, st_.st_mtime_ns, b"", b"")
            for name in sorted(os.listdir(path)):
                visit(rel + b"/" + name if rel else name)
        elif stat.S_ISLNK(st_.st_mode):
            out[rel] = ("symlink", 0, 0, st_.st_mtime_ns, os.readlink(path), b"")
        elif st_.st_ino in first:
            out[rel] = ("hardlink", 0, 0, 0, first[st_.st_ino], b"")
        else:
            if st_.st_nlink > 1:
                first[st_.st_ino] = rel
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).digest()
            out[rel] = ("file", perm, st_.st_size, st_.st_mtime_ns, b"", digest)

    visit(b"")
    return out


def _expected(
    a: dict[bytes, tuple[str, int, int, int, bytes, bytes]],
    b: dict[bytes, tuple[str, int, int, int, bytes, bytes]],
    content: bool,
) -> dict[bytes, tuple[str, tuple[str, ...]]]:
    out: dict[bytes, tuple[str, tuple[str, ...]]] = {}
    for path in a.keys() | b.keys():
        if path not in b:
            out[path] = ("removed", ())
        elif path not in a:
            out[path] = ("added", ())
        else:
            (ka, ma, sa, ta, la, ca), (kb, mb, sb, tb, lb, cb) = a[path], b[path]
            if ka != kb:
                fields: tuple[str, ...] = ("type",)
            else:
                candidates = [
                    ("mode", ma != mb),
                    ("size", sa != sb),
                    ("mtime", ta != tb),
                    ("target", la != lb),
                    ("content", content and ca != cb),
                ]
                fields = tuple(name for name, differs in candidates if differs)
            if fields:
                out[path] = ("modified", fields)
    return out


@given(tree=trees_with_hardlinks(), data=st.data(), content=st.booleans())
def test_diff_is_the_slow_comparison(
    tree: dict[bytes, Node], data: st.DataObject, content: bool
) -> None:
    other = data.draw(_mutated(tree))
    with tempfile.TemporaryDirectory() as tmp:
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        build(a, tree)
        build(b, other)
        archive = os.path.join(tmp, "a.oxbak")
        oxbak.pack(a, archive, threads=1)
        changes = list(diff(archive, b, content=content))
        expected = _expected(_slow(a), _slow(b), content)
        assert {c.path: (c.status, c.fields) for c in changes} == expected
        keys = [sort_key(c.path) for c in changes]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        if content:
            # The same from a stream, whose digests come from the loop's own hashing.
            with open(archive, "rb") as fh, _pipe(fh.read()) as pipe:
                assert list(diff(pipe, b, content=True)) == changes
