"""Craft raw ``.oxbak`` archives byte by byte, without oxbak's own writer.

Hostile-archive tests need archives that oxbak's writer would never produce: traversal
names, bad checksums, devices, lying manifests, damaged zstd frames. Everything here is
built by hand from ``docs/FORMAT.md`` (ustar headers, pax records, the manifest, the
index, the zstd frame layout of RFC 8878), using only the standard library, ``zstandard``
and ``msgspec``, so that a bug in oxbak's writer cannot hide a bug in its reader.

The pieces compose::

    entries = [Entry.dir(b"a"), Entry.file(b"a/f", b"data")]
    tar = build_tar(entries)                  # a valid tar stream
    archive = oxbak_file(tar)                 # frame 1, reserve, frame 3

and every piece takes overrides to break exactly one thing.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import blake3
import msgspec
import zstandard

__all__ = [
    "BLOCK",
    "DROP",
    "END",
    "RECORD",
    "Entry",
    "FrameInfo",
    "append",
    "blake",
    "build_tar",
    "cut",
    "decompress_all",
    "device_member",
    "dir_member",
    "display",
    "fifo_member",
    "first_member_end",
    "flip",
    "frame",
    "frame_declaring_content_size",
    "frame_declaring_window",
    "frames_of",
    "hardlink_member",
    "index_bytes",
    "index_header",
    "index_records",
    "manifest_bytes",
    "manifest_dict",
    "manifest_for",
    "member",
    "oxbak_file",
    "oxbak_parts",
    "pax_header",
    "pax_record",
    "set_window",
    "skippable",
    "symlink_member",
    "totals_for",
    "tree_order",
    "ustar_header",
]

BLOCK: Final = 512
RECORD: Final = 10240
#: The end-of-archive marker: two zero blocks.
END: Final = b"\0" * 1024
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
SKIPPABLE_MAGIC: Final = 0x184D2A50
#: Total size (header included) of the manifest reserve oxbak's writer emits.
WRITER_RESERVE: Final = 1024
DEFAULT_MTIME: Final = 1_700_000_000

Kind = Literal["file", "dir", "symlink", "hardlink"]
Json = object


class _Drop:
    """Marker type of :data:`DROP`."""

    def __repr__(self) -> str:
        return "DROP"


#: Pass as an override value to remove a field from the manifest, index header or record.
DROP: Final = _Drop()


# --------------------------------------------------------------------------- tar headers


def _numeric(value: int | bytes, width: int, what: str) -> bytes:
    """A NUL-terminated octal field of *width* bytes; raw *bytes* are written as given."""
    if isinstance(value, bytes):
        if len(value) > width:
            raise ValueError(f"{what}: raw value longer than {width} bytes")
        return value.ljust(width, b"\0")
    if value < 0 or value >= 8 ** (width - 1):
        raise ValueError(f"{what}: {value} does not fit {width - 1} octal digits")
    return b"%0*o\0" % (width - 1, value)


def _text(value: bytes, width: int, what: str) -> bytes:
    if len(value) > width:
        raise ValueError(f"{what}: {len(value)} bytes do not fit a {width}-byte field")
    return value.ljust(width, b"\0")


def ustar_header(
    name: bytes,
    *,
    typeflag: bytes = b"0",
    size: int | bytes = 0,
    mode: int | bytes = 0o644,
    mtime: int | bytes = 0,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    uname: bytes = b"",
    gname: bytes = b"",
    devmajor: int | bytes = 0,
    devminor: int | bytes = 0,
    prefix: bytes = b"",
    checksum: int | bytes | None = None,
) -> bytes:
    """One 512-byte POSIX ustar header block.

    Numeric fields are NUL-terminated octal; pass ``bytes`` instead of an ``int`` to write a
    field raw (non-octal garbage, GNU base-256, …). The checksum is correct unless
    *checksum* overrides it (an ``int`` is written as octal, ``bytes`` raw). *magic* is the
    8 bytes of magic and version (``ustar\\0`` + ``00``).

    :raises ValueError: if a value does not fit its field.
    """
    if len(magic) != 8:
        raise ValueError("magic must be 8 bytes (6 of magic, 2 of version)")
    if len(typeflag) != 1:
        raise ValueError("typeflag must be one byte")
    head = b"".join(
        (
            _text(name, 100, "name"),
            _numeric(mode, 8, "mode"),
            _numeric(uid, 8, "uid"),
            _numeric(gid, 8, "gid"),
            _numeric(size, 12, "size"),
            _numeric(mtime, 12, "mtime"),
        )
    )
    tail = b"".join(
        (
            typeflag,
            _text(linkname, 100, "linkname"),
            magic,
            _text(uname, 32, "uname"),
            _text(gname, 32, "gname"),
            _numeric(devmajor, 8, "devmajor"),
            _numeric(devminor, 8, "devminor"),
            _text(prefix, 155, "prefix"),
            bytes(12),
        )
    )
    if checksum is None:
        field_bytes = b"%06o\0 " % (sum(head) + sum(tail) + 8 * 0x20)
    elif isinstance(checksum, int):
        field_bytes = b"%06o\0 " % checksum
    else:
        field_bytes = checksum.ljust(8, b"\0")
    block = head + field_bytes + tail
    assert len(block) == BLOCK
    return block


def header_checksum(block: bytes) -> int:
    """The correct checksum of a header block (its checksum field read as spaces)."""
    return sum(block[:148]) + sum(block[156:512]) + 8 * 0x20


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One pax record ``"<len> <key>=<value>\\n"``, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n += 1
    return b"%d" % n + body


def pax_header(
    records: Sequence[tuple[bytes, bytes]] | bytes,
    *,
    typeflag: bytes = b"x",
    name: bytes = b"././@PaxHeader",
    size: int | bytes | None = None,
    checksum: int | bytes | None = None,
) -> bytes:
    """A whole pax extended-header member: header, records, zero padding.

    *records* is a list of ``(key, value)`` pairs or the raw record bytes (to break them).
    ``typeflag=b"g"`` makes a global header.
    """
    data = records if isinstance(records, bytes) else b"".join(pax_record(k, v) for k, v in records)
    head = ustar_header(
        name,
        typeflag=typeflag,
        size=len(data) if size is None else size,
        mode=0o644,
        checksum=checksum,
    )
    return head + _pad(data)


def member(
    name: bytes,
    data: bytes = b"",
    *,
    pax: Sequence[tuple[bytes, bytes]] | None = None,
    typeflag: bytes = b"0",
    size: int | bytes | None = None,
    mode: int | bytes = 0o644,
    mtime: int | bytes = DEFAULT_MTIME,
    uid: int | bytes = 0,
    gid: int | bytes = 0,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    devmajor: int | bytes = 0,
    devminor: int | bytes = 0,
    prefix: bytes = b"",
    checksum: int | bytes | None = None,
    pad: bool = True,
) -> bytes:
    """A tar member: optional pax header, ustar header, *data*, zero padding to 512.

    *size* overrides the header's size field (default ``len(data)``), so a header can
    claim more or less than the data that follows.
    """
    head = ustar_header(
        name,
        typeflag=typeflag,
        size=len(data) if size is None else size,
        mode=mode,
        mtime=mtime,
        uid=uid,
        gid=gid,
        linkname=linkname,
        magic=magic,
        devmajor=devmajor,
        devminor=devminor,
        prefix=prefix,
        checksum=checksum,
    )
    out = (pax_header(pax) if pax else b"") + head
    return out + (_pad(data) if pad else data)


def dir_member(name: bytes, *, mode: int = 0o755, mtime: int = DEFAULT_MTIME) -> bytes:
    """A directory member (give *name* its trailing ``/``)."""
    return member(name, typeflag=b"5", mode=mode, mtime=mtime)


def symlink_member(name: bytes, target: bytes, *, mtime: int = DEFAULT_MTIME) -> bytes:
    """A symlink member; a target over 100 bytes or not ASCII goes in a pax ``linkpath``."""
    if len(target) > 100 or not target.isascii():
        return member(name, typeflag=b"2", mode=0o777, mtime=mtime, pax=[(b"linkpath", target)])
    return member(name, typeflag=b"2", mode=0o777, mtime=mtime, linkname=target)


def hardlink_member(name: bytes, target: bytes, *, mtime: int = DEFAULT_MTIME) -> bytes:
    """A hard-link member whose ``linkpath`` is *target* (a member name, ``tree/…``)."""
    if len(target) > 100 or not target.isascii():
        return member(name, typeflag=b"1", mtime=mtime, pax=[(b"linkpath", target)])
    return member(name, typeflag=b"1", mtime=mtime, linkname=target)


def device_member(
    name: bytes, kind: Literal["char", "block"] = "char", *, major: int = 1, minor: int = 3
) -> bytes:
    """A character (``3``) or block (``4``) device member; defaults to ``/dev/null``'s."""
    return member(
        name,
        typeflag=b"3" if kind == "char" else b"4",
        mode=0o666,
        devmajor=major,
        devminor=minor,
    )


