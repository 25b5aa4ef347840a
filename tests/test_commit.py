"""Putting the staged tree in place where DEST cannot be renamed: a mount point, or the
current directory. DEST keeps its inode (so the mount, and any process in it, stay);
its contents are exchanged under a journal. Real mounts, as root; skipped otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oxbak
from mounts import bind, ext4, remount_read_only, tmpfs
from oxbak.commit import is_mount_point
from treeutil import Node, build, snapshot

OXBAK = str(Path(sys.executable).parent / "oxbak")

OLD = {
    b"keep.txt": Node("file", data=b"precious\n" * 100),
    b"shared": Node("dir", children={b"a.txt": Node("file", data=b"old a\n")}),
    b"link": Node("symlink", target=b"keep.txt"),
}
NEW = {
    b"shared": Node(
        "dir", mode=0o750, children={b"a.txt": Node("file", data=b"new a\n", mode=0o600)}
    ),
    b"fresh.bin": Node("file", data=bytes(range(256)) * 64),
    b"hard": Node("hardlink", target=b"fresh.bin"),
    b"up": Node("symlink", target=b"shared/a.txt"),
}


def run(*args: str | os.PathLike[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OXBAK, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, Path]:
    """The archives of OLD and NEW, and the snapshots of their trees (keys *-tree)."""
    out = {}
    for name, tree in (("old", OLD), ("new", NEW)):
        src = tmp_path / f"{name}-src"
        build(os.fsencode(src), tree, mode=0o711)
        out[name] = tmp_path / f"{name}.oxbak"
        oxbak.pack(src, out[name])
        out[f"{name}-tree"] = src
    return out


def fill(dest: Path, tree: dict[bytes, Node]) -> None:
    """Put *tree* into the existing directory *dest* (a mount point stays one)."""
    staging = dest / "fill.tmp"  # on DEST's filesystem, whatever is mounted there
    build(os.fsencode(staging), tree)
    for name in os.listdir(staging):
        os.rename(staging / name, dest / name)
    os.rmdir(staging)


def working_names(*dirs: Path) -> list[str]:
    return [n for d in dirs for n in os.listdir(d) if n.startswith(".oxbak-")]


def expected_merge(tmp_path: Path, archives: dict[str, Path]) -> dict[bytes, tuple[object, ...]]:
    """The tree an unpack --merge of NEW into OLD gives, made in an ordinary directory."""
    plain = tmp_path / "plain-merge"
    oxbak.unpack(archives["old"], plain)
    oxbak.unpack(archives["new"], plain, mode="merge")
    return snapshot(plain)


@pytest.mark.parametrize("mode", ["new", "replace", "merge"])
@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_unpack_into_a_mount_point(
    tmp_path: Path, archives: dict[str, Path], mode: str, kind: str
) -> None:
    """Before: EBUSY for new and --replace, EXDEV for --merge. Now the mount stays, DEST
    keeps its inode, and DEST holds exactly the archive's tree (merged for --merge)."""
    where = tmp_path / "m"
    with (tmpfs if kind == "tmpfs" else bind)(where) as dest:
        assert is_mount_point(str(dest))
        if mode != "new":
            fill(dest, OLD)
        inode = os.stat(dest).st_ino
        want = expected_merge(tmp_path, archives) if mode == "merge" else None
        args = ["unpack", archives["new"], dest] + ([f"--{mode}"] if mode != "new" else [])
        ok(run(*args))
        assert os.stat(dest).st_ino == inode
        assert is_mount_point(str(dest))
        got = snapshot(dest)
        assert got == (want if want is not None else snapshot(archives["new-tree"]))
        assert working_names(dest, tmp_path) == []
        # And back: --replace with the old tree, then verify through diff.
        ok(run("unpack", "--replace", archives["old"], dest))
        assert snapshot(dest) == snapshot(archives["old-tree"])
        assert run("diff", archives["old"], dest).returncode == 0


def test_unpack_keeps_lost_and_found_at_a_mount_root(
    tmp_path: Path, archives: dict[str, Path]
) -> None:
    """A fresh ext4 holds lost+found: `unpack` into it still counts as into an empty DEST,
    and --replace leaves the filesystem's own directory in place."""
    with ext4(tmp_path / "m", tmp_path / "fs.img") as dest:
        lost = os.stat(dest / "lost+found").st_ino
        ok(run("unpack", archives["old"], dest))
        ok(run("unpack", "--replace", archives["new"], dest))
        got = snapshot(dest)
        assert os.stat(dest / "lost+found").st_ino == lost
        assert {k: v for k, v in got.items() if not k.startswith(b"lost+found")} == snapshot(
            archives["new-tree"]
        )
        assert working_names(dest) == []


