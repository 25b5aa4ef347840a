"""Extended attributes and POSIX ACLs: packed, checked, restored, and reported when they cannot be.

Everything runs on a real filesystem that takes ``user.*`` attributes and ACLs (the test
directory's, or, as root, a tmpfs mounted for the test); the unsupported case on a real
ramfs, which takes none; the unprivileged case as user 65534 (``setpriv``). Hostile
archives are built by :mod:`builders` / :mod:`toc_builders`, without oxbak's writer.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

import oxbak
from builders import Entry, tree_order
from pipelike import Unseekable
from toc_builders import V2, build_v2
from tools import NOBODY, run_oxbak

ROOT = os.geteuid() == 0
OXBAK = [sys.executable, "-m", "oxbak"]

# The kernel's binary form of "user::rw-, user:1:rw-, group::r--, mask::rw-, other::r--"
# (what setfacl -m u:daemon:rw makes on a file of mode 0644).
ACL_FILE = bytes.fromhex(
    "02000000" "01000600ffffffff" "0200060001000000" "04000400ffffffff"
    "10000600ffffffff" "20000400ffffffff"
)  # fmt: skip
# A default ACL for a directory: "user::rwx, user:1:r-x, group::r-x, mask::r-x, other::r-x".
ACL_DEFAULT = bytes.fromhex(
    "02000000" "01000700ffffffff" "0200050001000000" "04000500ffffffff"
    "10000500ffffffff" "20000500ffffffff"
)  # fmt: skip


def _takes_xattrs(where: Path) -> bool:
    probe = where / ".probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        os.setxattr(probe, "system.posix_acl_access", ACL_FILE)
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _mount(fstype: str, where: Path) -> None:
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", fstype, "-o", "mode=0755", fstype, str(where)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} here: {proc.stderr.decode().strip()}")


def _umount(where: Path) -> None:
    if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem that takes user.* attributes and POSIX ACLs."""
    if _takes_xattrs(tmp_path):
        yield tmp_path
        return
    if not ROOT:
        pytest.skip("the test directory's filesystem takes no user.* xattrs or ACLs, and "
                    "mounting a tmpfs that does needs root")  # fmt: skip
    where = tmp_path / "tmpfs"
    _mount("tmpfs", where)
    try:
        if not _takes_xattrs(where):
            pytest.skip("this kernel's tmpfs takes no user.* xattrs or ACLs")
        yield where
    finally:
        _umount(where)


def xattrs_of(path: Path) -> dict[str, bytes]:
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
    }


