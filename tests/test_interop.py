"""Standard tools read oxbak archives: GNU tar with zstd, bsdtar, Python's tarfile, and
a third-party reader of the zstd seekable format (pyzstd) at random offsets."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import zstandard

import oxbak
from test_xattrs import ROOT, all_xattrs, fs, make_tree
from toc_builders import V2, build_v2, digest
from tools import require_tool
from treeutil import Node, build, snapshot

__all__ = ["fs"]  # a fixture, used by name

pytestmark = pytest.mark.tools("tar", "zstd")

LONG = b"d" * 120
TREE = {
    b"seeds": Node(
        "dir",
        children={
            b"000001.json": Node("file", data=b'{"a": 1}\n', mtime_ns=1_700_000_000_987_654_321)
        },
    ),
    b"caf\xe9.json": Node("file", data=b"latin-1 name"),
    "日本語.json".encode(): Node("file", data=b"unicode name"),
    LONG: Node("dir", children={LONG: Node("file", data=b"long path", mode=0o600)}),
    b"link": Node("symlink", target=b"seeds/000001.json"),
    b"hard": Node("hardlink", target=b"seeds/000001.json"),
    b"empty": Node("dir", children={}),
    b"big.bin": Node("file", data=os.urandom(300_000)),
}


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    build(str(src), TREE)
    archive = tmp_path / "a.oxbak"
    oxbak.pack(src, archive)
    return src, archive


def test_gnu_tar_lists_manifest_first(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    out = subprocess.run(["tar", "--zstd", "-tf", str(archive)], check=True, capture_output=True)
    names = out.stdout.split(b"\n")
    assert names[0] == b"manifest.json"
    assert names[1] == b"tree/"
    assert names[-2:] == [b"toc.msgpack", b""]
    assert out.stderr == b""


def test_gnu_tar_extracts_identical_tree(packed: tuple[Path, Path], tmp_path: Path) -> None:
    src, archive = packed
    out = tmp_path / "gnu"
    out.mkdir()
    proc = subprocess.run(
        ["tar", "--zstd", "-xf", str(archive), "-C", str(out)], capture_output=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert snapshot(str(out / "tree")) == snapshot(str(src))
    manifest = oxbak.read_manifest(archive)
    assert (out / "manifest.json").read_bytes().rstrip() == _manifest_json(archive).rstrip()
    assert manifest.totals.files == 5


def _manifest_json(archive: Path) -> bytes:
    with open(archive, "rb") as fh:
        data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        member = tf.extractfile("manifest.json")
        assert member is not None
        return member.read()


def test_zstd_cli_checks_the_stream(packed: tuple[Path, Path]) -> None:
    _, archive = packed
    proc = subprocess.run(["zstd", "-t", "-q", str(archive)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_python_tarfile_reads_every_member(packed: tuple[Path, Path]) -> None:
    src, archive = packed
    with open(archive, "rb") as fh:
        data = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True).read()
    with tarfile.open(
        fileobj=io.BytesIO(data), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tf:
        members = tf.getmembers()
        assert members[0].name == "manifest.json"
        assert members[-1].name == "toc.msgpack"
        by_name = {m.name: m for m in members}
        # "hard" sorts before "seeds/", so it is the inode's first path and holds the data.
        first = by_name["tree/hard"]
        assert first.isfile() and first.size == 9
        assert first.pax_headers["mtime"] == "1700000000.987654321"
        second = by_name["tree/seeds/000001.json"]
        assert second.islnk() and second.linkname == "tree/hard"
        assert by_name["tree/link"].issym() and by_name["tree/link"].linkname == "seeds/000001.json"
        assert os.fsencode("tree/caf\udce9.json") in {os.fsencode(n) for n in by_name}
        long_name = "tree/" + LONG.decode() + "/" + LONG.decode()
        assert by_name[long_name].size == 9
        assert tf.extractfile("tree/big.bin").read() == (src / "big.bin").read_bytes()  # type: ignore[union-attr]


@pytest.mark.tools("bsdtar")
def test_bsdtar_extracts_identical_tree(packed: tuple[Path, Path], tmp_path: Path) -> None:
    src, archive = packed
    out = tmp_path / "bsd"
    out.mkdir()
    proc = subprocess.run(["bsdtar", "-xf", str(archive), "-C", str(out)], capture_output=True)
    # bsdtar restores the name that is not UTF-8 byte for byte, but says it could not
    # convert it and exits 1 (the writer leaves out pax's hdrcharset=BINARY, which would
    # quiet it, because GNU tar warns about that record: FORMAT.md §2).
    errors = [ln for ln in proc.stderr.splitlines() if b"Error exit delayed" not in ln]
    assert errors == [b"bsdtar: Pathname can't be converted from UTF-8 to current locale."]
    assert snapshot(str(out / "tree")) == snapshot(str(src))
    listed = subprocess.run(["bsdtar", "-tf", str(archive)], capture_output=True)
    names = listed.stdout.split(b"\n")
    assert names[0] == b"manifest.json" and b"toc.msgpack" in names


def test_a_seekable_format_reader_reads_any_member(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    """pyzstd's SeekableZstdFile uses the seek table alone to read at an offset."""
    pyzstd = pytest.importorskip("pyzstd", reason="pyzstd comes with the test extras")
    src, archive = packed
    entries = {e.path: e for e in oxbak.list_entries(archive)}
    with pyzstd.SeekableZstdFile(str(archive), "r") as fh:
        assert fh.read(13) == b"manifest.json"
        # Straight to a member in the middle, by the offset the TOC gives.
        info = oxbak.read_info(archive)
        assert info.toc is not None
        for rel in (b"big.bin", b"hard", "日本語.json".encode()):
            offset = _toc_offset(archive, rel)
            fh.seek(offset)
            header = fh.read(512)
            if header.startswith(b"././@PaxHeader"):
                size = int(header[124:135], 8)
                fh.seek(offset + 512 + size + (-size % 512))
                header = fh.read(512)
            if rel.isascii():
                assert header[:100].rstrip(b"\0") == b"tree/" + rel
            data = fh.read(entries[rel].size)
            assert data == (src / os.fsdecode(rel)).read_bytes()