def test_read_only_mount_is_named_as_the_cause(tmp_path: Path, archives: dict[str, Path]) -> None:
    with tmpfs(tmp_path / "m") as dest:
        fill(dest, OLD)
        before = snapshot(dest)
        remount_read_only(dest)
        result = run("unpack", "--replace", archives["new"], dest)
        assert result.returncode == 1
        assert result.stderr == (
            f"oxbak: error: cannot unpack into {str(dest)!r}: its filesystem is mounted "
            "read-only\n"
        )
        assert snapshot(dest) == before


@pytest.mark.parametrize("mode", ["new", "replace"])
def test_unpack_into_the_current_directory_keeps_it(
    tmp_path: Path, archives: dict[str, Path], mode: str
) -> None:
    """`oxbak unpack ../x.oxbak .`: the shell that ran it must not be left in a deleted
    directory. Before, new and --replace both renamed a new directory over `.`."""
    dest = tmp_path / "here"
    dest.mkdir()
    if mode == "replace":
        fill(dest, OLD)
    inode = os.stat(dest).st_ino
    args = ["unpack", os.path.relpath(archives["new"], dest), "."]
    ok(run(*args, *(["--replace"] if mode == "replace" else []), cwd=dest))
    assert os.stat(dest).st_ino == inode
    # A process whose cwd is DEST still sees the restored tree through ".".
    assert sorted(os.listdir(dest)) == sorted(os.listdir(archives["new-tree"]))
    assert snapshot(dest) == snapshot(archives["new-tree"])
    assert working_names(dest, tmp_path) == []


def test_library_unpack_into_the_current_directory(
    tmp_path: Path, archives: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "here"
    dest.mkdir()
    fill(dest, OLD)
    monkeypatch.chdir(dest)
    oxbak.unpack(archives["new"], ".", mode="replace")
    assert os.path.samefile(".", dest)
    assert snapshot(".") == snapshot(archives["new-tree"])


def test_new_into_a_non_empty_mount_point_is_refused(
    tmp_path: Path, archives: dict[str, Path]
) -> None:
    with tmpfs(tmp_path / "m") as dest:
        fill(dest, OLD)
        before = snapshot(dest)
        result = run("unpack", archives["new"], dest)
        assert result.returncode == 1
        assert "is not empty (use --replace or --merge)" in result.stderr
        assert snapshot(dest) == before
        assert working_names(dest, tmp_path) == []


def test_mount_point_takes_the_archive_roots_attributes(tmp_path: Path) -> None:
    """In a contents exchange DEST stays: it must still end up with the root's extended
    attributes and ACL, and lose those of the old tree's root."""
    src = tmp_path / "src"
    build(os.fsencode(src), {b"f": Node("file", data=b"x\n")}, mode=0o750)
    with tmpfs(tmp_path / "m") as dest:
        try:
            os.setxattr(src, "user.note", b"the new root")
        except OSError as exc:
            pytest.skip(f"no user.* attributes on the test filesystem: {exc}")
        subprocess.run(["setfacl", "-m", "u:daemon:rx", str(src)], check=True)
        archive = tmp_path / "a.oxbak"
        oxbak.pack(src, archive)
        os.setxattr(dest, "user.old", b"the old root")
        ok(run("unpack", "--replace", archive, dest))
        assert os.getxattr(dest, "user.note") == b"the new root"
        assert "user.old" not in os.listxattr(dest)
        assert os.getxattr(dest, "system.posix_acl_access") == os.getxattr(
            src, "system.posix_acl_access"
        )
        assert snapshot(dest) == snapshot(src)


@pytest.mark.parametrize("name", [b"../outside", b"a/b", b".", b""])
def test_recover_refuses_a_journal_naming_more_than_one_entry(tmp_path: Path, name: bytes) -> None:
    """recover acts on a killed unpack's journal: one naming a path rather than a single
    entry of DEST is refused, one line, and nothing is moved."""
    dest = tmp_path / "dest"
    build(os.fsencode(dest), {b"keep.txt": Node("file", data=b"mine\n")})
    (tmp_path / "outside").write_bytes(b"not DEST's\n")
    box = tmp_path / ".oxbak-stage-dest.abcdefgh"
    (box / "tree").mkdir(parents=True)
    (box / "old").mkdir()
    journal = {
        "oxbak-journal": 1,
        "old": [name.hex()],
        "new": [],
        "mode": 0o755,
        "uid": -1,
        "gid": -1,
        "mtime_ns": 0,
        "xattrs": [],
    }
    (box / "journal").write_text(json.dumps(journal))
    before = snapshot(tmp_path)
    result = run("recover", dest)
    assert result.returncode == 1
    assert result.stderr.startswith(f"oxbak: error: cannot recover {str(dest)!r}: ")
    assert "malformed journal" in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(tmp_path) == before