def all_xattrs(root: Path) -> dict[str, tuple[int, dict[str, bytes]]]:
    """Every entry under *root*: its mode bits and its attributes."""
    out: dict[str, tuple[int, dict[str, bytes]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            p = Path(dirpath, name) if name else Path(dirpath)
            rel = os.path.relpath(p, root)
            if rel in out:
                continue
            mode = 0o777 if p.is_symlink() else p.lstat().st_mode & 0o7777
            out[rel] = (mode, xattrs_of(p))
    return out


def make_tree(src: Path) -> None:
    """Files, a directory and a symlink with attributes and ACLs, set the way users do."""
    (src / "d" / "sub").mkdir(parents=True)
    (src / "d" / "plain.txt").write_bytes(b"inherits nothing\n")
    (src / "f.txt").write_bytes(b"data\n")
    (src / "ro.txt").write_bytes(b"read-only\n")
    os.setxattr(src / "f.txt", "user.comment", b"a comment")
    # A value with NUL and newline bytes; a name with '=' and '%' (escaped in the record).
    os.setxattr(src / "f.txt", "user.bin=%x", b"\0\n\xff=value")
    os.setxattr(src / "f.txt", "system.posix_acl_access", ACL_FILE)
    os.setxattr(src / "ro.txt", "user.kept", b"even on a read-only file")
    os.chmod(src / "ro.txt", 0o444)
    os.setxattr(src / "d", "user.dir", b"on a directory")
    # Set after d/plain.txt exists, so it inherited nothing: a restore must not either.
    os.setxattr(src / "d", "system.posix_acl_default", ACL_DEFAULT)
    os.setxattr(src, "user.root", b"on the root")
    os.symlink("f.txt", src / "link")
    if ROOT:
        os.setxattr(src / "f.txt", "trusted.t", b"root only")
        os.setxattr(src / "link", "trusted.l", b"on the link itself", follow_symlinks=False)


def test_pack_and_unpack_keep_xattrs_and_acls(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    before = all_xattrs(src)
    assert before["f.txt"][1]["system.posix_acl_access"] == ACL_FILE
    oxbak.pack(src, fs / "a.oxbak")
    for stream in (False, True):
        dest = fs / f"dest{stream}"
        archive: Any = Unseekable((fs / "a.oxbak").read_bytes()) if stream else fs / "a.oxbak"
        oxbak.unpack(archive, dest)
        assert all_xattrs(dest) == before
    assert "system.posix_acl_access" not in before["d/plain.txt"][1]


def test_partial_restore_keeps_xattrs(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    oxbak.pack(src, fs / "a.oxbak")
    oxbak.unpack(fs / "a.oxbak", fs / "dest", only=["f.txt", "d"])
    assert xattrs_of(fs / "dest" / "f.txt") == xattrs_of(src / "f.txt")
    assert xattrs_of(fs / "dest" / "d") == xattrs_of(src / "d")


@pytest.mark.tools("getfacl")
def test_restored_acls_read_as_the_original(fs: Path) -> None:
    """getfacl shows the same ACLs and modes, the mask included (set after chmod)."""
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    # A file whose ACL mask is narrower than its named entry: the mode's group bits.
    (src / "masked").write_bytes(b"")
    os.setxattr(src / "masked", "system.posix_acl_access", ACL_FILE)
    os.chmod(src / "masked", 0o640)
    oxbak.pack(src, fs / "a.oxbak")
    oxbak.unpack(fs / "a.oxbak", fs / "dest")

    def facl(root: Path) -> str:
        out = subprocess.run(
            ["getfacl", "-R", "-p", "-n", "."], cwd=root, capture_output=True, check=True
        )
        return out.stdout.decode()

    text = facl(fs / "dest")
    assert text == facl(src)
    assert "user:1:rw-\t#effective:r--" in text and "default:user:1:r-x" in text


def test_same_tree_same_bytes(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    oxbak.pack(src, fs / "a.oxbak", threads=1)
    oxbak.pack(src, fs / "b.oxbak", threads=2)
    assert (fs / "a.oxbak").read_bytes() == (fs / "b.oxbak").read_bytes()


def _pax(archive: Path) -> bytes:
    with open(archive, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()


def test_records_are_the_ones_gnu_tar_and_bsdtar_write(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    oxbak.pack(src, fs / "a.oxbak")
    tar = _pax(fs / "a.oxbak")
    assert b" SCHILY.xattr.user.comment=a comment\n" in tar
    assert b" SCHILY.xattr.user.bin%3D%25x=\0\n\xff=value\n" in tar
    assert b" SCHILY.xattr.system.posix_acl_access=" + ACL_FILE + b"\n" in tar
    # The text form bsdtar restores ACLs from (star's, with the numeric id).
    assert b" SCHILY.acl.access=user::rw-,user:daemon:rw-:1,group::r--,mask::rw-,other::r--\n" in tar
    assert b" SCHILY.acl.default=user::rwx,user:daemon:r-x:1,group::r-x,mask::r-x,other::r-x\n" in tar


def test_no_xattrs_on_pack_and_on_unpack(fs: Path) -> None:
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    env = {**os.environ, "PYTHONPATH": str(Path(oxbak.__file__).parent.parent)}
    run = [*OXBAK]
    subprocess.run([*run, "pack", str(src), "-o", str(fs / "none.oxbak"), "--no-xattrs"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    assert b"SCHILY" not in _pax(fs / "none.oxbak")
    subprocess.run([*run, "pack", str(src), "-o", str(fs / "all.oxbak")],
                   check=True, capture_output=True, env=env)  # fmt: skip
    proc = subprocess.run(
        [*run, "unpack", str(fs / "all.oxbak"), str(fs / "dest"), "--no-xattrs"],
        capture_output=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(not x for _, x in all_xattrs(fs / "dest").values())


def test_unreadable_xattrs_are_a_warning_not_a_failure(
    fs: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No filesystem here refuses to list one file's attributes, so the refusal is simulated."""
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    real = os.listxattr

    def listxattr(path: Any, *, follow_symlinks: bool = True) -> list[str]:
        if os.fsencode(path).endswith(b"/f.txt"):
            raise OSError(errno.EIO, "Input/output error")
        return real(path, follow_symlinks=follow_symlinks)

    monkeypatch.setattr(os, "listxattr", listxattr)
    with caplog.at_level(logging.WARNING, logger="oxbak"):
        oxbak.pack(src, fs / "a.oxbak")
    assert "cannot read the extended attributes of 'f.txt' (Input/output error); packed " \
        "without them" in caplog.messages  # fmt: skip
    monkeypatch.undo()
    oxbak.unpack(fs / "a.oxbak", fs / "dest")
    assert xattrs_of(fs / "dest" / "f.txt") == {}
    assert xattrs_of(fs / "dest" / "d") == xattrs_of(src / "d")


def test_a_filesystem_without_xattrs_restores_with_one_warning(fs: Path) -> None:
    """A ramfs takes no extended attributes at all (ENOTSUP): the restore still happens."""
    if not ROOT:
        pytest.skip("mounting a ramfs needs root")
    src = fs / "src"
    (src / "d").mkdir(parents=True)
    for name in ("a", "b", "c", "d/e", "d/f", "d/g"):
        (src / name).write_bytes(b"")  # a ramfs reports no free space: no data to restore
        os.setxattr(src / name, "user.x", b"1")
    os.setxattr(src / "a", "system.posix_acl_access", ACL_FILE)
    oxbak.pack(src, fs / "a.oxbak")
    ram = fs / "ram"
    _mount("ramfs", ram)
    try:
        proc = run_oxbak("unpack", str(fs / "a.oxbak"), str(ram / "dest"))
        assert proc.returncode == 0, proc.stderr
        warnings = [ln for ln in proc.stderr.decode().splitlines() if "warning" in ln]
        assert warnings == [
            "oxbak: warning: extended attributes not restored on 6 entries (Operation not "
            "supported): 'a' (user.x, system.posix_acl_access), 'b' (user.x), 'c' (user.x), "
            "'d/e' (user.x), 'd/f' (user.x) and 1 more"
        ]
        assert (ram / "dest" / "d" / "g").exists()
    finally:
        _umount(ram)


@pytest.mark.tools("setpriv")
def test_unprivileged_restore_skips_trusted_and_keeps_user_xattrs(shared: Path) -> None:
    if not ROOT:
        pytest.skip("needs root to set trusted.* attributes and to switch users")
    if not _takes_xattrs(shared):
        pytest.skip("the temporary directory's filesystem takes no user.* xattrs or ACLs")
    src = shared / "src"
    src.mkdir()
    make_tree(src)
    oxbak.pack(src, shared / "a.oxbak", mode=0o644)
    (shared / "out").mkdir()
    os.chmod(shared / "out", 0o777)
    proc = run_oxbak("unpack", str(shared / "a.oxbak"), str(shared / "out" / "dest"), user=NOBODY)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.decode().splitlines() if "attributes" in ln]
    assert lines == [
        "oxbak: warning: extended attributes not restored on 2 entries (only root may set "
        "them): 'f.txt' (trusted.t), 'link' (trusted.l)"
    ]
    dest = shared / "out" / "dest"
    expected = all_xattrs(src)
    for rel in ("f.txt", "link"):
        expected[rel][1].pop("trusted.t", None)
        expected[rel][1].pop("trusted.l", None)
    assert all_xattrs(dest) == expected  # user.* on a read-only file, ACLs, modes


# ================================================================ hostile archives


def _v2(entries: list[Entry], xattrs: dict[bytes, list[tuple[bytes, bytes]]]) -> V2:
    """A version-2 archive whose TOC lists *xattrs* (by path) in its 16th column."""

    def columns(value: tuple[int, dict[str, Any]], _: V2) -> tuple[int, dict[str, Any]]:
        number, cols = value
        found = {i: xattrs[p] for i, p in enumerate(cols["paths"]) if p in xattrs}
        if found:
            cols = {**cols, "xattrs": found}
        return number, cols

    return build_v2(tree_order(entries), columns=columns)


def _rec(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return (b"SCHILY.xattr." + name, value)


def test_a_crafted_archive_with_xattrs_restores(tmp_path: Path) -> None:
    if not _takes_xattrs(tmp_path):
        pytest.skip("the test directory's filesystem takes no user.* xattrs")
    v2 = _v2(
        [Entry.file(b"f", b"x", pax=[_rec(b"user.a%3Db", b"1"), _rec(b"user.z", b"2")])],
        {b"f": [(b"user.a=b", b"1"), (b"user.z", b"2")]},
    )
    for n, archive in enumerate((io.BytesIO(v2.data), Unseekable(v2.data))):
        assert oxbak.verify(io.BytesIO(v2.data)).ok
        oxbak.unpack(archive, tmp_path / f"d{n}")  # type: ignore[arg-type]
        assert xattrs_of(tmp_path / f"d{n}" / "f") == {"user.a=b": b"1", "user.z": b"2"}


@pytest.mark.parametrize(
    ("records", "error", "message"),
    [
        ([_rec(b"", b"v")], oxbak.CorruptArchiveError, "extended attribute name '' is empty"),
        ([_rec(b"user.a\0b", b"v")], oxbak.CorruptArchiveError, "holds a NUL byte"),
        ([_rec(b"user." + b"n" * 300, b"v")], oxbak.CorruptArchiveError, "longer than 255"),
        ([_rec(b"user.a", b"1"), _rec(b"user.a", b"2")], oxbak.CorruptArchiveError,
         "pax header repeats 'SCHILY.xattr.user.a'"),
        ([_rec(b"user.%", b"1"), _rec(b"user.%25", b"2")], oxbak.CorruptArchiveError,
         "extended attribute 'user.%' appears twice"),
        ([_rec(b"user.%d" % i, b"v" * 1000) for i in range(50)], oxbak.LimitExceededError,
         "its extended attributes take"),
    ],
    ids=["empty", "nul", "long", "repeated", "repeated-escaped", "too-large"],
)  # fmt: skip
def test_malformed_xattr_records_are_refused(
    records: list[tuple[bytes, bytes]], error: type[Exception], message: str, tmp_path: Path
) -> None:
    v2 = build_v2([Entry.file(b"f", b"x", pax=records)])
    for archive in (io.BytesIO(v2.data), Unseekable(v2.data)):
        with pytest.raises(error, match="^[^\n]*$") as info:
            oxbak.unpack(archive, tmp_path / "dest")  # type: ignore[arg-type]
        assert message in str(info.value)
        assert "'tree/f'" in str(info.value)
        assert not (tmp_path / "dest").exists()
    assert message in " ".join(oxbak.verify(io.BytesIO(v2.data)).problems)


def test_an_unknown_namespace_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not _takes_xattrs(tmp_path):
        pytest.skip("the test directory's filesystem takes no user.* xattrs")
    v2 = _v2(
        [Entry.file(b"f", b"x", pax=[_rec(b"system.nfs4_acl", b"?"), _rec(b"user.ok", b"1")])],
        {b"f": [(b"system.nfs4_acl", b"?"), (b"user.ok", b"1")]},
    )
    with caplog.at_level(logging.WARNING, logger="oxbak"):
        oxbak.unpack(io.BytesIO(v2.data), tmp_path / "dest")
    assert xattrs_of(tmp_path / "dest" / "f") == {"user.ok": b"1"}
    assert caplog.messages == [
        "extended attributes not restored on 1 entry (namespace not restored by oxbak): "
        "'f' (system.nfs4_acl)"
    ]


def test_toc_and_member_must_agree_on_xattrs(tmp_path: Path) -> None:
    """A TOC that lies about an entry's attributes is caught whichever way it is read."""
    entries = [Entry.file(b"f", b"x", pax=[_rec(b"user.a", b"member")])]
    v2 = _v2(entries, {b"f": [(b"user.a", b"toc")]})
    report = oxbak.verify(io.BytesIO(v2.data))
    assert any("disagrees with the member of 'f'" in p for p in report.problems)
    with pytest.raises(oxbak.IntegrityError):
        oxbak.unpack(io.BytesIO(v2.data), tmp_path / "full")
    with pytest.raises(oxbak.CorruptArchiveError, match="does not match the member at offset"):
        oxbak.unpack(io.BytesIO(v2.data), tmp_path / "only", only=["f"])
    # A TOC without the column, a member with attributes: the same lie of omission.
    v2 = _v2(entries, {})
    assert not oxbak.verify(io.BytesIO(v2.data)).ok
    with pytest.raises(oxbak.CorruptArchiveError, match="does not match the member at offset"):
        oxbak.unpack(io.BytesIO(v2.data), tmp_path / "only2", only=["f"])


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ({7: [(b"user.a", b"1")]}, "extended attributes of record 7, which it does not hold"),
        ({1: [(b"", b"1")]}, "extended attribute name '' is empty"),
        ({1: [(b"user.a", b"1"), (b"user.a", b"2")]}, "extended attribute 'user.a' appears twice"),
        ({1: "nope"}, "table of contents block 0 is malformed"),
    ],
    ids=["out-of-range", "empty-name", "repeated", "mistyped"],
)
def test_a_malformed_xattrs_column_is_refused(column: dict[int, Any], message: str) -> None:
    def columns(value: tuple[int, dict[str, Any]], _: V2) -> tuple[int, dict[str, Any]]:
        return value[0], {**value[1], "xattrs": column}

    v2 = build_v2([Entry.file(b"f", b"x")], columns=columns)
    with pytest.raises(oxbak.ArchiveError, match="^[^\n]*$") as info:
        list(oxbak.list_entries(io.BytesIO(v2.data)))
    assert message in str(info.value)
    assert any(message in p for p in oxbak.verify(io.BytesIO(v2.data)).problems)


def test_an_archive_without_xattrs_has_the_blocks_of_before(tmp_path: Path) -> None:
    """No 16th column where no entry has attributes (the golden test checks the bytes)."""
    import msgspec

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"x")
    oxbak.pack(tmp_path / "src", tmp_path / "a.oxbak", xattrs=False)
    from oxbak.source import open_source

    with open_source(tmp_path / "a.oxbak", whole=False) as source:
        ref = source.header.blocks[0]  # type: ignore[attr-defined]
        at = source._blocks_at + ref.offset  # type: ignore[attr-defined]
        from oxbak.reader import ArchiveReader

        reader = ArchiveReader(source.frames.stream(at), offset=at)  # type: ignore[attr-defined]
        assert len(msgspec.msgpack.decode(reader.read_exact(ref.length))) == 15


# ---------------------------------------------- ACLs from text, libarchive's records


def _names(uid: int, gid: int) -> tuple[str, str]:
    """This machine's names of *uid* and *gid*, "" where it has none (as the writer does)."""
    import grp
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = ""
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = ""
    return user, group


_perm = st.integers(0, 7)
_named = st.dictionaries(st.sampled_from([0, 1, 2, 3, 100, 1234, 65534, 2**31]), _perm,
                         max_size=4)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    objs=st.tuples(_perm, _perm, _perm, _perm),
    users=_named,
    groups=_named,
    order=st.randoms(use_true_random=False),
)
def test_acl_text_parses_back_to_the_kernels_acl(
    objs: tuple[int, int, int, int], users: dict[int, int], groups: dict[int, int], order: Any
) -> None:
    """acl_text, then acl_binary: the ACL the kernel holds, whatever the entries' order."""
    from oxbak.xattrs import acl_binary, acl_text

    owner, group, mask, other = objs
    entries = [(1, owner, 0xFFFFFFFF), (4, group, 0xFFFFFFFF), (0x20, other, 0xFFFFFFFF)]
    entries += [(2, p, i) for i, p in users.items()] + [(8, p, i) for i, p in groups.items()]
    # With a mask the kernel keeps the ACL (one of just the three others is the mode bits).
    entries.append((0x10, mask, 0xFFFFFFFF))
    # The kernel takes entries sorted by tag, then id, only; the text comes in any order.
    value = b"\2\0\0\0" + b"".join(struct.pack("<HHI", *e) for e in sorted(entries, key=lambda e: (e[0], e[2])))
    with tempfile.TemporaryDirectory() as where:
        if not _takes_xattrs(Path(where)):
            pytest.skip("the temporary directory's filesystem takes no ACLs")
        os.setxattr(where, "system.posix_acl_access", value)
        kernel = os.getxattr(where, "system.posix_acl_access")
    assert kernel == value
    for names in (_names, lambda uid, gid: ("", "")):
        text = acl_text(kernel, names)
        assert text is not None
        assert acl_binary(text, b"tree/f", b"SCHILY.acl.access") == kernel
        # bsdtar's order: the owner's entries first, the mask last
        parts = text.split(b",")
        order.shuffle(parts)
        assert acl_binary(b",".join(parts), b"tree/f", b"SCHILY.acl.access") == kernel
    # a named entry without its id: the name as this machine knows it, or the id itself
    bare = b",".join(
        b":".join(part.split(b":")[:3]) for part in acl_text(kernel, _names).split(b",")  # type: ignore[union-attr]
    )
    assert acl_binary(bare, b"tree/f", b"SCHILY.acl.access") == kernel


def _acl(text: bytes, key: bytes = b"SCHILY.acl.access") -> tuple[bytes, bytes]:
    return (key, text)


def test_an_acl_only_as_text_restores(tmp_path: Path) -> None:
    """What bsdtar writes: the ACLs as text, the attributes as LIBARCHIVE.xattr records."""
    if not _takes_xattrs(tmp_path):
        pytest.skip("the test directory's filesystem takes no user.* xattrs")
    pax = [
        _acl(b"user::rw-,group::r--,other::r--,user:daemon:rw-:1,mask::rw-"),
        # base64 without padding; a name URL-encoded, its SCHILY twin escaped likewise
        (b"LIBARCHIVE.xattr.user.sp%20a%3Dce", b"AP8K"),
        _rec(b"user.sp%20a%3Dce", b"\0\xff\n"),
        (b"LIBARCHIVE.xattr.user.alone", b"YWxvbmU"),
    ]
    dir_pax = [_acl(b"u::rwx,g::r-x,o::r-x,u:1:r-x,m::r-x", b"SCHILY.acl.default")]
    expected = {
        b"f": [(b"system.posix_acl_access", ACL_FILE), (b"user.alone", b"alone"),
               (b"user.sp a=ce", b"\0\xff\n")],
        b"d": [(b"system.posix_acl_default", ACL_DEFAULT)],
    }  # fmt: skip
    v2 = _v2([Entry.file(b"f", b"x", mode=0o664, pax=pax), Entry.dir(b"d", pax=dir_pax)], expected)
    assert oxbak.verify(io.BytesIO(v2.data)).ok, oxbak.verify(io.BytesIO(v2.data)).problems
    oxbak.unpack(io.BytesIO(v2.data), tmp_path / "dest")
    assert xattrs_of(tmp_path / "dest" / "f") == {
        "system.posix_acl_access": ACL_FILE, "user.alone": b"alone", "user.sp a=ce": b"\0\xff\n"
    }  # fmt: skip
    assert xattrs_of(tmp_path / "dest" / "d") == {"system.posix_acl_default": ACL_DEFAULT}


def test_the_binary_acl_wins_over_its_text() -> None:
    """oxbak's own archives carry both: the text is then not read, even if it is wrong."""
    pax = [_acl(b"nonsense"), _rec(b"system.posix_acl_access", ACL_FILE)]
    v2 = _v2([Entry.file(b"f", b"x", pax=pax)], {b"f": [(b"system.posix_acl_access", ACL_FILE)]})
    assert oxbak.verify(io.BytesIO(v2.data)).ok


@pytest.mark.parametrize(
    ("records", "error", "message"),
    [
        ([_acl(b"user::rw-,group::r--")], oxbak.CorruptArchiveError,
         "SCHILY.acl.access is not an ACL"),
        ([_acl(b"user::rw-,group::r--,other::r--,user:1:r--")], oxbak.CorruptArchiveError,
         "SCHILY.acl.access is not an ACL"),
        ([_acl(b"user::rw-,user::r--,group::r--,other::r--")], oxbak.CorruptArchiveError,
         "SCHILY.acl.access repeats entry 'user::r--'"),
        ([_acl(b"user::rw-,group::r--,other::rwz")], oxbak.CorruptArchiveError,
         "entry 'other::rwz' has malformed permissions"),
        ([_acl(b"user::rw-,group::r--,other::r--,everyone::r--")], oxbak.CorruptArchiveError,
         "entry 'everyone::r--' has an unknown tag"),
        ([_acl(b"user::rw-,group::r--,other:x:r--")], oxbak.CorruptArchiveError,
         "entry 'other:x:r--' names someone"),
        ([_acl(b"user::rw-,group::r--,other::r--,mask::r--,user:a:r--:-1")],
         oxbak.CorruptArchiveError, "entry 'user:a:r--:-1' has an id that is not a number"),
        ([_acl(b"user::rw-,group::r--,other::r--,mask::r--,user:4294967295:r--")],
         oxbak.CorruptArchiveError, "has an id out of range"),
        ([_acl(b"user::rw-,group::r--,other::r--,mask::r--,group:no-such-group-x:r--")],
         oxbak.CorruptArchiveError,
         "entry 'group:no-such-group-x:r--' names a group unknown here, without its id"),
        ([_acl(b"user::rw-,group::r--,other::r--"), _acl(b"user::rw-,group::r--,other::r--")],
         oxbak.CorruptArchiveError, "pax header repeats 'SCHILY.acl.access'"),
        ([(b"LIBARCHIVE.xattr.user.a", b"!!")], oxbak.CorruptArchiveError,
         "pax record 'LIBARCHIVE.xattr.user.a' is not base64"),
        ([(b"LIBARCHIVE.xattr.user.%61", b"YQ"), _rec(b"user.a", b"a")],
         oxbak.CorruptArchiveError, "extended attribute 'user.a' appears twice"),
        # the limits hold for what the text records give as for the binary ones
        ([_acl(b"u::rw-,g::r--,o::r--,m::r--,"
               + b",".join(b"u:%d:r--" % i for i in range(3000))), _rec(b"user.a", bytes(26000))],
         oxbak.LimitExceededError, "its extended attributes take"),
        ([(b"LIBARCHIVE.xattr.user.%00", b"YQ")], oxbak.CorruptArchiveError,
         "holds a NUL byte"),
    ],
    ids=["incomplete", "no-mask", "repeated-entry", "perms", "tag", "named-other", "bad-id",
         "undefined-id", "unknown-name", "repeated-record", "base64", "twin-names",
         "too-large", "nul-name"],
)  # fmt: skip
def test_malformed_acl_text_and_libarchive_records_are_refused(
    records: list[tuple[bytes, bytes]], error: type[Exception], message: str, tmp_path: Path
) -> None:
    test_malformed_xattr_records_are_refused(records, error, message, tmp_path)