def _toc_offset(archive: Path, rel: bytes) -> int:
    from oxbak.source import open_source

    with open_source(archive, whole=False) as source:
        record = source.find(rel)  # type: ignore[attr-defined]
        assert record is not None
        return int(record.offset)


# ==================================================== extended attributes and ACLs


@pytest.fixture
def xattr_tree(fs: Path) -> tuple[Path, Path]:
    """A tree with attributes and ACLs (test_xattrs.make_tree) and its archive."""
    src = fs / "src"
    src.mkdir()
    make_tree(src)
    archive = fs / "a.oxbak"
    oxbak.pack(src, archive)
    return src, archive


def test_gnu_tar_restores_the_xattrs_and_acls_oxbak_stored(xattr_tree: tuple[Path, Path]) -> None:
    src, archive = xattr_tree
    out = archive.parent / "gnu"
    out.mkdir()
    proc = subprocess.run(
        ["tar", "--zstd", "--xattrs", "--xattrs-include=*", "-xf", str(archive), "-C", str(out)],
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    assert all_xattrs(out / "tree") == all_xattrs(src)


@pytest.mark.tools("bsdtar")
def test_bsdtar_restores_the_xattrs_and_acls_oxbak_stored(xattr_tree: tuple[Path, Path]) -> None:
    src, archive = xattr_tree
    out = archive.parent / "bsd"
    out.mkdir()
    proc = subprocess.run(["bsdtar", "-xf", str(archive), "-C", str(out)], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    expected = all_xattrs(src)
    # bsdtar takes a SCHILY.xattr key as the name without undoing GNU tar's escapes of
    # '%' and '=' (it does for its own LIBARCHIVE.xattr records), the one difference.
    attrs = expected["f.txt"][1]
    attrs["user.bin%3D%25x"] = attrs.pop("user.bin=%x")
    # Its ACLs come from the SCHILY.acl text records, the attributes from SCHILY.xattr.
    assert all_xattrs(out / "tree") == expected


def _members(tar: bytes) -> list[bytes]:
    """A tar stream cut into members: each with its pax header, data and padding."""
    out: list[bytes] = []
    pos = start = 0
    while tar[pos : pos + 512].strip(b"\0"):
        size = int(tar[pos + 124 : pos + 136].strip(b"\0 ") or b"0", 8)
        typeflag = tar[pos + 156 : pos + 157]
        pos += 512 + size + -size % 512
        if typeflag != b"x":
            out.append(tar[start:pos])
            start = pos
    return out


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    records: dict[bytes, bytes] = {}
    while data:
        length, _, rest = data.partition(b" ")
        record, data = data[: int(length)], data[int(length) :]
        key, _, value = record[len(length) + 1 : -1].partition(b"=")
        records[key] = value
    return records


def _record_of(
    raw: bytes, offset: int, xattrs: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    """The TOC record of one member GNU tar wrote (FORMAT.md §5), read from its bytes.

    *xattrs*: the entry's attributes, when not the member's SCHILY.xattr records.
    """
    pax: dict[bytes, bytes] = {}
    if raw[156:157] == b"x":
        size = int(raw[124:136].strip(b"\0 "), 8)
        pax = _pax_records(raw[512 : 512 + size])
        raw = raw[512 + size + -size % 512 :]
    name = raw[:100].rstrip(b"\0")
    kind = {b"0": "file", b"5": "dir", b"2": "symlink"}[raw[156:157]]
    size = int(raw[124:136].strip(b"\0 "), 8)
    data = raw[512 : 512 + size]
    target = raw[157:257].rstrip(b"\0")
    sec, _, frac = pax.get(b"mtime", b"%d" % int(raw[136:148].strip(b"\0 "), 8)).partition(b".")
    xattrs = xattrs if xattrs is not None else sorted(
        (k[len(b"SCHILY.xattr.") :].replace(b"%3D", b"=").replace(b"%25", b"%"), v)
        for k, v in pax.items()
        if k.startswith(b"SCHILY.xattr.")
    )
    return {
        "path": name[len(b"tree/") :].rstrip(b"/"),
        "kind": kind,
        "mode": int(raw[100:108].strip(b"\0 "), 8),
        "uid": 0, "gid": 0, "user": "root", "group": "root",
        "size": size,
        "mtime": int(sec) * 10**9 + int(frac.ljust(9, b"0")),
        "ctime": 0, "ino": 0,
        "target": target,
        "digest": digest(data if kind == "file" else target) if kind != "dir" else bytes(32),
        "flags": 0,
        "offset": offset,
        "xattrs": xattrs,
    }  # fmt: skip


def _oxbak_layout(raws: list[bytes], xattrs: list[list[tuple[bytes, bytes]] | None]) -> bytes:
    """Another tar's members of make_tree's tree, laid verbatim into an oxbak archive.

    oxbak reads only its own layout (manifest first, TOC last): tests/toc_builders.py puts
    the members in it, with a TOC describing them (each record's attributes from its pax
    records, or *xattrs* where given).
    """

    def manifest(m: dict[str, Any], v2: V2) -> dict[str, Any]:
        m["totals"] = {"files": 3, "hardlinks": 0, "directories": 3, "symlinks": 1,
                       "bytes": 5 + 17 + 10}  # fmt: skip
        return m

    def records(_: list[dict[str, Any]], v2: V2) -> list[dict[str, Any]]:
        out, at = [], v2.manifest_size
        for raw, attributes in zip(raws, xattrs, strict=True):
            out.append(_record_of(raw, at, attributes))
            at += len(raw)
        return out

    def columns(value: tuple[int, dict[str, Any]], v2: V2) -> tuple[int, dict[str, Any]]:
        number, cols = value
        found = {i: r["xattrs"] for i, r in enumerate(v2.records) if r["xattrs"]}
        return number, {**cols, "xattrs": found}

    v2 = build_v2([], members=lambda _, v2: list(raws), manifest=manifest, records=records,
                  columns=columns)  # fmt: skip
    return v2.data


def test_oxbak_restores_the_xattrs_and_acls_gnu_tar_stored(fs: Path) -> None:
    """GNU tar's members, with its records for attributes and ACLs, in an oxbak archive.

    oxbak reads only its own layout (manifest first, TOC last), so GNU tar's tree members
    are laid out in it by tests/toc_builders.py, each verbatim, with a TOC describing them.
    """
    if not ROOT:
        pytest.skip("the tree has trusted.* attributes only root can set")
    work = fs / "work"
    (work / "tree").mkdir(parents=True)
    make_tree(work / "tree")
    tar = subprocess.run(
        ["tar", "--xattrs", "--xattrs-include=*", "--format=pax", "--sort=name", "-C",
         str(work), "-cf", "-", "tree"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    raws = _members(tar)

    assert len(raws) == 7  # tree/, d/, d/plain.txt, d/sub/, f.txt, link, ro.txt
    (fs / "gnu.oxbak").write_bytes(_oxbak_layout(raws, [None] * len(raws)))
    assert oxbak.verify(fs / "gnu.oxbak").ok, oxbak.verify(fs / "gnu.oxbak").problems
    oxbak.unpack(fs / "gnu.oxbak", fs / "dest")
    assert all_xattrs(fs / "dest") == all_xattrs(work / "tree")


@pytest.mark.tools("bsdtar")
def test_oxbak_restores_the_xattrs_and_acls_bsdtar_stored(fs: Path) -> None:
    """bsdtar's members in an oxbak archive, as GNU tar's above.

    bsdtar stores an ACL only as SCHILY.acl text, an attribute both as a
    LIBARCHIVE.xattr record and as a SCHILY.xattr one whose name it URL-encodes: oxbak
    derives the binary ACLs and the names from those, and the TOC says what it must get.
    """
    if not ROOT:
        pytest.skip("the tree has trusted.* attributes only root can set")
    work = fs / "work"
    (work / "tree").mkdir(parents=True)
    make_tree(work / "tree")
    # Beyond make_tree: a named group, an access ACL on a directory (user::rwx,
    # group::r-x, group:2:r-x, mask::r-x, other::---), a name bsdtar URL-encodes.
    os.setxattr(work / "tree" / "d" / "sub", "system.posix_acl_access", bytes.fromhex(
        "02000000" "01000700ffffffff" "04000500ffffffff" "0800050002000000"
        "10000500ffffffff" "20000000ffffffff"
    ))  # fmt: skip
    os.setxattr(work / "tree" / "d" / "plain.txt", "user.sp ace\xe9", b"\0\xff")
    paths = sorted(
        (Path(d, n).relative_to(work) for d, ds, fs_ in os.walk(work / "tree") for n in ds + fs_),
        key=lambda p: p.parts,
    )
    listing = "\n".join(["tree", *map(str, paths)]) + "\n"
    tar = subprocess.run(
        ["bsdtar", "--xattrs", "--acls", "--format=pax", "-n", "-C", str(work), "-T", "-",
         "-cf", "-"],
        input=listing.encode(), capture_output=True, check=True,
    ).stdout  # fmt: skip
    raws = _members(tar)
    assert len(raws) == 7
    assert b"SCHILY.xattr.system.posix_acl" not in tar  # the ACLs are text alone

    def attributes(rel: str) -> list[tuple[bytes, bytes]]:
        p = work / rel
        return sorted(
            (os.fsencode(n), os.getxattr(p, n, follow_symlinks=False))
            for n in os.listxattr(p, follow_symlinks=False)
        )
    xattrs = [attributes(rel) for rel in ["tree", *map(str, paths)]]
    (fs / "bsd.oxbak").write_bytes(_oxbak_layout(raws, xattrs))
    assert oxbak.verify(fs / "bsd.oxbak").ok, oxbak.verify(fs / "bsd.oxbak").problems
    oxbak.unpack(fs / "bsd.oxbak", fs / "dest")
    assert all_xattrs(fs / "dest") == all_xattrs(work / "tree")

    def getfacl(where: Path) -> bytes:
        return subprocess.run(["getfacl", "-R", "-p", "."], cwd=where, capture_output=True,
                              check=True).stdout  # fmt: skip

    require_tool("getfacl")
    assert getfacl(fs / "dest") == getfacl(work / "tree")


# --------------------------------------------------------------------------- age

def _oxbak() -> str:
    return str(Path(sys.executable).parent / "oxbak")


def _age_keygen(directory: Path, name: str) -> tuple[Path, str]:
    key = directory / name
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
    ).stdout.strip()
    return key, public


def _sh(script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True)


def test_age_decrypts_oxbak_output_and_tar_lists_it(
    packed: tuple[Path, Path], tmp_path: Path
) -> None:
    require_tool("age", "age-keygen")
    src, _ = packed
    key, public = _age_keygen(tmp_path, "key.txt")
    sealed = tmp_path / "a.oxbak.age"
    oxbak.pack(src, sealed, recipients=[public])
    # The README's line: age -d -i KEY x.oxbak.age | tar --zstd -t
    listed = _sh(f'age -d -i "{key}" "{sealed}" | tar --zstd -t')
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.split(b"\n")
    assert names[:2] == [b"manifest.json", b"tree/"] and names[-2:] == [b"toc.msgpack", b""]
    out = tmp_path / "gnu"
    out.mkdir()
    extracted = _sh(f'age -d -i "{key}" "{sealed}" | tar --zstd -x -C "{out}"')
    assert extracted.returncode == 0, extracted.stderr
    assert snapshot(str(out / "tree")) == snapshot(str(src))


@pytest.mark.parametrize("how", ["file", "pipe", "armored", "ssh-ed25519"])
def test_oxbak_reads_what_age_encrypts(packed: tuple[Path, Path], tmp_path: Path, how: str) -> None:
    require_tool("age", "age-keygen")
    src, archive = packed
    if how == "ssh-ed25519":
        require_tool("ssh-keygen")
        key = tmp_path / "id_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                       check=True, stdin=subprocess.DEVNULL)  # fmt: skip
        to = f'-R "{key}.pub"'
    else:
        key, public = _age_keygen(tmp_path, "key.txt")
        to = f"-r {public}"
    armor = "-a" if how == "armored" else ""
    sealed = tmp_path / "by-age.oxbak.age"
    made = _sh(f'age {armor} {to} -o "{sealed}" "{archive}"')
    assert made.returncode == 0, made.stderr
    dest = tmp_path / "dest"
    if how == "pipe":
        result = _sh(f'cat "{sealed}" | "{_oxbak()}" unpack - "{dest}" -i "{key}"')
    else:
        result = _sh(f'"{_oxbak()}" unpack "{sealed}" "{dest}" -i "{key}"')
    assert result.returncode == 0, result.stderr
    assert snapshot(str(dest)) == snapshot(str(src))
    info = _sh(f'"{_oxbak()}" info "{sealed}"')
    assert info.returncode == 0 and info.stdout.startswith(b"encrypted:     age"), info
