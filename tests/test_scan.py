"""scan_tree(): order, kinds, hardlinks, skipped files, and what its columns hand back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given

from oxbak.errors import SourceError
from oxbak.manifest import Totals
from oxbak.paths import sort_key
from oxbak.scan import Entry, scan_tree
from strategies import trees_with_hardlinks
from treeutil import Node, build

_BIG_INO = 2**63 + 5  # above a signed 64-bit column: inode numbers are unsigned


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"b": Node(
                "dir",
                mode=0o750,
                children={
                    b"z.json": Node("file", data=b"zz", mode=0o600, mtime_ns=-1_500_000_001),
                    b"a.json": Node("file", data=b"a" * 70_000),
                },
            ),
            b"a": Node("dir", children={b"link": Node("symlink", target=b"../b/a.json")}),
            b"ab": Node("file", data=b"x", mode=0o4755),
            b"twin": Node("hardlink", target=b"b/a.json"),
            b"empty": Node("dir"),
        },
    )
    return src


def _expected(root: Path, path: bytes, kind: str, target: bytes = b"") -> Entry:
    st = os.lstat(os.path.join(os.fsencode(root), path) if path else os.fsencode(root))
    return Entry(
        path=path,
        kind=kind,  # type: ignore[arg-type]
        mode=st.st_mode & 0o7777,
        size=st.st_size if kind == "file" else 0,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        ino=st.st_ino,
        uid=st.st_uid,
        gid=st.st_gid,
        target=target,
    )


def test_rows_match_lstat_in_archive_order(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    scan = scan_tree(src)
    assert list(scan) == [
        _expected(src, b"", "dir"),
        _expected(src, b"a", "dir"),
        _expected(src, b"a/link", "symlink", b"../b/a.json"),
        _expected(src, b"ab", "file"),
        _expected(src, b"b", "dir"),
        _expected(src, b"b/a.json", "file"),
        _expected(src, b"b/z.json", "file"),
        _expected(src, b"empty", "dir"),
        _expected(src, b"twin", "hardlink", b"b/a.json"),
    ]
    assert len(scan) == 9
    assert scan.skipped == []


def test_summaries_agree_with_the_rows(tmp_path: Path) -> None:
    scan = scan_tree(_tree(tmp_path))
    assert scan.totals() == Totals(
        files=3, hardlinks=1, directories=4, symlinks=1, bytes=70_000 + 2 + 1
    )
    assert scan.per_dir() == {b"": 2, b"a": 1, b"b": 2}
    assert scan.symlinks() == {b"a/link": b"../b/a.json"}


def test_the_first_path_of_an_inode_is_the_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"m": Node("file", data=b"data"),
            b"c": Node("hardlink", target=b"m"),
            b"z": Node("hardlink", target=b"m"),
        },
    )
    kinds = [(e.path, e.kind, e.size, e.target) for e in scan_tree(src)][1:]
    assert kinds == [
        (b"c", "file", 4, b""),
        (b"m", "hardlink", 0, b"c"),
        (b"z", "hardlink", 0, b"c"),
    ]


def test_special_files_are_skipped_and_excludes_leave_subtrees_out(tmp_path: Path) -> None:
    src = _tree(tmp_path)
    os.mkfifo(src / "b" / "pipe")
    scan = scan_tree(src, excludes=["a", "*.json"])
    assert [e.path for e in scan] == [b"", b"ab", b"b", b"empty", b"twin"]
    assert scan.skipped == [b"b/pipe"]


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(SourceError, match="not a directory"):
        scan_tree(tmp_path / "f")


def test_columns_hold_full_range_values(tmp_path: Path) -> None:
    """Negative mtimes, a sticky or setuid mode and a 64-bit inode survive the columns."""
    scan = scan_tree(_tree(tmp_path))
    scan.inos[0] = _BIG_INO
    rows = list(scan)
    assert rows[0].ino == _BIG_INO
    assert rows[3].mode == 0o4755
    assert rows[6].mtime_ns == -1_500_000_001


@given(tree=trees_with_hardlinks())
def test_any_tree_scans_to_its_lstat_rows_in_order(
    tmp_path_factory: pytest.TempPathFactory, tree: dict[bytes, Node]
) -> None:
    src = tmp_path_factory.mktemp("scan") / "src"
    build(str(src), tree)
    root = os.fsencode(src)
    on_disk = {b""}
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        prefix = b"" if rel == b"." else rel + b"/"
        on_disk.update(prefix + name for name in dirs + files)
    rows = list(scan_tree(src))
    paths = [e.path for e in rows]
    assert paths == sorted(on_disk, key=sort_key)
    first: dict[int, bytes] = {}
    for entry in rows:
        st = os.lstat(os.path.join(root, entry.path) if entry.path else root)
        if entry.kind == "symlink":
            assert entry.target == os.readlink(os.path.join(root, entry.path))
            assert entry.size == 0
        elif entry.kind in ("file", "hardlink"):
            file = first.setdefault(st.st_ino, entry.path)
            assert entry.kind == ("file" if file == entry.path else "hardlink")
            assert entry.size == (st.st_size if entry.kind == "file" else 0)
            assert entry.target == (b"" if entry.kind == "file" else file)
        got = (entry.mode, entry.mtime_ns, entry.ctime_ns, entry.ino, entry.uid, entry.gid)
        assert got == (
            st.st_mode & 0o7777,
            st.st_mtime_ns,
            st.st_ctime_ns,
            st.st_ino,
            st.st_uid,
            st.st_gid,
        )


def test_a_path_too_long_to_stat_is_named_in_one_error(tmp_path: Path) -> None:
    # Linux lets a tree grow deeper than PATH_MAX (4096 bytes) by creating each level
    # relative to the one above; such an entry cannot be reached by its path.
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(17):
            os.mkdir(b"d" * 255, dir_fd=fd)
            deeper = os.open(b"d" * 255, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    with pytest.raises(SourceError, match=r"^cannot stat 'd{255}/.*': File name too long$"):
        scan_tree(src)


SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def test_exclude_caches_keeps_only_the_tag(tmp_path: Path) -> None:
    src = tmp_path / "src"
    build(
        str(src),
        {
            b"cache": Node(
                "dir",
                children={
                    b"CACHEDIR.TAG": Node("file", data=SIGNATURE + b"\n# a cache\n"),
                    b"blob": Node("file", data=b"x" * 100),
                    b"deep": Node("dir", children={b"more": Node("file", data=b"y")}),
                },
            ),
            # A tag without the signature is not a cache directory.
            b"fake": Node(
                "dir",
                children={
                    b"CACHEDIR.TAG": Node("file", data=b"not the signature"),
                    b"kept": Node("file", data=b"z"),
                },
            ),
            b"keep.json": Node("file", data=b"{}"),
        },
    )
    every = [e.path for e in scan_tree(src)]
    assert b"cache/blob" in every and b"cache/deep/more" in every
    paths = [e.path for e in scan_tree(src, exclude_caches=True)]
    assert paths == [
        b"",
        b"cache",
        b"cache/CACHEDIR.TAG",
        b"fake",
        b"fake/CACHEDIR.TAG",
        b"fake/kept",
        b"keep.json",
    ]


def test_one_file_system_keeps_mount_points_empty(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "a.json").write_bytes(b"{}")
    import subprocess

    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(src / "mnt")], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (src / "mnt" / "other.json").write_bytes(b"{}")
        assert b"mnt/other.json" in [e.path for e in scan_tree(src)]
        paths = [e.path for e in scan_tree(src, one_file_system=True)]
        assert paths == [b"", b"a.json", b"mnt"]
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)


def test_an_unreadable_directory_fails_a_scan_unless_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = _tree(tmp_path)
    real_listdir = os.listdir

    denied = [b"/b"]

    def listdir(path: bytes) -> list[bytes]:
        if path.endswith(tuple(denied)):
            raise PermissionError(13, "Permission denied", path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    with pytest.raises(SourceError, match=r"^cannot list directory 'b': Permission denied$"):
        scan_tree(src)  # diff's scan: a directory it cannot read is an error
    scan = scan_tree(src, partial=True)  # pack's: kept, named, the rest scanned
    assert scan.unreadable == {b"b": "could not be listed (Permission denied)"}
    assert [e.path for e in scan] == [b"", b"a", b"a/link", b"ab", b"b", b"empty", b"twin"]
    denied.append(b"/src")  # the root is not kept empty: there would be nothing to pack
    with pytest.raises(SourceError, match=r"^cannot list directory '\.': Permission denied$"):
        scan_tree(src, partial=True)
