"""The table of contents (``toc.msgpack``) and the footer that locates it (version 2).

The TOC is the archive's integrity index and its map: one record per tree entry, in
archive order, with everything ``list`` and ``diff`` show and where the entry's member
starts in the tar stream. Records are stored in blocks of columns (msgpack, via msgspec),
each block in a zstd frame of its own, so that one entry is found by decompressing the
TOC header and one block. See ``docs/FORMAT.md`` §5.

Everything decoded here is checked before it is used: sizes are bounded before they are
allocated, column lengths must agree, and values must lie in their ranges. Whether a
record agrees with the member actually found at its offset is the reading side's check
(:mod:`oxbak.source`), and the ordering and naming rules are the restore loop's.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import NamedTuple, Protocol

import msgspec

from . import format as fmt
from .errors import CorruptArchiveError, LimitExceededError
from .manifest import Index
from .paths import shown
from .xattrs import Xattrs, check

__all__ = [
    "BlockRef",
    "Footer",
    "Record",
    "TocBlock",
    "TocBuilder",
    "TocHeader",
    "decode_block",
    "decode_columns",
    "decode_footer",
    "decode_header",
    "encode_footer",
    "record_at",
    "records_of",
]

FILE, DIR, SYMLINK, HARDLINK = b"0", b"5", b"2", b"1"  # the tar typeflags of each kind
KIND_NAMES = {FILE[0]: "file", DIR[0]: "dir", SYMLINK[0]: "symlink", HARDLINK[0]: "hardlink"}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
CHANGED, MISSING = 1, 2
#: Version 3: a file whose content is its base's (no member here; FORMAT.md §11).
FROM_BASE = 4
_KIND_BYTES = FILE + DIR + SYMLINK + HARDLINK
_FLAG_BYTES = bytes(range((CHANGED | MISSING) + 1))
_FLAG_BYTES_INCREMENTAL = _FLAG_BYTES + bytes([FROM_BASE])
_NO_DIGEST = bytes(fmt.DIGEST_SIZE)
_DIGEST = fmt.DIGEST_SIZE
_MAX_ID = 2**32 - 1
_MAX_U64 = 2**64 - 1
_MAX_I64 = 2**63
_COLUMNS = 15  # of a block without extended attributes


class Footer(msgspec.Struct, kw_only=True):
    """The content of the footer frame: where the TOC member is."""

    format: str
    version: int
    toc_offset: int  # of the TOC member's first header block in the tar stream
    toc_size: int  # the TOC member's data size


class BlockRef(msgspec.Struct, array_like=True):
    """Where one block of records is, and the path of its first record."""

    first: bytes
    offset: int  # from the end of the TOC header
    length: int
    entries: int


class TocHeader(Index):
    """The TOC's first part: the final word on what the archive holds.

    The fields of a version-1 index header (:class:`~oxbak.manifest.Index`), and where
    the blocks of records are.
    """

    blocks: list[BlockRef] = []


class IncrementalTocHeader(TocHeader):
    """The TOC header of a version-3 archive: also how its records relate to the base.

    A subclass, so that a full archive's TOC header is encoded exactly as before.
    """

    stored: int = 0  # records with a member
    unchanged: int = 0  # records flagged FROM_BASE
    deleted: int = 0  # the base's paths that have no record here


class TocBlock(msgspec.Struct, array_like=True):
    """Up to :data:`~oxbak.format.TOC_BLOCK_ENTRIES` records, one column per field.

    ``ctimes``, ``inodes`` and ``offsets`` hold each value as its difference from the
    previous record's (the first as is): they mostly grow in small steps, which zstd
    compresses far better than the values themselves. ``xattrs``, by record number, is
    left out of a block where no record has any: such a block is encoded as before it
    existed, and readers that predate it ignore it where it is.
    """

    paths: list[bytes]
    kinds: bytes
    modes: list[int]
    uids: list[int]
    gids: list[int]
    users: dict[int, str]
    groups: dict[int, str]
    sizes: list[int]
    mtimes: list[int]
    ctimes: list[int]
    inodes: list[int]
    targets: list[bytes]
    digests: bytes
    flags: bytes
    offsets: list[int]
    xattrs: dict[int, Xattrs] = {}


class Record(NamedTuple):
    """One tree entry as the TOC (or a version-1 index) describes it.

    ``path`` is relative to the tree root (``b""`` for the root). ``target`` is a
    symlink's target or a hardlink's target path. ``digest`` is 32 bytes (zeros for a
    directory). ``offset`` is where the member's first header block starts in the tar
    stream (0 for a missing file, and for version-1 records, which carry none).
    ``missing`` on a file: it has no member; on a directory: its member is there, but not
    all of what it held (:attr:`absent`).
    Version-1 records carry no metadata: ``meta`` is false for them. ``xattrs`` are the
    entry's extended attributes, sorted by name. (A named tuple: a
    restore of a subset goes through every record of the TOC, and it is the cheapest.)
    """

    path: bytes
    kind: str
    size: int
    digest: bytes
    changed: bool = False
    missing: bool = False
    mode: int = 0
    uid: int = 0
    gid: int = 0
    user: str = ""
    group: str = ""
    mtime_ns: int = 0
    ctime_ns: int = 0
    ino: int = 0
    target: bytes = b""
    offset: int = 0
    meta: bool = True
    xattrs: Xattrs = ()
    #: Version 3: no member here, the content is the base's (FORMAT.md §11).
    from_base: bool = False

    @property
    def absent(self) -> bool:
        """Whether the record has no member: a file that was missing when packed."""
        return self.missing and self.kind != "dir"


_footer_decoder = msgspec.json.Decoder(Footer)
_header_decoder = msgspec.msgpack.Decoder(TocHeader)
_incremental_header_decoder = msgspec.msgpack.Decoder(IncrementalTocHeader)
_block_decoder = msgspec.msgpack.Decoder(TocBlock)
_json = msgspec.json.Encoder(order="deterministic")
# Struct fields have a fixed order, and the writer sorts the owner-name maps itself.
_msgpack = msgspec.msgpack.Encoder()


def encode_footer(toc_offset: int, toc_size: int) -> bytes:
    """The footer frame's content."""
    return _json.encode(
        Footer(
            format=fmt.FOOTER_FORMAT_NAME,
            version=1,
            toc_offset=toc_offset,
            toc_size=toc_size,
        )
    )