def fifo_member(name: bytes) -> bytes:
    """A FIFO (``6``) member."""
    return member(name, typeflag=b"6", mode=0o644)


def first_member_end(tar: bytes) -> int:
    """Offset just past the first member (after any pax header preceding it)."""
    pos = 0
    while pos + BLOCK <= len(tar):
        block = tar[pos : pos + BLOCK]
        size_text = block[124:136].rstrip(b"\0 ").lstrip(b" ")
        size = int(size_text, 8) if size_text else 0
        pos += BLOCK + size + (-size % BLOCK)
        if block[156:157] not in (b"x", b"g"):
            return min(pos, len(tar))
    return len(tar)


# --------------------------------------------------------------------------- entries


def blake(data: bytes) -> str:
    """BLAKE3-256 of *data*, hex: the index's digest."""
    return blake3.blake3(data).hexdigest()


def display(path: bytes) -> str:
    r"""A path as FORMAT.md §6 shows it: UTF-8, other bytes ``\xNN``, ``\`` as ``\\``."""
    return "\\\\".join(part.decode("utf-8", "backslashreplace") for part in path.split(b"\\"))


@dataclass
class Entry:
    """One tree entry of a crafted archive, and how to misrepresent it.

    *path* is relative to the tree root (no ``tree/`` prefix). *target* is a symlink's
    target verbatim, or a hard link's target path relative to the root (its ``linkpath``
    becomes ``tree/<target>``). The override fields break one thing at a time:

    - *name*: the raw member name instead of ``tree/<path>[/]``;
    - *linkpath*: the raw link target instead of the one derived from *target*;
    - *typeflag*, *size*, *checksum*, *prefix*: header fields (*size* may exceed the
      data; *prefix* is ustar's name prefix, which oxbak never writes);
    - *pax*: extra pax records, after the ones the name/size/mtime need;
    - *hdrcharset*: put POSIX's ``hdrcharset=BINARY`` first in the pax header (oxbak's
      writer omits it, as GNU tar does; readers must accept and ignore it);
    - *index*: fields merged into this entry's index record (:data:`DROP` removes one);
    - *in_index*, *counted*: whether the index lists it, whether the totals count it.
    """

    kind: Kind
    path: bytes
    data: bytes = b""
    target: bytes = b""
    mode: int | None = None
    mtime: int = DEFAULT_MTIME
    mtime_ns: int | None = None
    uid: int = 0
    gid: int = 0
    name: bytes | None = None
    linkpath: bytes | None = None
    typeflag: bytes | None = None
    size: int | None = None
    checksum: int | None = None
    prefix: bytes = b""
    hdrcharset: bool = False
    pax: list[tuple[bytes, bytes]] = field(default_factory=list)
    index: dict[str, Json] = field(default_factory=dict)
    in_index: bool = True
    counted: bool = True

    @classmethod
    def file(cls, path: bytes, data: bytes = b"", *, mode: int = 0o644, **kw: Any) -> Entry:
        """A regular file (*kw*: any other field, e.g. ``name=`` or ``pax=``)."""
        return cls("file", path, data=data, mode=mode, **kw)

    @classmethod
    def dir(cls, path: bytes, *, mode: int = 0o755, **kw: Any) -> Entry:
        """A directory (*kw*: any other field)."""
        return cls("dir", path, mode=mode, **kw)

    @classmethod
    def symlink(cls, path: bytes, target: bytes, **kw: Any) -> Entry:
        """A symbolic link to *target*, verbatim (*kw*: any other field)."""
        return cls("symlink", path, target=target, mode=0o777, **kw)

    @classmethod
    def hardlink(cls, path: bytes, target: bytes, **kw: Any) -> Entry:
        """A hard link to the regular file at relative path *target* (*kw*: any other field)."""
        return cls("hardlink", path, target=target, mode=0o644, **kw)

    def but(self, **changes: Any) -> Entry:
        """A copy with *changes* applied (``dataclasses.replace``)."""
        return replace(self, **changes)

    @property
    def member_name(self) -> bytes:
        """The tar member name: ``tree/<path>`` (``/``-terminated for directories)."""
        if self.name is not None:
            return self.name
        if not self.path:
            return b"tree/"
        return b"tree/" + self.path + (b"/" if self.kind == "dir" else b"")

    @property
    def member_linkpath(self) -> bytes:
        """The ``linkpath`` the member carries."""
        if self.linkpath is not None:
            return self.linkpath
        if self.kind == "symlink":
            return self.target
        if self.kind == "hardlink":
            return b"tree/" + self.target
        return b""

    @property
    def effective_mode(self) -> int:
        """The mode in the header: given, or 0644 / 0755 / 0777 by kind."""
        if self.mode is not None:
            return self.mode
        return {"file": 0o644, "dir": 0o755, "symlink": 0o777, "hardlink": 0o644}[self.kind]

    def to_member(self) -> bytes:
        """This entry's tar member: pax header when needed, ustar header, data, padding."""
        typeflag = (
            self.typeflag
            or {"file": b"0", "dir": b"5", "symlink": b"2", "hardlink": b"1"}[self.kind]
        )
        name = self.member_name
        link = self.member_linkpath
        data = self.data  # empty but for files, unless a test gives a link or dir data
        size = len(data) if self.size is None else self.size
        records: list[tuple[bytes, bytes]] = []
        long_name = len(name) > 100 or not name.isascii()
        long_link = len(link) > 100 or not link.isascii()
        if self.hdrcharset:
            records.append((b"hdrcharset", b"BINARY"))
        if long_name or long_link:
            if long_name:
                records.append((b"path", name))
                name = name[:100] if name.isascii() else b"@PathInPax"
            if long_link:
                records.append((b"linkpath", link))
                link = link[:100] if link.isascii() else b"@LinkInPax"
        size_field = size
        if size >= 8**11:
            records.append((b"size", b"%d" % size))
            size_field = 0
        mtime = self.mtime
        if self.mtime_ns is not None:
            records.append((b"mtime", _pax_time(self.mtime_ns)))
            mtime = max(0, min(self.mtime_ns // 10**9, 8**11 - 1))
        uid, gid = self.uid, self.gid
        if uid >= 8**7:
            records.append((b"uid", b"%d" % uid))
            uid = 0
        if gid >= 8**7:
            records.append((b"gid", b"%d" % gid))
            gid = 0
        records.extend(self.pax)
        return member(
            name,
            data,
            pax=records or None,
            typeflag=typeflag,
            size=size_field,
            mode=self.effective_mode,
            mtime=mtime,
            uid=uid,
            gid=gid,
            linkname=link,
            prefix=self.prefix,
            checksum=self.checksum,
        )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _pax_time(ns: int) -> bytes:
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 10**9)
    text = f"{sign}{sec}" + (("." + f"{frac:09d}".rstrip("0")) if frac else "")
    return text.encode()


def tree_order(entries: Iterable[Entry]) -> list[Entry]:
    """*entries* in FORMAT.md's entry order: sorted by the tuple of path components."""
    return sorted(entries, key=lambda e: tuple(e.path.split(b"/")) if e.path else ())


# --------------------------------------------------------------------------- JSON


def _encode(obj: Json) -> bytes:
    return msgspec.json.encode(obj, order="deterministic")


def _apply(base: dict[str, Json], overrides: dict[str, Json]) -> dict[str, Json]:
    out = dict(base)
    for key, value in overrides.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def totals_for(entries: Iterable[Entry | bytes], *, root: bool = True) -> dict[str, int]:
    """The ``totals`` object of *entries* (raw members and uncounted entries ignored)."""
    totals = {"files": 0, "hardlinks": 0, "directories": 1 if root else 0, "symlinks": 0}
    nbytes = 0
    for e in entries:
        if isinstance(e, bytes) or not e.counted:
            continue
        key = {
            "file": "files",
            "dir": "directories",
            "symlink": "symlinks",
            "hardlink": "hardlinks",
        }
        totals[key[e.kind]] += 1
        if e.kind == "file":
            nbytes += len(e.data)
    totals["bytes"] = nbytes
    return totals


def _sections(entries: Iterable[Entry | bytes]) -> list[dict[str, Json]]:
    counts: dict[bytes, int] = {}
    order: list[bytes] = [b""]
    for e in entries:
        if isinstance(e, bytes) or not e.counted:
            continue
        if e.kind == "dir":
            order.append(e.path)
            continue
        parent = e.path.rpartition(b"/")[0]
        counts[parent] = counts.get(parent, 0) + 1
    seen = [p for p in dict.fromkeys(order) if p in counts]
    seen += [p for p in counts if p not in seen]
    return [{"name": display(p) if p else ".", "entry_count": counts[p]} for p in seen]


def manifest_dict(**overrides: Json) -> dict[str, Json]:
    """A valid v1 manifest (FORMAT.md §3) as a dict; *overrides* replace or DROP fields."""
    base: dict[str, Json] = {
        "format": "oxbak",
        "version": 1,
        "created_at": "2024-01-01T00:00:00Z",
        "oxbak_version": "0.1.0",
        "source": "src",
        "sections": [],
        "totals": {"files": 0, "hardlinks": 0, "directories": 1, "symlinks": 0, "bytes": 0},
        "compression": {"algorithm": "zstd", "level": 3, "checksum": True},
        "labels": {},
        "skipped": 0,
        "partial": False,
        "changed": 0,
    }
    return _apply(base, overrides)


def manifest_bytes(*, pad_to: int | None = None, **overrides: Json) -> bytes:
    """A valid v1 manifest's JSON (msgspec, deterministic order), padded with spaces.

    *overrides* replace fields (:data:`DROP` removes one); *pad_to* appends ASCII spaces up
    to that many bytes, as the writer does to keep room for a rewrite.
    """
    data = _encode(manifest_dict(**overrides))
    if pad_to is not None:
        data = data.ljust(pad_to, b" ")
    return data


def manifest_for(
    entries: Sequence[Entry | bytes],
    /,
    *,
    root: bool = True,
    pad_to: int | None = None,
    **overrides: Json,
) -> bytes:
    """The manifest JSON of an archive holding *entries*: exact ``totals`` and ``sections``."""
    fields: dict[str, Json] = {
        "totals": totals_for(entries, root=root),
        "sections": _sections(entries),
    }
    fields.update(overrides)
    return manifest_bytes(pad_to=pad_to, **fields)


def index_records(entries: Sequence[Entry | bytes], *, root: bool = True) -> list[dict[str, Json]]:
    """The index's record objects (FORMAT.md §5) for *entries*, the root first."""
    records: list[dict[str, Json]] = []
    if root:
        records.append({"path": "", "type": "dir"})
    for e in entries:
        if isinstance(e, bytes) or not e.in_index:
            continue
        rec: dict[str, Json] = {}
        try:
            rec["path"] = e.path.decode("utf-8")
        except UnicodeDecodeError:
            rec["path_b64"] = base64.b64encode(e.path).decode("ascii")
        rec["type"] = e.kind
        if e.kind == "file":
            rec["size"] = len(e.data)
            rec["digest"] = blake(e.data)
        elif e.kind in ("symlink", "hardlink"):
            rec["digest"] = blake(e.target)
        records.append(_apply(rec, e.index))
    return records


def index_header(
    entries: Sequence[Entry | bytes], /, *, root: bool = True, **overrides: Json
) -> dict[str, Json]:
    """The index header object for *entries*; *overrides* replace or DROP fields."""
    records = index_records(entries, root=root)
    base: dict[str, Json] = {
        "format": "oxbak-index",
        "version": 1,
        "digest": "blake3-256",
        "entries": len(records),
        "partial": False,
        "changed": 0,
        "missing": 0,
        "totals": totals_for(entries, root=root),
    }
    return _apply(base, overrides)


def index_bytes(
    entries: Sequence[Entry | bytes],
    /,
    *,
    root: bool = True,
    records: Sequence[dict[str, Json]] | None = None,
    extra_lines: Sequence[bytes] = (),
    **header_overrides: Json,
) -> bytes:
    """The ``index.jsonl`` content for *entries*: header line, then one line per entry.

    *records* replaces the computed records; *extra_lines* are appended raw (each needs
    its own ``\\n``).
    """
    header = index_header(entries, root=root, **header_overrides)
    recs = index_records(entries, root=root) if records is None else records
    lines = [_encode(header) + b"\n"] + [_encode(r) + b"\n" for r in recs]
    return b"".join(lines) + b"".join(extra_lines)


# --------------------------------------------------------------------------- tar stream


_DEFAULT_ROOT: Final = Entry("dir", b"")


def build_tar(
    entries: Sequence[Entry | bytes],
    *,
    manifest: bytes | None = None,
    manifest_member: bytes | None = None,
    index: bytes | None = None,
    index_member: bytes | None = None,
    root: Entry | bytes | None = _DEFAULT_ROOT,
    before_manifest: Sequence[bytes] = (),
    before_tree: Sequence[bytes] = (),
    before_index: Sequence[bytes] = (),
    after_index: Sequence[bytes] = (),
    end: bytes = END,
    pad_record: bool = True,
    tail: bytes = b"",
) -> bytes:
    """A tar stream laid out as FORMAT.md §2, valid unless told otherwise.

    Order: *before_manifest*, ``manifest.json``, *before_tree*, the root ``tree/``, the
    *entries* (in the order given: :class:`Entry` objects or raw member bytes inserted
    verbatim), *before_index*, ``index.jsonl``, *after_index*, *end* (the end marker),
    zero padding to a 10240-byte record when *pad_record*, then *tail*.

    *manifest* / *index* replace the computed JSON; *manifest_member* / *index_member*
    replace the whole member (``b""`` leaves it out). ``root=None`` omits the root.
    """
    has_root = root is not None
    if manifest_member is None:
        data = manifest_for(entries, root=has_root) if manifest is None else manifest
        manifest_member = member(b"manifest.json", data)
    if index_member is None:
        data = index_bytes(entries, root=has_root) if index is None else index
        index_member = member(b"index.jsonl", data)
    parts: list[bytes] = [*before_manifest, manifest_member, *before_tree]
    if isinstance(root, Entry):
        parts.append(root.to_member())
    elif isinstance(root, bytes):
        parts.append(root)
    for e in entries:
        parts.append(e if isinstance(e, bytes) else e.to_member())
    parts += [*before_index, index_member, *after_index, end]
    out = b"".join(parts)
    if pad_record:
        out += bytes(-len(out) % RECORD)
    return out + tail


# --------------------------------------------------------------------------- zstd framing


def frame(
    data: bytes, *, checksum: bool = True, level: int = 3, content_size: bool = True
) -> bytes:
    """One zstd frame of *data* (content checksum on by default, as FORMAT.md requires).

    With ``content_size=False`` the frame header carries a Window_Descriptor instead of the
    single-segment content size (what oxbak's streaming writer produces for frame 3).
    """
    compressor = zstandard.ZstdCompressor(
        level=level, write_checksum=checksum, write_content_size=content_size
    )
    return compressor.compress(data)


def skippable(n: int = WRITER_RESERVE - 8, *, magic: int = SKIPPABLE_MAGIC) -> bytes:
    """A skippable frame holding *n* zero bytes (8 header bytes + *n*)."""
    return magic.to_bytes(4, "little") + n.to_bytes(4, "little") + bytes(n)


def set_window(zframe: bytes, exponent: int, mantissa: int = 0) -> bytes:
    """*zframe* with its Window_Descriptor rewritten to declare ``(1 << (10 + exponent))
    * (1 + mantissa / 8)`` bytes.

    Frame header layout (RFC 8878 §3.1.1.1): 4-byte magic, then Frame_Header_Descriptor
    (bits 7-6 Frame_Content_Size_flag, bit 5 Single_Segment_flag, bit 3 reserved, bit 2
    Content_Checksum_flag, bits 1-0 Dictionary_ID_flag), then the Window_Descriptor byte
    (exponent in bits 7-3, mantissa in bits 2-0) only when Single_Segment_flag is 0. The
    window only bounds how far back matches reach, so a larger one still decodes, but a
    decoder must allocate it: that is the point.

    :raises ValueError: if *zframe* is single-segment (no Window_Descriptor to edit).
    """
    if zframe[:4] != ZSTD_MAGIC:
        raise ValueError("not a zstd frame")
    if zframe[4] & 0x20:
        raise ValueError("single-segment frame: build it with content_size=False")
    if not (0 <= exponent < 32 and 0 <= mantissa < 8):
        raise ValueError("exponent is 5 bits, mantissa 3 bits")
    return zframe[:5] + bytes([(exponent << 3) | mantissa]) + zframe[6:]


def window_size(exponent: int, mantissa: int = 0) -> int:
    """The window, in bytes, a Window_Descriptor of *exponent* and *mantissa* declares."""
    base = 1 << (10 + exponent)
    return base + (base >> 3) * mantissa


def frame_declaring_window(data: bytes, log: int = 31, *, mantissa: int = 0) -> bytes:
    """A checksummed frame of *data* whose header declares a ``2**log``-byte window
    (times ``1 + mantissa/8``); ``log=31`` declares 2 GiB."""
    return set_window(frame(data, content_size=False), log - 10, mantissa)


def frame_declaring_content_size(data: bytes, content_size: int) -> bytes:
    """A single-segment frame of *data* whose header claims *content_size* bytes.

    In a single-segment frame (Single_Segment_flag set) there is no Window_Descriptor: the
    window is the Frame_Content_Size, so a huge claimed size is a huge window. The header
    is rebuilt with an 8-byte Frame_Content_Size field; the blocks are kept as they are.
    """
    zframe = frame(data, content_size=True)
    fhd = zframe[4]
    if not fhd & 0x20 or fhd & 3:
        raise ValueError("expected a single-segment frame without a dictionary id")
    fcs_len = (1, 2, 4, 8)[fhd >> 6]
    new_fhd = (fhd & 0x3F) | 0xC0
    return (
        zframe[:4] + bytes([new_fhd]) + content_size.to_bytes(8, "little") + zframe[5 + fcs_len :]
    )


def oxbak_parts(
    tar: bytes,
    *,
    split: int | None = None,
    reserve: int | None = WRITER_RESERVE - 8,
    first: Callable[[bytes], bytes] = frame,
    rest: Callable[[bytes], bytes] = lambda data: frame(data, content_size=False),
) -> list[bytes]:
    """The frames of an archive as a list: ``[frame 1, reserve, frame 3]`` (FORMAT.md §1).

    Frame 1 holds ``tar[:split]`` (default: the first member), frame 3 the rest. *first*
    and *rest* make the frames (swap in :func:`frame_declaring_window` and the like);
    ``reserve=None`` omits the skippable frame.
    """
    cut_at = first_member_end(tar) if split is None else split
    parts = [first(tar[:cut_at])]
    if reserve is not None:
        parts.append(skippable(reserve))
    parts.append(rest(tar[cut_at:]))
    return parts


def oxbak_file(
    tar: bytes,
    *,
    split: int | None = None,
    reserve: int | None = WRITER_RESERVE - 8,
    first: Callable[[bytes], bytes] = frame,
    rest: Callable[[bytes], bytes] = lambda data: frame(data, content_size=False),
) -> bytes:
    """The bytes of an ``.oxbak`` file for tar stream *tar*: see :func:`oxbak_parts`."""
    return b"".join(oxbak_parts(tar, split=split, reserve=reserve, first=first, rest=rest))


@dataclass(frozen=True)
class FrameInfo:
    """Where one frame lies in a zstd stream (offsets into the whole stream).

    *header_end* is the end of the frame header (the first block header starts there);
    *blocks* are ``(start, end)`` of each block, header included; *checksum_start* is where
    the 4-byte content checksum begins, or ``None``.
    """

    start: int
    end: int
    skippable: bool
    header_end: int
    blocks: tuple[tuple[int, int], ...]
    checksum_start: int | None


def frames_of(data: bytes) -> list[FrameInfo]:
    """Walk a complete zstd stream's frames (RFC 8878) without decompressing them.

    :raises ValueError: if the stream is not a sequence of whole frames.
    """
    out: list[FrameInfo] = []
    pos = 0
    while pos < len(data):
        magic = int.from_bytes(data[pos : pos + 4], "little")
        if magic & 0xFFFFFFF0 == SKIPPABLE_MAGIC:
            n = int.from_bytes(data[pos + 4 : pos + 8], "little")
            end = pos + 8 + n
            out.append(FrameInfo(pos, end, True, pos + 8, (), None))
            pos = end
            continue
        if data[pos : pos + 4] != ZSTD_MAGIC:
            raise ValueError(f"no frame at offset {pos}")
        fhd = data[pos + 4]
        fcs_flag, single, has_checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 4, fhd & 3
        hlen = (
            1
            + (0 if single else 1)
            + (0, 1, 2, 4)[dict_flag]
            + (1 if single else 0, 2, 4, 8)[fcs_flag]
        )
        header_end = pos + 4 + hlen
        blocks: list[tuple[int, int]] = []
        cur = header_end
        while True:
            bh = int.from_bytes(data[cur : cur + 3], "little")
            last, kind, size = bh & 1, (bh >> 1) & 3, bh >> 3
            bend = cur + 3 + (1 if kind == 1 else size)
            blocks.append((cur, bend))
            cur = bend
            if last:
                break
        checksum_start = cur if has_checksum else None
        end = cur + (4 if has_checksum else 0)
        if end > len(data):
            raise ValueError("stream ends inside a frame")
        out.append(FrameInfo(pos, end, False, header_end, tuple(blocks), checksum_start))
        pos = end
    return out


def decompress_all(data: bytes) -> bytes:
    """The concatenated content of every frame (skippable frames contribute nothing)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    return reader.read()


def cut(data: bytes, at: int) -> bytes:
    """*data* truncated to its first *at* bytes (negative: drop that many from the end)."""
    return data[:at]


def flip(data: bytes, offset: int, mask: int = 0xFF) -> bytes:
    """*data* with the byte at *offset* XORed with *mask* (negative offsets count back)."""
    buf = bytearray(data)
    buf[offset] ^= mask
    return bytes(buf)


def append(data: bytes, garbage: bytes = b"garbage!") -> bytes:
    """*data* followed by *garbage*."""
    return data + garbage
