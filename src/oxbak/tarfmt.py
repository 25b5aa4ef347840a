"""POSIX pax/ustar headers: a lean encoder for the writer and a strict decoder for the reader.

oxbak does not go through :mod:`tarfile` per member: it has a fixed, small set of header
shapes, and building them directly (no user/group look-ups, no path normalisation, one
``bytes`` per header) is most of the difference between a per-file cost of microseconds and
one of tens of microseconds. The output is ordinary pax, read by GNU tar and
:mod:`tarfile` alike (``tests/test_interop.py``).

Decoding is strict where :mod:`tarfile` is lenient: the checksum of every header is
verified, numeric fields must be octal, and a bad header is an error rather than the end of
the archive.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from zlib import adler32 as _adler32

from . import format as fmt
from .errors import CorruptArchiveError, LimitExceededError, UnsafeArchiveError
from .paths import shown
from .xattrs import ACL_RECORD_KEYS, LIBARCHIVE_PREFIX, PAX_PREFIX, Xattrs, from_pax, pax_records

__all__ = ["Header", "decode_pax", "encode_header", "known_pax_size", "padding", "parse_header"]

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
PAX = b"x"

_BLOCK = fmt.BLOCK_SIZE
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_OCTAL_11 = 8**11
_MAX_OCTAL_7 = 8**7
_MAX_SECONDS = 2**63  # what a 64-bit time_t holds
_MAX_ID = 2**32 - 1  # uid_t and gid_t
_KNOWN_PAX_KEYS = frozenset(
    (b"path", b"linkpath", b"size", b"mtime", b"uid", b"gid", b"uname", b"gname", b"hdrcharset")
)
_IGNORED_PAX_KEYS = (b"atime", b"ctime", b"comment")
_IGNORED_PAX_PREFIXES = (b"SCHILY.", b"LIBARCHIVE.")
_REPEATED = b"\0repeated"  # no record's key holds a NUL: marks a repeated attribute

_TYPE_NAMES = {
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"g": "global pax header",
    b"L": "GNU long name",
    b"K": "GNU long link name",
    b"S": "GNU sparse file",
    b"D": "GNU dump directory",
    b"M": "GNU multi-volume",
    b"V": "volume label",
}


def padding(size: int) -> int:
    """Zero bytes that follow *size* bytes of member data up to the next block."""
    return -size % _BLOCK


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _pax_mtime(mtime_ns: int) -> bytes:
    sign = "-" if mtime_ns < 0 else ""
    sec, frac = divmod(abs(mtime_ns), 1_000_000_000)
    text = f"{sign}{sec}"
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text.encode()


# Everything after the link name: the ustar magic, the owner names, zero device numbers.
# A tree has few owners, so each pair's tail and its byte sum are built once.
@functools.lru_cache(maxsize=256)
def _tail(uname: bytes, gname: bytes) -> tuple[bytes, int]:
    tail = (
        b"ustar\x0000"
        + uname.ljust(32, b"\0")
        + gname.ljust(32, b"\0")
        + b"0000000\x000000000\x00"
        + bytes(155 + 12)
    )
    return tail, sum(tail) + 8 * 0x20  # plus the checksum field, counted as spaces


_NUL_TO_SPACE = bytes.maketrans(b"\0", b" ")
_FIELDS = b"%07o\0%07o\0%07o\0%011o\0%011o\0"


def _ustar(
    name: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    fields = _FIELDS % (mode, uid, gid, size, mtime)
    tail, tail_sum = _tail(uname, gname)
    checksum = sum(name) + sum(fields) + typeflag[0] + sum(linkname) + tail_sum
    return b"%s%s%06o\0 %s%s%s" % (
        name.ljust(100, b"\0"),
        fields,
        checksum,
        typeflag,
        linkname.ljust(100, b"\0"),
        tail,
    )


@functools.cache
def _mtime_record() -> re.Pattern[bytes]:
    # Compiled on first use, not at import: `oxbak info` never needs it.
    return re.compile(rb"([0-9]{1,3}) mtime=(-?[0-9]{1,20}(?:\.[0-9]{1,9})?)\n")


@functools.lru_cache(maxsize=256)
def _pax_block(size: int) -> bytes:
    return _ustar(fmt.PAX_HEADER_NAME, 0o644, 0, 0, size, 0, PAX, b"")


@functools.cache
def _known_pax() -> dict[bytes, int]:
    # Built on first use, not at import: `oxbak info` never needs it.
    return {_pax_block(n): n for n in range(1, 128)}


def file_header(
    name: bytes,
    mode: int,
    size: int,
    mtime_ns: int,
    uid: int,
    gid: int,
    xattrs: Xattrs = (),
    names: Callable[[int, int], tuple[str, str]] | None = None,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    """:func:`encode_header` for a regular file, with a fast path for the common shape.

    The common shape is an ASCII name of at most 100 bytes, a size under 8 GiB, small ids,
    a non-negative mtime and no extended attributes: one cached pax block carrying the
    exact mtime, then ustar.
    """
    sec, frac = divmod(mtime_ns, 1_000_000_000)
    if (
        xattrs
        or len(name) > 100
        or not name.isascii()
        or size >= _MAX_OCTAL_11
        or not 0 <= sec < _MAX_OCTAL_11
        or uid >= _MAX_OCTAL_7
        or gid >= _MAX_OCTAL_7
    ):
        return encode_header(
            name,
            typeflag=REGULAR,
            mode=mode,
            size=size,
            mtime_ns=mtime_ns,
            uid=uid,
            gid=gid,
            xattrs=xattrs,
            names=names,
            uname=uname,
            gname=gname,
        )
    main = _ustar(name, mode & 0o7777, uid, gid, size, sec, REGULAR, b"", uname, gname)
    if not frac:
        return main
    # What _pax_record(b"mtime", ...) gives, built directly: with 0 <= sec < 8**11 the body
    # is 11 to 29 bytes, so the record's length always has two digits.
    body = b" mtime=%d.%s\n" % (sec, (b"%09d" % frac).rstrip(b"0"))
    n = len(body) + 2
    return b"%s%d%s%s%s" % (_pax_block(n), n, body, _ZERO_BLOCK[n:], main)


def encode_header(
    name: bytes,
    *,
    typeflag: bytes,
    mode: int,
    size: int = 0,
    mtime_ns: int = 0,
    uid: int = 0,
    gid: int = 0,
    linkname: bytes = b"",
    xattrs: Xattrs = (),
    names: Callable[[int, int], tuple[str, str]] | None = None,
    uname: bytes = b"",
    gname: bytes = b"",
) -> bytes:
    """The header block(s) of one member: a pax header first when ustar cannot hold it all.

    *uname* and *gname* go into the ustar fields as given (at most 32 bytes each).

    *xattrs* go last, as ``SCHILY.`` records (:func:`oxbak.xattrs.pax_records`); *names*
    gives the user and group names that an ACL's text form shows.
    """
    records: list[bytes] = []
    long_name = len(name) > 100 or not name.isascii()
    long_link = len(linkname) > 100 or not linkname.isascii()
    if long_name or long_link:
        # Names that are not UTF-8 go into the records raw, as GNU tar writes them; GNU tar
        # warns about the standard's hdrcharset=BINARY marker, so it is not written.
        if long_name:
            records.append(_pax_record(b"path", name))
            name = name[:100] if name.isascii() else b"@PathInPax"
        if long_link:
            records.append(_pax_record(b"linkpath", linkname))
            linkname = linkname[:100] if linkname.isascii() else b"@LinkInPax"
    if size >= _MAX_OCTAL_11:
        records.append(_pax_record(b"size", b"%d" % size))
        size_field = 0
    else:
        size_field = size
    sec = mtime_ns // 1_000_000_000
    if mtime_ns % 1_000_000_000 or not 0 <= sec < _MAX_OCTAL_11:
        records.append(_pax_record(b"mtime", _pax_mtime(mtime_ns)))
    if not 0 <= sec < _MAX_OCTAL_11:
        sec = 0
    if uid >= _MAX_OCTAL_7:
        records.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid >= _MAX_OCTAL_7:
        records.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if xattrs:
        room = fmt.MAX_PAX_BYTES - sum(map(len, records))
        records += pax_records(xattrs, _pax_record, names or _no_names, room)
    main = _ustar(
        name, mode & 0o7777, uid, gid, size_field, sec, typeflag, linkname, uname, gname
    )
    if not records:
        return main
    data = b"".join(records)
    return _pax_block(len(data)) + data + bytes(padding(len(data))) + main


def _no_names(uid: int, gid: int) -> tuple[str, str]:
    return "", ""


@dataclass(slots=True)
class Header:
    """A decoded member header, after any pax header has been applied."""

    name: bytes
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: bytes
    #: Where the member's first header block (its pax header, if any) starts in the tar
    #: stream, when the reader knows it.
    offset: int = 0
    #: Extended attributes from ``SCHILY.xattr.*``, ``LIBARCHIVE.xattr.*`` and
    #: ``SCHILY.acl.*`` records (:func:`oxbak.xattrs.from_pax`), checked and sorted.
    xattrs: Xattrs = ()
    #: The owner's names, as the packing machine knew them ("": not stored).
    uname: str = ""
    gname: str = ""


def _octal(field: bytes, what: str, name: bytes) -> int:
    text = field.rstrip(b"\0 ").lstrip(b" ")
    if not text:
        return 0
    if text.translate(None, b"01234567"):  # anything left is not an octal digit
        raise CorruptArchiveError(f"tar header of {shown(name[:100])!r}: {what} field is not octal")
    return int(text, 8)


def known_pax_size(block: bytes) -> int | None:
    """The data size of *block* if it is exactly a pax header as oxbak writes them.

    Such a block is valid by construction (its checksum was computed by this module), so
    the reader can skip parsing it: this is the header before nearly every member.
    """
    if not block.startswith(fmt.PAX_HEADER_NAME):
        return None  # spares hashing the 512 bytes of every member's own header
    return _known_pax().get(block)


def is_zero_block(block: bytes | memoryview) -> bool:
    """Whether *block* is all zeros (half of the end-of-archive marker)."""
    return block == _ZERO_BLOCK


def _numbers(block: bytes, name: bytes) -> tuple[int, int, int, int, int, int]:
    """mode, uid, gid, size, mtime and checksum: NUL/space-terminated octal fields."""
    region = block[100:156]
    try:
        # Only octal digits, spaces and NULs may appear; int() then ignores the padding
        # (NULs turned into spaces) and still rejects a space or NUL between digits.
        if region.translate(None, b"01234567 \0"):
            raise ValueError
        r = region.translate(_NUL_TO_SPACE)
        return (
            int(r[0:8], 8),
            int(r[8:16], 8),
            int(r[16:24], 8),
            int(r[24:36], 8),
            int(r[36:48], 8),
            int(r[48:56], 8),
        )
    except ValueError:
        # Slow path: blank fields are 0, anything else names the bad field.
        return (
            _octal(block[100:108], "mode", name),
            _octal(block[108:116], "uid", name),
            _octal(block[116:124], "gid", name),
            _octal(block[124:136], "size", name),
            _octal(block[136:148], "mtime", name),
            _octal(block[148:156], "checksum", name),
        )


_ALLOWED_TYPES = frozenset((REGULAR, HARDLINK, SYMLINK, DIRECTORY, PAX))


def _checksum(block: bytes) -> int:
    """The ustar checksum of *block*: its byte sum, the checksum field counted as spaces."""
    if len(block) != _BLOCK:
        return sum(block) - sum(block[148:156]) + 8 * 0x20
    # adler32 started at 0 keeps the plain byte sum, mod 65521, in its low 16 bits: a C
    # loop instead of sum() over 512 Python ints. No piece exceeds 256 bytes, so its sum
    # (at most 65280) never wraps.
    return (
        (_adler32(block[:256], 0) & 0xFFFF)
        + (_adler32(block[256:], 0) & 0xFFFF)
        - (_adler32(block[148:156], 0) & 0xFFFF)
        + 8 * 0x20
    )


def parse_header(block: bytes, pax: dict[bytes, bytes] | None) -> Header:
    """Decode one 512-byte ustar header, verifying its checksum, then apply *pax* records.

    :raises CorruptArchiveError: bad checksum, not ustar, non-octal numbers.
    :raises UnsafeArchiveError: a member type oxbak never writes (devices, FIFOs, …).
    """
    raw_name = block[0:100].split(b"\0", 1)[0]
    mode, uid, gid, size, mtime, stored = _numbers(block, raw_name)
    actual = _checksum(block)
    if stored != actual:
        raise CorruptArchiveError(
            f"tar header of {shown(raw_name)!r}: checksum mismatch "
            f"(stored {stored}, computed {actual})"
        )
    if block[257:265] != b"ustar\x0000":
        raise CorruptArchiveError(f"tar header of {shown(raw_name)!r}: not a POSIX ustar header")
    typeflag = block[156:157]
    if typeflag == b"\0":
        typeflag = REGULAR
    # An empty prefix or link name (nearly every header) needs no split.
    if block[345:346] == b"\0":
        name = raw_name
    else:
        prefix = block[345:500].split(b"\0", 1)[0]
        name = prefix + b"/" + raw_name if prefix else raw_name
    header = Header(
        name,
        typeflag,
        mode,
        uid,
        gid,
        size,
        mtime * 1_000_000_000,
        b"" if block[157:158] == b"\0" else block[157:257].split(b"\0", 1)[0],
    )
    if block[265] or block[297]:
        header.uname = _owner_name(block[265:297])
        header.gname = _owner_name(block[297:329])
    if pax:
        _apply_pax(header, pax)
    if typeflag not in _ALLOWED_TYPES:
        kind = _TYPE_NAMES.get(typeflag, f"type {typeflag!r}")
        raise UnsafeArchiveError(f"refusing member {shown(header.name)!r}: {kind} not allowed")
    # Octal ustar fields cannot exceed these ranges (8**12 s, 8**8 ids); pax values can.
    if pax:
        if not -_MAX_SECONDS <= header.mtime_ns // 1_000_000_000 < _MAX_SECONDS:
            raise CorruptArchiveError(f"member {shown(header.name)!r}: mtime out of range")
        if header.uid > _MAX_ID or header.gid > _MAX_ID:
            raise CorruptArchiveError(f"member {shown(header.name)!r}: owner id out of range")
    return header


def _owner_name(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def decode_pax(data: bytes, owner: bytes) -> dict[bytes, bytes]:
    """Parse the records of a pax extended header.

    :raises CorruptArchiveError: malformed records.
    :raises UnsafeArchiveError: keys oxbak does not understand (e.g. ``GNU.sparse.*``).
    """
    single = _mtime_record().fullmatch(data)
    if single is not None and int(single[1]) == len(data):
        return {b"mtime": single[2]}  # what the writer puts before nearly every file
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0 and data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos, pos + 24)
        if space < 0 or not data[pos:space].isdigit():
            raise CorruptArchiveError(f"pax header of {shown(owner)!r} is malformed")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise CorruptArchiveError(f"pax header of {shown(owner)!r} is malformed")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise CorruptArchiveError(f"pax header of {shown(owner)!r} is malformed")
        if key in _KNOWN_PAX_KEYS:
            records[key] = value
        elif key.startswith((PAX_PREFIX, LIBARCHIVE_PREFIX)) or key in ACL_RECORD_KEYS:
            if key in records:
                records[_REPEATED] = key  # refused with the member's name, which comes next
            records[key] = value
        elif key not in _IGNORED_PAX_KEYS and not key.startswith(_IGNORED_PAX_PREFIXES):
            raise UnsafeArchiveError(
                f"refusing member after pax header {shown(owner)!r}: "
                f"unsupported pax key {shown(key)!r}"
            )
        pos = end
    return records


def _pax_int(value: bytes, key: str, name: bytes) -> int:
    if not value.isdigit() or len(value) > 20:
        raise CorruptArchiveError(f"pax {key} of {shown(name)!r} is not a valid number")
    return int(value)


def _apply_pax(header: Header, pax: dict[bytes, bytes]) -> None:
    if len(pax) == 1 and b"mtime" in pax:  # what the writer puts before nearly every file
        header.mtime_ns = _parse_pax_mtime(pax[b"mtime"], header.name)
        return
    if b"path" in pax:
        header.name = pax[b"path"]
    if b"linkpath" in pax:
        header.linkname = pax[b"linkpath"]
    name = header.name
    if b"size" in pax:
        header.size = _pax_int(pax[b"size"], "size", name)
    if b"uid" in pax:
        header.uid = _pax_int(pax[b"uid"], "uid", name)
    if b"gid" in pax:
        header.gid = _pax_int(pax[b"gid"], "gid", name)
    if b"mtime" in pax:
        header.mtime_ns = _parse_pax_mtime(pax[b"mtime"], name)
    if b"uname" in pax:
        header.uname = _owner_name(pax[b"uname"])
    if b"gname" in pax:
        header.gname = _owner_name(pax[b"gname"])
    if _REPEATED in pax:
        raise CorruptArchiveError(
            f"member {shown(name)!r}: its pax header repeats {shown(pax[_REPEATED][:80])!r}"
        )
    header.xattrs = from_pax(pax, name)


def _parse_pax_mtime(value: bytes, name: bytes) -> int:
    sec, dot, frac = value.partition(b".")
    if dot and sec.isdigit() and len(sec) <= 20 and frac.isdigit() and len(frac) <= 9:
        return int(sec + frac.ljust(9, b"0"))  # the writer's form, in one int()
    negative = value.startswith(b"-")
    body = value[1:] if negative else value
    sec, dot, frac = body.partition(b".")
    if not sec.isdigit() or len(sec) > 20 or (dot and (not frac.isdigit() or len(frac) > 9)):
        raise CorruptArchiveError(f"pax mtime of {shown(name)!r} is not a valid time")
    ns = int(sec) * 1_000_000_000 + (int(frac.ljust(9, b"0")) if dot else 0)
    return -ns if negative else ns


def check_pax_size(size: int, name: bytes) -> None:
    """Refuse pax headers larger than the format allows before reading them."""
    if size > fmt.MAX_PAX_BYTES:
        raise LimitExceededError(
            f"pax header of {shown(name)!r} is {size} bytes, limit {fmt.MAX_PAX_BYTES}"
        )