def decode_footer(data: bytes) -> Footer:
    """Decode and check the footer frame's content.

    :raises CorruptArchiveError: anything but a version-1 footer with sane numbers.
    """
    if len(data) > fmt.MAX_FOOTER_BYTES:
        raise LimitExceededError(f"footer is {len(data)} bytes, limit {fmt.MAX_FOOTER_BYTES}")
    try:
        footer = _footer_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CorruptArchiveError(f"footer is malformed: {exc}") from exc
    if footer.format != fmt.FOOTER_FORMAT_NAME or footer.version != 1:
        raise CorruptArchiveError(
            f"footer has format {footer.format!r} version {footer.version}, "
            f"expected {fmt.FOOTER_FORMAT_NAME!r} version 1"
        )
    if footer.toc_offset < 0 or footer.toc_size < 4:
        raise CorruptArchiveError("footer locates no table of contents")
    return footer


def decode_header(data: bytes, *, incremental: bool = False) -> tuple[TocHeader, int]:
    """The TOC header at the start of the TOC member's *data*, and the bytes it took.

    *incremental*: of a version-3 archive, decoded as an :class:`IncrementalTocHeader`.

    :raises CorruptArchiveError: a malformed header or block list.
    """
    if len(data) < 4:
        raise CorruptArchiveError("table of contents is truncated")
    (length,) = struct.unpack_from("<I", data)
    if length > fmt.MAX_TOC_HEADER_BYTES:
        raise LimitExceededError(
            f"table of contents header is {length} bytes, limit {fmt.MAX_TOC_HEADER_BYTES}"
        )
    if 4 + length > len(data):
        raise CorruptArchiveError("table of contents header is truncated")
    try:
        decoder = _incremental_header_decoder if incremental else _header_decoder
        header = decoder.decode(data[4 : 4 + length])
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CorruptArchiveError(f"table of contents header is malformed: {exc}") from exc
    if header.format != fmt.TOC_FORMAT_NAME or header.version != fmt.TOC_VERSION:
        raise CorruptArchiveError(
            f"table of contents has format {header.format!r} version {header.version}, "
            f"expected {fmt.TOC_FORMAT_NAME!r} version {fmt.TOC_VERSION}"
        )
    if header.digest != fmt.DIGEST_NAME:
        raise CorruptArchiveError(f"table of contents uses unknown digest {header.digest!r}")
    at = 0
    count = 0
    for n, ref in enumerate(header.blocks):
        if ref.offset != at or not 0 < ref.length <= fmt.MAX_TOC_BLOCK_BYTES:
            raise CorruptArchiveError(f"table of contents block {n} is misplaced or oversized")
        if not 0 < ref.entries <= fmt.TOC_BLOCK_ENTRIES:
            raise CorruptArchiveError(f"table of contents block {n} declares {ref.entries} records")
        at += ref.length
        count += ref.entries
    if count != header.entries:
        raise CorruptArchiveError(
            f"table of contents declares {header.entries} records, its blocks {count}"
        )
    return header, 4 + length


def decode_block(
    data: bytes, ref: BlockRef, number: int, *, incremental: bool = False
) -> list[Record]:
    """The records of one block, checked (see :func:`decode_columns`)."""
    return list(records_of(decode_columns(data, ref, number, incremental=incremental)))


def decode_columns(
    data: bytes, ref: BlockRef, number: int, *, incremental: bool = False
) -> TocBlock:
    """One block, checked column by column against *ref*, with delta-coded columns summed.

    *incremental*: the block of a version-3 archive, where files may be ``FROM_BASE``.

    :raises CorruptArchiveError: malformed, inconsistent or out-of-range columns.
    """
    try:
        block = _block_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise CorruptArchiveError(
            f"table of contents block {number} is malformed: {exc}"
        ) from exc
    n = ref.entries
    lists = (
        block.paths,
        block.modes,
        block.uids,
        block.gids,
        block.sizes,
        block.mtimes,
        block.ctimes,
        block.inodes,
        block.targets,
        block.offsets,
    )
    if (
        any(len(column) != n for column in lists)
        or len(block.kinds) != n
        or len(block.flags) != n
        or len(block.digests) != n * fmt.DIGEST_SIZE
    ):
        raise CorruptArchiveError(f"table of contents block {number}: columns disagree in length")
    if block.paths[0] != ref.first:
        raise CorruptArchiveError(
            f"table of contents block {number} starts at {shown(block.paths[0])!r}, "
            f"its reference says {shown(ref.first)!r}"
        )
    block.ctimes = list(accumulate(block.ctimes))
    block.inodes = list(accumulate(block.inodes))
    block.offsets = list(accumulate(block.offsets))
    if (
        min(block.modes) < 0
        or max(block.modes) > 0o7777
        or min(block.uids) < 0
        or max(block.uids) > _MAX_ID
        or min(block.gids) < 0
        or max(block.gids) > _MAX_ID
        or min(block.sizes) < 0
        or min(block.offsets) < 0
        or min(block.inodes) < 0
        or max(block.inodes) > _MAX_U64
        or not _times_in_range(block.mtimes)
        or not _times_in_range(block.ctimes)
    ):
        raise CorruptArchiveError(f"table of contents block {number}: a value is out of range")
    flag_bytes = _FLAG_BYTES_INCREMENTAL if incremental else _FLAG_BYTES
    if block.kinds.translate(None, _KIND_BYTES) or block.flags.translate(None, flag_bytes):
        raise CorruptArchiveError(f"table of contents block {number}: unknown type or flags")
    if block.xattrs:
        checked: dict[int, Xattrs] = {}
        for i, found in block.xattrs.items():
            if not 0 <= i < n:
                raise CorruptArchiveError(
                    f"table of contents block {number}: extended attributes of record {i}, "
                    f"which it does not hold"
                )
            checked[i] = check(list(found), block.paths[i])
        block.xattrs = checked
    if MISSING in block.flags or (CHANGED | MISSING) in block.flags:
        for path, code, flags in zip(block.paths, block.kinds, block.flags, strict=True):
            # A missing file has no member; a missing directory has one, but not all of
            # its contents (it could not be read in full). Nothing else can be missing.
            if flags & MISSING and code != FILE[0] and code != DIR[0]:
                raise CorruptArchiveError(
                    f"table of contents: {shown(path)!r} is a missing {KIND_NAMES[code]}"
                )
    if FROM_BASE in block.flags:
        for path, code, offset, flags in zip(
            block.paths, block.kinds, block.offsets, block.flags, strict=True
        ):
            # Only a file's content can come from the base: everything else is a header.
            if flags == FROM_BASE and (code != FILE[0] or offset != 0):
                raise CorruptArchiveError(
                    f"table of contents: {shown(path)!r} is a {KIND_NAMES[code]} from the base"
                )
    return block


def _times_in_range(values: list[int]) -> bool:
    return min(values) // 1_000_000_000 >= -_MAX_I64 and max(values) // 1_000_000_000 < _MAX_I64


def record_at(block: TocBlock, i: int) -> Record:
    """Record *i* of a block checked by :func:`decode_columns`."""
    flags, uid, gid = block.flags[i], block.uids[i], block.gids[i]
    step = fmt.DIGEST_SIZE
    return Record(
        block.paths[i],
        KIND_NAMES[block.kinds[i]],
        block.sizes[i],
        block.digests[i * step : i * step + step],
        bool(flags & CHANGED),
        bool(flags & MISSING),
        block.modes[i],
        uid,
        gid,
        block.users.get(uid, ""),
        block.groups.get(gid, ""),
        block.mtimes[i],
        block.ctimes[i],
        block.inodes[i],
        block.targets[i],
        block.offsets[i],
        True,
        block.xattrs.get(i, ()),
        bool(flags & FROM_BASE),
    )


def records_of(block: TocBlock) -> Iterator[Record]:
    """The records of a block checked by :func:`decode_columns`."""
    return (record_at(block, i) for i in range(len(block.paths)))


class _Spool(Protocol):
    def write(self, data: bytes, /) -> int: ...


class TocBuilder:
    """Collects records as the writer stores entries, and encodes them in blocks.

    Finished blocks are handed to *spool* (a file object), so memory holds one block.
    """

    def __init__(self, spool: _Spool | None) -> None:
        # Without a spool, records are only collected: a part of the archive packed by a
        # worker, added to the archive's builder with :meth:`extend`.
        self._spool = spool
        self.refs: list[BlockRef] = []
        self._at = 0
        self._reset()

    def _reset(self) -> None:
        self._paths: list[bytes] = []
        self._kinds = bytearray()
        self._modes: list[int] = []
        self._uids: list[int] = []
        self._gids: list[int] = []
        self._users: dict[int, str] = {}
        self._groups: dict[int, str] = {}
        self._sizes: list[int] = []
        self._mtimes: list[int] = []
        self._ctimes: list[int] = []
        self._inodes: list[int] = []
        self._targets: list[bytes] = []
        self._digests = bytearray()
        self._flags = bytearray()
        self._offsets: list[int] = []
        self._xattrs: dict[int, Xattrs] = {}
        self._name_bytes = 0

    def add(
        self,
        path: bytes,
        kind: str,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        ino: int,
        target: bytes,
        digest: bytes,
        flags: int,
        offset: int,
        names: Callable[[int, int], tuple[str, str]],
        xattrs: Xattrs = (),
        /,
    ) -> None:
        """Add one record (in archive order); *names* gives a uid's and a gid's names.

        Positional: a pack adds one record per entry, and keywords cost more than the rest.
        """
        self._paths.append(path)
        self._kinds.append(KIND_CODES[kind])
        self._modes.append(mode)
        self._uids.append(uid)
        self._gids.append(gid)
        if uid not in self._users or gid not in self._groups:
            self._users[uid], self._groups[gid] = names(uid, gid)
        self._sizes.append(size)
        self._mtimes.append(mtime_ns)
        self._ctimes.append(ctime_ns)
        self._inodes.append(ino)
        self._targets.append(target)
        self._digests += digest or _NO_DIGEST
        self._flags.append(flags)
        self._offsets.append(offset)
        self._name_bytes += len(path) + len(target)
        if xattrs:
            # Counted with the names, so a block stays far below MAX_TOC_BLOCK_BYTES.
            self._xattrs[len(self._paths) - 1] = xattrs
            self._name_bytes += sum(len(n) + len(v) for n, v in xattrs)
        if (
            len(self._paths) >= fmt.TOC_BLOCK_ENTRIES
            or self._name_bytes >= fmt.TOC_BLOCK_NAME_BYTES
        ):
            self.flush()

    def extend(self, part: TocBuilder, at: int) -> None:
        """Add the records *part* collected, whose members start at offset *at*.

        Blocks end exactly where adding the records one by one would end them.
        """
        limit, most = fmt.TOC_BLOCK_NAME_BYTES, fmt.TOC_BLOCK_ENTRIES
        file_code = KIND_CODES["file"]
        # A record without a member (unchanged since the base, or a file that could not be
        # read) keeps offset 0; the others move to where the part lands.
        offsets = [
            0 if flags & FROM_BASE or (flags & MISSING and kind == file_code) else offset + at
            for offset, flags, kind in zip(part._offsets, part._flags, part._kinds, strict=True)
        ]
        names = [len(p) + len(t) for p, t in zip(part._paths, part._targets, strict=True)]
        for n, xattrs in part._xattrs.items():
            names[n] += sum(len(name) + len(value) for name, value in xattrs)
        count, start = len(offsets), 0
        while start < count:
            stop = min(count, start + most - len(self._paths))
            reached = list(accumulate(names[start:stop], initial=self._name_bytes))
            full = bisect.bisect_left(reached, limit, 1)
            if full < len(reached):
                stop = start + full  # this record takes the block past its name bytes
            self._append(part, start, stop, offsets)
            self._name_bytes = reached[stop - start]
            if len(self._paths) >= most or self._name_bytes >= limit:
                self.flush()
            start = stop

    def _append(self, part: TocBuilder, start: int, stop: int, offsets: list[int]) -> None:
        here = len(self._paths)
        self._paths += part._paths[start:stop]
        self._kinds += part._kinds[start:stop]
        self._modes += part._modes[start:stop]
        self._uids += part._uids[start:stop]
        self._gids += part._gids[start:stop]
        for uid in set(part._uids[start:stop]).difference(self._users):
            self._users[uid] = part._users[uid]
        for gid in set(part._gids[start:stop]).difference(self._groups):
            self._groups[gid] = part._groups[gid]
        self._sizes += part._sizes[start:stop]
        self._mtimes += part._mtimes[start:stop]
        self._ctimes += part._ctimes[start:stop]
        self._inodes += part._inodes[start:stop]
        self._targets += part._targets[start:stop]
        self._digests += part._digests[start * _DIGEST : stop * _DIGEST]
        self._flags += part._flags[start:stop]
        self._offsets += offsets[start:stop]
        for n, xattrs in part._xattrs.items():
            if start <= n < stop:
                self._xattrs[here + n - start] = xattrs

    def flush(self) -> None:
        """Encode the records collected so far as one block."""
        if not self._paths or self._spool is None:
            return
        block = TocBlock(
            paths=self._paths,
            kinds=bytes(self._kinds),
            modes=self._modes,
            uids=self._uids,
            gids=self._gids,
            users=dict(sorted(self._users.items())),
            groups=dict(sorted(self._groups.items())),
            sizes=self._sizes,
            mtimes=self._mtimes,
            ctimes=_differences(self._ctimes),
            inodes=_differences(self._inodes),
            targets=self._targets,
            digests=bytes(self._digests),
            flags=bytes(self._flags),
            offsets=_differences(self._offsets),
            xattrs=self._xattrs,
        )
        if self._xattrs:
            data = _msgpack.encode(block)
        else:
            # Without the empty 16th column: the bytes of a block from before it existed.
            data = _msgpack.encode(msgspec.structs.astuple(block)[:_COLUMNS])
        self._spool.write(data)
        self.refs.append(BlockRef(self._paths[0], self._at, len(data), len(self._paths)))
        self._at += len(data)
        self._reset()

    def header(self, header: TocHeader) -> bytes:
        """*header* (its blocks filled in) encoded with its length prefix."""
        header.blocks = self.refs
        data = _msgpack.encode(header)
        return struct.pack("<I", len(data)) + data


def _differences(values: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *values], values, strict=False)]
